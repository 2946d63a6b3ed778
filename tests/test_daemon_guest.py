"""Guest identity: a domain's own xenstore connection against
``rmrrd run --simulate``, with the permissions real xenstored would apply.

Domains 1 and 2 are set up by the toolstack (xenstore-utils) and introduced by dom0
(rmrrd's client); each guest then connects to the simulated xenstored's socket for
its domain, so every access below is checked as coming from that domain.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Mapping
from functools import partial
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio

from support import SEED_DOMAIN
from support.processes import Daemon
from support.xs_tools import needs_xenstore_tools, read_answer, request_setup, watching
from rmrrd.app.toolstack import guest_query, wait_granted
from rmrrd.core.ranges import Range, parse_range
from rmrrd.xenstore.client import Transaction, XenstoreClient, open_xenstore
from rmrrd.xenstore.wire import NoEntry, Op, Packet, PermissionDenied, Perm, encode

pytestmark = [needs_xenstore_tools, pytest.mark.process]

BURST = 12
LIMITS = {"query_rate": 1, "query_burst": BURST, "max_allocations": 3, "max_query_length": 64}
HOLE_END = 0xFC000000
RATE_LIMITED = "error EBUSY query rate limit reached; retry later"


@pytest.fixture
def daemon_limits() -> Mapping[str, int | float]:
    return LIMITS


@pytest.fixture
async def guests(rmrrd_daemon: Daemon) -> AsyncIterator[Daemon]:
    """Domains 1 and 2 of the seed, answered, introduced, and granted their answers."""
    await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    await request_setup(rmrrd_daemon.xs, 2, SEED_DOMAIN)
    async with dom0(rmrrd_daemon) as xs:
        for domid in (1, 2):
            await xs.introduce(domid, 0, 0)
    for domid in (1, 2):
        async with guest(rmrrd_daemon, domid) as g:
            await wait_granted(g, domid)
    yield rmrrd_daemon


async def test_an_answer_written_before_its_domain_existed_is_granted_on_introduction(
        rmrrd_daemon: Daemon) -> None:
    # As C xenstored: the answer's entry for domain 1, set before domain 1 was
    # introduced, grants it nothing, even on nodes created under it afterwards.
    # rmrrd sets every node's permissions again on @introduceDomain.
    # (The simulated store's own test shows the entry ignored: tests/test_xs_store.py.)
    await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    async with dom0(rmrrd_daemon) as xs:
        async with xs.watch("/local/domain/1/rmrr/status") as events:
            await events.__anext__()
            await xs.introduce(1, 0, 0)
            with trio.fail_after(10):
                await events.__anext__()  # the permissions set again
    async with dom0(rmrrd_daemon) as xs, guest(rmrrd_daemon, 1) as g1:
        assert await g1.read("/local/domain/1/rmrr/status") == b"ready"
        assert await g1.read("/local/domain/1/rmrr/region/0/range")
        assert (await guest_query(g1, 1, "q1", "regions")).startswith("ok ")
        await denied(g1.write("/local/domain/1/rmrr/status", "forged"))
        assert await xs.get_perms("/local/domain/1/rmrr/query") == [Perm(0, "n"), Perm(1, "b")]
        assert await xs.get_perms("/local/domain/1/rmrr/reply/q1") == [Perm(0, "n"), Perm(1, "r")]


def dom0(daemon: Daemon) -> AbstractAsyncContextManager[XenstoreClient]:
    return open_xenstore(str(daemon.xs.socket))


def guest(daemon: Daemon, domid: int) -> AbstractAsyncContextManager[XenstoreClient]:
    """Domain ``domid``'s own connection: xenstored applies its permissions."""
    return open_xenstore(str(daemon.xs.guest_socket(domid)))


async def snapshot(xs: XenstoreClient, path: str) -> dict[str, tuple[bytes, list[Perm]]]:
    """Every node under ``path`` with its value and permissions, as dom0 sees them."""
    nodes = {path: (await xs.read(path), await xs.get_perms(path))}
    for child in await xs.directory(path):
        nodes.update(await snapshot(xs, f"{path}/{child}"))
    return nodes


async def denied(action: Awaitable[object]) -> None:
    """The access must fail as real xenstored fails it: EACCES, or ENOENT for a hidden node."""
    with pytest.raises((PermissionDenied, NoEntry)):
        await action


async def test_answer_permissions_as_set(guests: Daemon) -> None:
    async with dom0(guests) as xs:
        nodes = await snapshot(xs, "/local/domain/1/rmrr")
    expected = {"/local/domain/1/rmrr/query": [Perm(0, "n"), Perm(1, "b")]}
    for path, (_, perms) in nodes.items():
        assert perms == expected.get(path, [Perm(0, "n"), Perm(1, "r")]), path


async def test_guest_cannot_change_answers_nor_read_another_domains(guests: Daemon) -> None:
    async with guest(guests, 1) as g1, dom0(guests) as xs:
        assert (await guest_query(g1, 1, "q0", "e820")).startswith("ok ")  # so reply/q0 exists
        before = await snapshot(xs, "/local/domain")
        own = [path for path in before if path.startswith("/local/domain/1/rmrr")
               and not path.startswith("/local/domain/1/rmrr/query")]
        assert "/local/domain/1/rmrr/reply/q0" in own and "/local/domain/1/rmrr/region/0/range" in own
        other = [path for path in before if path.startswith("/local/domain/2/rmrr")]
        for path in own + other:
            await denied(g1.write(path, "forged"))
            await denied(g1.rm(path))
            await denied(g1.set_perms(path, [Perm(1, "b")]))
        for path in ("/local/domain/1/rmrr/forged", "/local/domain/1/rmrr/reply/forged",
                     "/local/domain/1/rmrr/region/9/range", "/local/domain/2/rmrr/query/q1",
                     "/libxl/1/rdm/memory", "/tool/rmrrd/request/forged"):
            await denied(g1.write(path, "e820"))
        for path in other:
            await denied(g1.read(path))
            await denied(g1.directory(path))
        # Nothing changed, as dom0 sees it; domain 2's answer is as it was set up.
        assert await snapshot(xs, "/local/domain") == before
    assert (await read_answer(guests.xs, 2)).status == "ready"


async def test_guest_reads_its_own_answer(guests: Daemon) -> None:
    async with guest(guests, 1) as g1:
        assert await g1.read("/local/domain/1/rmrr/status") == b"ready"
        assert await g1.read("/local/domain/1/rmrr/lowmem_end") == b"0xa0000000"


async def test_own_queries_e820_regions_check_alloc_free(guests: Daemon) -> None:
    answer = await read_answer(guests.xs, 1)
    async with guest(guests, 1) as g1:
        ask = partial(guest_query, g1, 1)
        assert await ask("e820", "e820") == "ok " + ",".join(answer.e820)
        assert await ask("regions", "regions") == "ok " + ",".join(answer.regions)
        assert await ask("c1", "check 0xb0000000-0xb0000fff") == "ok clear"
        assert await ask("c2", "check 0xa0000000-0xa0000fff") == "ok overlaps reserved"
        assert "ram" in await ask("c3", "check 0x10000000-0x10000fff")
        first = parse_range((await ask("a1", "alloc 0x1000000")).removeprefix("ok "))
        second = parse_range((await ask("a2", "alloc 0x1000000")).removeprefix("ok "))
        # hvmloader's placement: in the hole above lowmem_end, BAR-size aligned, clear of
        # D2's region and of each other.
        d2 = parse_range("0xa0000000-0xa37fffff")
        hole = Range(int(answer.lowmem_end or "0", 16), HOLE_END)
        for placed in (first, second):
            assert hole.contains(placed) and placed.size == 0x1000000 and placed.start % 0x1000000 == 0
            assert not placed.overlaps(d2)
        assert not first.overlaps(second)
        assert await ask("c4", f"check {first}") == "ok overlaps allocated"
        assert await ask("f1", f"free {first}") == "ok"
        assert (await ask("f2", f"free {first}")).startswith("error ENOENT ")


async def test_malformed_oversize_and_allocation_cap(guests: Daemon) -> None:
    async with guest(guests, 1) as g1:
        ask = partial(guest_query, g1, 1)
        reply = await ask("m1", "alloc banana")
        assert reply.startswith("error EINVAL ") and "banana" in reply
        assert (await ask("m2", "frobnicate")).startswith("error EINVAL ")
        assert (await ask("m3", "e820\x01")).startswith("error EINVAL ")
        reply = await ask("big", "check " + "0" * 70)
        assert reply.startswith("error EINVAL ") and "longer than the limit of 64" in reply
        for n in range(LIMITS["max_allocations"]):
            assert (await ask(f"a{n}", "alloc 0x1000")).startswith("ok ")
        assert (await ask("over", "alloc 0x1000")).startswith("error EDQUOT ")
        # An id that cannot name a reply: the query is removed, nothing is written.
        async with g1.watch("/local/domain/1/rmrr/query/bad@id") as events:
            await g1.write("/local/domain/1/rmrr/query/bad@id", "e820")
            with trio.fail_after(10):
                async for _ in events:
                    if not await g1.exists("/local/domain/1/rmrr/query/bad@id"):
                        break
        assert "bad@id" not in await g1.directory("/local/domain/1/rmrr/reply")


async def replies(xs: XenstoreClient, domid: int) -> dict[str, str]:
    base = f"/local/domain/{domid}/rmrr/reply"
    return {name: (await xs.read(f"{base}/{name}")).decode() for name in await xs.directory(base)}


async def test_rate_limit_reached_gets_ebusy(guests: Daemon) -> None:
    count = 3 * BURST
    async with guest(guests, 1) as g1:
        async with g1.watch("/local/domain/1/rmrr/reply") as events:

            async def burst(tx: Transaction) -> None:
                for n in range(count):
                    await tx.write(f"/local/domain/1/rmrr/query/r{n}", "e820")

            await g1.run_transaction(burst)
            with trio.fail_after(10):
                async for _ in events:
                    if len(await g1.directory("/local/domain/1/rmrr/reply")) == count:
                        break
        got = await replies(g1, 1)
    # The burst is answered in full, the rest refused until tokens come back.
    assert sum(reply.startswith("ok ") for reply in got.values()) >= BURST
    assert RATE_LIMITED in got.values()
    assert set(got.values()) <= {RATE_LIMITED, next(r for r in got.values() if r.startswith("ok "))}


async def test_flood_from_one_domain_does_not_stop_anothers_queries(guests: Daemon) -> None:
    async with guest(guests, 1) as g1, guest(guests, 2) as g2:
        flooding, answered = trio.Event(), trio.Event()
        sent = 0

        async def flood() -> None:
            # Stopped by a flag, not cancelled: a write abandoned mid-flight would leave
            # xenstored an acknowledgement to send into a closing socket (see the hang-up test below).
            nonlocal sent
            while not answered.is_set() and sent < 5000:
                await g1.write(f"/local/domain/1/rmrr/query/f{sent}", "e820")
                sent += 1
                if sent == 2 * BURST:
                    flooding.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await flooding.wait()
            # Domain 2 asks while domain 1 keeps writing: each of its queries is answered.
            for n in range(3):
                assert (await guest_query(g2, 2, f"q{n}", "e820")).startswith("ok ")
            answered.set()
    assert sent < 5000, "the flood ended before domain 2 was answered"
    # Once the flood stops, domain 1 is served again: its flood cost only itself.
    async with guest(guests, 1) as g1:
        with trio.fail_after(30):
            while (reply := await guest_query(g1, 1, "after", "e820")) == RATE_LIMITED:
                await trio.sleep(1 / LIMITS["query_rate"])
        assert reply.startswith("ok ")


async def test_release_domain_removes_its_answer(guests: Daemon) -> None:
    async with guest(guests, 1) as g1:
        # One round trip through the daemon after the introduction.
        assert (await guest_query(g1, 1, "q", "e820")).startswith("ok ")
    async with watching(guests.xs, "/local/domain/1/rmrr") as watch, dom0(guests) as xs:
        await xs.release(1)
        await watch.until("/local/domain/1/rmrr", lambda value: value is None)
    # Domain 2, still alive, keeps its answer.
    assert (await read_answer(guests.xs, 2)).status == "ready"


async def test_guest_hanging_up_mid_reply_does_not_stop_the_daemon(rmrrd_daemon: Daemon) -> None:
    daemon = rmrrd_daemon
    await request_setup(daemon.xs, 1, SEED_DOMAIN)
    async with dom0(daemon) as xs:
        await xs.introduce(1, 0, 0)
    request = encode(Packet(Op.READ, 1, 0, b"/local/domain/1/rmrr/e820/0\0"))
    with socket.socket(socket.AF_UNIX) as hangup:
        hangup.connect(str(daemon.xs.guest_socket(1)))
        hangup.setblocking(False)
        # Ask without reading until the socket is full: requests remain unanswered
        # when the guest hangs up, so xenstored is bound to send into a closed socket.
        with contextlib.suppress(BlockingIOError):
            while True:
                hangup.send(request * 1000)
    # The daemon, and its xenstored, still serve.
    assert (await request_setup(daemon.xs, 3, {"memory": "1024"})).status == "ready"
