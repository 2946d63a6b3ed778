"""``rmrrd demo`` as a user runs it (the README's "see it work" command)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parent.parent


def test_demo_plays_every_step_of_the_seed_scenario_and_exits_0() -> None:
    done = subprocess.run([sys.executable, "-m", "rmrrd", "demo"], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stdout + done.stderr
    report = done.stdout
    for heading in ("STEP-1  domain 1", "STEP-3  hvmloader", "STEP-2/4/5  toolstack checks", "rdm_mem_boundary=4096"):
        assert heading in report
    steps = [line for line in report.splitlines() if line.lstrip().startswith("[")]
    assert len(steps) == 15 and all(line.lstrip().startswith("[ok]") for line in steps), report
    assert report.rstrip().endswith("15 of 15 steps as expected")
    # The report names each device and the reason a check failed.
    assert "hotplug 0000:00:14.0: region 0xe0000-0xeffff overlaps guest bios" in report
    # The daemon's own log goes to stderr, not into the report: the refused
    # mem_boundary request is an error there.
    assert "ERROR" not in report
    assert "domain 2: request 1 refused" in done.stderr
