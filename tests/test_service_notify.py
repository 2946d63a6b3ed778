"""sd_notify against ``rmrrd run`` as a subprocess, a datagram socket standing in for systemd."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import trio

import pytest

from support import WAIT
from support.processes import Daemon, NotifySocket, XenstoredProcess, read_key, setup_domain, start_daemon
from rmrrd.app.demo import SEED_DOMAIN
from rmrrd.app.toolstack import write_request
from rmrrd.protocol import STATUS_KEY, answer_path
from rmrrd.xenstore.client import BACKOFF_MAX, open_xenstore

pytestmark = pytest.mark.process

GRACE = 3.0


def _pending_domain(xenstore: Path) -> None:
    async def run() -> None:
        async with open_xenstore(str(xenstore)) as xs:
            await write_request(xs, 7, SEED_DOMAIN)

    trio.run(run)


def test_ready_after_first_reconcile_then_watchdog_then_stopping(
        workdir: Path, daemons: list[Daemon], xenstored_process: XenstoredProcess) -> None:
    xenstored = xenstored_process
    # A request waits in xenstore before rmrrd starts: READY=1 must mean it is answered.
    _pending_domain(xenstored.path)
    daemon = start_daemon(workdir, xenstore=xenstored.path, set_watchdog_pid=True, wait=False,
                          limits={"shutdown_grace_seconds": GRACE}, env={"WATCHDOG_USEC": "200000"})
    daemons.append(daemon)
    notify = daemon.notify
    assert notify is not None
    before_ready = notify.wait_for("READY=1")
    # Nothing but READY (with its STATUS) comes first: no watchdog ping from a
    # daemon that is not serving yet.
    assert len(before_ready) == 1
    ready = before_ready[0].splitlines()
    assert ready[0] == "READY=1"
    assert ready[1].startswith("STATUS=serving 1 domains; host node-a with 2 regions, 1 peers")
    assert read_key(xenstored.path, f"{answer_path(7)}/status") == "ready"
    assert read_key(xenstored.path, STATUS_KEY) == "ready"
    assert daemon.get("/healthz")[0] == 200

    # WATCHDOG_USEC=200000: a ping every 0.1 s; three in a row, nothing else between.
    assert [notify.next_message() for _ in range(3)] == ["WATCHDOG=1"] * 3

    daemon.process.send_signal(signal.SIGTERM)
    after = notify.wait_for("STOPPING=1")
    assert set(after[:-1]) <= {"WATCHDOG=1"}
    assert notify.next_message() == "STATUS=stopping: finishing in-flight answers"
    assert daemon.wait_exit(timeout=GRACE + 10) == 0
    assert "signal SIGTERM: stopping within 3.0 s" in daemon.log()
    assert read_key(xenstored.path, STATUS_KEY) == "stopped"


def test_watchdog_pid_of_another_process_means_no_pings(workdir: Path, daemons: list[Daemon]) -> None:
    daemon = start_daemon(workdir, env={"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    daemons.append(daemon)
    assert daemon.notify is not None and daemon.notify.received[-1].startswith("READY=1")
    daemon.process.send_signal(signal.SIGINT)
    # Had the watchdog been on, pings every 50 ms would come before STOPPING.
    assert daemon.notify.wait_for("STOPPING=1") == ["STOPPING=1"]
    assert daemon.wait_exit() == 0


def test_without_notify_socket_the_daemon_runs_and_stops(workdir: Path, daemons: list[Daemon]) -> None:
    daemon = start_daemon(workdir, notify=False)
    daemons.append(daemon)
    daemon.wait_for_log(" ready: serving 0 domains")
    assert daemon.stop(signal.SIGINT) == 0
    assert "signal SIGINT: stopping" in daemon.log()
    assert "rmrrd stopped" in daemon.log_lines()[-1]


def test_xenstored_killed_and_back(workdir: Path, daemons: list[Daemon], xenstored_process: XenstoredProcess) -> None:
    """Readiness, the connected gauge and STATUS= follow xenstored away and back;
    liveness (/livez, the watchdog) does not, since the loop is alive throughout."""
    xenstored = xenstored_process
    daemon = start_daemon(workdir, xenstore=xenstored.path, set_watchdog_pid=True, env={"WATCHDOG_USEC": "2000000"})
    daemons.append(daemon)
    notify = daemon.notify
    assert notify is not None
    assert daemon.metric("rmrrd_xenstore_connected") == 1

    xenstored.process.kill()
    xenstored.process.wait()
    killed = time.monotonic()
    # The connection's end is seen at once: well within the client's longest wait
    # between reconnect attempts.
    while (health := daemon.get("/healthz"))[0] != 503:
        assert time.monotonic() - killed < BACKOFF_MAX, health
        time.sleep(0.02)
    assert re.fullmatch(rb"xenstore unreachable since [\d:]{8}(, \d+ reconnect attempts failed)?, nothing is "
                        rb"answered until it is back: connection lost: .*\n", health[2]), health
    assert daemon.metric("rmrrd_xenstore_connected") == 0
    assert daemon.metric("rmrrd_xenstore_disconnections_total") == 1
    status = _next_status(notify, lambda text: text.startswith("xenstore unreachable since "))
    assert "nothing is answered until it is back: connection lost" in status
    # The socket is still there, with nobody listening: attempts fail and are counted.
    _wait(lambda: daemon.metric("rmrrd_xenstore_connect_failures_total") >= 2, daemon)
    assert daemon.get("/livez")[:3:2] == (200, b"alive; serving\n")
    assert "WATCHDOG=1" in notify.wait_for("WATCHDOG=1")  # the loop is alive: no restart wanted

    again = XenstoredProcess(xenstored.path)
    try:
        _wait(lambda: daemon.get("/healthz")[:3:2] == (200, b"ok\n"), daemon)
        assert daemon.metric("rmrrd_xenstore_connected") == 1
        assert daemon.metric("rmrrd_xenstore_reconnects_total") == 1
        assert _next_status(notify, lambda text: text.startswith("serving ")) == \
            "serving 0 domains; host node-a with 2 regions, 1 peers"
        # The new xenstored is empty: the reconcile after the reconnect serves it.
        assert setup_domain(again.path, 1).status == "ready"
        assert daemon.stop() == 0
    finally:
        again.stop()


def _next_status(notify: NotifySocket, wanted: Callable[[str], bool]) -> str:
    """The text of the next STATUS= that ``wanted`` accepts (other messages skipped)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for line in notify.next_message(deadline - time.monotonic()).splitlines():
            if line.startswith("STATUS=") and wanted(line[len("STATUS="):]):
                return line[len("STATUS="):]
    raise AssertionError(f"no such STATUS= within {WAIT} s; got {notify.received}")


def _wait(condition: Callable[[], bool], daemon: Daemon) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
