"""The whole daemon in the test's own trio run (``support.inprocess``): the seed
scenario, guest queries under the mock clock, releases and restarts, in the fast tier.

The same behaviours are tested against ``rmrrd run`` as a process, with
xenstore-utils as the toolstack (``test_daemon_e2e``, ``test_daemon_guest``); here
they run in milliseconds, and time is the mock clock's, so the rate limit refilling
is a jump, not a sleep.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from support import SEED_DOMAIN
from support.inprocess import inprocess_daemon
from rmrrd.xenstore.ops import read_text
from rmrrd.app.demo import scenario
from rmrrd.app.toolstack import create_domain, guest_query
from rmrrd.protocol import STATUS_KEY, answer_path

RATE, BURST = 2, 4
RATE_LIMITED = "error EBUSY query rate limit reached; retry later"


async def test_the_seed_scenario_plays_as_the_demo_prints_it(tmp_path: Path) -> None:
    async with inprocess_daemon(tmp_path) as daemon:
        assert await read_text(daemon.xs, STATUS_KEY) == "ready"
        steps = await scenario(daemon.xs, daemon.socket, lambda domid: Path(f"{daemon.socket}.d/{domid}"),
                               lambda _: None)
    assert [step.name for step in steps if not step.ok] == []
    assert len(steps) == 15


async def test_the_rate_limit_refills_with_time(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    async with inprocess_daemon(tmp_path, {"query_rate": RATE, "query_burst": BURST}) as daemon:
        await create_domain(daemon.xs, 1, SEED_DOMAIN)
        await daemon.xs.introduce(1, 0, 0)
        async with daemon.guest(1) as guest:
            # No time passes: the burst is answered, the next query refused.
            for n in range(BURST):
                assert (await guest_query(guest, 1, f"q{n}", "e820")).startswith("ok ")
            assert await guest_query(guest, 1, "over", "e820") == RATE_LIMITED
            mock_clock.jump(1 / RATE)
            assert (await guest_query(guest, 1, "later", "e820")).startswith("ok ")
            assert await guest_query(guest, 1, "again", "e820") == RATE_LIMITED


async def test_release_removes_the_answer_and_a_new_request_is_answered_afresh(tmp_path: Path) -> None:
    async with inprocess_daemon(tmp_path) as daemon:
        xs = daemon.xs
        await create_domain(xs, 1, SEED_DOMAIN)
        await xs.introduce(1, 0, 0)
        async with daemon.guest(1) as guest:
            assert (await guest_query(guest, 1, "q1", "alloc 0x1000")).startswith("ok 0xa3800000")
        async with xs.watch(answer_path(1)) as events:
            await xs.release(1)
            with trio.fail_after(10):
                async for _ in events:
                    if not await xs.exists(answer_path(1)):
                        break
        # The toolstack makes a new domain on the same id: it starts with nothing held.
        await xs.rm("/libxl/1")
        assert (await create_domain(xs, 1, SEED_DOMAIN)).status == "ready"
        await xs.introduce(1, 0, 0)
        async with daemon.guest(1) as guest:
            assert (await guest_query(guest, 1, "q1", "alloc 0x1000")).startswith("ok 0xa3800000")
