"""The trio server: framing, guest sockets, protocol errors, persistence."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import trio

from rmrrd.xenstore.server import OUTPUT_LIMIT, XenstoredHandle, serve_xenstored
from rmrrd.xenstore.wire import Op, Packet, encode
from support.raw_xenstore import RawClient


async def test_replies_echo_ids_and_events_follow_the_reply(xenstored: XenstoredHandle) -> None:
    client = await RawClient.connect(xenstored.socket_path)
    reply = await client.call(Op.WRITE, b"/x", tx=0, req=42)
    assert (reply.op, reply.req_id, reply.payload) == (Op.WRITE, 42, b"OK\0")
    reply = await client.call(Op.WATCH, b"/x", b"tok", req=43)
    assert (reply.op, reply.req_id) == (Op.WATCH, 43)
    event = await client.receive()
    assert (event.op, event.payload) == (Op.WATCH_EVENT, b"/x\0tok\0")
    other = await RawClient.connect(xenstored.socket_path)
    assert (await other.call(Op.WRITE, b"/x/y")).op is Op.WRITE
    event = await client.receive()
    assert event.payload == b"/x/y\0tok\0"


async def test_pipelined_requests_are_answered_in_order(xenstored: XenstoredHandle) -> None:
    client = await RawClient.connect(xenstored.socket_path)
    batch = b"".join(encode(Packet(Op.WRITE, i, 0, f"/p/{i}\0v".encode())) for i in range(200))
    await client.stream.send_all(batch)
    ids = [(await client.receive()).req_id for _ in range(200)]
    assert ids == list(range(200))


async def test_garbage_closes_only_that_connection(xenstored: XenstoredHandle) -> None:
    good = await RawClient.connect(xenstored.socket_path)
    bad = await RawClient.connect(xenstored.socket_path)
    await bad.stream.send_all(struct.pack("<IIII", 999, 0, 0, 0))
    assert await bad.stream.receive_some(100) == b""
    assert (await good.call(Op.READ, b"/")).op is Op.READ


async def test_a_watcher_that_never_reads_is_dropped_and_the_others_go_on(
        xenstored: XenstoredHandle, caplog: pytest.LogCaptureFixture) -> None:
    """The output quota: events pile up for a connection that does not read them;
    past OUTPUT_LIMIT xenstored closes that connection rather than grow without bound."""
    sleeper = await RawClient.connect(xenstored.socket_path)
    assert (await sleeper.call(Op.WATCH, b"/", b"w")).op is Op.WATCH  # then it never reads again
    writer = await RawClient.connect(xenstored.socket_path)
    path = b"/" + b"n" * 3000  # each write: an event of about 3 KB for the sleeper
    batch = encode(Packet(Op.WRITE, 0, 0, path + b"\0v")) * 100
    for _ in range(2 * OUTPUT_LIMIT // (100 * len(path))):
        await writer.stream.send_all(batch)
        for _ in range(100):
            assert (await writer.receive()).op is Op.WRITE
    # What the sleeper's socket buffers held, then the end: xenstored hung up.
    received = 0
    with trio.fail_after(10):
        while data := await sleeper.stream.receive_some(1 << 20):
            received += len(data)
    assert received < OUTPUT_LIMIT
    assert "reads too slowly, closing" in caplog.text
    assert (await writer.call(Op.READ, path)).payload == b"v"


async def test_guest_socket_acts_as_the_guest_until_released(xenstored: XenstoredHandle) -> None:
    dom0 = await RawClient.connect(xenstored.socket_path)
    await dom0.call(Op.WRITE, b"/private")
    assert (await dom0.call(Op.INTRODUCE, b"7", b"100", b"3")).op is Op.INTRODUCE
    guest = await RawClient.connect(xenstored.guest_socket(7))
    reply = await guest.call(Op.READ, b"/private")
    assert (reply.op, reply.payload) == (Op.ERROR, b"EACCES\0")
    reply = await guest.call(Op.INTRODUCE, b"8", b"1", b"1")
    assert reply.payload == b"EACCES\0"
    await dom0.call(Op.WATCH, b"@releaseDomain", b"rel")
    await dom0.receive()  # initial event
    assert (await dom0.call(Op.RELEASE, b"7")).op is Op.RELEASE
    assert (await dom0.receive()).payload == b"@releaseDomain\0rel\0"
    assert await guest.stream.receive_some(100) == b""
    assert not xenstored.guest_socket(7).exists()


async def test_persisted_tree_survives_a_restart(tmp_path: Path) -> None:
    sock, state = tmp_path / "xs.sock", tmp_path / "tree.json"
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(lambda task_status: serve_xenstored(sock, persist=state, task_status=task_status))
        client = await RawClient.connect(handle.socket_path)
        await client.call(Op.WRITE, b"/keep/me", b"")
        await client.call(Op.SET_PERMS, b"/keep/me", b"n0", b"r4")
        await client.call(Op.INTRODUCE, b"4", b"1", b"1")
        nursery.cancel_scope.cancel()
    assert not sock.exists()
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(lambda task_status: serve_xenstored(sock, persist=state, task_status=task_status))
        client = await RawClient.connect(handle.socket_path)
        assert (await client.call(Op.GET_PERMS, b"/keep/me")).payload == b"n0\0r4\0"
        guest = await RawClient.connect(handle.guest_socket(4))
        assert (await guest.call(Op.READ, b"/keep/me")).op is Op.READ
        nursery.cancel_scope.cancel()
