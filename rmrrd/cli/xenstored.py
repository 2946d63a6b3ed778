"""``rmrrd xenstored``: run the simulated xenstored on a unix socket.

For machines without Xen (tests, demos, development): genuine xenstore clients reach
it through ``XENSTORED_PATH``.  Without ``--socket`` it listens on a socket of
rmrrd's own (:mod:`rmrrd.edges.runtime_paths`), never on Xen's; a socket path where a
live socket accepts connections is refused (exit status 2).  Runs until SIGINT or
SIGTERM, then removes its sockets (and writes the tree one last time with
``--persist``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from rmrrd.cli.exits import EXIT_USAGE, sole_cause
from rmrrd.edges.gc_pauses import short_gc_pauses
from rmrrd.edges.runtime_paths import prepare_own_xenstored_socket
from rmrrd.xenstore.server import serve_xenstored

log = logging.getLogger(__name__)

EXIT_UNAVAILABLE = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "xenstored", help="run a simulated xenstored on a unix socket",
        description="Run rmrrd's simulated xenstored alone, for machines without Xen; genuine xenstore "
                    "clients reach it through XENSTORED_PATH.  A socket path where a live socket accepts "
                    "connections is refused; at exit only the sockets it bound are removed.",
        exit_statuses={0: "stopped by SIGINT or SIGTERM",
                       EXIT_UNAVAILABLE: "no permission to create or bind the socket",
                       EXIT_USAGE: "bad arguments, a socket path another live socket holds, or an "
                                   "unreadable --persist file"})
    parser.add_argument("--socket", type=Path,
                        help="unix socket to listen on (default: /run/rmrrd/xenstored/socket as root, "
                             "else under $XDG_RUNTIME_DIR/rmrrd/)")
    parser.add_argument("--persist", type=Path, help="keep the tree in this file across restarts")
    parser.set_defaults(run=run)


async def _serve(args: argparse.Namespace) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve_xenstored, args.socket, persist=args.persist))
            async for signum in signals:
                log.info("xenstored stopping on signal %d", signum)
                nursery.cancel_scope.cancel()
                break


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.socket is None:
        args.socket = prepare_own_xenstored_socket()
    try:
        with short_gc_pauses():
            trio.run(_serve, args)
    except Exception as exc:
        cause = sole_cause(exc)  # trio delivers it bare or in a group
        if not isinstance(cause, OSError):
            raise  # an InputError is the CLI's to report; anything else is a bug
        print(f"rmrrd xenstored: {cause.filename or args.socket}: {cause.strerror or cause}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0
