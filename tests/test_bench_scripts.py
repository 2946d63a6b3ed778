"""The benches still run: each ``bench/`` script is started the way docs/performance.md
says, at a size that takes about a second.

Their numbers are not checked (timing is never a test); what is checked is that a
refactoring has not left a bench unable to start or to finish, which nothing else runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str) -> str:
    """The bench's output; it must exit 0."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_cpu_counts_setups_and_checks() -> None:
    out = run_bench("bench_cpu.py", "-n", "6", "--runs", "1")
    rows = {words[0]: words[1] for words in map(str.split, out.splitlines()) if words[:1] in (["setups"], ["checks"])}
    assert rows == {"setups": "6", "checks": "6"}, out


@pytest.mark.parametrize("script", ["bench_daemon.py", "bench_hooks.py", "bench_xenstore.py"])
def test_bench_starts(script: str) -> None:
    """The longer benches: their imports and command line (``--help`` exits after both)."""
    assert "usage:" in run_bench(script, "--help")
