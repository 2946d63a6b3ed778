"""The client against a fake xenstored played with the codec over a socketpair, with
trio's autojump clock: timeouts, drops, backoff and misbehaving servers, no sleeping."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from rmrrd.xenstore import locate as locate_module
from rmrrd.xenstore.client import ConnectionLost, XenstoreClient, XenstoreTimeout, locate_xenstore, open_xenstore
from rmrrd.xenstore.client_conn import REPLY_PAYLOAD_MAX, DeviceChannel
from rmrrd.xenstore.client_watch import QUEUE_LIMIT
from rmrrd.xenstore.wire import (
    HEADER,
    PAYLOAD_MAX,
    Again,
    Decoder,
    LocalProtocolError,
    Op,
    Packet,
    RemoteProtocolError,
    TooBig,
    encode,
    error_packet,
)


class FakeServer:
    """One accepted connection, as the test drives it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = Decoder()

    async def receive(self) -> Packet:
        while (packet := self.decoder.next_packet()) is None:
            data = await self.stream.receive_some(65536)
            assert data, "client closed the connection"
            self.decoder.feed(data)
        return packet

    async def send(self, *packets: Packet) -> None:
        await self.stream.send_all(b"".join(map(encode, packets)))

    async def answer(self, request: Packet, payload: bytes = b"OK\0") -> None:
        await self.send(Packet(request.op, request.req_id, request.tx_id, payload))


class Connector:
    """Hands the client one end of a socketpair, failing the first ``failures`` tries.

    ``device``: the client's end comes as a DeviceChannel, as ``/dev/xen/xenbus`` would.
    """

    def __init__(self, device: bool = False) -> None:
        self.failures = 0
        self.attempts = 0
        self.device = device
        self.accepted_send, self.accepted = trio.open_memory_channel[FakeServer](10)

    async def __call__(self) -> socket.socket | DeviceChannel:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionLost("fake: nobody listening")
        client_end, server_end = socket.socketpair()
        self.accepted_send.send_nowait(FakeServer(trio.SocketStream(trio.socket.from_stdlib_socket(server_end))))
        if self.device:
            return DeviceChannel(client_end.detach())
        return client_end


@asynccontextmanager
async def connected(timeout: float = 10, device: bool = False,
                    ) -> AsyncIterator[tuple[XenstoreClient, FakeServer, Connector]]:
    """A client connected to a fresh fake server: (client, server, connector)."""
    connector = Connector(device)
    async with open_xenstore(connect=connector, timeout=timeout) as xs:
        yield xs, await connector.accepted.receive(), connector


async def test_replies_matched_by_req_id_in_any_order(autojump_clock: trio.testing.MockClock) -> None:
    async with connected() as (xs, server, connector):
        results: dict[str, bytes] = {}

        async def read(path: str) -> None:
            results[path] = await xs.read(path)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "/a")
            nursery.start_soon(read, "/b")
            first, second = await server.receive(), await server.receive()
            assert first.req_id != second.req_id
            await server.answer(second, b"value of " + second.payload[:-1])
            await server.answer(first, b"value of " + first.payload[:-1])
        assert results == {"/a": b"value of /a", "/b": b"value of /b"}


async def test_timeout_then_late_reply_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    async with connected(timeout=3) as (xs, server, connector):
        start = trio.current_time()
        with pytest.raises(XenstoreTimeout, match="READ within 3"):
            await xs.read("/slow")
        assert trio.current_time() - start == pytest.approx(3)
        late = await server.receive()
        await server.answer(late, b"too late")

        async def serve_one() -> None:
            request = await server.receive()
            await server.answer(request, b"fresh")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one)
            assert await xs.read("/next") == b"fresh"


async def test_drop_fails_in_flight_at_once_then_backoff_restores_watches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    connector = Connector()
    reconnects: list[float] = []

    async def on_reconnect() -> None:
        reconnects.append(trio.current_time())

    async with open_xenstore(connect=connector, timeout=100, on_reconnect=on_reconnect) as xs:
        server = await connector.accepted.receive()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_until_two_events, xs)
            watch = await server.receive()
            assert (watch.op, watch.payload) == (Op.WATCH, b"/w\0tok\0")
            await server.answer(watch)
            await server.send(Packet(Op.WATCH_EVENT, 0, 0, b"/w\0tok\0"))

            failures: list[BaseException] = []

            async def doomed() -> None:
                with pytest.raises(ConnectionLost) as info:
                    await xs.read("/x")
                failures.append(info.value)

            for _ in range(3):
                nursery.start_soon(doomed)
            for _ in range(3):
                await server.receive()
            connector.failures = 3
            dropped_at = trio.current_time()
            await server.stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert len(failures) == 3 and trio.current_time() == dropped_at  # at once, no timeout
            server = await connector.accepted.receive()
            rewatch = await server.receive()  # the watch is registered again
            assert (rewatch.op, rewatch.payload) == (Op.WATCH, b"/w\0tok\0")
            assert connector.attempts == 5  # first connect, three refused, this one
            # Backed off 0.05, 0.1, 0.2 s, each jittered down to no less than half.
            assert 0.175 <= trio.current_time() - dropped_at <= 0.35
            await server.answer(rewatch)
            await server.send(Packet(Op.WATCH_EVENT, 0, 0, b"/w\0tok\0"))
        assert len(reconnects) == 1 and xs.generation == 1


async def test_lost_failed_and_back_are_told_as_they_happen(autojump_clock: trio.testing.MockClock) -> None:
    """``on_lost`` once per connection that served; ``on_connect_failed`` for each refused
    attempt and for a connection that dropped before its watches were back."""
    connector = Connector()
    told: list[str] = []

    async def on_reconnect() -> None:
        told.append("back")

    async with open_xenstore(connect=connector, timeout=100, on_reconnect=on_reconnect,
                             on_lost=lambda why: told.append(f"lost: {why}"),
                             on_connect_failed=lambda why: told.append(f"failed: {why}")) as xs:
        server = await connector.accepted.receive()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_until_two_events, xs)
            await server.answer(await server.receive())
            await server.send(Packet(Op.WATCH_EVENT, 0, 0, b"/w\0tok\0"))
            connector.failures = 2
            await server.stream.aclose()
            server = await connector.accepted.receive()
            await server.receive()  # the watch again, never answered: this one dies young
            await server.stream.aclose()
            server = await connector.accepted.receive()
            await server.answer(await server.receive())
            await server.send(Packet(Op.WATCH_EVENT, 0, 0, b"/w\0tok\0"))
    assert [entry.split(":")[0] for entry in told] == ["lost", "failed", "failed", "failed", "back"]
    assert told[0] == "lost: connection lost: xenstored closed the connection"
    assert told[3] == "failed: connection lost: xenstored closed the connection"


async def _watch_until_two_events(xs: XenstoreClient) -> None:
    async with xs.watch("/w", "tok") as events:
        for _ in range(2):
            assert (await events.__anext__()).path == "/w"


async def test_wrong_reply_type_and_garbage(autojump_clock: trio.testing.MockClock) -> None:
    async with connected() as (xs, server, connector):
        async with trio.open_nursery() as nursery:

            async def answer_with_mkdir() -> None:
                request = await server.receive()
                await server.send(Packet(Op.MKDIR, request.req_id, 0, b"OK\0"))

            nursery.start_soon(answer_with_mkdir)
            with pytest.raises(RemoteProtocolError, match="MKDIR reply to a READ"):
                await xs.read("/a")

            async def answer_with_garbage() -> None:
                await server.receive()
                await server.stream.send_all(HEADER.pack(99, 0, 0, 0))

            nursery.start_soon(answer_with_garbage)
            with pytest.raises(ConnectionLost, match="unknown message type 99"):
                await xs.read("/b")
        await connector.accepted.receive()  # and it reconnected


async def test_errors_raise_their_errno_class_and_give_up_after_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with connected() as (xs, server, connector):

        async def always_conflicting() -> None:
            while True:
                request = await server.receive()
                if request.op is Op.TRANSACTION_START:
                    await server.answer(request, b"42\0")
                elif request.op is Op.TRANSACTION_END:
                    assert (request.tx_id, request.payload) == (42, b"T\0")
                    await server.send(error_packet(request.req_id, request.tx_id, "EAGAIN"))
                else:
                    assert request.tx_id == 42
                    await server.answer(request)

        async def body(tx: object) -> None:
            calls.append(1)

        calls: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(always_conflicting)
            with pytest.raises(Again, match="TRANSACTION_END"):
                await xs.run_transaction(body, attempts=4)
            nursery.cancel_scope.cancel()
        assert len(calls) == 4


async def test_slow_watch_consumer_gets_one_coalesced_event(autojump_clock: trio.testing.MockClock) -> None:
    async with connected() as (xs, server, connector):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                request = await server.receive()
                await server.answer(request)
                events = [Packet(Op.WATCH_EVENT, 0, 0, f"/w/{i}\0t\0".encode()) for i in range(QUEUE_LIMIT + 50)]
                await server.send(*events)
                answer = await server.receive()  # the reader never blocked on the watch
                await server.answer(answer, b"still responsive")

            nursery.start_soon(serve)
            async with xs.watch("/w", "t") as watch:
                assert await xs.read("/r") == b"still responsive"
                paths = [(await watch.__anext__()).path for _ in range(QUEUE_LIMIT + 1)]
            assert paths[:QUEUE_LIMIT] == [f"/w/{i}" for i in range(QUEUE_LIMIT)]
            assert paths[-1] == "/w"  # "something changed below: look again"
            nursery.cancel_scope.cancel()


async def test_first_connect_failure_is_clear() -> None:
    with pytest.raises(ConnectionLost, match="cannot connect to xenstored at /nonexistent/sock"):
        async with open_xenstore("/nonexistent/sock"):
            pass


def test_locate_xenstore_argument_then_env_then_dom0_sockets_then_xenbus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first, second = tmp_path / "run", tmp_path / "var-run"
    monkeypatch.setattr(locate_module, "DEFAULT_SOCKETS", (str(first), str(second)))
    monkeypatch.delenv("XENSTORED_PATH", raising=False)
    assert locate_xenstore() == "/dev/xen/xenbus"  # nothing else there
    second.touch()
    assert locate_xenstore() == str(second)
    first.touch()
    assert locate_xenstore() == str(first)
    monkeypatch.setenv("XENSTORED_PATH", "/env/sock")
    assert locate_xenstore() == "/env/sock"
    assert locate_xenstore("/arg/sock") == "/arg/sock"


def test_device_channel_writes_one_message_per_write() -> None:
    # The xenbus driver takes one message per write(); a pipe stands in for it.
    read_end, write_end = os.pipe()
    channel = DeviceChannel(write_end)
    try:
        first, second = encode(Packet(Op.READ, 1, 0, b"/a\0")), encode(Packet(Op.WRITE, 2, 0, b"/b\0v"))
        assert channel.send(first + second) == len(first)
        assert channel.send(second) == len(second)
        assert os.read(read_end, 1000) == first + second
        assert channel.fileno() == write_end and not os.get_blocking(write_end)
    finally:
        channel.close()
        os.close(read_end)


async def test_directory_parts_restart_when_the_node_changes(autojump_clock: trio.testing.MockClock) -> None:
    # As C xenstored answers: <gen>|<names>|*, the last part ending in an empty name.
    script = [
        (b"0", b"7\0alpha\0beta\0"),
        (b"11", b"8\0gamma\0delta\0"),  # generation 8: the node changed, start over
        (b"0", b"8\0alpha\0beta\0"),
        (b"11", b"8\0gamma\0\0"),  # the last part
    ]
    async with connected() as (xs, server, connector):

        async def serve() -> None:
            listing = await server.receive()
            assert listing.op is Op.DIRECTORY
            await server.send(error_packet(listing.req_id, 0, "E2BIG"))
            for offset, reply in script:
                request = await server.receive()
                assert (request.op, request.payload) == (Op.DIRECTORY_PART, b"/d\0" + offset + b"\0")
                await server.answer(request, reply)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            assert await xs.directory("/d") == ["alpha", "beta", "gamma"]


async def test_directory_too_big_without_directory_part(autojump_clock: trio.testing.MockClock) -> None:
    async with connected() as (xs, server, connector):

        async def serve() -> None:
            for errno_name in ("E2BIG", "ENOSYS"):
                request = await server.receive()
                await server.send(error_packet(request.req_id, 0, errno_name))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            with pytest.raises(TooBig, match="no DIRECTORY_PART"):
                await xs.directory("/huge")


async def test_through_the_xenbus_device_one_request_is_in_flight_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Linux's xenbus driver queues a request with its body still in the file's one
    # message buffer; a second write before the first is on the ring overwrites it.
    # Pipelined, the real xenstored got each other's bodies (a WRITE of /p/121 stored
    # nothing, its READ found ENOENT).  So the next request waits for the reply.
    async with connected(device=True) as (xs, server, _):
        results: dict[str, bytes] = {}

        async def read(path: str) -> None:
            results[path] = await xs.read(path)

        async with trio.open_nursery() as nursery:
            for path in ("/a", "/b", "/c"):
                nursery.start_soon(read, path)
            for _ in range(3):
                request = await server.receive()
                with trio.move_on_after(1) as idle:
                    await server.receive()  # nothing more may come before the answer
                assert idle.cancelled_caught
                await server.answer(request, b"value of " + request.payload[:-1])
        assert results == {path: b"value of " + path.encode() for path in ("/a", "/b", "/c")}
        # A caller that gives up leaves its request in flight: the next one still waits.
        with trio.move_on_after(2):
            await xs.read("/gave-up")
        abandoned = await server.receive()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "/next")
            with trio.move_on_after(1) as idle:
                await server.receive()
            assert idle.cancelled_caught
            await server.answer(abandoned, b"late")
            request = await server.receive()
            assert request.payload == b"/next\0"
            await server.answer(request, b"fresh")
        assert results["/next"] == b"fresh"


async def test_through_the_xenbus_device_a_message_is_at_most_4096_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The driver's buffer holds XENSTORE_PAYLOAD_MAX bytes with the header: a longer
    # write fails with EINVAL, which would drop the connection.  Refused before sending.
    async with connected(device=True) as (xs, server, _):
        largest = PAYLOAD_MAX - HEADER.size - len("/v") - 1
        with pytest.raises(LocalProtocolError) as info:
            await xs.write("/v", b"x" * (largest + 1))
        assert info.value.errno_name == "E2BIG"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(xs.write, "/v", b"x" * largest)
            request = await server.receive()
            assert HEADER.size + len(request.payload) == PAYLOAD_MAX
            await server.answer(request)


async def test_through_the_xenbus_device_reset_watches_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    # The device shares the dom0 kernel's connection: RESET_WATCHES would drop its watches.
    async with connected(device=True) as (xs, server, _):
        with pytest.raises(LocalProtocolError, match="the dom0 kernel's own watches"):
            await xs.reset_watches()
        async with trio.open_nursery() as nursery:  # nothing was sent; the line is free
            nursery.start_soon(xs.read, "/a")
            request = await server.receive()
            assert request.op is Op.READ
            await server.answer(request, b"v")


async def test_a_reply_longer_than_one_payload_is_taken(autojump_clock: trio.testing.MockClock) -> None:
    # oxenstored answers DIRECTORY on its unix socket with every name in one reply,
    # past XENSTORE_PAYLOAD_MAX (where C xenstored answers E2BIG).
    names = [f"child-{i:05d}" for i in range(1500)]
    payload = b"".join(name.encode() + b"\0" for name in names)
    assert len(payload) > PAYLOAD_MAX
    async with connected() as (xs, server, connector):
        listed: list[str] = []

        async def ls() -> None:
            listed.extend(await xs.directory("/big"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ls)
            request = await server.receive()
            await server.stream.send_all(HEADER.pack(Op.DIRECTORY, request.req_id, 0, len(payload)) + payload)
        assert listed == names

        async def announce_too_much() -> None:
            await server.receive()
            await server.stream.send_all(HEADER.pack(Op.READ, 0, 0, REPLY_PAYLOAD_MAX + 1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(announce_too_much)
            with pytest.raises(ConnectionLost, match="payload"):
                await xs.read("/x")
        await connector.accepted.receive()  # garbage still drops the connection
