"""``--version``, exit statuses in every ``--help``, and the generated bash completion.

The man page as ``man -l`` shows it is tested on the built wheel (test_packaging.py).
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rmrrd.cli import build_parser
from rmrrd.cli.docs import bash_completion, manpage, subcommands, write_cli_docs

pytestmark = pytest.mark.process  # runs python -m rmrrd and bash

COMMANDS = ["run", "reload", "check", "demo", "inventory", "plan", "xenstored"]


def rmrrd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rmrrd", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_version_prints_the_installed_version() -> None:
    done = rmrrd("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"rmrrd {importlib.metadata.version('rmrrd')}\n", "")


def test_every_command_is_documented() -> None:
    assert [name for name, _, _ in subcommands(build_parser())] == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_the_commands_exit_statuses(command: str) -> None:
    done = rmrrd(command, "--help")
    assert done.returncode == 0
    parser = next(sub for name, _, sub in subcommands(build_parser()) if name == command)
    statuses: dict[int, str] = getattr(parser, "exit_statuses")
    epilog = done.stdout.split("exit status:\n", 1)[1]
    assert 0 in statuses and 2 in statuses
    for status, meaning in statuses.items():
        assert f"\n  {status:<4} {meaning.split()[0]}" in "\n" + epilog, (status, epilog)


def test_generated_files_are_what_the_generators_return(tmp_path: Path) -> None:
    parser = build_parser()
    page, completion = write_cli_docs(parser, tmp_path / "out")
    assert page.read_text() == manpage(parser) and completion.read_text() == bash_completion(parser)


def complete(script: Path, *words: str) -> list[str]:
    """What bash offers after ``rmrrd WORDS``: the last word is the one being completed."""
    line = " ".join(f"'{word}'" for word in words)
    program = (f"source {script}; COMP_WORDS=(rmrrd {line}); COMP_CWORD={len(words)}; _rmrrd; "
               'printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completion_offers_commands_options_and_values(tmp_path: Path) -> None:
    _, script = write_cli_docs(build_parser(), tmp_path)
    assert complete(script, "") == [*COMMANDS, "-h", "--help", "--version"]
    assert complete(script, "in") == ["inventory"]
    assert set(complete(script, "check", "")) >= {"--domid", "--device", "assign", "hotplug", "migrate"}
    assert complete(script, "run", "--log-level", "w") == ["warning"]
    (tmp_path / "node-a.yaml").write_text("")
    assert complete(script, "plan", "--inventory", str(tmp_path / "node-")) == [str(tmp_path / "node-a.yaml")]
    assert complete(script, "plan", "--me") == ["--memory", "--mem-boundary"]
