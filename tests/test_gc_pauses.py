"""short_gc_pauses: survivors of a full pass are frozen; a due pass reclaims frozen cycles."""

from __future__ import annotations

import gc
import weakref

import pytest

from rmrrd.edges.gc_pauses import short_gc_pauses

pytestmark = pytest.mark.unit


class Cycle:
    """An object that refers to itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def frozen_cycle() -> weakref.ref[Cycle]:
    """A cycle alive during a full pass (so frozen by it), unreachable afterwards."""
    cycle = Cycle()
    gc.collect()
    assert gc.get_freeze_count() > 0
    return weakref.ref(cycle)


def test_a_full_pass_freezes_its_survivors_and_the_context_unfreezes_them() -> None:
    callbacks = list(gc.callbacks)
    with short_gc_pauses(reclaim_every=60, clock=Clock()):
        gc.collect()
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    assert gc.callbacks == callbacks


def test_a_frozen_cycle_survives_ordinary_passes_and_dies_in_the_due_one() -> None:
    clock = Clock()
    with short_gc_pauses(reclaim_every=60, clock=clock):
        ref = frozen_cycle()
        gc.collect()
        assert ref() is not None, "a frozen cycle is kept until the reclaiming pass"
        clock.now = 61
        gc.collect()
        assert ref() is None, "the pass after reclaim_every must visit frozen objects"
        assert gc.get_freeze_count() > 0, "and freeze the survivors again"
        # The next reclaim is an interval later, not at once.
        ref = frozen_cycle()
        clock.now = 100
        gc.collect()
        assert ref() is not None


def test_without_it_the_same_cycle_is_collected_at_once() -> None:
    """The control: the behaviour above comes from short_gc_pauses, not from the test."""
    cycle = Cycle()
    gc.collect()
    ref = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert ref() is None
    assert gc.get_freeze_count() == 0
