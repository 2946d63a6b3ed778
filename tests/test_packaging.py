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
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ["share/rmrrd/rmrrd.service", "share/rmrrd/rmrrd.yaml", "share/rmrrd/inventories/node-a.yaml"]


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
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)])
    (built,) = out.glob("rmrrd-*.whl")
    return built


def test_wheel_carries_unit_config_and_inventories(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    data = sorted(n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n)
    for path in DATA:
        assert path in data
    assert "rmrrd/py.typed" in names and "rmrrd/config.py" in names
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
                 "pyproject.toml", "MANIFEST.in", "rmrrd/py.typed", "tests/test_packaging.py",
                 "tests/data/firmware/README.md", "tests/data/firmware/expected.json",
                 "tests/data/firmware/tables/fwupd_DMAR"):
        assert path in members, path
    assert any(m.startswith("docs/") and m.endswith(".md") for m in members)
