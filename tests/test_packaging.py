"""Packaging: the wheel and the sdist carry the unit and the example configuration,
and installing the wheel gives a working ``rmrrd`` command and PREFIX/share/rmrrd/.

The wheel is built with ``pip wheel --no-deps`` (pip fetches the build backend into
an isolated environment, as for any user); the sdist through setuptools' PEP 517
hook directly, so no ``build`` package is needed.  Both build from a copy of the
work tree: setuptools leaves ``build/`` and ``*.egg-info`` behind, and a stale
``build/lib`` would put deleted modules into later wheels.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
DATA = ["share/rmrrd/rmrrd.service", "share/rmrrd/rmrrd.yaml", "share/rmrrd/inventories/node-a.yaml",
        "share/rmrrd/prometheus/rmrrd.rules.yml", "share/rmrrd/grafana/rmrrd-dashboard.json",
        "share/man/man1/rmrrd.1", "share/bash-completion/completions/rmrrd"]
MAN_PAGE = "share/man/man1/rmrrd.1"


def run(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=300, check=False, env=env, cwd=cwd
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's source tree, copied without caches, venv or build leftovers."""
    copy = tmp_path_factory.mktemp("source") / "rmrrd"
    leftovers = shutil.ignore_patterns(
        ".*", "__pycache__", "*.egg-info", "build", "dist", "bench", "scripts"
    )
    shutil.copytree(ROOT, copy, ignore=leftovers)
    return copy


@pytest.fixture(scope="module")
def wheel_build(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The wheel, and what building it printed.  ``--isolated``: pip ignores this
    machine's own pip configuration, so what is printed is the project's doing."""
    out = tmp_path_factory.mktemp("wheel")
    built = run([sys.executable, "-m", "pip", "--isolated", "wheel", "--no-deps", "-w", str(out), str(source)])
    (path,) = out.glob("rmrrd-*.whl")
    return path, built.stdout + built.stderr


@pytest.fixture(scope="module")
def wheel(wheel_build: tuple[Path, str]) -> Path:
    return wheel_build[0]


def test_the_build_warns_about_nothing(wheel_build: tuple[Path, str]) -> None:
    output = wheel_build[1]
    assert "Successfully built rmrrd" in output or "Saved" in output, output[-2000:]
    assert "warning" not in output.lower(), output[-3000:]


def test_man_page_shows_every_command_and_option(wheel: Path, tmp_path: Path) -> None:
    """The page in the wheel, as man(1) shows it: each subcommand, with every option it has."""
    from rmrrd.cli import build_parser
    from rmrrd.cli.docs import subcommands

    page = tmp_path / "rmrrd.1"
    member = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(MAN_PAGE))
    page.write_bytes(zipfile.ZipFile(wheel).read(member))
    shown = run(["man", "-l", str(page)], env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"}).stdout
    text = re.sub(".\b", "", shown)  # bold and underline are overstruck characters on a pipe
    parser = build_parser()
    assert "rmrrd - reserved-device-memory daemon for Xen hosts" in text and "--version" in text
    for name, _, command in subcommands(parser):
        assert f"\n   {name}\n" in text, name  # its own subsection
        # Up to the next subsection (three spaces, then a word) or section (no indent).
        section = re.split(r"\n(?:   )?(?=\S)", text.split(f"\n   {name}\n", 1)[1], maxsplit=1)[0]
        for action in command._actions:
            for option in action.option_strings:
                assert option in section, (name, option)
        for status in getattr(command, "exit_statuses"):
            assert f"       {status} " in section, (name, status)


def test_wheel_carries_unit_config_and_inventories(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    data = sorted(n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n)
    for path in DATA:
        assert path in data
    assert "rmrrd/py.typed" in names and "rmrrd/edges/config.py" in names
    assert all(f"rmrrd/{layer}/__init__.py" in names for layer in ("core", "xenstore", "daemon", "edges", "app", "cli"))
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "rmrrd = rmrrd.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_gives_command_and_data(wheel: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    installed_before = run([sys.executable, "-m", "pip", "show", "-f", "rmrrd"]).stdout
    # --ignore-installed: without it pip first uninstalls the rmrrd of *this*
    # environment (the shared editable install) before installing into --prefix.
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed",
         "--prefix", str(prefix), str(wheel)])
    assert run([sys.executable, "-m", "pip", "show", "-f", "rmrrd"]).stdout == installed_before
    for path in DATA:
        assert (prefix / path).is_file(), path
    assert (prefix / DATA[0]).read_text() == (ROOT / "systemd/rmrrd.service").read_text()
    purelib = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
    # The installed script, on the installed package (dependencies from this environment).
    env = {**os.environ, "PYTHONPATH": purelib}
    result = run([sys.executable, str(prefix / "bin" / "rmrrd"), "--help"], env=env, cwd=tmp_path)
    assert "usage: rmrrd" in result.stdout
    where = run([sys.executable, "-c", "import rmrrd; print(rmrrd.__file__)"], env=env, cwd=tmp_path)
    assert where.stdout.startswith(str(prefix))


def test_sdist_carries_unit_config_docs_and_tests(source: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from setuptools import build_meta; "
        "print(build_meta.build_sdist(sys.argv[1]))"
    )
    result = run([sys.executable, "-c", code, str(tmp_path)], cwd=source)
    name = result.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    for path in ("systemd/rmrrd.service", "etc/rmrrd.yaml", "etc/inventories/node-b.yaml",
                 "monitoring/rmrrd.rules.yml", "monitoring/rmrrd.rules.test.yml", "monitoring/rmrrd-dashboard.json",
                 "pyproject.toml", "MANIFEST.in", "rmrrd/py.typed", "tests/test_packaging.py",
                 "tests/data/firmware/README.md", "tests/data/firmware/expected.json",
                 "tests/data/firmware/tables/fwupd_DMAR"):
        assert path in members, path
    assert any(m.startswith("docs/") and m.endswith(".md") for m in members)
