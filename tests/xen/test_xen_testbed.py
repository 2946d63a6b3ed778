"""The testbed itself: the command channel into dom0, and a failing step failing loudly."""

from __future__ import annotations

import pytest

from xen.conftest import NO_XENSTORED
from xen.testbed import CommandFailed, Dom0, StepFailed, Testbed


def test_a_command_returns_its_status_and_both_outputs(dom0: Dom0) -> None:
    result = dom0.run("echo out; echo err >&2; exit 3", check=False)
    assert (result.rc, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert dom0.run(["cat"], input=b"\0binary\xff").stdout == b"\0binary\xff"
    with pytest.raises(CommandFailed, match=r"(?s)exited 1.*no such thing"):
        dom0.run("echo no such thing >&2; false")


def test_a_command_is_killed_with_its_children_at_its_timeout(dom0: Dom0) -> None:
    result = dom0.run("sleep 300 & sleep 301; echo never", timeout=2, check=False)
    assert result.timed_out and result.stdout == b""
    assert dom0.run("ps -o args | grep '[s]leep 30[01]'", check=False).rc == 1  # the whole group went


def test_dom0_is_xen_4_17_with_its_toolstack_up(dom0: Dom0) -> None:
    info = {key.strip(): value.strip() for key, value in
            (line.split(":", 1) for line in dom0.run("xl info").text.splitlines() if ":" in line)}
    assert info["xen_version"].startswith("4.17.")
    assert "hvm" in info["virt_caps"] and "hap" in info["virt_caps"]
    assert "Domain-0" in dom0.run("xl list").text
    assert dom0.xs_read("/local/domain/0/name") == "Domain-0"


def test_python_commands_run_the_checkouts_rmrrd(dom0: Dom0) -> None:
    assert dom0.python(["-c", "import rmrrd, sys; print(rmrrd.__file__, sys.version_info[:2])"]).text == (
        "/opt/rmrrd/rmrrd/__init__.py (3, 11)\n")
    result = dom0.rmrrd("check", "teleport", check=False)
    assert result.rc == 2 and b"invalid choice" in result.stderr


def test_a_dom0_without_xenstored_fails_at_that_step_with_its_output(no_xenstored: Testbed) -> None:
    with pytest.raises(StepFailed) as failure:
        no_xenstored.boot(NO_XENSTORED)
    message = str(failure.value)
    assert "no-xenstored: step 'xenstored answers' failed" in message
    assert "no xenstored process is running in dom0" in message  # the step's own output
