"""The host end of the dom0 command agent's protocol (``dom0/agent.py`` describes it).

QEMU connects the virtio-serial port to a unix socket the host listens on; requests
go out as JSON lines, a reader thread matches replies to them by id, so any number of
commands can be in flight from any number of threads.  When the connection ends (QEMU
gone, dom0 crashed), every waiting caller is told at once.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
from typing import Any


class ChannelClosed(RuntimeError):
    """The agent's connection ended before the answer came."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._pending: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._hello = threading.Event()
        self.hello_info: dict[str, Any] = {}
        self.closed: str | None = None
        self._reader = threading.Thread(target=self._read, name="testbed-channel", daemon=True)
        self._reader.start()

    def wait_hello(self, timeout: float) -> bool:
        """Whether the agent announced itself within ``timeout`` seconds."""
        return self._hello.wait(timeout)

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request; its reply.  TimeoutError if none comes in ``timeout`` s."""
        event, box = threading.Event(), list[dict[str, Any]]()
        with self._lock:
            if self.closed is not None:
                raise ChannelClosed(self.closed)
            request_id = next(self._ids)
            self._pending[request_id] = (event, box)
        data = json.dumps({**request, "id": request_id}).encode() + b"\n"
        try:
            with self._send_lock:
                self._sock.sendall(data)
            if not event.wait(timeout):
                raise TimeoutError(f"no answer from the dom0 agent within {timeout:.0f} s")
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        if not box:
            raise ChannelClosed(self.closed or "connection closed")
        return box[0]

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _read(self) -> None:
        partial: list[bytes] = []  # the start of a line whose end has not come yet
        reason = "the dom0 agent's connection closed"
        try:
            while True:
                data = self._sock.recv(1 << 20)
                if not data:
                    break
                *complete, rest = data.split(b"\n")
                if complete:
                    complete[0] = b"".join(partial) + complete[0]
                    partial = []
                for line in complete:
                    self._dispatch(json.loads(line))
                partial.append(rest)
        except (OSError, ValueError) as exc:
            reason = f"the dom0 agent's connection broke: {exc}"
        with self._lock:
            self.closed = reason
            pending, self._pending = self._pending, {}
        for event, _ in pending.values():
            event.set()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "hello" in message:
            self.hello_info = message["hello"]
            self._hello.set()
            return
        with self._lock:
            waiter = self._pending.get(message.get("id", -1))
        if waiter is not None:
            waiter[1].append(message)
            waiter[0].set()
