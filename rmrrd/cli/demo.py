"""``rmrrd demo``: the seed scenario end to end; see :mod:`rmrrd.app.demo`."""

from __future__ import annotations

import argparse
from typing import Any

from rmrrd.cli.exits import EXIT_USAGE
from rmrrd.app.demo import demo
from rmrrd.edges.logs import LEVELS, setup_logging


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the seed scenario on an embedded simulated xenstored",
        description="Start the daemon on an embedded simulated xenstored in a temporary directory and "
                    "play the seed scenario (docs/seed-scenario.md) step by step, each step next to what "
                    "is expected.",
        exit_statuses={0: "every step as expected", 1: "a step differed (the report says which)",
                       EXIT_USAGE: "bad arguments"})
    parser.add_argument("--log-level", choices=LEVELS, default="error",
                        help="the daemon's log lines interleaved with the report (default: errors only)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    return demo()
