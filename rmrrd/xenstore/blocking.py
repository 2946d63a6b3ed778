"""A small blocking xenstore client over the sans-IO codec, for short-lived commands.

``rmrrd check`` and the toolstack hooks each make a handful of requests and exit.
For them the trio client (``client.py``) costs more to import than everything else
they do, so they use this one: one connection, one request at a time, a deadline for
each wait, watch events kept in order until asked for.  No reconnects: a command
that loses xenstore fails and says so.  It speaks the same wire format through the
same codec (``wire.py``), on a unix socket or the xenbus device.
"""

from __future__ import annotations

import os
import select
import socket
import stat
import time
from collections import deque
from types import TracebackType

from rmrrd.xenstore.locate import locate_xenstore
from rmrrd.xenstore.wire import (
    Decoder,
    NoEntry,
    Op,
    Packet,
    RemoteProtocolError,
    XenstoreError,
    encode,
    error_for,
    join_args,
    split_args,
    validate_path,
)


class XenstoreUnavailable(XenstoreError):
    """xenstore could not be reached, or went away, or did not answer in time."""

    def __init__(self, message: str) -> None:
        super().__init__("EIO", message)
        self.message = message

    def __str__(self) -> str:
        return self.message  # the errno name says nothing more to a user here


class BlockingXenstore:
    """One connection to xenstored; every call blocks until the answer or ``timeout``.

    Use as a context manager; ``path`` as :func:`locate_xenstore` takes it.  Raises
    :class:`XenstoreUnavailable` when it cannot connect.
    """

    def __init__(self, path: str | None = None, *, timeout: float = 10.0) -> None:
        self.where = locate_xenstore(path)
        self.timeout = timeout
        self._decoder = Decoder()
        self._events: deque[tuple[str, str]] = deque()
        self._req_id = 0
        self._sock: socket.socket | None = None
        try:
            if stat.S_ISCHR(os.stat(self.where).st_mode):
                self._fd = os.open(self.where, os.O_RDWR | os.O_CLOEXEC)
            else:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(timeout)
                self._sock.connect(self.where)
                self._fd = self._sock.fileno()
        except OSError as exc:
            if self._sock is not None:
                self._sock.close()
            raise XenstoreUnavailable(f"cannot connect to xenstored at {self.where}: {exc.strerror or exc}") from None

    def __enter__(self) -> BlockingXenstore:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        else:
            os.close(self._fd)

    # -- the wire ------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                # The xenbus device takes one message per write; a socket may take less.
                sent = self._sock.send(view) if self._sock is not None else os.write(self._fd, view)
                view = view[sent:]
        except OSError as exc:
            raise XenstoreUnavailable(f"xenstored at {self.where}: {exc.strerror or exc}") from None

    def _receive(self, deadline: float) -> Packet | None:
        """The next packet, or None once ``deadline`` (``time.monotonic``) has passed."""
        while (packet := self._decoder.next_packet()) is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                return None
            try:
                data = os.read(self._fd, 65536)
            except OSError as exc:
                raise XenstoreUnavailable(f"xenstored at {self.where}: {exc.strerror or exc}") from None
            if not data:
                raise XenstoreUnavailable(f"xenstored at {self.where} closed the connection")
            self._decoder.feed(data)
        return packet

    def _keep_event(self, packet: Packet) -> None:
        parts = split_args(packet.payload)
        if len(parts) < 2:
            raise RemoteProtocolError(f"watch event with {len(parts)} strings")
        self._events.append((parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace")))

    def request(self, op: Op, payload: bytes) -> bytes:
        """Send one request and return its reply payload; an error reply raises its errno's error."""
        self._req_id += 1
        self._send(encode(Packet(op, self._req_id, 0, payload)))
        deadline = time.monotonic() + self.timeout
        while True:
            packet = self._receive(deadline)
            if packet is None:
                raise XenstoreUnavailable(f"xenstored at {self.where} did not answer {op.name} "
                                          f"within {self.timeout:g} s")
            if packet.op is Op.WATCH_EVENT:
                self._keep_event(packet)
            elif packet.req_id == self._req_id:
                if packet.op is Op.ERROR:
                    raise error_for(split_args(packet.payload)[0].decode("ascii", "replace"))
                return packet.payload

    # -- operations ----------------------------------------------------------------

    def read(self, path: str) -> bytes:
        validate_path(path, special_ok=False)
        return self.request(Op.READ, join_args(path.encode()))

    def read_text(self, path: str) -> str | None:
        """A node's value as text (undecodable bytes replaced), or None if it does not exist."""
        try:
            return self.read(path).decode("ascii", "replace")
        except NoEntry:
            return None

    def write(self, path: str, value: str) -> None:
        validate_path(path, special_ok=False)
        self.request(Op.WRITE, join_args(path.encode(), value.encode(), trailing_nul=False))

    def rm(self, path: str) -> None:
        validate_path(path, special_ok=False)
        self.request(Op.RM, join_args(path.encode()))

    def directory(self, path: str) -> list[str]:
        validate_path(path, special_ok=False)
        return [name.decode("ascii", "replace") for name in split_args(self.request(Op.DIRECTORY,
                                                                                 join_args(path.encode())))]

    def read_list(self, path: str) -> list[str]:
        """The values of a numbered list node (``conflict/0``, ``conflict/1``...), in order."""
        try:
            names = self.directory(path)
        except NoEntry:
            return []
        values = (self.read_text(f"{path}/{name}") for name in sorted(names, key=lambda name: (len(name), name)))
        return [value for value in values if value is not None]

    def watch(self, path: str, token: str) -> None:
        """Watch ``path``; xenstored sends an initial event at once, then one per change."""
        validate_path(path, special_ok=True)
        self.request(Op.WATCH, join_args(path.encode(), token.encode()))

    def unwatch(self, path: str, token: str) -> None:
        self.request(Op.UNWATCH, join_args(path.encode(), token.encode()))

    def next_event(self, deadline: float) -> tuple[str, str] | None:
        """The next watch event (path, token), or None once ``deadline`` (monotonic) passes."""
        while not self._events:
            packet = self._receive(deadline)
            if packet is None:
                return None
            if packet.op is not Op.WATCH_EVENT:
                raise RemoteProtocolError(f"unexpected {packet.op.name} reply while waiting for a watch event")
            self._keep_event(packet)
        return self._events.popleft()
