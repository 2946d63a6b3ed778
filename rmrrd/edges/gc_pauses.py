"""Keep the garbage collector's full passes short in a long-running rmrrd process.

Why this exists: CPython runs a full (generation 2) collection whenever the
objects that survived earlier ones have grown by a quarter, and a full pass visits
every object the process holds.  The daemon keeps a few dozen objects per domain
(its plan, its guest-query task); the simulated xenstored a few dozen nodes.  With
a few thousand domains a full pass took 50 to 150 ms on the bench machine, and a
setup or query arriving meanwhile waited for it: at 200 setups per second that was
the whole p99 (``bench/bench_daemon.py``, numbers in ``docs/performance.md``).

So, after each full pass, the survivors are frozen (:func:`gc.freeze`) and later
passes visit only what was created since.  The price: a frozen object that later
becomes part of an unreachable cycle is not reclaimed while frozen (objects freed
by reference counting, most of them, are freed as usual).  Hence once every
``reclaim_every`` seconds a full pass first unfreezes everything, so it reclaims
such cycles: one long pass per interval instead of one per quarter of growth.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

RECLAIM_EVERY = 600.0
"""Seconds between full passes over everything: bounds what frozen cycles can hold."""


class _FreezeAfterFullPass:
    """The ``gc.callbacks`` entry: freeze after a full pass, unfreeze before a due one."""

    def __init__(self, reclaim_every: float, clock: Callable[[], float]) -> None:
        self._reclaim_every = reclaim_every
        self._clock = clock
        self._reclaim_at = clock() + reclaim_every

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start" and self._clock() >= self._reclaim_at:
            # gc.unfreeze puts the frozen objects back in the oldest generation,
            # which is the one this pass is about to collect.
            gc.unfreeze()
            self._reclaim_at = self._clock() + self._reclaim_every
        elif phase == "stop":
            gc.freeze()


@contextmanager
def short_gc_pauses(reclaim_every: float = RECLAIM_EVERY,
                    clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """For the body's duration, full collections visit only recent objects.

    Meant for a process's entry point (``rmrrd run``, ``rmrrd xenstored``): the
    collector is process-wide, so library code and in-process tests leave it alone.
    """
    callback = _FreezeAfterFullPass(reclaim_every, clock)
    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)
        gc.unfreeze()
