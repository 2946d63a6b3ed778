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
import os
import time
from typing import Any

from rmrrd.cli import EXIT_USAGE
from rmrrd.daemon.requests import format_request, parse_request
from rmrrd.errors import InputError
from rmrrd.schema import REQUEST_ROOT, RESULT_ROOT
from rmrrd.xenstore.blocking import BlockingXenstore, XenstoreUnavailable
from rmrrd.xenstore.wire import NoEntry

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


def ask(xs: BlockingXenstore, request: str, timeout: float) -> dict[str, Any]:
    """Write ``request`` and return the result once its verdict is there.

    Raises :class:`InputError` when no verdict comes within ``timeout`` (the request is
    withdrawn then, so a daemon that starts later does not answer it for nobody).
    """
    req_id = f"cli-{os.getpid()}-{os.urandom(4).hex()}"  # what secrets.token_hex does, without its imports
    result = f"{RESULT_ROOT}/{req_id}"
    deadline = time.monotonic() + timeout
    xs.watch(result, req_id)
    xs.write(f"{REQUEST_ROOT}/{req_id}", request)
    verdict = None
    while verdict is None and xs.next_event(deadline) is not None:  # the initial event, then one per key
        verdict = xs.read_text(f"{result}/verdict")
    if verdict is None:
        try:
            xs.rm(f"{REQUEST_ROOT}/{req_id}")
        except NoEntry:
            pass
        raise InputError(f"no verdict within {timeout:g} s: is rmrrd running on this xenstore?")
    xs.unwatch(result, req_id)
    return {"id": req_id, "verdict": verdict, "reason": xs.read_text(f"{result}/reason") or "",
            "conflicts": xs.read_list(f"{result}/conflict"), "ranking": xs.read_list(f"{result}/rank")}


def ask_daemon(xenstore: str | None, request: str, timeout: float) -> dict[str, Any]:
    """Connect, :func:`ask`, disconnect; an unreachable xenstore is an :class:`InputError`."""
    try:
        with BlockingXenstore(xenstore, timeout=timeout) as xs:
            return ask(xs, request, timeout)
    except XenstoreUnavailable as exc:
        raise InputError(f"cannot reach xenstore: {exc}") from None


def run(args: argparse.Namespace) -> int:
    # The request is one line of space-separated words: a space inside an argument
    # would split it, and the daemon would complain about a word the user never wrote.
    for option, values in (("--device", args.device), ("--target", [] if args.target is None else [args.target])):
        for value in values:
            if not value or any(char.isspace() for char in value):
                raise InputError(f"{option} {value!r}: expected one word, without spaces")
    request = format_request(args.op, args.domid, tuple(args.device), args.target)
    parse_request(request)  # refuse bad arguments here, with the same words as the daemon
    result = ask_daemon(args.xenstore, request, args.timeout)
    if args.json:
        import json  # only for this output form

        print(json.dumps(result, indent=2))
    else:
        print(f"{result['verdict']}: {result['reason']}")
        for conflict in result["conflicts"]:
            print(f"  conflict {conflict}")
        for line in result["ranking"]:
            print(f"  peer {line}")
    return EXIT_STATUS[result["verdict"]]
