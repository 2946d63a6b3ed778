"""The rmrrd client against the simulated xenstored over a real unix socket:
every operation and error path, guests, transactions, big directories, restarts."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from rmrrd.xenstore.client import ConnectionLost, Transaction, XenstoreClient, open_xenstore
from rmrrd.xenstore.server import XenstoredHandle, serve_xenstored
from rmrrd.xenstore.wire import (
    PAYLOAD_MAX,
    Again,
    InvalidArgument,
    LocalProtocolError,
    NoEntry,
    Perm,
    PermissionDenied,
)
from support.processes import XenstoredProcess


@pytest.fixture
async def xs(xenstored: XenstoredHandle) -> AsyncIterator[XenstoreClient]:
    async with open_xenstore(str(xenstored.socket_path), timeout=5) as client:
        yield client


async def test_read_write_mkdir_rm_directory(xs: XenstoreClient) -> None:
    await xs.write("/a/b/c", "value")
    assert await xs.read("/a/b/c") == b"value"
    assert await xs.read("/a/b") == b""  # parents made empty
    await xs.write("/a/bin", b"x\0y\0")  # values are binary, NULs included
    assert await xs.read("/a/bin") == b"x\0y\0"
    await xs.write("/a/empty", b"")
    assert await xs.read("/a/empty") == b""
    await xs.mkdir("/a/b")  # existing: value kept
    assert await xs.read("/a/b/c") == b"value"
    assert sorted(await xs.directory("/a")) == ["b", "bin", "empty"]
    assert await xs.exists("/a/b") and not await xs.exists("/a/zz")
    await xs.rm("/a/b")
    assert not await xs.exists("/a/b/c")
    await xs.rm("/a/b")  # absent, parent present: fine
    with pytest.raises(NoEntry, match="READ /a/b"):
        await xs.read("/a/b")
    with pytest.raises(NoEntry):
        await xs.rm("/nope/child")  # parent absent too
    with pytest.raises(InvalidArgument):
        await xs.rm("/")


async def test_bad_requests_fail_before_sending(xs: XenstoreClient) -> None:
    with pytest.raises(LocalProtocolError, match="invalid xenstore path"):
        await xs.read("/a//b")
    with pytest.raises(LocalProtocolError) as info:
        await xs.write("/big", b"x" * PAYLOAD_MAX)
    assert info.value.errno_name == "E2BIG"
    await xs.write("/still/fine", "ok")  # the connection was not harmed
    assert await xs.read("/still/fine") == b"ok"


async def test_permissions_for_a_guest_connection(xs: XenstoreClient, xenstored: XenstoredHandle) -> None:
    await xs.write("/secret", "s3")
    await xs.write("/public/ro", "v")
    await xs.set_perms("/public", [Perm(0, "n"), Perm(5, "r")])
    await xs.set_perms("/public/ro", [Perm(0, "n"), Perm(5, "r")])
    assert await xs.get_perms("/public/ro") == [Perm(0, "n"), Perm(5, "r")]
    await xs.introduce(5, 1234, 7)
    assert await xs.is_introduced(5) and not await xs.is_introduced(6)
    assert await xs.get_domain_path(5) == "/local/domain/5"
    await xs.mkdir("/local/domain/5")
    await xs.set_perms("/local/domain/5", [Perm(5, "n"), Perm(0, "r")])
    async with open_xenstore(str(xenstored.guest_socket(5)), timeout=5) as guest:
        with pytest.raises(PermissionDenied, match="READ /secret"):
            await guest.read("/secret")
        assert await guest.read("/public/ro") == b"v"
        with pytest.raises(PermissionDenied):
            await guest.write("/public/ro", "w")
        with pytest.raises(PermissionDenied):
            await guest.set_perms("/public/ro", [Perm(5, "b")])
        await guest.write("data/x", "relative")  # resolves under the guest's home
        assert await xs.read("/local/domain/5/data/x") == b"relative"
        with pytest.raises(PermissionDenied):  # as C xenstored: EACCES, not EPERM
            await guest.introduce(8, 1, 1)


async def test_set_target_release_and_reset_watches(xs: XenstoreClient, xenstored: XenstoredHandle) -> None:
    await xs.introduce(5, 1, 1)
    await xs.introduce(6, 1, 1)
    await xs.write("/local/domain/5/dm", "x")
    await xs.set_perms("/local/domain/5/dm", [Perm(5, "n")])
    async with open_xenstore(str(xenstored.guest_socket(6)), timeout=5) as dm:
        with pytest.raises(PermissionDenied):
            await dm.read("/local/domain/5/dm")
        await xs.set_target(6, 5)  # 6 now acts for 5, as a device model for its guest
        assert await dm.read("/local/domain/5/dm") == b"x"
    with pytest.raises(NoEntry):
        await xs.set_target(7, 5)  # not introduced
    async with xs.watch("/r", "r") as events:
        assert (await events.__anext__()).path == "/r"
        await xs.reset_watches()
        assert [event async for event in events] == []  # ended, nothing more
    await xs.release(5)
    assert not await xs.is_introduced(5)
    with pytest.raises(NoEntry):
        await xs.read("/local/domain/5/dm")  # the released domain's nodes went with it
    with pytest.raises(NoEntry):
        await xs.release(5)


async def test_watch_fires_initially_and_for_children(xs: XenstoreClient) -> None:
    async with xs.watch("/w", "tok") as events:
        assert (await events.__anext__()).path == "/w"  # the initial event
        await xs.write("/w/child/deep", "1")
        seen = [(await events.__anext__()) for _ in range(1)]
        assert seen[0].path == "/w/child/deep" and seen[0].token == "tok"
        await xs.write("/other", "not ours")
        await xs.rm("/w/child")
        assert (await events.__anext__()).path == "/w/child"
    with pytest.raises(LocalProtocolError, match="invalid"):
        async with xs.watch("w//x"):
            pass


async def test_watch_iteration_ends_on_unwatch_and_special_paths_work(xs: XenstoreClient) -> None:
    seen: list[str] = []
    async with xs.watch("@introduceDomain") as events:
        async with trio.open_nursery() as nursery:

            async def collect() -> None:
                async for event in events:
                    seen.append(event.path)

            nursery.start_soon(collect)
            await xs.introduce(9, 1, 1)
            await xs.unwatch(events.path, events.token)  # collect() ends
    assert seen == ["@introduceDomain", "@introduceDomain"]


async def test_transaction_commits_and_conflicts(xs: XenstoreClient) -> None:
    await xs.write("/tx/n", "0")
    async with xs.transaction() as tx:
        await tx.write("/tx/n", "1")
        assert await xs.read("/tx/n") == b"0"  # isolated until commit
        assert await tx.read("/tx/n") == b"1"
    assert await xs.read("/tx/n") == b"1"
    with pytest.raises(Again):
        async with xs.transaction() as tx:
            await tx.read("/tx/n")
            await xs.write("/tx/n", "outside")  # a conflicting change
            await tx.write("/tx/n", "inside")
    assert await xs.read("/tx/n") == b"outside"
    with pytest.raises(RuntimeError):
        async with xs.transaction() as tx:
            await tx.write("/tx/n", "aborted")
            raise RuntimeError("the block failed")
    assert await xs.read("/tx/n") == b"outside"


async def test_run_transaction_retries_concurrent_increments(xs: XenstoreClient) -> None:
    await xs.write("/counter", "0")

    async def increment(tx: Transaction) -> int:
        value = int(await tx.read("/counter")) + 1
        await trio.sleep(0)  # let the others interleave and conflict
        await tx.write("/counter", str(value))
        return value

    results: list[int] = []

    async def worker() -> None:
        for _ in range(5):
            results.append(await xs.run_transaction(increment))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(worker)
    assert await xs.read("/counter") == b"20"
    assert sorted(results) == list(range(1, 21))


async def test_directory_over_one_payload_uses_directory_part(xs: XenstoreClient) -> None:
    names = [f"child-with-a-long-name-{i:05d}" for i in range(400)]  # ~12 kB of names
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(xs.write, f"/big/{name}", "")
    assert sorted(await xs.directory("/big")) == names
    async with xs.transaction() as tx:
        assert len(await tx.directory("/big")) == len(names)


async def test_many_requests_in_flight(xs: XenstoreClient) -> None:
    values: dict[int, bytes] = {}

    async def one(i: int) -> None:
        await xs.write(f"/p/{i}", str(i * i))
        values[i] = await xs.read(f"/p/{i}")

    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(one, i)
    assert values == {i: str(i * i).encode() for i in range(300)}


async def test_restart_under_live_watches(tmp_path: Path) -> None:
    socket_path, persist = tmp_path / "xs.sock", tmp_path / "tree.json"
    reconnected = trio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    async with trio.open_nursery() as nursery:
        server_scope = await nursery.start(_cancellable_server, socket_path, persist)
        async with open_xenstore(str(socket_path), timeout=5, on_reconnect=on_reconnect) as xs:
            await xs.write("/keep", "1")
            async with xs.watch("/keep", "k") as events:
                assert (await events.__anext__()).path == "/keep"
                server_scope.cancel()  # xenstored dies
                with pytest.raises(ConnectionLost):
                    with trio.fail_after(5):
                        while True:  # whatever is in flight when it drops fails at once
                            await xs.read("/keep")
                await nursery.start(_cancellable_server, socket_path, persist)
                with trio.fail_after(10):
                    await reconnected.wait()
                    assert (await events.__anext__()).path == "/keep"  # fires again
                assert xs.generation == 1
                assert await xs.read("/keep") == b"1"  # the persisted tree is back
                await xs.write("/keep/x", "2")
                assert (await events.__anext__()).path == "/keep/x"
        nursery.cancel_scope.cancel()


async def _cancellable_server(
    socket_path: Path, persist: Path, *, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_xenstored(socket_path, persist=persist, task_status=task_status))
            task_status.started(scope)


async def _xenstored_process(socket_path: Path) -> XenstoredProcess:
    """``rmrrd xenstored`` as its own process, once it listens (started off the loop)."""
    return await trio.to_thread.run_sync(XenstoredProcess, socket_path)


@pytest.mark.process
async def test_sigkilled_xenstored_process_restarted_under_live_watches(tmp_path: Path) -> None:
    # SIGKILL leaves the socket file behind: reconnect attempts meet ECONNREFUSED
    # and back off until the new process replaces the stale socket.
    socket_path = tmp_path / "xs.sock"
    reconnects: list[int] = []
    server = await _xenstored_process(socket_path)
    try:
        async def on_reconnect() -> None:
            reconnects.append(client.generation)

        async with open_xenstore(str(socket_path), timeout=10, on_reconnect=on_reconnect) as client:
            async with client.watch("/w", "w") as events:
                assert (await events.__anext__()).path == "/w"
                server.process.send_signal(signal.SIGKILL)
                await trio.to_thread.run_sync(server.process.wait)
                assert socket_path.is_socket()  # stale, nobody listening
                server = await _xenstored_process(socket_path)
                with trio.fail_after(15):
                    assert (await events.__anext__()).path == "/w"  # re-registered: initial event again
                    await client.write("/w/child", "1")  # a fresh tree: nothing persisted
                    assert (await events.__anext__()).path == "/w/child"
                # Usually one reconnect; two when the first lands in the dying
                # process's listen backlog and is reset.  Told each time, watches back.
                assert reconnects and reconnects[-1] == client.generation >= 1
    finally:
        server.process.kill()
        await trio.to_thread.run_sync(server.process.wait)
