"""The unit under the real systemd, in a real Xen dom0 (``systemd_dom0.py``).

Debian 12 with systemd as init and Debian's Xen packages; rmrrd installed from the
wheel as docs/operations.md says, with the unit and configuration from its data files,
enabled, and nothing else done: it started at boot.  The tests run in order on that one
machine, each leaving rmrrd running for the next, except the last (stop):

- it reached ``active`` at boot after Xen's own unit and before the unit that starts
  domains, serving;
- ``journalctl -p warning`` shows its warnings, at their priorities, and not its info;
- ``systemctl reload`` with a broken configuration fails, rmrrd keeps serving the old
  one and says why; a fixed file reloads;
- a hung rmrrd (SIGSTOP) is killed by systemd's watchdog and restarted;
- ``systemctl stop`` ends it with status 0, well within ``TimeoutStopSec=``.

``systemctl start`` is what systemd did at boot (the enabled unit's start job) and
after the watchdog's kill; a test of its own would only add rmrrd's start-up time.
"""

from __future__ import annotations

import json
import re
import time

from xen.testbed import Dom0

UNIT = "rmrrd.service"
CONFIG = "/etc/rmrrd/rmrrd.yaml"
PROPERTIES = ("ActiveState", "SubState", "Result", "MainPID", "NRestarts", "ExecMainStatus", "StatusText",
              "InactiveExitTimestampMonotonic", "ActiveEnterTimestampMonotonic")
RESTART_WAIT = 240.0
"""Watchdog (30 s), RestartSec (2 s) and rmrrd's own start, which under emulation
imports its modules for about half a minute; the bound on a loaded CI machine."""


def show(dom0: Dom0, unit: str = UNIT) -> dict[str, str]:
    """``systemctl show`` of the properties the tests read."""
    text = dom0.run(["systemctl", "show", f"--property={','.join(PROPERTIES)}", unit]).text
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def http_get(dom0: Dom0, path: str) -> tuple[int, str]:
    """``GET path`` on rmrrd's listener (the configuration's 127.0.0.1:8407), through
    bash's /dev/tcp: a Python would spend seconds importing under emulation."""
    script = ('exec 3<>/dev/tcp/127.0.0.1/8407 && printf "GET %s HTTP/1.0\\r\\n\\r\\n" "$1" >&3 && cat <&3')
    reply = dom0.run(["bash", "-c", script, "-", path], timeout=30).text
    head, _, body = reply.partition("\r\n\r\n")
    return int(head.split()[1]), body


def setup_answered(dom0: Dom0, domid: int) -> str:
    """A domain setup through xenstore, as docs/toolstack.md writes one; the answer's status."""
    dom0.run(["xenstore-write", f"/libxl/{domid}/rdm/memory", "1024", f"/libxl/{domid}/rdm/request", "1"])
    dom0.xs_wait(f"/local/domain/{domid}/rmrr/generation", "1", timeout=60)
    status = dom0.xs_read(f"/local/domain/{domid}/rmrr/status")
    assert status is not None
    return status


def wait_active(dom0: Dom0, timeout: float = RESTART_WAIT) -> dict[str, str]:
    """Until the unit is active again (``systemctl start`` waits for READY=1)."""
    dom0.run(["systemctl", "start", UNIT], timeout=timeout)
    return show(dom0)


def journal(dom0: Dom0, *args: str) -> list[dict[str, str]]:
    text = dom0.run(["journalctl", "--no-pager", "-o", "json", "-u", UNIT, *args], timeout=60).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_active_after_xen_and_before_domains_at_boot(systemd_dom0: Dom0) -> None:
    dom0 = systemd_dom0
    rmrrd = show(dom0)
    assert (rmrrd["ActiveState"], rmrrd["SubState"], rmrrd["NRestarts"]) == ("active", "running", "0"), rmrrd
    assert rmrrd["StatusText"].startswith("serving 0 domains; host dom0 with 0 regions, 0 peers"), rmrrd
    assert dom0.run(["systemctl", "is-enabled", UNIT]).text.strip() == "enabled"
    # Debian's /etc/init.d/xen (xenfs, xenstored) was done before rmrrd began; rmrrd was
    # ready (READY=1) before /etc/init.d/xendomains, which starts domains, began.
    xen, xendomains = show(dom0, "xen.service"), show(dom0, "xendomains.service")
    assert xen["ActiveState"] == "active" and xendomains["ActiveState"] == "active"
    assert int(xen["ActiveEnterTimestampMonotonic"]) <= int(rmrrd["InactiveExitTimestampMonotonic"])
    assert int(rmrrd["ActiveEnterTimestampMonotonic"]) <= int(xendomains["InactiveExitTimestampMonotonic"])
    # The installed pieces: the wheel's unit, the virtualenv drop-in, the condition.
    unit = dom0.run(["systemctl", "cat", UNIT]).text
    assert "ExecStart=/opt/rmrrd/bin/rmrrd run --config /etc/rmrrd/rmrrd.yaml" in unit
    assert "ExecCondition=+/bin/grep -q control_d /proc/xen/capabilities" in unit
    assert http_get(dom0, "/healthz") == (200, "ok\n")
    assert setup_answered(dom0, 901) == "ready"


def test_journal_shows_warnings_at_their_priority(systemd_dom0: Dom0) -> None:
    dom0 = systemd_dom0
    warnings = journal(dom0, "-p", "warning")
    # The default sources are dmar and ivrs: QEMU's VT-d gives a DMAR (RMAD in dom0,
    # which rmrrd reads), there is no AMD IOMMU, so no IVRS: one warning, priority 4.
    missing = [entry for entry in warnings if "no IVRS table" in entry["MESSAGE"]]
    assert missing and missing[0]["PRIORITY"] == "4", warnings
    assert all(int(entry["PRIORITY"]) <= 4 for entry in warnings)
    ready = [entry for entry in journal(dom0) if " ready: serving " in entry["MESSAGE"]]
    assert ready and ready[0]["PRIORITY"] == "6"
    assert not any(" ready: serving " in entry["MESSAGE"] for entry in warnings)


def test_reload_of_a_broken_file_fails_and_keeps_serving(systemd_dom0: Dom0) -> None:
    dom0 = systemd_dom0
    before = show(dom0)
    good = dom0.run(["cat", CONFIG]).text
    assert "\n  query_rate: " in good
    dom0.write_file(CONFIG, good.replace("\n  query_rate: ", "\n  query_rat: "))  # a typo
    try:
        refused = dom0.run(["systemctl", "reload", UNIT], timeout=180, check=False)
        assert refused.rc != 0, refused.describe()
        assert "Job for rmrrd.service failed" in refused.stderr.decode(), refused.describe()
        after = show(dom0)
        assert (after["ActiveState"], after["MainPID"]) == ("active", before["MainPID"]), after
        assert re.match(r"reload failed at [\d:]{8}, running the configuration loaded before: "
                        r"/etc/rmrrd/rmrrd\.yaml:\d+: ", after["StatusText"]), after
        status, body = http_get(dom0, "/healthz")
        assert status == 503 and "limits.query_rat: unknown key" in body, body
        assert setup_answered(dom0, 902) == "ready"  # still serving, on the old file
        errors = [entry for entry in journal(dom0, "-p", "err") if "reload failed" in entry["MESSAGE"]]
        assert {entry["PRIORITY"] for entry in errors} == {"3"}, errors
    finally:
        dom0.write_file(CONFIG, good)
    applied = dom0.run(["systemctl", "reload", UNIT], timeout=180, check=False)
    assert applied.ok, applied.describe()
    assert show(dom0)["StatusText"].startswith("serving "), show(dom0)
    assert http_get(dom0, "/healthz") == (200, "ok\n")


def test_a_hung_rmrrd_is_killed_by_the_watchdog_and_restarted(systemd_dom0: Dom0) -> None:
    dom0 = systemd_dom0
    before = show(dom0)
    dom0.run(["kill", "-STOP", before["MainPID"]])
    deadline = time.monotonic() + RESTART_WAIT
    while (now := show(dom0))["MainPID"] in (before["MainPID"], "0") or now["ActiveState"] != "active":
        assert time.monotonic() < deadline, now
        time.sleep(2)
    assert int(now["NRestarts"]) == int(before["NRestarts"]) + 1, now
    lines = [entry["MESSAGE"] for entry in journal(dom0, "--since", "-10min")]
    assert any("Watchdog timeout" in line for line in lines), lines[-20:]
    assert any("Failed with result 'watchdog'" in line for line in lines), lines[-20:]
    assert http_get(dom0, "/healthz") == (200, "ok\n")


def test_stop_exits_0_within_the_bound(systemd_dom0: Dom0) -> None:
    dom0 = systemd_dom0
    wait_active(dom0)
    stopped = dom0.run(["systemctl", "stop", UNIT], timeout=60)
    after = show(dom0)
    assert (after["ActiveState"], after["Result"], after["ExecMainStatus"]) == ("inactive", "success", "0"), after
    # TimeoutStopSec=30s is systemd's bound; rmrrd's own is shutdown_grace_seconds (5 s).
    assert stopped.seconds < 30, stopped.describe()
    assert dom0.xs_read("/tool/rmrrd/status") == "stopped"

