"""``rmrrd check assign|hotplug|migrate``: a toolstack check, by the running daemon or offline.

With ``--domid`` it asks the running daemon: writes one ``/tool/rmrrd/request/<id>`` node
through xenstore (docs/xenstore-schema.md), watches for ``/tool/rmrrd/result/<id>/verdict``
and prints the result.  With ``--xl-config FILE`` it needs no daemon and no domain: the
domain is planned as stock xl and libxl would build it from the file on this host
(:mod:`rmrrd.app.xl_config`, xl's warnings on stderr as ``rmrrd plan`` prints them), and
the same check the daemon runs (:func:`rmrrd.core.checks.check_operation`) judges the
device or the migration against that layout.  Exit status: 0 ok, 1 fail, 3 warn; 2 for
bad arguments or input, or when no verdict comes in time.

Toolstack hooks run this for every operation they check, so the ``--domid`` path is
kept short: a blocking xenstore client (:mod:`rmrrd.xenstore.blocking`), no trio, no
YAML, no xl.cfg reader or planner, nothing imported that the check does not use
(docs/performance.md measures it).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rmrrd.cli.exits import EXIT_USAGE
from rmrrd.errors import InputError
from rmrrd.protocol import Result

if TYPE_CHECKING:  # imported by the --xl-config path only
    from rmrrd.core.inventory import Inventory
    from rmrrd.core.pci import Bdf

EXIT_STATUS = {"ok": 0, "fail": 1, "warn": 3}
EXIT_STATUSES = {
    0: "ok: the verdict allows it",
    1: "fail: the verdict refuses it (the reason and conflicts are printed); with --xl-config also "
       "when libxl would refuse to create the domain",
    EXIT_USAGE: "bad arguments or input (an xl.cfg file xl refuses, an unknown --target), xenstore unreachable, "
                "or no verdict within --timeout",
    3: "warn: allowed, with conflicts a relaxed policy accepts",
}
DEFAULT_TIMEOUT = 10.0
_DAEMON_ONLY = ("xenstore", "timeout")
_OFFLINE_ONLY = ("inventory", "peer", "seabios_size")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("check", help="check an assign, hotplug or migrate, by a running rmrrd or "
                                                 "offline for an xl.cfg file",
                                   exit_statuses=EXIT_STATUSES,
                                   description="Whether a device may be assigned or hot-plugged to a domain, or "
                                               "the domain moved to a peer host: asked of the rmrrd serving this "
                                               "xenstore (--domid), or judged offline for the domain stock xl "
                                               "would create from an xl.cfg file (--xl-config).")
    parser.add_argument("op", choices=("assign", "hotplug", "migrate"),
                        help="what to check: assigning a device, hot-plugging it, or migrating the domain")
    domain = parser.add_mutually_exclusive_group(required=True)
    domain.add_argument("--domid", type=int, help="the running guest's domain id: ask the daemon")
    domain.add_argument("--xl-config", metavar="FILE",
                        help="an xl.cfg file: check offline the domain stock xl 4.17 would create from it, "
                             "its bugs included (no daemon needed)")
    parser.add_argument("--device", action="append", default=[], metavar="SPEC",
                        help="xl pci= spec, e.g. 0000:00:14.0,rdm_policy=relaxed (repeatable for migrate)")
    parser.add_argument("--target", help="migrate: the peer host, by name or alias (default: rank every peer)")
    parser.add_argument("--xenstore", help="--domid: xenstored socket (default: $XENSTORED_PATH, then dom0's)")
    parser.add_argument("--timeout", type=float, help=f"--domid: seconds to wait for the verdict "
                                                      f"(default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--inventory", metavar="FILE",
                        help="--xl-config: this host's inventory (YAML, docs/inventory.md); default: the one "
                             "the daemon would load here ($RMRRD_CONFIG, else /etc/rmrrd/rmrrd.yaml, else "
                             "this host's firmware tables)")
    parser.add_argument("--peer", metavar="FILE", action="append", default=[],
                        help="--xl-config: a peer host's inventory, with its aliases, for migrate (repeatable)")
    parser.add_argument("--seabios-size", metavar="KIB", type=int,
                        help="--xl-config: the SeaBIOS image in KiB (default: the configuration's "
                             "defaults.seabios_size; 128 with --inventory)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def _refuse_options_of_the_other_path(args: argparse.Namespace) -> None:
    """An option of one path given with the other would be silently unused: say so."""
    offline = args.xl_config is not None
    for name in _DAEMON_ONLY if offline else _OFFLINE_ONLY:
        if getattr(args, name) not in (None, []):
            option = "--" + name.replace("_", "-")
            raise InputError(f"{option} is for --domid (the daemon's check)" if offline else
                             f"{option} is for --xl-config (with --domid the daemon's inventories are used)")


def run(args: argparse.Namespace) -> int:
    _refuse_options_of_the_other_path(args)
    # The request is one line of space-separated words: a space inside an argument
    # would split it, and the daemon would complain about a word the user never wrote.
    for option, values in (("--device", args.device), ("--target", [] if args.target is None else [args.target])):
        for value in values:
            if not value or any(char.isspace() for char in value):
                raise InputError(f"{option} {value!r}: expected one word, without spaces")
    if args.xl_config is not None:
        req_id, result = None, check_xl_config(args)
    else:
        req_id, result = _ask(args)
    if args.json:
        import json  # only for this output form

        print(json.dumps({"id": req_id, "verdict": result.verdict, "reason": result.reason,
                          "conflicts": list(result.conflicts), "ranking": list(result.ranking)}, indent=2))
    else:
        print(f"{result.verdict}: {result.reason}")
        for conflict in result.conflicts:
            print(f"  conflict {conflict}")
        for line in result.ranking:
            print(f"  peer {line}")
    return EXIT_STATUS[result.verdict]


def _ask(args: argparse.Namespace) -> tuple[str, Result]:
    """The daemon's verdict for the domain ``--domid``."""
    from rmrrd.app.check import ask_daemon
    from rmrrd.protocol import format_request, parse_request

    request = format_request(args.op, args.domid, tuple(args.device), args.target)
    parse_request(request)  # refuse bad arguments here, with the same words as the daemon
    return ask_daemon(args.xenstore, request, DEFAULT_TIMEOUT if args.timeout is None else args.timeout)


def check_xl_config(args: argparse.Namespace) -> Result:
    """The verdict for the domain stock xl would create from ``--xl-config`` on this host.

    A domain libxl would refuse to create (a refusal of the file, or a strict device
    region in its RAM) is ``fail`` saying why.  Other domains' devices are not known
    offline: the rule on a region shared with another domain's device is the daemon's
    alone.
    """
    # Imported here: --domid needs none of it (tests/test_short_paths.py). The file
    # options stay strings: pathlib (with urllib.parse, 4 ms) only for --peer and --inventory.
    from rmrrd.app.xl_config import read_xl_config
    from rmrrd.core.checks import Verdict, check_operation
    from rmrrd.core.libxl_domain import libxl_plan
    from rmrrd.protocol import parse_check

    devices, target = parse_check(args.op, args.device, args.target)
    peers = _peers(args.peer)
    if args.op == "migrate" and target is None and not peers:
        raise InputError("migrate without --target ranks the --peer hosts: give at least one --peer FILE")
    domain = read_xl_config(args.xl_config, "check")
    ranking: list[str] = []
    if domain.refusals:
        verdict = Verdict("fail", f"libxl would refuse to create the domain: {'; '.join(domain.refusals)}")
    else:
        host, seabios_size = _this_host(args.inventory, args.seabios_size)
        _, plan = libxl_plan(domain, host, peers, seabios_size=seabios_size)
        if plan.status != "ready":
            verdict = Verdict("fail", f"libxl would refuse to create the domain on {host.host}: {plan.error}")
        else:
            verdict, ranking = check_operation(plan, host, peers, args.op, devices, target, _no_other_domains)
    return Result(verdict.verdict, verdict.reason, tuple(str(c) for c in verdict.conflicts), tuple(ranking))


def _peers(paths: list[str]) -> dict[str, Inventory]:
    """The ``--peer`` inventories; their YAML reader only when there are some (an
    assign or hotplug check, the common case, needs none: docs/performance.md)."""
    if not paths:
        return {}
    from pathlib import Path

    from rmrrd.cli.plan import load_peers

    return load_peers([Path(path) for path in paths])


def _no_other_domains() -> dict[Bdf, int]:
    """What other domains hold, offline: nothing known (the daemon knows)."""
    return {}


def _this_host(inventory: str | None, seabios_size: int | None) -> tuple[Inventory, int | None]:
    """This host's inventory and SeaBIOS size: ``--inventory``, else the daemon's configuration's."""
    if inventory is not None:
        from rmrrd.core.inventory_yaml import load_inventory_file

        return load_inventory_file(inventory), seabios_size
    from rmrrd.app.host_cache import this_host

    host, configured = this_host()
    return host, configured if seabios_size is None else seabios_size
