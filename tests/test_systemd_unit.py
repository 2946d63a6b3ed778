"""The systemd unit, checked by systemd's own tools.

``systemd-analyze verify`` insists that ExecStart's binary exists.  The unit names
the installed ``/usr/local/bin/rmrrd``, which a test machine need not have, so the
checks run on a copy whose ExecStart is this environment's real ``rmrrd`` console
script, and every other line is untouched (asserted below).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "rmrrd.service"
INSTALLED = "ExecStart=/usr/local/bin/rmrrd "
ANALYZE = shutil.which("systemd-analyze")

pytestmark = [pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed"), pytest.mark.process]


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at the rmrrd next to this Python."""
    rmrrd = Path(sys.executable).parent / "rmrrd"
    assert rmrrd.exists(), "rmrrd is not installed in this environment (run scripts/bootstrap)"
    original = UNIT.read_text() if text is None else text
    assert original.count(INSTALLED) == 1
    copy = tmp_path / "rmrrd.service"
    copy.write_text(original.replace(INSTALLED, f"ExecStart={rmrrd} "))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


def test_verify_passes_without_a_warning(tmp_path: Path) -> None:
    result = analyze("verify", str(local_copy(tmp_path)))
    # verify exits 0 even when it ignores a line it cannot parse: silence is the test.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_verify_would_catch_a_bad_line(tmp_path: Path) -> None:
    """The check above can fail: a misspelt value makes verify complain."""
    broken = UNIT.read_text().replace("WatchdogSec=30s", "WatchdogSec=soon")
    result = analyze("verify", str(local_copy(tmp_path, broken)))
    assert "WatchdogSec" in result.stderr or "sec value" in result.stderr


def test_hardening_exposure_stays_low(tmp_path: Path) -> None:
    result = analyze("security", "--offline=yes", "--no-pager", str(local_copy(tmp_path)))
    match = re.search(r"Overall exposure level for rmrrd\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    # systemd rates 0-10; below 3 is "OK". A loosened unit shows up here.
    assert float(match.group(1)) < 3.0


def unit_settings() -> dict[str, dict[str, list[str]]]:
    """Every section's keys with all their values (systemd allows repeated keys)."""
    settings: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(section, {}).setdefault(key, []).append(value)
    return settings


def test_promises_of_the_unit() -> None:
    """The promises of docs/operations.md, line by line."""
    unit = unit_settings()
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["ExecStart"] == ["/usr/local/bin/rmrrd run --config /etc/rmrrd/rmrrd.yaml"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]  # bad input: a restart fails the same way
    assert service["WatchdogSec"]
    assert "xenstored.service" in unit["Unit"]["After"][0].split()
    assert "proc-xen.mount" in unit["Unit"]["After"][0].split()
    for option in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert service[option] in (["strict"], ["yes"]), option
    # What the daemon must still reach.
    assert "PrivateDevices" not in service and "/dev/xen/xenbus rw" in service["DeviceAllow"]
    assert "-/run/xenstored" in service["ReadWritePaths"]
    assert "AF_UNIX" in service["RestrictAddressFamilies"][0].split()
    assert not any(key.startswith(("InaccessiblePaths", "TemporaryFileSystem")) for key in service)
