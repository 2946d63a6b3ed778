"""The ``rmrrd`` command: one program, a subcommand per job.

Each subcommand lives in ``rmrrd/cli/<name>.py`` and exposes ``register`` (add
its argparse sub-parser, with its ``exit_statuses``) and ``run`` (do the work, return
the exit status).  The parser is the one description of the command line: ``--help``,
the man page and the bash completion (:mod:`rmrrd.cli.docs`) are all made from it.  Input
errors become one line on stderr and exit status 2, never a trace, also when trio
delivers them wrapped in an ``ExceptionGroup`` (:func:`rmrrd.cli.exits.sole_cause`); a
peer that said no or could not be reached, one line and exit status 1
(:mod:`rmrrd.errors`).  The statuses every command shares are in :mod:`rmrrd.cli.exits`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from rmrrd import __version__
from rmrrd.errors import InputError, PeerError, TransportError

from rmrrd.cli.exits import EXIT_BROKEN_PIPE, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, sole_cause


COMMANDS = ("run", "reload", "check", "demo", "inventory", "plan", "xenstored")


def _commands(argv: Sequence[str] | None = None) -> list[ModuleType]:
    """The subcommand modules to register: only the one ``argv`` names, if it names one.

    A toolstack hook runs ``rmrrd check`` for every operation it checks, and systemd
    ``rmrrd reload`` for every reload; importing the daemon's modules (trio, YAML,
    Prometheus) for that would cost more than the work itself.  ``rmrrd --help``, the man page and a mistyped command see every subcommand.
    """
    names = [argv[0]] if argv and argv[0] in COMMANDS else COMMANDS
    return [importlib.import_module(f"rmrrd.cli.{name}") for name in names]


def _terminal_columns() -> int:
    """The width argparse would wrap to: ``$COLUMNS``, else the terminal's, else 80.

    What ``shutil.get_terminal_size`` answers, without importing ``shutil`` (and with it
    ``bz2`` and ``lzma``): argparse builds a formatter for every ``add_argument``, also
    on a toolstack hook's ``rmrrd check`` that never prints help, and that import was
    2.5 ms of the check's start-up (docs/performance.md).
    """
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80 if sys.__stdout__ else 80
    except (OSError, ValueError):
        return 80


class _Formatter(argparse.HelpFormatter):
    """argparse's wrapping, except that lines indented by two spaces stay lines."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         width if width is not None else _terminal_columns() - 2)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap  # only when help is printed: see _terminal_columns

        paragraphs = []
        for block in text.split("\n"):
            if block.startswith("  "):
                paragraphs.append(textwrap.fill(block.strip(), width, initial_indent=indent + "  ",
                                                subsequent_indent=indent + "       "))
            else:
                paragraphs.append(super()._fill_text(block, width, indent))
        return "\n".join(paragraphs)


def exit_status_text(statuses: Mapping[int, str]) -> str:
    """The ``exit status:`` block of a command's ``--help``, one status a line."""
    return "exit status:\n" + "\n".join(f"  {status:<4} {meaning}" for status, meaning in sorted(statuses.items()))


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit status 2, as every subcommand's.

    ``exit_statuses`` (status to meaning) becomes the epilog of ``--help`` and the
    EXIT STATUS of the man page; every command gives them.
    """

    def __init__(self, *args: Any, exit_statuses: Mapping[int, str] | None = None, **kwargs: Any) -> None:
        self.exit_statuses = dict(exit_statuses or {})
        if self.exit_statuses:
            kwargs["epilog"] = exit_status_text(self.exit_statuses)
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (every subcommand when it names none)."""
    parser = _Parser(prog="rmrrd", description="Reserved-device-memory daemon for Xen hosts.",
                     exit_statuses={EXIT_USAGE: "a usage error (each command's --help lists its own statuses)",
                                    EXIT_INTERRUPTED: "interrupted (SIGINT) outside the daemon"})
    parser.add_argument("--version", action="version", version=f"rmrrd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND",
                                title="commands")
    for module in _commands(argv):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        try:
            status: int = args.run(args)
        except ExceptionGroup as group:
            raise sole_cause(group) from None
    except InputError as exc:
        print(f"rmrrd {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (PeerError, TransportError) as exc:
        # Not the user's input: xenstored or a peer said no, or could not be reached.
        print(f"rmrrd {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`rmrrd plan ... | head`): as for any Unix filter,
        # not worth a trace.  Python would still try to flush stdout at exit and
        # print an error, so point stdout at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


if __name__ == "__main__":
    sys.exit(main())
