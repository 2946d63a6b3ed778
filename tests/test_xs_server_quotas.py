"""The trio server against a guest that floods it: connections, unread replies,
unread events, descriptors.  Every time, the flooding domain is held to its quota
and dom0 and the other guests are served as before."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
from pathlib import Path

import pytest
import trio

from support import WAIT
from support.processes import XenstoredProcess
from support.raw_xenstore import RawClient
from rmrrd.xenstore.client import open_xenstore
from rmrrd.xenstore.server import DOM0_RESERVE, XenstoredHandle, serve_xenstored
from rmrrd.xenstore.store import Quotas
from rmrrd.xenstore.wire import Op, Packet, encode


async def introduced(handle: XenstoredHandle, *domids: int) -> None:
    dom0 = await RawClient.connect(handle.socket_path)
    for domid in domids:
        await dom0.call(Op.INTRODUCE, str(domid).encode(), b"1", b"1")
        await dom0.call(Op.WRITE, f"/local/domain/{domid}".encode())
        await dom0.call(Op.SET_PERMS, f"/local/domain/{domid}".encode(), f"n{domid}".encode())
        await dom0.call(Op.WRITE, f"/local/domain/{domid}/x".encode())  # the guest's, as its parent
    await dom0.stream.aclose()


async def is_closed(client: RawClient) -> bool:
    """Whether the server closed ``client`` (it answers nothing more)."""
    with trio.fail_after(WAIT):
        try:
            return await client.stream.receive_some(100) == b""
        except trio.BrokenResourceError:
            return True


async def test_a_guest_past_its_connections_is_closed_and_dom0_is_not(
        nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    handle: XenstoredHandle = await nursery.start(serve_xenstored, tmp_path / "xs.sock")
    await introduced(handle, 5, 6)
    quota = handle.store.quotas.connections
    kept = [await RawClient.connect(handle.guest_socket(5)) for _ in range(quota)]
    for client in kept:
        assert (await client.call(Op.READ, b"x")).op is Op.READ
    extra = [await RawClient.connect(handle.guest_socket(5)) for _ in range(3)]
    for client in extra:
        assert await is_closed(client)
    assert caplog.text.count("dom5: connection refused") == 1  # one warning for the episode
    other = await RawClient.connect(handle.guest_socket(6))
    assert (await other.call(Op.READ, b"x")).op is Op.READ
    dom0 = [await RawClient.connect(handle.socket_path) for _ in range(2 * quota)]
    for client in dom0:
        assert (await client.call(Op.READ, b"/local")).op is Op.READ
    await kept[0].stream.aclose()
    with trio.fail_after(WAIT):
        while len([c for c in handle.store.connections.values() if c.domid == 5]) == quota:
            await trio.sleep(0.01)
    again = await RawClient.connect(handle.guest_socket(5))
    assert (await again.call(Op.READ, b"x")).op is Op.READ


async def test_a_guest_that_never_reads_its_replies_stops_being_read(nursery: trio.Nursery, tmp_path: Path) -> None:
    """The outstanding-request quota: a guest pipelining requests without reading a
    reply is read no further once its domain has that many replies unsent; others
    are served meanwhile, and the guest gets every reply, in order, once it reads."""
    handle: XenstoredHandle = await nursery.start(serve_xenstored, tmp_path / "xs.sock")
    await introduced(handle, 5)
    flood = await RawClient.connect(handle.guest_socket(5))
    value = b"v" * 100
    assert (await flood.call(Op.READ, b"x")).op is Op.READ
    dom0 = await RawClient.connect(handle.socket_path)
    await dom0.call(Op.WRITE, b"/local/domain/5/big\0" + value)
    await dom0.call(Op.SET_PERMS, b"/local/domain/5/big", b"n5")
    count = 50_000  # a megabyte of requests: more than the socket buffers hold
    sent = trio.Event()

    async def send() -> None:
        await flood.stream.send_all(b"".join(encode(Packet(Op.READ, n, 0, b"big\0")) for n in range(count)))
        sent.set()

    nursery.start_soon(send)
    await trio.sleep(0.5)
    # The server holds its quota's worth of replies and reads no further, so the
    # guest's requests are still in the socket's buffers and the sender is blocked.
    usage = handle.store.usage[5]
    assert usage.outstanding <= handle.store.quotas.outstanding
    assert usage.held <= handle.store.quotas.outstanding * (16 + len(value) + 1)  # header, value, the call's NUL
    assert not sent.is_set()
    assert (await dom0.call(Op.READ, b"/local/domain/5/x")).op is Op.READ
    ids = []
    with trio.fail_after(WAIT):
        for _ in range(count):
            reply = await flood.receive()
            assert reply.payload == value + b"\0"
            ids.append(reply.req_id)
        await sent.wait()
    assert ids == list(range(count))


async def test_events_for_a_guest_that_never_reads_are_dropped_at_its_memory_quota(
        nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store_quotas = Quotas(memory=256 * 1024)
    handle: XenstoredHandle = await nursery.start(
        lambda task_status: serve_xenstored(tmp_path / "xs.sock", quotas=store_quotas, task_status=task_status))
    await introduced(handle, 5)
    sleeper = await RawClient.connect(handle.guest_socket(5))
    assert (await sleeper.call(Op.WATCH, b"x", b"w")).op is Op.WATCH
    await sleeper.receive()  # its initial event; then it reads nothing
    dom0 = await RawClient.connect(handle.socket_path)
    long_name = b"/local/domain/5/x/" + b"n" * 2000
    batch = encode(Packet(Op.WRITE, 0, 0, long_name + b"\0v")) * 100
    for _ in range(20):  # 2000 events of 2 KB: 4 MB the guest never reads
        await dom0.stream.send_all(batch)
        for _ in range(100):
            assert (await dom0.receive()).op is Op.WRITE
    assert handle.store.memory(5) <= store_quotas.memory
    assert caplog.text.count("dom5 conn") >= 1 and "watch events dropped" in caplog.text
    assert (await dom0.call(Op.READ, b"/local/domain/5/x")).op is Op.READ


def _low_descriptor_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


@pytest.mark.process
def test_guests_never_take_the_descriptors_dom0_needs(tmp_path: Path) -> None:
    """At its descriptor limit the server used to stop accepting dom0 as well.  Now
    guests together hold at most the limit less DOM0_RESERVE: past it their
    connections are refused, dom0's still accepted."""
    limit = DOM0_RESERVE + 40
    sock = Path(os.path.join("/tmp", f"rmrrd-fd-{os.getpid()}.sock"))
    server = XenstoredProcess(sock, preexec_fn=lambda: _low_descriptor_limit(limit))
    try:
        async def attack() -> None:
            async with open_xenstore(str(sock)) as xs:
                for domid in range(1, 11):
                    await xs.introduce(domid, 1, 1)
            guests = []
            for domid in range(1, 11):  # 10 domains x 8 connections: more than 40
                for _ in range(8):
                    guests.append(await RawClient.connect(Path(f"{sock}.d/{domid}")))
            answered = 0
            for client in guests:
                try:
                    await client.stream.send_all(encode(Packet(Op.GET_DOMAIN_PATH, 1, 0, b"1\0")))
                    with trio.fail_after(WAIT):
                        answered += (await client.receive()).op is Op.GET_DOMAIN_PATH
                except (EOFError, trio.BrokenResourceError):
                    pass  # refused: closed at once
            assert 30 <= answered <= 40, answered
            for _ in range(3):
                async with open_xenstore(str(sock)) as xs:
                    await xs.write("/dom0", "still served")
                    assert await xs.read("/dom0") == b"still served"

        trio.run(attack)
        server.log.wait_for("connection refused: guests hold")
    finally:
        server.stop()
        subprocess.run(["rm", "-rf", f"{sock}.d"], check=False)
    assert "Traceback" not in server.log.text()
