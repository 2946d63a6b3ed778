"""Watch events as an async iterator that never blocks the connection's reader.

The reader task delivers events for every watch of a connection; if it waited for a
slow consumer, every request on the connection would stall behind it.  So each
watch keeps a bounded queue, and when it is full the watch remembers only that it
overflowed and yields one event for the watched path itself: "something under here
changed, look again".  xenstore.txt already allows spurious events, and every
consumer must reread the tree after an event anyway, so nothing is lost but noise.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

import trio

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One WATCH_EVENT: the path that changed (relative if the watch was) and the token."""

    path: str
    token: str


class Watch:
    """The events of one registered watch, in arrival order; ``async for`` them.

    Iteration ends when the watch is removed (``unwatch``, leaving ``client.watch``,
    closing the client) and raises the server's error if re-registering it after a
    reconnect failed.
    """

    def __init__(self, path: str, token: str) -> None:
        self.path = path
        self.token = token
        self.generation: int | None = None  # connection it is registered on; None = not yet
        self._queue: deque[WatchEvent] = deque()
        self._overflowed = False
        self._ended: BaseException | None = None
        self._wakeup = trio.Event()

    def deliver(self, event: WatchEvent) -> None:
        """Queue an event (called by the reader task; never blocks)."""
        if len(self._queue) >= QUEUE_LIMIT:
            if not self._overflowed:
                log.warning("watch %s token %s: consumer too slow, coalescing events", self.path, self.token)
            self._overflowed = True
        else:
            self._queue.append(event)
        self._wakeup.set()

    def end(self, error: BaseException | None = None) -> None:
        """Stop iteration after the queued events (with ``error`` raised, if given)."""
        if self._ended is None:
            self._ended = error if error is not None else StopAsyncIteration()
        self._wakeup.set()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        while not self._queue and not self._overflowed:
            if self._ended is not None:
                raise self._ended
            await self._wakeup.wait()
            self._wakeup = trio.Event()
        if self._queue:
            return self._queue.popleft()
        self._overflowed = False
        return WatchEvent(self.path, self.token)
