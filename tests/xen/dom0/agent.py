"""The command agent of the real-Xen test dom0: the host's hands inside the machine.

It runs in dom0 (started by ``/init``) and talks to the host over a virtio-serial
port named ``org.rmrrd.testbed``.  The protocol is one JSON object per line, both
ways:

* the agent announces itself once: ``{"hello": {"pid": ..., "uptime": ...}}``;
* the host sends ``{"id": N, "argv": [...]}``, ``{"id": N, "sh": "script"}`` or
  ``{"id": N, "python": [...]}`` (arguments as ``python3`` takes them, run by the warm
  interpreter of ``pyzygote.py`` once it is up), with optional ``"stdin"`` (base64),
  ``"timeout"`` (seconds), ``"env"``, ``"cwd"`` and ``"output"`` (a file that gets the
  command's stdout and stderr instead of the reply: a daemon's log, read while it runs);
* the agent answers ``{"id": N, "rc": ..., "stdout": b64, "stderr": b64,
  "timed_out": bool, "seconds": float, "error": str | null}``.

Each command runs in a thread of its own and a session of its own, so several run at
once and a timeout kills the command's whole process group.  Only the standard library
is used: this is the first Python to start in dom0, and every import costs seconds
under emulation.
"""

from __future__ import annotations

import array
import base64
import json
import os
import signal
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: nothing more to import at run time
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any

    Message = dict[str, Any]

PORT_NAME = "org.rmrrd.testbed"
ZYGOTE = "/run/testbed/python.sock"
ZYGOTE_EXIT = "/run/testbed/pyzygote.exit"
"""Written by /init if the warm interpreter ends (it never should)."""
OUTPUT_LIMIT = 8 << 20
"""Bytes kept of each output stream; the rest is dropped with a note, not the agent."""
KILL_GRACE = 5.0


def find_port() -> str:
    """The device node of the testbed's virtio-serial port (no udev in this dom0)."""
    base = "/sys/class/virtio-ports"
    for _ in range(600):
        for entry in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            try:
                with open(f"{base}/{entry}/name") as f:
                    if f.read().strip() == PORT_NAME:
                        return f"/dev/{entry}"
            except OSError:
                continue
        time.sleep(0.05)
    raise SystemExit(f"agent: no virtio port named {PORT_NAME} under {base}")


class Port:
    """The port as a line reader and a locked line writer."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.lock = threading.Lock()

    def lines(self) -> Iterator[bytes]:
        partial: list[bytes] = []  # the start of a line whose end has not come yet
        while True:
            data = os.read(self.fd, 1 << 20)
            if not data:  # the host end is not connected: wait for it
                time.sleep(0.1)
                continue
            *complete, rest = data.split(b"\n")
            if complete:
                complete[0] = b"".join(partial) + complete[0]
                partial = []
                yield from complete
            partial.append(rest)

    def send(self, message: Message) -> None:
        data = json.dumps(message).encode() + b"\n"
        with self.lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]


class Started:
    """A started command: its pid, the agent's ends of its pipes (None where its output
    goes to a file), and how to wait for it."""

    def __init__(self, pid: int, stdin: int, stdout: int | None, stderr: int | None,
                 wait: Callable[[], int]) -> None:
        self.pid, self.stdin, self.stdout, self.stderr, self.wait = pid, stdin, stdout, stderr, wait


def _pipes(output: str | None) -> tuple[list[int], tuple[int, int | None, int | None]]:
    """stdin, stdout, stderr: (the command's ends, the agent's ends)."""
    stdin_r, stdin_w = os.pipe()
    if output is not None:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        return [stdin_r, fd, os.dup(fd)], (stdin_w, None, None)
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    return [stdin_r, stdout_w, stderr_w], (stdin_w, stdout_r, stderr_r)


def _close(fds: Sequence[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def start_process(argv: list[str], env: dict[str, str], cwd: str | None, output: str | None) -> Started:
    theirs, ours = _pipes(output)
    try:
        process = subprocess.Popen(argv, stdin=theirs[0], stdout=theirs[1], stderr=theirs[2], env=env, cwd=cwd,
                                   start_new_session=True)
    except OSError:
        _close(ours)
        raise
    finally:
        _close(theirs)
    return Started(process.pid, ours[0], ours[1], ours[2], process.wait)


def start_python(args: list[str], env: dict[str, str], cwd: str | None, output: str | None) -> Started:
    """A Python command: a fork of the warm interpreter, once it is up; a cold
    ``python3`` if it failed (``/run/testbed/pyzygote.log`` says why)."""
    while not os.path.exists(ZYGOTE):
        if os.path.exists(ZYGOTE_EXIT):
            return start_process(["python3", *args], env, cwd, output)
        time.sleep(0.2)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(ZYGOTE)
    theirs, ours = _pipes(output)
    request = json.dumps({"argv": args, "env": env, "cwd": cwd}).encode()
    try:
        conn.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", theirs))])
    except OSError:
        _close(ours)
        raise
    finally:
        _close(theirs)
    replies = conn.makefile("rb")
    pid = json.loads(replies.readline())["pid"]

    def wait() -> int:
        line = replies.readline()
        conn.close()
        return json.loads(line)["status"] if line else -signal.SIGKILL

    return Started(pid, ours[0], ours[1], ours[2], wait)


def _drain(fd: int, into: list[bytes]) -> None:
    size = 0
    with open(fd, "rb", buffering=0) as stream:
        while chunk := stream.read(1 << 16):
            if size < OUTPUT_LIMIT:
                into.append(chunk)
            size += len(chunk)
    if size > OUTPUT_LIMIT:
        into.append(b"\n[agent: output cut at %d of %d bytes]\n" % (OUTPUT_LIMIT, size))


def _feed(fd: int, data: bytes) -> None:
    try:
        with open(fd, "wb", buffering=0) as stream:
            stream.write(data)
    except BrokenPipeError:
        pass


def run(request: Message) -> Message:
    """Carry out one command request and build its reply."""
    stdin = base64.b64decode(request["stdin"]) if request.get("stdin") is not None else b""
    timeout = float(request.get("timeout") or 60)
    env = dict(os.environ, **request.get("env", {}))
    started_at = time.monotonic()
    reply = {"id": request["id"], "rc": None, "stdout": "", "stderr": "", "timed_out": False, "error": None}
    try:
        if "python" in request:
            started = start_python(request["python"], env, request.get("cwd"), request.get("output"))
        else:
            argv = request["argv"] if "argv" in request else ["/bin/sh", "-c", request["sh"]]
            started = start_process(argv, env, request.get("cwd"), request.get("output"))
    except OSError as exc:
        reply["error"] = f"cannot start the command: {exc}"
        reply["seconds"] = time.monotonic() - started_at
        return reply
    out: list[bytes] = []
    err: list[bytes] = []
    threads = [threading.Thread(target=_feed, args=(started.stdin, stdin), daemon=True)]
    threads += [threading.Thread(target=_drain, args=(fd, into), daemon=True)
                for fd, into in ((started.stdout, out), (started.stderr, err)) if fd is not None]
    for thread in threads:
        thread.start()
    status: list[int] = []
    waiter = threading.Thread(target=lambda: status.append(started.wait()), daemon=True)
    waiter.start()
    waiter.join(timeout)
    for thread in threads:
        thread.join(max(0.0, timeout - (time.monotonic() - started_at)))
    if waiter.is_alive() or any(thread.is_alive() for thread in threads):
        reply["timed_out"] = True
        try:
            os.killpg(started.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        waiter.join(KILL_GRACE)
        for thread in threads:
            thread.join(KILL_GRACE)
        if any(thread.is_alive() for thread in threads):  # a process that left the group holds a pipe
            err.append(b"\n[agent: output may be incomplete: a process outside the command's group holds its pipes]\n")
    reply.update(rc=status[0] if status else None, stdout=base64.b64encode(b"".join(out)).decode(),
                 stderr=base64.b64encode(b"".join(err)).decode(), seconds=time.monotonic() - started_at)
    return reply


def serve(port: Port, line: bytes) -> None:
    request = None
    try:
        request = json.loads(line)
        reply = run(request)
    except Exception as exc:  # a malformed request must not take the agent down
        reply = {"id": request.get("id") if isinstance(request, dict) else None, "rc": None,
                 "error": f"agent: {type(exc).__name__}: {exc}", "stdout": "", "stderr": "",
                 "timed_out": False, "seconds": 0.0}
    port.send(reply)


def main() -> None:
    port = Port(find_port())
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    port.send({"hello": {"pid": os.getpid(), "uptime": uptime}})
    for line in port.lines():
        if line.strip():
            threading.Thread(target=serve, args=(port, line), daemon=True).start()


if __name__ == "__main__":
    main()
