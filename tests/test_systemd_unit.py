"""The systemd unit, checked by systemd's own tools.

``systemd-analyze verify`` insists that each command's binary exists.  The unit names
the installed ``/usr/local/bin/rmrrd``, which a test machine need not have, so the
checks run on a copy whose ExecStart= and ExecReload= run this environment's real
``rmrrd`` console script, and every other line is untouched (asserted below).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "rmrrd.service"
INSTALLED = "=/usr/local/bin/rmrrd "
ANALYZE = shutil.which("systemd-analyze")

pytestmark = [pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed"), pytest.mark.process]


def local_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at the rmrrd next to this Python."""
    rmrrd = Path(sys.executable).parent / "rmrrd"
    assert rmrrd.exists(), "rmrrd is not installed in this environment (run scripts/bootstrap)"
    original = UNIT.read_text() if text is None else text
    assert original.count(INSTALLED) == 2  # ExecStart= and ExecReload=
    copy = tmp_path / "rmrrd.service"
    copy.write_text(original.replace(INSTALLED, f"={rmrrd} "))
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
    # systemd rates 0-10 (below 3 is "OK"); 2.2 is what the hardening below reaches,
    # so any loosened option shows up here.
    assert float(match.group(1)) <= 2.2


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
    assert service["ExecReload"] == ["/usr/local/bin/rmrrd reload --pid $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]  # bad input: a restart fails the same way
    assert service["WatchdogSec"]
    for option in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert service[option] in (["strict"], ["yes"]), option
    # What the daemon must still reach.
    assert "PrivateDevices" not in service and "/dev/xen/xenbus rw" in service["DeviceAllow"]
    assert "-/run/xenstored" in service["ReadWritePaths"]
    assert "AF_UNIX" in service["RestrictAddressFamilies"][0].split()
    assert not any(key.startswith(("InaccessiblePaths", "TemporaryFileSystem")) for key in service)


def test_ordering_fits_debian_and_upstream_xen() -> None:
    """After xenstored whoever starts it, before whatever starts domains."""
    section = unit_settings()["Unit"]
    after = " ".join(section["After"]).split()
    # Debian 12's xen-utils-common: /etc/init.d/xen, xen.service to systemd.
    # Xen's own tools/hotplug/Linux/systemd units: proc-xen.mount, xenstored.service.
    assert {"xen.service", "xenstored.service", "proc-xen.mount"} <= set(after)
    assert {"xen.service", "xenstored.service"} <= set(" ".join(section["Wants"]).split())
    assert "Requires" not in section  # a xenstored restart must not stop rmrrd
    before = set(" ".join(section["Before"]).split())
    assert {"xendomains.service", "libvirtd.service", "virtxend.service", "libvirt-guests.service"} <= before


def test_conditions_are_xen_dom0_as_xen_units_test_it() -> None:
    """Xen's units' test (ConditionPathExists=/proc/xen/capabilities, grep control_d), not
    ConditionVirtualization=xen, which systemd evaluates false in a dom0."""
    unit = unit_settings()
    assert unit["Unit"]["ConditionPathExists"] == ["/proc/xen/capabilities"]
    assert not any(key.startswith("ConditionVirtualization") for key in unit["Unit"])
    # "+": run outside the sandbox, whose private /proc has no xenfs mount.
    assert unit["Service"]["ExecCondition"] == ["+/bin/grep -q control_d /proc/xen/capabilities"]


@pytest.mark.skipif(Path("/proc/xen/capabilities").exists(), reason="this machine is a Xen domain")
def test_systemd_skips_the_unit_off_xen() -> None:
    """systemd's own evaluation of the unit's conditions on this machine (no Xen)."""
    conditions = [f"{key}={value}" for key, values in unit_settings()["Unit"].items()
                  if key.startswith("Condition") for value in values]
    result = analyze("condition", *conditions)
    assert result.returncode != 0
    assert "ConditionPathExists=/proc/xen/capabilities failed" in result.stdout + result.stderr


@pytest.mark.parametrize(("capabilities", "runs"), [("control_d\n", True), ("", False)], ids=["dom0", "domU"])
def test_exec_condition_tells_dom0_from_domu(tmp_path: Path, capabilities: str, runs: bool) -> None:
    """The ExecCondition= command on each kind of /proc/xen/capabilities: exit 0 runs
    the unit; 1 to 254 skip it (systemd.service(5)), so a domU is skipped, not failed."""
    (command,) = unit_settings()["Service"]["ExecCondition"]
    fake = tmp_path / "capabilities"
    fake.write_text(capabilities)
    argv = command.removeprefix("+").replace("/proc/xen/capabilities", str(fake)).split()
    status = subprocess.run(argv, timeout=10, check=False).returncode
    assert status == 0 if runs else 1 <= status <= 254


def test_the_documented_virtualenv_drop_in_moves_every_command() -> None:
    """docs/operations.md's drop-in for a virtualenv install replaces each command line
    of the unit that runs /usr/local/bin/rmrrd, with the same arguments."""
    operations = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    (block,) = re.findall(r"```ini\n(\[Service\]\n.*?)```", operations, re.S)
    drop_in: dict[str, list[str]] = {}
    for line in block.splitlines()[1:]:
        key, _, value = line.partition("=")
        drop_in.setdefault(key, []).append(value)
    moved = {key: values for key, values in unit_settings()["Service"].items()
             if any(value.startswith("/usr/local/bin/rmrrd ") for value in values)}
    assert set(moved) == {"ExecStart", "ExecReload"}
    for key, (value,) in moved.items():
        assert drop_in[key] == ["", value.replace("/usr/local/bin/rmrrd ", "/opt/rmrrd/bin/rmrrd ")], key
