"""``rmrrd demo``: the seed scenario end to end; see :mod:`rmrrd.app.demo`."""

from __future__ import annotations

import argparse
from typing import Any

from rmrrd.app.demo import demo
from rmrrd.edges.logs import LEVELS, setup_logging


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="run the seed scenario on an embedded simulated xenstored")
    parser.add_argument("--log-level", choices=LEVELS, default="error",
                        help="the daemon's log lines interleaved with the report (default: errors only)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    return demo()
