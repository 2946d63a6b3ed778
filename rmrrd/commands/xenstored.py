"""``rmrrd xenstored``: run the simulated xenstored on a unix socket.

For machines without Xen (tests, demos, development): genuine xenstore clients reach
it through ``XENSTORED_PATH``.  Without ``--socket`` it listens on a socket of
rmrrd's own (:mod:`rmrrd.runtime_paths`), never on Xen's; a socket path where a
live socket accepts connections is refused (exit status 2).  Runs until SIGINT or
SIGTERM, then removes its sockets (and writes the tree one last time with
``--persist``).
"""

from __future__ import annotations

import argparse
import logging
import signal
from functools import partial
from pathlib import Path
from typing import Any

import trio

from rmrrd.gc_pauses import short_gc_pauses
from rmrrd.runtime_paths import prepare_own_xenstored_socket
from rmrrd.xenstore.server import serve_xenstored

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("xenstored", help="run a simulated xenstored on a unix socket")
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
    with short_gc_pauses():
        trio.run(_serve, args)
    return 0
