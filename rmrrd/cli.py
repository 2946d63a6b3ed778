"""The ``rmrrd`` command: one program, a subcommand per job.

Each subcommand lives in ``rmrrd/commands/<name>.py`` and exposes ``register`` (add
its argparse sub-parser) and ``run`` (do the work, return the exit status).  Input
errors become one line on stderr and exit status 2, never a trace.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from types import ModuleType

from rmrrd.errors import InputError

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""What a shell reports for a filter killed by SIGPIPE, as ``cat | head`` gives."""


COMMANDS = ("run", "check", "demo", "inventory", "plan", "xenstored")


def _commands(argv: Sequence[str] | None = None) -> list[ModuleType]:
    """The subcommand modules to register: only the one ``argv`` names, if it names one.

    A toolstack hook runs ``rmrrd check`` for every operation it checks; importing the
    daemon's modules (trio, YAML, Prometheus) for that would cost more than the check
    itself.  ``rmrrd --help`` and a mistyped command still see every subcommand.
    """
    names = [argv[0]] if argv and argv[0] in COMMANDS else COMMANDS
    return [importlib.import_module(f"rmrrd.commands.{name}") for name in names]


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit status 2, as every subcommand's."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (every subcommand when it names none)."""
    parser = _Parser(prog="rmrrd", description="Reserved-device-memory daemon for Xen hosts.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for module in _commands(argv):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except InputError as exc:
        print(f"rmrrd {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
