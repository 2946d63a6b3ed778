"""One live connection to xenstored: a reader task, a writer, replies matched by req_id.

The client (``client.py``) makes a new ``Connection`` after every reconnect; this
module knows nothing about reconnecting, watches or operations.

Why the shape (each choice measured with ``bench/bench_xenstore.py``, see
``docs/xenstore-client.md``):

* **A raw non-blocking descriptor, not a trio stream.**  A unix socket or the
  xenbus device, driven with ``trio.lowlevel.wait_readable``/``wait_writable``.
  trio's SocketStream adds a scheduler pass per send and per receive; for a
  request/reply protocol that is most of the cost of a round trip.
* **Requests are sent by their caller when the line is idle.**  The caller encodes
  its request (so a bad one fails there, as LocalProtocolError) and, if no write is
  under way, hands it to the kernel at once with a non-blocking ``send``: no await,
  so a cancelled caller never leaves half a message behind.  Whatever the kernel
  does not take goes to a buffer that one writer task drains; requests made while
  it drains pile up behind it and go out together, so pipelined requests coalesce
  into few syscalls.
* **One reader task.**  It decodes every complete packet of each chunk and hands
  each reply straight to the task waiting for it with ``trio.lowlevel.reschedule``:
  no per-request Event or channel.  Watch events go to a callback.
* **Failure is loud and immediate.**  When the stream ends or breaks, every waiting
  request gets ConnectionLost at once, never a hang.
* **Through the xenbus device, one request at a time.**  Linux's driver queues each
  request with its body still in the file's one message buffer, which the next
  ``write()`` overwrites (``xenbus_dev_request_and_reply`` in
  drivers/xen/xenbus/xenbus_xs.c keeps a pointer into it): pipelined requests reach
  xenstored with each other's bodies.  Seen on the real Xen testbed; libxenstore
  never has two requests outstanding on a handle, so it never meets this.

Does the hand scheduling earn its complexity?  ``bench/bench_xenstore.py`` runs the
same client with this connection swapped for the obvious trio one (its
``PlainConnection``: a ``SocketStream``, a send lock, an Event per request).  Three
runs on the shared two-core build machine: one request at a time 1.0x, 1.1x and 1.3x
the plain connection's rate; 100 in flight 2.9x, 2.5x and 2.6x.  The daemon uses it
the second way (``gather``, 64 setups at once), so it stays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Protocol

import outcome
import trio

from rmrrd.errors import TransportError
from rmrrd.xenstore.wire import HEADER, PAYLOAD_MAX, Decoder, LocalProtocolError, Op, Packet, RemoteProtocolError

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
REPLY_PAYLOAD_MAX = 1 << 20
"""Largest reply payload accepted.  oxenstored answers DIRECTORY on its unix socket
with the whole list in one reply, past XENSTORE_PAYLOAD_MAX (seen on the testbed: 11.6
kB for 400 children); C xenstored never exceeds it.  A bound stays, so garbage in a
length field still drops the connection."""


class Channel(Protocol):
    """A non-blocking byte pipe to xenstored: ``socket.socket`` fits as it is."""

    def fileno(self) -> int: ...

    def send(self, data: bytes | bytearray | memoryview, /) -> int: ...

    def recv(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


class DeviceChannel:
    """The xenbus character device (``/dev/xen/xenbus``) as a Channel.

    The kernel driver gathers one message at a time from write() into a buffer of
    XENSTORE_PAYLOAD_MAX bytes, header included (``struct xenbus_file_priv`` in
    drivers/xen/xenbus/xenbus_dev_frontend.c): a longer message fails with EINVAL, so
    ``MESSAGE_MAX`` is enforced before sending, and each send writes at most one
    message; the writer loop sends the rest.  ``Connection`` also keeps one request
    in flight at a time here (see the module docstring), and refuses RESET_WATCHES: the
    device's connection to xenstored is the dom0 kernel's own, whose watches it would
    drop.
    """

    MESSAGE_MAX = PAYLOAD_MAX
    """Bytes of one message, its 16-byte header included."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    def send(self, data: bytes | bytearray | memoryview, /) -> int:
        view = memoryview(data)
        size = HEADER.size + HEADER.unpack_from(view)[3] if len(view) >= HEADER.size else len(view)
        return os.write(self._fd, view[:size])

    def recv(self, size: int, /) -> bytes:
        return os.read(self._fd, size)

    def close(self) -> None:
        os.close(self._fd)


class ConnectionLost(TransportError):
    """The connection to xenstored dropped (or never came up) before the answer came.

    The request may or may not have been carried out: xenstored does not say.
    """


class Connection:
    """Framing and request matching over one Channel (unix socket or xenbus device)."""

    def __init__(self, channel: Channel, on_event: Callable[[Packet], None], name: str) -> None:
        self.channel = channel
        self.name = name
        self._on_event = on_event
        self._pending: dict[int, trio.lowlevel.Task] = {}
        self._out = bytearray()
        self._writer: trio.lowlevel.Task | None = None  # set while the writer is idle
        self.closed: str | None = None  # why, once the connection is down
        serial = isinstance(channel, DeviceChannel)
        self._max_message = DeviceChannel.MESSAGE_MAX if serial else HEADER.size + PAYLOAD_MAX
        # Through the xenbus device: held from a request's send until its reply comes
        # (released by the reader, even if the caller gave up), so one is in flight.
        self._one_at_a_time = trio.Semaphore(1) if serial else None
        self._in_flight: int | None = None

    async def call(self, req_id: int, data: bytes) -> Packet:
        """Send one encoded request and wait for the packet answering ``req_id``.

        Raises ConnectionLost if the connection is or goes down first.  If the
        caller is cancelled, the reply is dropped when it comes.
        """
        if self.closed is not None:
            raise ConnectionLost(self.closed)
        if len(data) > self._max_message:
            raise LocalProtocolError(f"{self.name}: a message of {len(data)} bytes, header included, exceeds the "
                                     f"{self._max_message} this channel takes", "E2BIG")
        if self._one_at_a_time is not None and HEADER.unpack_from(data)[0] == Op.RESET_WATCHES:
            # The device shares the dom0 kernel's own connection to xenstored: this
            # would drop the kernel's watches (backends, balloon, shutdown) too.
            raise LocalProtocolError(f"{self.name}: RESET_WATCHES through the xenbus device would drop the "
                                     "dom0 kernel's own watches")
        if self._one_at_a_time is not None:
            await self._one_at_a_time.acquire()
            if self.closed is not None:
                self._one_at_a_time.release()
                raise ConnectionLost(self.closed)
            self._in_flight = req_id
        writer = self._writer
        if writer is None:
            self._out += data  # a write is under way: queue behind it
        else:
            try:
                sent = self.channel.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # the writer meets the same error and closes the connection
            if sent < len(data):
                self._out += data[sent:]
                self._writer = None
                trio.lowlevel.reschedule(writer)
        self._pending[req_id] = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._pending.pop(req_id, None)
            return trio.lowlevel.Abort.SUCCEEDED

        reply: Packet = await trio.lowlevel.wait_task_rescheduled(abort)
        return reply

    async def run(self) -> None:
        """Serve the channel until it ends or breaks; then fail every waiting request."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard, self._write_loop, nursery.cancel_scope)
                await self._guard(self._read_loop, nursery.cancel_scope)
        finally:
            self.closed = self.closed or "connection closed"
            self._reply_came(self._in_flight)
            pending, self._pending = self._pending, {}
            for task in pending.values():
                trio.lowlevel.reschedule(task, outcome.Error(ConnectionLost(f"{self.name}: {self.closed}")))
            self.channel.close()

    async def _guard(self, loop: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        # Either loop ending means the connection is unusable: record the first
        # reason and stop the other loop.  Anything else is a bug and propagates.
        try:
            await loop()
        except (OSError, RemoteProtocolError) as exc:
            self.closed = self.closed or f"{type(exc).__name__}: {exc}"
        scope.cancel()

    def _reply_came(self, req_id: int | None) -> None:
        """Let the next request through the xenbus device go, once this one is answered."""
        if self._one_at_a_time is not None and req_id is not None and req_id == self._in_flight:
            self._in_flight = None
            self._one_at_a_time.release()

    async def _read_loop(self) -> None:
        decoder = Decoder(max_payload=REPLY_PAYLOAD_MAX)
        pending = self._pending
        channel = self.channel
        while True:
            # Waiting first, even when data may be there, keeps the reader from
            # starving other tasks under a flood; it costs no extra pass.
            await trio.lowlevel.wait_readable(channel)
            try:
                data = channel.recv(RECEIVE_SIZE)
            except BlockingIOError:
                continue
            if not data:
                self.closed = "xenstored closed the connection"
                if decoder.buffered:
                    self.closed += f" in the middle of a message ({decoder.buffered} bytes pending)"
                return
            decoder.feed(data)
            for packet in decoder.packets():
                if packet.op is Op.WATCH_EVENT:
                    self._on_event(packet)
                    continue
                self._reply_came(packet.req_id)
                task = pending.pop(packet.req_id, None)
                if task is None:
                    # The caller gave up (timeout, cancel) before the answer came.
                    log.debug("%s: dropped %s reply to abandoned request %d", self.name, packet.op.name, packet.req_id)
                    continue
                trio.lowlevel.reschedule(task, outcome.Value(packet))

    async def _write_loop(self) -> None:
        channel = self.channel
        while True:
            if not self._out:
                self._writer = trio.lowlevel.current_task()

                def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                    self._writer = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
            data, self._out = self._out, bytearray()
            view = memoryview(data)
            while view:
                try:
                    view = view[channel.send(view) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(channel)
