"""A warm Python for dom0: imports rmrrd, trio and pytest once, forks a child per command.

Under emulation a 64-bit PV dom0 pays dearly for every page fault and system call, so
``import trio`` alone takes about ten seconds there; rmrrd's commands and the pytest
runs would spend most of the tier importing.  This process imports them once and
serves on ``/run/testbed/python.sock``: the agent sends a request line (argv as
``python3`` takes it: ``-m MODULE ...``, ``-c CODE ...`` or ``SCRIPT ...``; env, cwd) with the command's stdin, stdout and stderr as
passed file descriptors; a forked child runs the module or script as ``python3``
would (``runpy``, ``sys.argv`` set, its own session), and the agent gets back
``{"pid": N}`` at once and ``{"status": S}`` when the child ends (a negative S: killed
by signal -S).  The child is a normal process: it has its own pid, handles its own
signals and exits with its own status.
"""

from __future__ import annotations

import array
import json
import os
import runpy
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only
    from typing import Any

SOCKET = "/run/testbed/python.sock"
PRELOAD = ("trio", "yaml", "prometheus_client", "h11", "pytest", "_pytest.python", "_pytest.fixtures",
           "_pytest.terminal", "_pytest.runner", "_pytest.main",
           "rmrrd.cli", "rmrrd.cli.check", "rmrrd.cli.inventory", "rmrrd.cli.run",
           "rmrrd.app.service", "rmrrd.xenstore.client", "rmrrd.xenstore.server")


def child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become the command and never return."""
    try:
        os.setsid()
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
        for name in os.listdir("/proc/self/fd"):  # the listener, other commands' connections
            if int(name) > 2:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.update(request.get("env", {}))
        if request.get("cwd"):
            os.chdir(request["cwd"])
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # line-buffered, as python3's own (3.9+): a
        # program that prints to stderr and then calls exec (rmrrd-xl) loses nothing
        argv = list(request["argv"])
        if argv[:1] == ["-c"]:
            sys.argv = ["-c", *argv[2:]]
            sys.path.insert(0, "")
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        elif argv[:1] == ["-m"]:
            sys.argv = [argv[1], *argv[2:]]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv
            sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def serve(conn: socket.socket) -> None:
    with conn:
        message, fds, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(8 * array.array("i").itemsize))
        received = array.array("i")
        for level, kind, data in fds:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received.frombytes(data[: len(data) - len(data) % received.itemsize])
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            conn.close()
            child(request, list(received))
        for fd in received:
            os.close(fd)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        conn.sendall(json.dumps({"status": code}).encode() + b"\n")


def main() -> None:
    for name in PRELOAD:
        __import__(name)
    os.makedirs(os.path.dirname(SOCKET), exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial = SOCKET + ".new"
    if os.path.exists(partial):
        os.unlink(partial)
    listener.bind(partial)
    listener.listen(16)
    os.rename(partial, SOCKET)  # the socket appears only once it accepts
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
