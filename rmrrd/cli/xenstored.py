"""``rmrrd xenstored``: run the simulated xenstored on a unix socket.

For machines without Xen (tests, demos, development): genuine xenstore clients reach
it through ``XENSTORED_PATH``.  Runs until SIGINT or SIGTERM, then removes its
sockets (and writes the tree one last time with ``--persist``).
"""

from __future__ import annotations

import argparse
import logging
import signal
from functools import partial
from pathlib import Path
from typing import Any

import trio

from rmrrd.edges.gc_pauses import short_gc_pauses
from rmrrd.xenstore.server import serve_xenstored

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("xenstored", help="run a simulated xenstored on a unix socket")
    parser.add_argument("--socket", required=True, type=Path, help="unix socket to listen on")
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
    with short_gc_pauses():
        trio.run(_serve, args)
    return 0
