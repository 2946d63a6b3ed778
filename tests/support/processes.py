"""The one subprocess harness: ``rmrrd run`` and ``rmrrd xenstored`` as real processes.

Each daemon runs in a short directory under /tmp of its own (a unix socket path is
limited to 108 bytes, and a guest's socket is ``<xenstore socket>.d/<domid>``), with
copies of the seed inventories the test may edit before a SIGHUP.

Nothing here polls.  A child's stdout and stderr go through a pipe that a thread
reads line by line (:class:`LogTail`), keeping every line in order and in a file;
waiting for a log line is waiting for that line to be written.  ``rmrrd run`` is
ready when it says ``READY=1`` on a notify socket of the harness, as systemd hears
it; ``rmrrd xenstored`` when it logs that it listens.  What is asserted on is exactly
what journald would receive.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import pytest
import trio

from support import INVENTORIES, SEED_DOMAIN, WAIT
from support.prometheus import free_port
from support.xs_tools import Xenstore
from rmrrd.xenstore.ops import read_text
from rmrrd.app.toolstack import create_domain
from rmrrd.protocol import Answer
from rmrrd.xenstore.client import open_xenstore


T = TypeVar("T")


def rmrrd_argv(*args: str) -> list[str]:
    """The rmrrd command line with this interpreter (the venv's, where rmrrd is installed)."""
    return [sys.executable, "-m", "rmrrd", *args]


class LogTail:
    """A child's output, read from a pipe by a thread: kept, saved, waited for."""

    def __init__(self, stream: IO[bytes], path: Path) -> None:
        self.path = path
        self._lines: list[str] = []
        self._closed = False
        self._changed = threading.Condition()
        saved = open(path, "w")  # now, so the next process in this directory picks another name
        self._thread = threading.Thread(target=self._read, args=(stream, saved), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes], saved: IO[str]) -> None:
        with stream, saved:
            for raw in stream:
                line = raw.decode(errors="replace").rstrip("\n")
                saved.write(line + "\n")
                saved.flush()
                with self._changed:
                    self._lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def lines(self) -> list[str]:
        with self._changed:
            return list(self._lines)

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines())

    def wait_for(self, needle: str, *, after: int = 0, timeout: float = WAIT) -> str:
        """The first line containing ``needle`` from line index ``after``, once written."""
        deadline = time.monotonic() + timeout
        with self._changed:
            seen = after
            while True:
                for line in self._lines[seen:]:
                    if needle in line:
                        return line
                seen = max(seen, len(self._lines))
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    why = "the process exited" if self._closed else f"not within {timeout} s"
                    raise AssertionError(f"no log line with {needle!r} ({why}); log:\n{self.text()}")
                self._changed.wait(remaining)

    def wait_closed(self, timeout: float = WAIT) -> None:
        """Until the child has closed its end (it exited): every line is in."""
        self._thread.join(timeout)


class NotifySocket:
    """A bound SOCK_DGRAM unix socket, standing in for systemd's ``NOTIFY_SOCKET``.

    Every message received is kept in :attr:`received`, in order, whoever waited.
    """

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


def _spawn(command: list[str], workdir: Path, name: str, env: Mapping[str, str], *,
           journal: bool = False, preexec_fn: Callable[[], None] | None = None
           ) -> tuple[subprocess.Popen[bytes], LogTail]:
    """Start ``command`` with stdout and stderr on one pipe read by a :class:`LogTail`.

    ``journal`` sets ``JOURNAL_STREAM`` to that pipe's device and inode, as systemd
    does when stderr is the journal; ``preexec_fn`` runs in the child before it
    execs (a resource limit, as a unit's ``LimitNOFILE=`` sets one).
    """
    read_end, write_end = os.pipe()
    environment = dict(env)
    if journal:
        info = os.fstat(write_end)
        environment["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end,
                                   env=environment, cwd=workdir, preexec_fn=preexec_fn)
    finally:
        os.close(write_end)
    return process, LogTail(os.fdopen(read_end, "rb"), _fresh(workdir, name, ".log"))


def _stop(process: subprocess.Popen[bytes], signum: int, timeout: float, what: str) -> int:
    if process.poll() is None:
        process.send_signal(signum)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{what} did not exit within {timeout} s of {signal.Signals(signum).name}") from None


def _fresh(workdir: Path, stem: str, suffix: str = "") -> Path:
    """``workdir/stem<suffix>``, or ``stem-2``, ``stem-3``... when a process started
    before in this directory (a restart) has it."""
    path, n = workdir / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = workdir / f"{stem}-{n}{suffix}"
    return path


def _clean_environment() -> dict[str, str]:
    """This environment without what systemd would set for the test process itself."""
    return {key: value for key, value in os.environ.items()
            if key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "XENSTORED_PATH")}


def run_to_end(workdir: Path, argv: list[str], *, timeout: float = 60) -> tuple[int, list[str]]:
    """Run ``argv`` until it exits, its output the journal stream (as systemd runs a
    service); its exit status and every line it wrote."""
    process, output = _spawn(argv, workdir, "run", _clean_environment(), journal=True)
    try:
        status = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{argv!r} did not exit within {timeout} s:\n{output.text()}") from None
    output.wait_closed()
    return status, output.lines()


# --- rmrrd xenstored ------------------------------------------------------------------------------

class XenstoredProcess:
    """``rmrrd xenstored``: a xenstore that outlives the daemon, or on which none answers."""

    def __init__(self, path: Path, *, persist: Path | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        """Start it on ``path``; return once it logs that it listens."""
        self.path = path
        self.xs = Xenstore(path)
        command = rmrrd_argv("xenstored", "--socket", str(path))
        if persist is not None:
            command += ["--persist", str(persist)]
        self.process, self.log = _spawn(command, path.parent, f"xenstored-{path.name}", _clean_environment(),
                                        preexec_fn=preexec_fn)
        self.log.wait_for(f"simulated xenstored on {path}")

    def stop(self) -> None:
        if self.process.poll() is None:
            _stop(self.process, signal.SIGTERM, WAIT, "rmrrd xenstored")


@dataclass
class GuestFlood:
    """``support/guest_flood.py`` running: hostile guests in a process of their own."""

    process: subprocess.Popen[bytes]
    log: LogTail

    def stop(self) -> None:
        """Kill it (it never exits by itself) and read its last lines."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.wait_closed()


def start_guest_flood(workdir: Path, xenstore: Path, domids: list[int]) -> GuestFlood:
    """Guests ``domids`` (introduced already) flooding the xenstored at ``xenstore``,
    at the lowest CPU priority: on a host a guest's CPU is its own, not dom0's."""
    command = ["nice", "-n", "19", sys.executable, str(Path(__file__).with_name("guest_flood.py")),
               str(xenstore), *map(str, domids)]
    return GuestFlood(*_spawn(command, workdir, "guest-flood", _clean_environment()))


# --- rmrrd run ------------------------------------------------------------------------------------

def config_text(workdir: Path, port: int, *, xenstore: Path, embedded: bool = False,
                limits: Mapping[str, int | float] | None = None, log_level: str | None = None,
                extra: str = "") -> str:
    """A configuration for the seed hosts: this host node-a, peer node-b, from ``workdir``."""
    text = (f"xenstore:\n  path: {xenstore}\n  embedded: {str(embedded).lower()}\n"
            f"host:\n  name: node-a\n  sources: [{workdir / 'node-a.yaml'}]\n"
            f"peers: [{workdir / 'node-b.yaml'}]\n"
            f"metrics:\n  listen: 127.0.0.1:{port}\n")
    if log_level is not None:
        text += f"log:\n  level: {log_level}\n"
    if limits:
        text += "limits:\n" + "".join(f"  {key}: {value}\n" for key, value in limits.items())
    return text + extra


def copy_inventories(workdir: Path) -> None:
    """The seed inventories into ``workdir``, where a test may edit them."""
    for name in ("node-a.yaml", "node-b.yaml"):
        if not (workdir / name).exists():
            shutil.copy(INVENTORIES / name, workdir / name)


@dataclass
class Daemon:
    """One ``rmrrd run`` process and where to reach it."""

    workdir: Path
    process: subprocess.Popen[bytes]
    port: int
    xenstore: Path
    config: Path
    output: LogTail
    notify: NotifySocket | None
    logs_info: bool = True
    """Whether its log level lets the ``ready`` line through (info or debug)."""
    xs: Xenstore = field(init=False)

    def __post_init__(self) -> None:
        self.xs = Xenstore(self.xenstore)

    def log(self) -> str:
        return self.output.text()

    def log_lines(self) -> list[str]:
        return self.output.lines()

    def wait_for_log(self, needle: str, timeout: float = WAIT, *, after: int = 0) -> str:
        """The first log line containing ``needle`` (from line index ``after``), once written."""
        return self.output.wait_for(needle, after=after, timeout=timeout)

    def wait_ready(self, timeout: float = WAIT) -> None:
        """Until ``READY=1``: the first reconciliation has answered everything pending.

        Then, when the log level shows it, until the ``ready`` line the daemon logs
        right after: the log arrives through another pipe, and a test counting log
        lines from now on must not count the start's.
        """
        assert self.notify is not None, "started without a notify socket: wait for a log line instead"
        if not any("READY=1" in message.splitlines() for message in self.notify.received):
            self.notify.wait_for("READY=1", timeout)
        if self.logs_info:
            self.wait_for_log(" ready: serving ", timeout)

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

    def stop(self, signum: int = signal.SIGTERM, timeout: float = WAIT) -> int:
        """Send ``signum`` and return the exit status (see :meth:`wait_exit`)."""
        self.process.send_signal(signum)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = WAIT) -> int:
        """The exit status, every log line read; kill and fail after ``timeout``."""
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"rmrrd did not exit within {timeout} s:\n{self.log()}") from None
        self.output.wait_closed()
        return status

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.notify is not None:
            self.notify.close()


def start_daemon(workdir: Path, *, xenstore: Path | None = None, limits: Mapping[str, int | float] | None = None,
                 log_level: str | None = None, extra_config: str = "", env: Mapping[str, str] | None = None,
                 args: tuple[str, ...] = (), notify: bool = True, set_watchdog_pid: bool = False,
                 journal: bool = False, wait: bool = True) -> Daemon:
    """``rmrrd run --config`` on the seed hosts; with ``wait``, return once it is ready.

    Without ``xenstore`` the daemon runs its embedded simulated xenstored
    (``--simulate``); with one it connects to that socket.  ``notify`` gives it a
    ``NOTIFY_SOCKET`` of the harness (readiness is its ``READY=1``); ``env`` may add
    ``WATCHDOG_USEC`` and the like.  ``set_watchdog_pid`` sets ``WATCHDOG_PID`` to the
    daemon's own pid, as systemd does, by exec-ing through a shell that exports its
    own ``$$``.  ``journal`` makes its stderr the journal stream, as systemd does.
    """
    copy_inventories(workdir)
    port = free_port()
    socket_path = xenstore or workdir / "xs.sock"
    config = workdir / "rmrrd.yaml"
    config.write_text(config_text(workdir, port, xenstore=socket_path, limits=limits, log_level=log_level,
                                  extra=extra_config))
    command = rmrrd_argv("run", "--config", str(config), *args)
    if xenstore is None:
        command.append("--simulate")
    if set_watchdog_pid:
        command = ["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *command]
    environment = _clean_environment()
    notify_socket = NotifySocket(_fresh(workdir, "notify")) if notify else None
    if notify_socket is not None:
        environment["NOTIFY_SOCKET"] = str(notify_socket.path)
    environment.update(env or {})
    process, output = _spawn(command, workdir, "rmrrd", environment, journal=journal)
    levels = [log_level, *re.findall(r"^  level: (\w+)$", extra_config, re.M)]
    if "--log-level" in args:
        levels.append(args[args.index("--log-level") + 1])
    quiet = [level for level in levels if level is not None][-1:] in (["warning"], ["error"])
    daemon = Daemon(workdir, process, port, socket_path, config, output, notify_socket, logs_info=not quiet)
    if wait and notify_socket is not None:
        daemon.wait_ready()
    return daemon


# --- fixtures (conftest.py makes them available) -----------------------------------------------------

@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory of its own under /tmp (unix socket paths are limited)."""
    path = Path(tempfile.mkdtemp(prefix="rmrrd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _cleaned(cleanup: Callable[[T], None]) -> Iterator[list[T]]:
    """A list for the test to append what it starts to; ``cleanup`` each at the end."""
    started: list[T] = []
    yield started
    for item in started:
        cleanup(item)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Started daemons go in this list; any still running at the end is killed."""
    yield from _cleaned(Daemon.close)


@pytest.fixture
def servers() -> Iterator[list[XenstoredProcess]]:
    """Started xenstoreds go in this list; any still running at the end is stopped."""
    yield from _cleaned(XenstoredProcess.stop)


@pytest.fixture
def xenstored_process(workdir: Path) -> Iterator[XenstoredProcess]:
    """``rmrrd xenstored`` on its own, for as long as the test."""
    server = XenstoredProcess(workdir / "xenstored.sock")
    yield server
    server.stop()


@pytest.fixture
def daemon_limits() -> Mapping[str, int | float]:
    """``limits.*`` of :func:`rmrrd_daemon`; a test module overrides this fixture."""
    return {}


@pytest.fixture
def rmrrd_daemon(workdir: Path, daemon_limits: Mapping[str, int | float]) -> Iterator[Daemon]:
    """A fresh ``rmrrd run --simulate`` per test (debug log), stopped with SIGTERM after.

    A fresh one per test, so what one test assigns never shares a region in another;
    a daemon that does not exit 0 on SIGTERM fails the test that used it.
    """
    daemon = start_daemon(workdir, limits=daemon_limits, log_level="debug")
    try:
        yield daemon
        status = daemon.stop()
        assert status == 0, f"rmrrd exited {status} on SIGTERM:\n{daemon.log()}"
    finally:
        daemon.close()


# --- scripted xenstore work, run with trio.run from the (blocking) tests --------------------------------

def setup_domain(xenstore: Path, domid: int, keys: dict[str, str] = SEED_DOMAIN) -> Answer:
    """Create a domain through xenstore and return the daemon's answer."""

    async def run() -> Answer:
        async with open_xenstore(str(xenstore)) as xs:
            with trio.fail_after(WAIT):
                return await create_domain(xs, domid, keys)

    return trio.run(run)


def read_key(xenstore: Path, path: str) -> str | None:
    async def run() -> str | None:
        async with open_xenstore(str(xenstore)) as xs:
            return await read_text(xs, path)

    return trio.run(run)
