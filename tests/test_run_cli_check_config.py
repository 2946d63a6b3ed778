"""``rmrrd run --check-config`` and ``--log-level``, as an operator runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import INVENTORIES, REPO
from support.processes import config_text

pytestmark = pytest.mark.process


def check(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    return subprocess.run([sys.executable, "-m", "rmrrd", "run", "--check-config", "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=60, check=False, env=env, cwd=config.parent)


def seed_config(workdir: Path, extra: str = "") -> Path:
    for name in ("node-a.yaml", "node-b.yaml"):
        shutil.copy(INVENTORIES / name, workdir / name)
    path = workdir / "rmrrd.yaml"
    path.write_text(config_text(workdir, 8407, xenstore=workdir / "xs.sock", embedded=True, extra=extra))
    return path


def test_valid_config_exits_0_with_a_summary(workdir: Path) -> None:
    result = check(seed_config(workdir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"{workdir}/rmrrd.yaml: valid; xenstore {workdir}/xs.sock (embedded); "
                             "HTTP 127.0.0.1:8407; host node-a with 2 regions; 1 peers (node-b); log level info\n")


def test_the_shipped_example_is_valid() -> None:
    result = check(REPO / "etc" / "rmrrd.yaml")
    assert result.returncode == 0, result.stderr
    assert ": valid;" in result.stdout


def test_invalid_config_names_file_line_and_key(workdir: Path) -> None:
    config = seed_config(workdir, "limits:\n  query_rate: 0\n  max_allocations: lots\n")
    result = check(config)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"rmrrd run: {config}:11: limits.query_rate: expected an integer from 1 to 10000, got 0"
    assert lines[1] == f"{config}:12: limits.max_allocations: expected a positive integer, got 'lots'"
    assert "Traceback" not in result.stderr


def test_missing_host_inventory_names_the_key(workdir: Path) -> None:
    config = seed_config(workdir)
    (workdir / "node-a.yaml").unlink()
    result = check(config)
    assert result.returncode == 2
    assert result.stderr.startswith(f"rmrrd run: {config}: host.sources: {workdir}/node-a.yaml: ")


def test_unreadable_peer_fails_the_check(workdir: Path) -> None:
    config = seed_config(workdir)
    (workdir / "node-b.yaml").write_text("host: node-b\nregions: [{range: nonsense}]\n")
    result = check(config)
    assert result.returncode == 2
    assert "INVALID, 1 peer problems (logged above)" in result.stdout
    assert "node-b.yaml" in result.stderr and "WARNING rmrrd.edges.peers" in result.stderr


def test_log_level(workdir: Path) -> None:
    config = seed_config(workdir)
    assert "INFO rmrrd.edges.peers: peer node-b" in check(config).stderr
    assert check(config, "--log-level", "warning").stderr == ""
    bad = check(config, "--log-level", "loud")
    assert bad.returncode == 2
    assert "argument --log-level: invalid choice: 'loud'" in bad.stderr
