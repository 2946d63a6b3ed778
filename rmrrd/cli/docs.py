"""The man page and the bash completion, made from the argparse parser itself.

There is no second copy of the command line to keep in step: ``setup.py`` calls
:func:`write_cli_docs` when the wheel is built, and the wheel installs the results
as ``share/man/man1/rmrrd.1`` and ``share/bash-completion/completions/rmrrd``.  Both
read what ``rmrrd --help`` prints: each command's description, its options with
their help, metavar and choices, and its exit statuses.

argparse keeps the parsed definitions in attributes without a public accessor
(``_actions``, ``_choices_actions``); they have been stable since Python 3.2 and are
what every argparse documentation tool reads.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from rmrrd import __version__

MAN_SECTION = "1"
SEE_ALSO = ("xl.cfg(5)", "xl-pci-configuration(5)", "xenstore-ls(1)", "systemd.service(5)")


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in ``--help`` order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield choice.dest, choice.help or "", action.choices[choice.dest]


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [action for action in parser._actions
            if not isinstance(action, argparse._SubParsersAction) and action.help != argparse.SUPPRESS]


def _roff(text: str) -> str:
    """Text safe in a roff line: backslashes and hyphens escaped, no control at the start."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help as ``--help`` shows it (``%(default)s`` and the like expanded)."""
    formatter = parser._get_formatter()
    return " ".join(formatter._expand_help(action).split()) if action.help else ""


def _value_name(action: argparse.Action) -> str:
    """What ``--help`` shows for an option's value or a positional: metavar, choices or name."""
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices:
        return "{" + ",".join(str(choice) for choice in action.choices) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _option_synopsis(action: argparse.Action) -> str:
    value = f"\\fI{_roff(_value_name(action))}\\fR"
    if not action.option_strings:
        return value
    names = ", ".join(f"\\fB{_roff(name)}\\fR" for name in action.option_strings)
    return names if action.nargs == 0 else f"{names} {value}"


def _exit_statuses(parser: argparse.ArgumentParser) -> Mapping[int, str]:
    statuses: Mapping[int, str] = getattr(parser, "exit_statuses", {})
    return statuses


def _summary(parser: argparse.ArgumentParser) -> str:
    """The description as a NAME line wants it: no final period, lower case first letter."""
    text = (parser.description or "").rstrip(".")
    return text[:1].lower() + text[1:]


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = parser.format_usage().removeprefix("usage: ").strip()
    return " ".join(usage.split())


def manpage(parser: argparse.ArgumentParser) -> str:
    """rmrrd(1) in roff (man(7) macros), from ``parser``."""
    name = parser.prog
    out = [
        f'.TH {name.upper()} {MAN_SECTION} "" "{name} {__version__}" "User Commands"',
        ".SH NAME",
        f"{name} \\- {_roff(_summary(parser))}",
        ".SH SYNOPSIS",
        f"\\fB{name}\\fR [\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _roff(parser.description or ""),
        "Each command is described below with its options and exit statuses, as its "
        "\\fB\\-\\-help\\fR prints them.",
        ".SH OPTIONS",
    ]
    for action in _options(parser):
        out += [".TP", _option_synopsis(action), _roff(_help_text(parser, action))]
    out.append(".SH COMMANDS")
    for command, summary, sub in subcommands(parser):
        out += [f".SS {_roff(command)}", f"\\fB{_roff(_usage(sub))}\\fR", ".PP",
                _roff(sub.description or summary)]
        for action in _options(sub):
            out += [".TP", _option_synopsis(action), _roff(_help_text(sub, action))]
        statuses = _exit_statuses(sub)
        if statuses:
            out += [".PP", "Exit status:"]
            for status, meaning in sorted(statuses.items()):
                out += [".TP", f"\\fB{status}\\fR", _roff(meaning)]
    out.append(".SH EXIT STATUS")
    out.append("Each command's own statuses are listed with it above. For every command:")
    for status, meaning in sorted(_exit_statuses(parser).items()):
        out += [".TP", f"\\fB{status}\\fR", _roff(meaning)]
    out += [
        ".SH ENVIRONMENT",
        ".TP", "\\fBXENSTORED_PATH\\fR",
        "The xenstored socket when the configuration names none, as libxenstore reads it.",
        ".TP", "\\fBJOURNAL_STREAM\\fR",
        "Set by systemd: when it names standard error, log lines carry journald priority prefixes.",
        ".SH FILES",
        ".TP", "\\fI/etc/rmrrd/rmrrd.yaml\\fR", "The configuration \\fBrmrrd run\\fR reads by default.",
        ".TP", "\\fI/run/rmrrd/xenstored/socket\\fR",
        "The simulated xenstored's socket when run as root with no path configured.",
        ".SH SEE ALSO",
        ", ".join(_reference(ref) for ref in SEE_ALSO),
        "",
    ]
    return "\n".join(out)


def _reference(ref: str) -> str:
    """``xl.cfg(5)`` as man pages set it: the name in bold, the section plain."""
    page, _, section = ref.partition("(")
    return f"\\fB{_roff(page)}\\fR({section}"


def _words(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, str]]:
    """Option strings, and for options taking a value: what completes it (choices, or files)."""
    words: list[str] = []
    values: dict[str, str] = {}
    for action in _options(parser):
        words += action.option_strings
        if action.option_strings and action.nargs != 0:
            completion = " ".join(str(c) for c in action.choices) if action.choices else (
                "@files" if action.type is Path or action.metavar in ("FILE", "DIR", "PATH") else "")
            for option in action.option_strings:
                values[option] = completion
    positional = [action for action in _options(parser) if not action.option_strings and action.choices]
    for action in positional:
        words += [str(choice) for choice in action.choices or ()]
    return words, values


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for ``parser.prog``: commands, their options and values."""
    name = parser.prog
    function = f"_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
    top_words, _ = _words(parser)
    commands = [command for command, _, _ in subcommands(parser)]
    cases = []
    for command, _, sub in subcommands(parser):
        words, values = _words(sub)
        value_cases = []
        for option, completion in sorted(values.items()):
            action = 'COMPREPLY=($(compgen -f -- "$cur"))' if completion == "@files" else \
                f'COMPREPLY=($(compgen -W "{completion}" -- "$cur"))'
            value_cases.append(f"                {option}) {action}; return;;")
        cases.append("\n".join([
            f"        {command})",
            '            case "$prev" in',
            *value_cases,
            "            esac",
            f'            COMPREPLY=($(compgen -W "{" ".join(words)}" -- "$cur"))',
            "            ;;",
        ]))
    return "\n".join([
        f"# bash completion for {name}, generated from its argparse definitions (rmrrd/cli_docs.py).",
        f"{function}() {{",
        "    local cur prev command i",
        '    cur="${COMP_WORDS[COMP_CWORD]}"',
        '    prev="${COMP_WORDS[COMP_CWORD-1]}"',
        "    command=",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case "${COMP_WORDS[i]}" in',
        "            -*) ;;",
        '            *) command="${COMP_WORDS[i]}"; break;;',
        "        esac",
        "    done",
        '    case "$command" in',
        "        '')",
        f'            COMPREPLY=($(compgen -W "{" ".join(commands + top_words)}" -- "$cur"))',
        "            ;;",
        *cases,
        "    esac",
        "}",
        f"complete -F {function} {name}",
        "",
    ])


def write_cli_docs(parser: argparse.ArgumentParser, directory: Path) -> tuple[Path, Path]:
    """Write ``<prog>.1`` and the completion script ``<prog>`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    page = directory / f"{parser.prog}.{MAN_SECTION}"
    page.write_text(manpage(parser), encoding="utf-8")
    completion = directory / parser.prog
    completion.write_text(bash_completion(parser), encoding="utf-8")
    return page, completion
