"""The xenstore client against a xenstored: every operation, its errors, permissions,
watches (domains coming and going included), transactions and conflicts, directories
larger than one payload.

The same tests run against the simulated xenstored here and, in the real-Xen tier,
against C xenstored and oxenstored in dom0, through the unix socket and through
/dev/xen/xenbus (``tests/support/xs_backends.py``; ``tests/xen/test_xen_xenstore.py`` runs
them there).  Where the xenstoreds differ, ``xs_backend.expect`` pins each one's
behaviour.
"""

from __future__ import annotations

import pytest
import trio

from rmrrd.xenstore.client import Transaction, XenstoreClient
from rmrrd.xenstore.wire import (
    HEADER,
    PAYLOAD_MAX,
    Again,
    InvalidArgument,
    LocalProtocolError,
    NoEntry,
    Perm,
    TooBig,
)
from support.xs_backends import XsBackend, xs, xs_backend  # noqa: F401  (fixtures)

EVENT_TIMEOUT = 60.0
"""For an event a real domain's creation or destruction causes, under emulation."""


class _Abort(Exception):
    """Leaves a transaction block so that it is aborted."""


async def test_read_write_mkdir_rm_directory(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    r = xs_backend.root
    await xs.write(f"{r}/a/b/c", "value")
    assert await xs.read(f"{r}/a/b/c") == b"value"
    assert await xs.read(f"{r}/a/b") == b""  # parents made empty
    await xs.write(f"{r}/a/bin", b"x\0y\0")  # values are binary, NULs included
    assert await xs.read(f"{r}/a/bin") == b"x\0y\0"
    await xs.write(f"{r}/a/empty", b"")
    assert await xs.read(f"{r}/a/empty") == b""
    await xs.mkdir(f"{r}/a/b")  # existing: value kept
    assert await xs.read(f"{r}/a/b/c") == b"value"
    assert sorted(await xs.directory(f"{r}/a")) == ["b", "bin", "empty"]
    assert await xs.exists(f"{r}/a/b") and not await xs.exists(f"{r}/a/zz")
    await xs.rm(f"{r}/a/b")
    assert not await xs.exists(f"{r}/a/b/c")
    await xs.rm(f"{r}/a/b")  # absent, parent present: fine
    with pytest.raises(NoEntry, match=f"READ {r}/a/b"):
        await xs.read(f"{r}/a/b")
    with pytest.raises(NoEntry):
        await xs.rm(f"{r}/nope/child")  # parent absent too
    with pytest.raises(NoEntry):
        await xs.directory(f"{r}/nope")


async def test_removing_the_root(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    # The simulated and C xenstored refuse; oxenstored empties the whole store instead
    # (tools/ocaml/xenstored/store.ml, path_rm), so it is shown only inside a
    # transaction that is then aborted.
    with pytest.raises(_Abort):
        async with xs.transaction() as tx:
            if xs_backend.kind == "oxenstored":
                await tx.rm("/")
                assert await tx.directory("/") == []
            else:
                with pytest.raises(InvalidArgument):
                    await tx.rm("/")
            raise _Abort
    assert "conformance" in await xs.directory("/")  # untouched


async def test_values_up_to_one_payload(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    path = f"{xs_backend.root}/big"
    await xs.write(path, b"v" * 2048)
    assert await xs.read(path) == b"v" * 2048
    # WRITE carries the path, a NUL and the value: one payload, or through the xenbus
    # device one message of that size with its header (client_conn.DeviceChannel).
    room = PAYLOAD_MAX - (HEADER.size if xs_backend.transport == "xenbus" else 0)
    largest = room - len(path) - 1
    if xs_backend.kind == "oxenstored":
        # Its quota-maxsize (2048 in Debian's /etc/xen/oxenstored.conf) holds for dom0 too.
        with pytest.raises(TooBig):
            await xs.write(path, b"v" * 2049)
    else:
        await xs.write(path, b"v" * largest)
        assert await xs.read(path) == b"v" * largest
    with pytest.raises(LocalProtocolError) as info:  # one byte more is refused before sending
        await xs.write(path, b"v" * (largest + 1))
    assert info.value.errno_name == "E2BIG"


async def test_bad_requests_fail_before_sending(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    r = xs_backend.root
    with pytest.raises(LocalProtocolError, match="invalid xenstore path"):
        await xs.read(f"{r}//b")
    with pytest.raises(LocalProtocolError, match="invalid xenstore path"):
        await xs.write(f"{r}/trailing/", "x")
    await xs.write(f"{r}/still/fine", "ok")  # the connection was not harmed
    assert await xs.read(f"{r}/still/fine") == b"ok"


async def test_permissions_as_dom0_sets_and_reads_them(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    r = xs_backend.root
    await xs.write(f"{r}/p", "v")
    assert await xs.get_perms(f"{r}/p") == [Perm(0, "n")]  # inherited from the root
    await xs.set_perms(f"{r}/p", [Perm(0, "n"), Perm(5, "r")])
    assert await xs.get_perms(f"{r}/p") == [Perm(0, "n"), Perm(5, "r")]
    await xs.write(f"{r}/p/child", "c")  # a new node inherits its parent's
    assert await xs.get_perms(f"{r}/p/child") == [Perm(0, "n"), Perm(5, "r")]
    await xs.set_perms(f"{r}/p", [Perm(0, "r")])
    assert await xs.get_perms(f"{r}/p") == [Perm(0, "r")]
    with pytest.raises(NoEntry):
        await xs.get_perms(f"{r}/missing")
    with pytest.raises(NoEntry):
        await xs.set_perms(f"{r}/missing", [Perm(0, "n")])


async def test_permissions_naming_a_domain_that_does_not_exist(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    # C xenstored asks the hypervisor (domain_alloc_permrefs in xenstored_domain.c): an
    # owner that is no domain is ENOENT; another entry is kept, shown, and marked to
    # grant nothing, so a domain created later with that id does not inherit it.
    # oxenstored keeps both; the simulated xenstored has no hypervisor to ask and
    # takes every domid as existing here (an entry for a domain introduced later is
    # ignored as C ignores it: tests/test_xs_store.py).
    p = f"{xs_backend.root}/p"
    await xs.write(p, "v")
    await xs.set_perms(p, [Perm(0, "n"), Perm(31999, "r")])
    assert await xs.get_perms(p) == [Perm(0, "n"), Perm(31999, "r")]
    if xs_backend.kind == "xenstored":
        with pytest.raises(NoEntry):
            await xs.set_perms(p, [Perm(31999, "b")])
    else:
        await xs.set_perms(p, [Perm(31999, "b")])  # given away
        assert await xs.get_perms(p) == [Perm(31999, "b")]
        assert await xs.read(p) == b"v"  # dom0 is privileged


async def test_permissions_of_the_special_watch_paths(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    # C xenstored 4.17 sets them (set_perms_special) but reads only nodes' (do_get_perms:
    # EINVAL); oxenstored answers.  The simulated xenstored follows C.
    if xs_backend.kind == "oxenstored":
        assert await xs.get_perms("@releaseDomain") == [Perm(0, "n")]
    else:
        with pytest.raises(InvalidArgument):
            await xs.get_perms("@releaseDomain")
    await xs.set_perms("@introduceDomain", [Perm(0, "n")])


async def test_watch_fires_initially_and_for_children(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    r = xs_backend.root
    async with xs.watch(f"{r}/w", "tok") as events:
        assert (await events.__anext__()).path == f"{r}/w"  # the initial event
        await xs.write(f"{r}/w/child/deep", "1")
        event = await events.__anext__()
        assert (event.path, event.token) == (f"{r}/w/child/deep", "tok")
        await xs.write(f"{r}/other", "not ours")
        await xs.rm(f"{r}/w/child")
        assert (await events.__anext__()).path == f"{r}/w/child"
    with pytest.raises(LocalProtocolError, match="invalid"):
        async with xs.watch("w//x"):
            pass


async def test_removing_a_parent_fires_the_watches_below_it(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    # What rmrrd's watch on a guest's rmrr/query sees when the toolstack removes the
    # guest's whole home: an event naming the watched node, not the removed parent.
    r = xs_backend.root
    await xs.write(f"{r}/home/rmrr/query/q", "x")
    async with xs.watch(f"{r}/home/rmrr/query") as events:
        assert (await events.__anext__()).path == f"{r}/home/rmrr/query"
        await xs.rm(f"{r}/home")
        assert (await events.__anext__()).path == f"{r}/home/rmrr/query"


async def test_watch_iteration_ends_on_unwatch(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    seen: list[str] = []
    both_seen = trio.Event()
    async with xs.watch(f"{xs_backend.root}/u") as events:
        async with trio.open_nursery() as nursery:

            async def collect() -> None:
                async for event in events:
                    seen.append(event.path)
                    if len(seen) == 2:
                        both_seen.set()

            nursery.start_soon(collect)
            await xs.write(f"{xs_backend.root}/u", "1")
            # Waited for, not inferred from a later reply: through /dev/xen/xenbus the
            # dom0 kernel queues watch events from its xenwatch thread and replies from
            # another, so a reply can overtake the event of an earlier write.
            with trio.fail_after(10):
                await both_seen.wait()  # the initial event and the write's
            await xs.unwatch(events.path, events.token)  # collect() ends
    assert seen == [f"{xs_backend.root}/u"] * 2


async def test_domains_coming_and_going_fire_the_special_watches(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    async with xs.watch("@introduceDomain") as introduced, xs.watch("@releaseDomain") as released:
        assert (await introduced.__anext__()).path == "@introduceDomain"  # initial events
        assert (await released.__anext__()).path == "@releaseDomain"
        domid = await xs_backend.create_domain()
        with trio.fail_after(EVENT_TIMEOUT):
            assert (await introduced.__anext__()).path == "@introduceDomain"
        assert await xs.is_introduced(domid)
        assert await xs.get_domain_path(domid) == f"/local/domain/{domid}"
        await xs_backend.destroy_domain(domid)
        with trio.fail_after(EVENT_TIMEOUT):
            assert (await released.__anext__()).path == "@releaseDomain"
            while await xs.is_introduced(domid):  # a real xenstored may tell before it forgets
                assert (await released.__anext__()).path == "@releaseDomain"


async def test_questions_about_domains(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    assert await xs.get_domain_path(0) == "/local/domain/0"
    assert await xs.get_domain_path(31999) == "/local/domain/31999"  # any domid has a home
    assert await xs.is_introduced(0)
    assert not await xs.is_introduced(31999)
    with pytest.raises(xs_backend.expect(simulated=NoEntry, xenstored=NoEntry, oxenstored=InvalidArgument)):
        await xs.release(31999)
    with pytest.raises(NoEntry):
        await xs.set_target(31998, 31999)


async def test_introducing_a_domain_that_does_not_exist(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    # The simulated xenstored takes any domid, ring page and event channel: that is how
    # its tests play guests.  A real one maps the page and binds the channel, and fails.
    if xs_backend.real:
        with pytest.raises(InvalidArgument):
            await xs.introduce(31999, 1, 1)
        assert not await xs.is_introduced(31999)
    else:
        await xs.introduce(31999, 1, 1)
        assert await xs.is_introduced(31999)
        await xs.release(31999)


async def test_reset_watches_drops_every_watch(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    if xs_backend.transport == "xenbus":
        # The device's connection is the dom0 kernel's own: RESET_WATCHES would drop
        # the kernel's watches too, so the client refuses it there.
        with pytest.raises(LocalProtocolError, match="the dom0 kernel's own watches"):
            await xs.reset_watches()
        return
    async with xs.watch(f"{xs_backend.root}/r", "r") as events:
        assert (await events.__anext__()).path == f"{xs_backend.root}/r"
        await xs.reset_watches()
        assert [event async for event in events] == []  # ended, nothing more
    await xs.write(f"{xs_backend.root}/r", "after")  # the connection goes on


async def test_transaction_commits_and_conflicts(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    n = f"{xs_backend.root}/tx/n"
    await xs.write(n, "0")
    async with xs.transaction() as tx:
        await tx.write(n, "1")
        assert await xs.read(n) == b"0"  # isolated until commit
        assert await tx.read(n) == b"1"
    assert await xs.read(n) == b"1"
    with pytest.raises(Again):
        async with xs.transaction() as tx:
            await tx.read(n)
            await xs.write(n, "outside")  # a conflicting change
            await tx.write(n, "inside")
    assert await xs.read(n) == b"outside"
    with pytest.raises(_Abort):
        async with xs.transaction() as tx:
            await tx.write(n, "aborted")
            raise _Abort
    assert await xs.read(n) == b"outside"


async def test_run_transaction_retries_concurrent_increments(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    counter = f"{xs_backend.root}/counter"
    await xs.write(counter, "0")

    async def increment(tx: Transaction) -> int:
        value = int(await tx.read(counter)) + 1
        await trio.sleep(0)  # let the others interleave and conflict
        await tx.write(counter, str(value))
        return value

    results: list[int] = []

    async def worker() -> None:
        for _ in range(5):
            results.append(await xs.run_transaction(increment))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(worker)
    assert await xs.read(counter) == b"20"
    assert sorted(results) == list(range(1, 21))


async def test_directory_over_one_payload_uses_directory_part(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    big = f"{xs_backend.root}/big"
    names = [f"child-with-a-long-name-{i:05d}" for i in range(400)]  # ~12 kB of names
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(xs.write, f"{big}/{name}", "")
    if xs_backend.kind == "oxenstored" and xs_backend.transport == "xenbus":
        # oxenstored has no DIRECTORY_PART; on its socket it answers DIRECTORY in one
        # reply past the payload limit (client_conn.REPLY_PAYLOAD_MAX), through a ring
        # it cannot: such a listing is E2BIG there, for libxenstore too.
        with pytest.raises(TooBig):
            await xs.directory(big)
        return
    assert sorted(await xs.directory(big)) == names
    async with xs.transaction() as tx:
        assert sorted(await tx.directory(big)) == names


async def test_many_requests_in_flight(xs: XenstoreClient, xs_backend: XsBackend) -> None:
    values: dict[int, bytes] = {}

    async def one(i: int) -> None:
        await xs.write(f"{xs_backend.root}/p/{i}", str(i * i))
        values[i] = await xs.read(f"{xs_backend.root}/p/{i}")

    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(one, i)
    assert values == {i: str(i * i).encode() for i in range(300)}
