"""The per-domain work queue: one job per key at a time, repeats coalesced."""

import trio
import trio.testing

from rmrrd.daemon.workqueue import KeyedWorkQueue


async def test_repeats_during_a_run_coalesce_into_one_more_run() -> None:
    runs: list[int] = []
    release = trio.Event()

    async def job(key: int, triggered: float) -> None:
        runs.append(key)
        if len(runs) == 1:
            await release.wait()

    async with trio.open_nursery() as nursery:
        queue = KeyedWorkQueue(nursery, job, concurrency=4, name="test")
        queue.submit(1)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(5):
            queue.submit(1)  # while the first run is blocked
        release.set()
        await queue.wait_idle()
    assert runs == [1, 1]


async def test_keys_run_concurrently_up_to_the_bound() -> None:
    running, peak = 0, 0
    gate = trio.Event()

    async def job(key: int, triggered: float) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    async with trio.open_nursery() as nursery:
        queue = KeyedWorkQueue(nursery, job, concurrency=3, name="test")
        for key in range(10):
            queue.submit(key)
        await trio.testing.wait_all_tasks_blocked()
        assert peak == 3
        gate.set()
        await queue.wait_idle()


async def test_a_failing_job_is_contained_and_the_key_can_run_again(caplog: object) -> None:
    calls: list[int] = []

    async def job(key: int, triggered: float) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("xenstore dropped")

    async with trio.open_nursery() as nursery:
        queue = KeyedWorkQueue(nursery, job, concurrency=1, name="domain")
        queue.submit(7)
        await queue.wait_idle()
        queue.submit(7)
        await queue.wait_idle()
    assert calls == [7, 7]


async def test_wait_idle_returns_at_once_when_nothing_was_submitted() -> None:
    async def job(key: int, triggered: float) -> None:
        raise AssertionError("never called")

    async with trio.open_nursery() as nursery:
        queue = KeyedWorkQueue(nursery, job, concurrency=1, name="test")
        with trio.fail_after(1):
            await queue.wait_idle()


async def test_a_run_is_told_when_its_first_trigger_arrived(autojump_clock: trio.testing.MockClock) -> None:
    """The time a run reports includes its wait for a slot and coalesced repeats."""
    told: list[tuple[int, float]] = []
    gate = trio.Event()

    async def job(key: int, triggered: float) -> None:
        told.append((key, triggered))
        await gate.wait()

    async with trio.open_nursery() as nursery:
        queue = KeyedWorkQueue(nursery, job, concurrency=1, name="test")
        queue.submit(1)          # t=0, runs at once
        await trio.sleep(1)
        queue.submit(2)          # t=1, waits for the slot
        await trio.sleep(1)
        queue.submit(2)          # t=2, coalesced into the waiting run
        queue.submit(1)          # t=2, one more run of 1 after the current one
        await trio.sleep(1)
        queue.submit(1)          # t=3, coalesced too: the trigger at t=2 is the first
        gate.set()
        await queue.wait_idle()
    assert sorted(told) == [(1, 0.0), (1, 2.0), (2, 1.0)]
