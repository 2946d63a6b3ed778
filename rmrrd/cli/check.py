"""``rmrrd check assign|hotplug|migrate``: ask a running daemon, wait for the verdict.

Writes one ``/tool/rmrrd/request/<id>`` node through xenstore (docs/xenstore-schema.md), watches
for ``/tool/rmrrd/result/<id>/verdict`` and prints the result.  Exit status: 0 ok,
1 fail, 3 warn; 2 for bad arguments or when no verdict comes in time.

Toolstack hooks run this for every operation they check, so it is kept short: a
blocking xenstore client (:mod:`rmrrd.xenstore.blocking`), no trio, no YAML, nothing
imported that the check does not use (docs/performance.md measures it).
"""

from __future__ import annotations

import argparse
from typing import Any

from rmrrd.app.check import ask_daemon
from rmrrd.cli.exits import EXIT_USAGE
from rmrrd.errors import InputError
from rmrrd.protocol import format_request, parse_request

EXIT_STATUS = {"ok": 0, "fail": 1, "warn": 3}
EXIT_STATUSES = {
    0: "ok: the verdict allows it",
    1: "fail: the verdict refuses it (the reason and conflicts are printed)",
    EXIT_USAGE: "bad arguments, xenstore unreachable, or no verdict within --timeout",
    3: "warn: allowed, with conflicts a relaxed policy accepts",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("check", help="check an assign, hotplug or migrate against a running rmrrd",
                                   exit_statuses=EXIT_STATUSES,
                                   description="Ask the rmrrd serving this xenstore whether a device may be "
                                               "assigned or hot-plugged to a domain, or the domain moved to a "
                                               "peer host, and wait for its verdict.")
    parser.add_argument("op", choices=("assign", "hotplug", "migrate"),
                        help="what to check: assigning a device, hot-plugging it, or migrating the domain")
    parser.add_argument("--domid", type=int, required=True, help="the guest's domain id")
    parser.add_argument("--device", action="append", default=[], metavar="SPEC",
                        help="xl pci= spec, e.g. 0000:00:14.0,rdm_policy=relaxed (repeatable for migrate)")
    parser.add_argument("--target", help="migrate: the peer host, by name or alias (default: rank every peer)")
    parser.add_argument("--xenstore", help="xenstored socket (default: $XENSTORED_PATH, then dom0's)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the verdict")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # The request is one line of space-separated words: a space inside an argument
    # would split it, and the daemon would complain about a word the user never wrote.
    for option, values in (("--device", args.device), ("--target", [] if args.target is None else [args.target])):
        for value in values:
            if not value or any(char.isspace() for char in value):
                raise InputError(f"{option} {value!r}: expected one word, without spaces")
    request = format_request(args.op, args.domid, tuple(args.device), args.target)
    parse_request(request)  # refuse bad arguments here, with the same words as the daemon
    req_id, result = ask_daemon(args.xenstore, request, args.timeout)
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
