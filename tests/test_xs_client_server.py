"""The rmrrd client against the simulated xenstored over a real unix socket: what
only the simulated xenstored can show (guest connections on demand, targets, restarts).
Every operation, error, watch and transaction is in test_xs_conformance.py, which runs
against the real xenstoreds too."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from rmrrd.xenstore.client import ConnectionLost, XenstoreClient, open_xenstore
from rmrrd.xenstore.server import XenstoredHandle, serve_xenstored
from rmrrd.xenstore.wire import NoEntry, Perm, PermissionDenied
from support.processes import XenstoredProcess


@pytest.fixture
async def xs(xenstored: XenstoredHandle) -> AsyncIterator[XenstoreClient]:
    async with open_xenstore(str(xenstored.socket_path), timeout=5) as client:
        yield client


async def test_permissions_for_a_guest_connection(xs: XenstoreClient, xenstored: XenstoredHandle) -> None:
    await xs.introduce(5, 1234, 7)
    assert await xs.is_introduced(5) and not await xs.is_introduced(6)
    await xs.write("/secret", "s3")
    await xs.write("/public/ro", "v")
    await xs.set_perms("/public", [Perm(0, "n"), Perm(5, "r")])
    await xs.set_perms("/public/ro", [Perm(0, "n"), Perm(5, "r")])
    assert await xs.get_perms("/public/ro") == [Perm(0, "n"), Perm(5, "r")]
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
