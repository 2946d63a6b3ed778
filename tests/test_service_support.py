"""Running ``rmrrd run`` as systemd does: a subprocess, a notify socket, signals.

No tests here: the helpers the ``test_service_*``, ``test_run_cli_*`` and
``test_prometheus_scrape_*`` modules share.  Each daemon runs in a short directory
under /tmp of its own (unix socket paths are limited to 108 bytes, and a guest's
socket is ``<xenstore socket>.d/<domid>``), with copies of the seed inventories the
test may edit before a SIGHUP.  Its stderr goes to a file the test reads, so what
is asserted is exactly what journald would receive.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from prometheus_helpers import free_port
from rmrrd.daemon.xsutil import read_text
from rmrrd.demo import SEED_DOMAIN, create_domain
from rmrrd.xenstore.client import open_xenstore

REPO = Path(__file__).resolve().parent.parent
INVENTORIES = REPO / "etc" / "inventories"
#: How long a test waits for anything the daemon should do promptly.  A bound for
#: a hang, not a performance claim: the two cores are shared with other suites.
WAIT = 30.0


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rmrrd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config_text(workdir: Path, port: int, *, xenstore: Path, embedded: bool, extra: str = "") -> str:
    """A configuration for the seed hosts: this host node-a, peer node-b."""
    return (
        f"xenstore:\n  path: {xenstore}\n  embedded: {str(embedded).lower()}\n"
        f"host:\n  name: node-a\n  sources: [{workdir / 'node-a.yaml'}]\n"
        f"peers: [{workdir / 'node-b.yaml'}]\n"
        f"metrics:\n  listen: 127.0.0.1:{port}\n" + extra
    )


class NotifySocket:
    """A bound SOCK_DGRAM unix socket, standing in for systemd's ``NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def close(self) -> None:
        self.sock.close()

    def next_message(self, timeout: float = WAIT) -> str:
        self.sock.settimeout(timeout)
        message = self.sock.recv(4096).decode()
        self.received.append(message)
        return message

    def wait_for(self, assignment: str, timeout: float = WAIT) -> list[str]:
        """Messages up to and including the first with ``assignment`` in it."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {assignment} within {timeout} s; got {seen}")
            try:
                message = self.next_message(remaining)
            except TimeoutError:
                continue
            seen.append(message)
            if assignment in message.splitlines():
                return seen


@dataclass
class Daemon:
    """One ``rmrrd run`` subprocess and where to reach it."""

    workdir: Path
    process: subprocess.Popen[bytes]
    port: int
    xenstore: Path
    config: Path
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text()

    def log_lines(self) -> list[str]:
        return self.log().splitlines()

    def wait_for_log(self, needle: str, timeout: float = WAIT, *, after: int = 0) -> str:
        """The first log line containing ``needle`` (from line index ``after``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_lines()[after:]:
                if needle in line:
                    return line
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no log line with {needle!r}; log:\n{self.log()}")

    def get(self, path: str) -> tuple[int, str, bytes]:
        """``GET path`` on the daemon's HTTP listener: (status, content type, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers["Content-Type"], error.read()

    def metric(self, name: str) -> float:
        """One unlabelled sample of the daemon's ``/metrics``, e.g. ``rmrrd_domains``."""
        for line in self.get("/metrics")[2].decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key == name:
                return float(value)
        raise AssertionError(f"no {name} on /metrics")

    def wait_healthy(self, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"rmrrd exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"rmrrd never became healthy:\n{self.log()}")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        """Send ``signum`` and return the exit status (see :meth:`wait_exit`)."""
        self.process.send_signal(signum)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = WAIT) -> int:
        """The exit status; kill the daemon and fail if it takes more than ``timeout``."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"rmrrd did not exit within {timeout} s:\n{self.log()}") from None


def start_daemon(workdir: Path, *, xenstore: Path | None = None, extra_config: str = "",
                 env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 set_watchdog_pid: bool = False, journal: bool = False) -> Daemon:
    """``rmrrd run --config`` on the seed hosts.

    Without ``xenstore`` the daemon runs its embedded simulated xenstored
    (``--simulate``); with one it connects to that socket.  ``set_watchdog_pid``
    sets ``WATCHDOG_PID`` to the daemon's own pid, as systemd does, by exec-ing
    through a shell that exports its own ``$$``.  ``journal`` sets
    ``JOURNAL_STREAM`` to the stderr file's device and inode, as systemd does
    when stderr is the journal.
    """
    for name in ("node-a.yaml", "node-b.yaml"):
        if not (workdir / name).exists():
            shutil.copy(INVENTORIES / name, workdir / name)
    port = free_port()
    socket_path = xenstore or workdir / "xs.sock"
    config = workdir / "rmrrd.yaml"
    config.write_text(config_text(workdir, port, xenstore=socket_path, embedded=False, extra=extra_config))
    stderr = workdir / "rmrrd.log"
    command = [sys.executable, "-m", "rmrrd", "run", "--config", str(config), *args]
    if xenstore is None:
        command.append("--simulate")
    if set_watchdog_pid:
        command = ["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *command]
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")}
    environment.update(env or {})
    with open(stderr, "wb") as out:
        if journal:
            info = os.fstat(out.fileno())
            environment["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                   env=environment, cwd=workdir)
    return Daemon(workdir, process, port, socket_path, config, stderr)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Started daemons go in this list; any still running at the end is killed."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


class XenstoredProcess:
    """``rmrrd xenstored`` alone: the daemon's xenstore when a test must outlive it."""

    def __init__(self, path: Path, *, persist: Path | None = None) -> None:
        """Start it on ``path`` and wait for the socket; ``persist``: its ``--persist`` file."""
        self.path = path
        command = [sys.executable, "-m", "rmrrd", "xenstored", "--socket", str(path)]
        if persist is not None:
            command += ["--persist", str(persist)]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT
        while not path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("rmrrd xenstored did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=WAIT)


@pytest.fixture
def xenstored(workdir: Path) -> Iterator[XenstoredProcess]:
    server = XenstoredProcess(workdir / "xenstored.sock")
    yield server
    server.stop()


# --- scripted xenstore work, run with trio.run from the (blocking) tests ------------


def setup_domain(xenstore: Path, domid: int, keys: dict[str, str] = SEED_DOMAIN) -> dict[str, str]:
    """Create a domain through xenstore and return the daemon's answer."""

    async def run() -> dict[str, str]:
        async with open_xenstore(str(xenstore)) as xs:
            with trio.fail_after(WAIT):
                return await create_domain(xs, domid, keys)

    return trio.run(run)


def read_key(xenstore: Path, path: str) -> str | None:
    async def run() -> str | None:
        async with open_xenstore(str(xenstore)) as xs:
            return await read_text(xs, path)

    return trio.run(run)
