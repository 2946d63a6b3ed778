"""The ``rmrrd`` command: one program, a subcommand per job.

Each subcommand lives in ``rmrrd/cli/<name>.py`` and exposes ``register`` (add
its argparse sub-parser) and ``run`` (do the work, return the exit status).  Input
errors become one line on stderr and exit status 2, never a trace; a peer that said
no or could not be reached, one line and exit status 1 (:mod:`rmrrd.errors`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from rmrrd.errors import InputError, PeerError, TransportError

from rmrrd.cli.exits import EXIT_BROKEN_PIPE, EXIT_FAILURE, EXIT_USAGE


def _commands() -> list[ModuleType]:
    # Imported here, not at module top, so `rmrrd --help` stays fast and one broken
    # subcommand cannot stop the others from loading in tests.
    from rmrrd.cli import check, demo, inventory, plan, run, xenstored

    return [run, check, demo, inventory, plan, xenstored]


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit status 2, as every subcommand's."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rmrrd", description="Reserved-device-memory daemon for Xen hosts.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in _commands():
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except InputError as exc:
        print(f"rmrrd {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (PeerError, TransportError) as exc:
        # Not the user's input: xenstored or a peer said no, or could not be reached.
        print(f"rmrrd {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`rmrrd plan ... | head`): as for any Unix filter,
        # not worth a trace.  Python would still try to flush stdout at exit and
        # print an error, so point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


if __name__ == "__main__":
    sys.exit(main())
