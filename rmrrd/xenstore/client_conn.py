"""One live connection to xenstored: a reader task, a writer task, replies matched by req_id.

The client (``client.py``) makes a new ``Connection`` after every reconnect; this
module knows nothing about reconnecting, watches or operations.

Why the shape:

* **One writer task, one output buffer.**  A request is encoded by its caller (so a
  bad request fails there, with a LocalProtocolError) and appended to a buffer; the
  writer sends whatever has piled up in one ``send_all``.  Pipelined requests
  therefore coalesce into few syscalls, and a caller that is cancelled never leaves
  half a message on the stream (only the writer touches it).
* **One reader task.**  It decodes every complete packet of each chunk and hands
  each reply straight to the task waiting for it, with
  ``trio.lowlevel.reschedule``: no per-request Event or channel, which keeps the
  cost per request low (see ``docs/xenstore-client.md`` for the numbers).  Watch
  events go to a callback.
* **Failure is loud and immediate.**  When either task sees the stream end or
  break, every waiting request gets ConnectionLost at once, never a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import outcome
import trio

from rmrrd.xenstore.wire import Decoder, Op, Packet, RemoteProtocolError, XenstoreError

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536


class ConnectionLost(XenstoreError):
    """The connection to xenstored dropped (or never came up) before the answer came.

    The request may or may not have been carried out: xenstored does not say.
    """

    def __init__(self, message: str) -> None:
        super().__init__("EIO", message)


class Connection:
    """Framing and request matching over one trio stream (unix socket or xenbus device)."""

    def __init__(self, stream: trio.abc.Stream, on_event: Callable[[Packet], None], name: str) -> None:
        self.stream = stream
        self.name = name
        self._on_event = on_event
        self._pending: dict[int, trio.lowlevel.Task] = {}
        self._out = bytearray()
        self._writer: trio.lowlevel.Task | None = None  # set while the writer is parked
        self.closed: str | None = None  # why, once the connection is down

    async def call(self, req_id: int, data: bytes) -> Packet:
        """Send one encoded request and wait for the packet answering ``req_id``.

        Raises ConnectionLost if the connection is or goes down first.  If the
        caller is cancelled, the reply is dropped when it comes.
        """
        if self.closed is not None:
            raise ConnectionLost(self.closed)
        self._out += data
        writer = self._writer
        if writer is not None:
            self._writer = None
            trio.lowlevel.reschedule(writer)
        self._pending[req_id] = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._pending.pop(req_id, None)
            return trio.lowlevel.Abort.SUCCEEDED

        reply: Packet = await trio.lowlevel.wait_task_rescheduled(abort)
        return reply

    async def run(self) -> None:
        """Serve the stream until it ends or breaks; then fail every waiting request."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard, self._write_loop, nursery.cancel_scope)
                await self._guard(self._read_loop, nursery.cancel_scope)
        finally:
            self.closed = self.closed or "connection closed"
            pending, self._pending = self._pending, {}
            for task in pending.values():
                trio.lowlevel.reschedule(task, outcome.Error(ConnectionLost(f"{self.name}: {self.closed}")))
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _guard(self, loop: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        # Either loop ending means the connection is unusable: record the first
        # reason and stop the other loop.  Anything else is a bug and propagates.
        try:
            await loop()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, RemoteProtocolError) as exc:
            self.closed = self.closed or f"{type(exc).__name__}: {exc}"
        scope.cancel()

    async def _read_loop(self) -> None:
        decoder = Decoder()
        pending = self._pending
        while True:
            data = await self.stream.receive_some(RECEIVE_SIZE)
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
                task = pending.pop(packet.req_id, None)
                if task is None:
                    # The caller gave up (timeout, cancel) before the answer came.
                    log.debug("%s: dropped %s reply to abandoned request %d", self.name, packet.op.name, packet.req_id)
                    continue
                trio.lowlevel.reschedule(task, outcome.Value(packet))

    async def _write_loop(self) -> None:
        while True:
            if not self._out:
                self._writer = trio.lowlevel.current_task()

                def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                    self._writer = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
            data, self._out = self._out, bytearray()
            await self.stream.send_all(data)
