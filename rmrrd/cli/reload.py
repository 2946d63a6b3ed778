"""``rmrrd reload --pid PID``: reload a running daemon and report what came of it.

The unit's ``ExecReload=``: SIGHUP to the daemon, then the outcome of that reload as
the daemon recorded it (:mod:`rmrrd.edges.reload_status`), so ``systemctl reload rmrrd``
fails when the daemon refused the new configuration and kept serving the old.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from rmrrd.cli.exits import EXIT_FAILURE, EXIT_USAGE
from rmrrd.edges.reload_status import request_reload, result_path
from rmrrd.errors import InputError

EXIT_STATUSES = {
    0: "reloaded: the daemon runs the new configuration and inventories",
    EXIT_FAILURE: "refused: the daemon kept the configuration it had (the reason is printed), "
                  "or gave no outcome within --timeout",
    EXIT_USAGE: "bad arguments, no such process, or RUNTIME_DIRECTORY unset",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reload", help="reload a running daemon and report the outcome (the unit's ExecReload=)",
        exit_statuses=EXIT_STATUSES,
        description="Send SIGHUP to a running rmrrd and wait for the outcome of the reload it causes, "
                    "as the daemon records it in $RUNTIME_DIRECTORY (systemd sets it for the unit's "
                    "commands): exit 0 if the new configuration and inventories were applied, 1 if the "
                    "daemon kept the old ones.  systemctl reload rmrrd runs this.")
    parser.add_argument("--pid", type=int, required=True, help="the daemon's process id ($MAINPID in the unit)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the outcome (default 60; peers are read over the network)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = result_path(os.environ)
    if path is None:
        raise InputError("RUNTIME_DIRECTORY is unset: the daemon records reload outcomes only under "
                         "systemd (RuntimeDirectory=rmrrd); elsewhere send SIGHUP and read its log")
    outcome = request_reload(args.pid, path, args.timeout)
    if outcome is None:
        print(f"rmrrd reload: no outcome from process {args.pid} within {args.timeout:g} s "
              f"(is it rmrrd run, with this RUNTIME_DIRECTORY?)", file=sys.stderr)
        return EXIT_FAILURE
    if not outcome.ok:
        print(f"rmrrd reload: failed, the running configuration is kept: {outcome.error}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"rmrrd reload: done; {outcome.status}")
    return 0
