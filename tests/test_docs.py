"""The documentation stands alone, matches the command line, and its commands are safe on a dom0."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from rmrrd.cli import build_parser
from rmrrd.cli.docs import subcommands
from rmrrd.edges.config import DEFAULT_XENSTORED_SOCKET, load_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
CLI_DOC = ROOT / "docs" / "cli.md"
README = ROOT / "README.md"

#: What a reader with only the repository cannot follow: folders beside the checkout,
#: the development machine's paths, and documents or trackers outside the repository.
#: (Spelt with character classes so that this file does not match itself.)
OUTSIDE = re.compile(r"\.\./shar[e]d|/wor[k]/|\bcontrac[t]\b|\bissu[e] #?[0-9]+|(?-i:\bH[0-9]+\b)|see[d]/",
                     re.IGNORECASE)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".toml", ".in", ".service", ".txt", ".json", ""}
SKIP_DIRS = {".git", ".venv", ".tools", "build", "dist", "__pycache__", ".hypothesis", ".pytest_cache",
             ".mypy_cache", "tables", "LICENSES"}
#: The CI script names the folder of unlicensed firmware tables this project's
#: machines keep beside the checkout: a fact about those machines, not a reference.
ALLOWED = {ROOT / ".ci" / "run"}


def project_text_files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*"):
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in path.relative_to(ROOT).parts):
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES and path not in ALLOWED:
            files.append(path)
    return files


def test_nothing_refers_outside_the_repository() -> None:
    files = project_text_files()
    assert ROOT / "docs" / "design.md" in files and Path(__file__) in files
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in files
             for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
             if OUTSIDE.search(line)]
    assert found == []


def cli_doc_sections() -> dict[str, str]:
    text = CLI_DOC.read_text()
    parts = re.split(r"^## `rmrrd (\w+)`.*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_cli_page_has_every_command_option_and_exit_status() -> None:
    sections = cli_doc_sections()
    parser = build_parser()
    assert list(sections) == [name for name, _, _ in subcommands(parser)]
    for name, _, command in subcommands(parser):
        section = sections[name]
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in section or f" {option}" in section, (name, option)
        rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", section, flags=re.MULTILINE))
        assert {int(status) for status in rows} == set(getattr(command, "exit_statuses")), name


def readme_commands() -> list[list[str]]:
    """Every indented command line of the README, continuation lines joined."""
    text = README.read_text().replace("\\\n", " ")
    lines = [line.split("#", 1)[0] for line in text.splitlines() if line.startswith("    ")]
    return [shlex.split(line) for line in lines if line.strip()]


def test_readme_commands_never_touch_xens_socket() -> None:
    commands = readme_commands()
    runs = [words for words in commands if words[:2] == [".venv/bin/rmrrd", "run"]]
    assert runs and any("--check-config" not in words for words in runs)
    for words in commands:
        assert str(DEFAULT_XENSTORED_SOCKET) not in words, words
        if words[:2] == [".venv/bin/rmrrd", "run"] and "--simulate" in words:
            config = load_config(ROOT / words[words.index("--config") + 1], environ={}, hostname="h",
                                 embedded=True)
            assert not str(config.xenstore.path).startswith("/run/xenstored"), words
        if words[:2] == [".venv/bin/rmrrd", "check"]:
            # Asks the simulated daemon above, not whatever serves dom0's xenstore.
            assert "--xenstore" in words, words
