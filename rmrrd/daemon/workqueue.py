"""Run one job per key at a time, coalescing repeats, many keys in parallel.

A domain's setup may be triggered many times in a burst (the toolstack writes
``request`` twice, a reconcile runs while an event arrives).  Running those
concurrently would race two answers for one domain; queueing every trigger would
redo stale work.  So: at most one job per domain runs, a trigger during it marks
the domain to run once more afterwards, and different domains run side by side up
to a bound, so a slow domain never holds the others back.

Each run is told when the first trigger it serves arrived, so that what it reports
as its duration includes the time it waited for a slot: in a burst that wait is
most of what a domain sees.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

K = TypeVar("K")
log = logging.getLogger(__name__)


class KeyedWorkQueue(Generic[K]):
    def __init__(self, nursery: trio.Nursery, job: Callable[[K, float], Awaitable[None]],
                 *, concurrency: int, name: str) -> None:
        self._nursery = nursery
        self._job = job
        self._limiter = trio.CapacityLimiter(concurrency)
        self._running: set[K] = set()
        self._again: set[K] = set()
        self._triggered: dict[K, float] = {}  # key -> first trigger not yet served (trio clock)
        self._idle = trio.Event()
        self._idle.set()
        self._name = name

    def submit(self, key: K) -> None:
        """Run the job for ``key`` soon (once more after the current run, if any)."""
        self._triggered.setdefault(key, trio.current_time())
        if key in self._running:
            self._again.add(key)
            return
        self._running.add(key)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._nursery.start_soon(self._worker, key)

    async def wait_idle(self) -> None:
        """Return once no job is running or queued."""
        await self._idle.wait()

    async def _worker(self, key: K) -> None:
        try:
            while True:
                async with self._limiter:
                    # Triggers that came while this run waited for a slot are served
                    # by it: it reads the state as it is now.
                    self._again.discard(key)
                    triggered = self._triggered.pop(key)
                    try:
                        await self._job(key, triggered)
                    except Exception:
                        # A job's failure is logged and contained: the next trigger
                        # (an event or a reconcile) retries it.
                        log.exception("%s %s: failed", self._name, key)
                if key not in self._again:
                    break
        finally:
            self._running.discard(key)
            self._triggered.pop(key, None)  # a worker cancelled before its run
            if not self._running:
                self._idle.set()
