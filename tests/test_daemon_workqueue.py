"""The per-domain work queue: one job per key at a time, repeats coalesced."""

import trio
import trio.testing

from rmrrd.daemon.workqueue import KeyedWorkQueue


async def test_repeats_during_a_run_coalesce_into_one_more_run() -> None:
    runs: list[int] = []
    release = trio.Event()

    async def job(key: int) -> None:
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

    async def job(key: int) -> None:
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

    async def job(key: int) -> None:
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
    async def job(key: int) -> None:
        raise AssertionError("never called")

    async with trio.open_nursery() as nursery:
        queue = KeyedWorkQueue(nursery, job, concurrency=1, name="test")
        with trio.fail_after(1):
            await queue.wait_idle()
