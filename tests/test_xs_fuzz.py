"""Fuzzing the simulated xenstored: whatever any client sends, it keeps serving.

Two levels.  The pure store gets random request sequences from dom0 and two guests
(hypothesis): every request gets exactly one reply, everything it hands out fits
the wire, and its books (nodes and memory per owner, each domain's watches,
transactions and memory, the watch index) always match a recount.  The trio server
gets random requests and garbage from several connections at once on real sockets:
afterwards it still serves a fresh dom0 client, and nothing was an internal error.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.raw_xenstore import RawClient
from rmrrd.xenstore.client import open_xenstore
from rmrrd.xenstore.server import XenstoredHandle, serve_xenstored
from rmrrd.xenstore.store import Quotas, Store
from rmrrd.xenstore.wire import HEADER, PAYLOAD_MAX, Op, Packet, encode

pytestmark = pytest.mark.unit

NAMES = [b"local", b"domain", b"5", b"6", b"a", b"b", b"rmrr", b"query", b"tool", b"@x"]
TOKENS = [b"t", b"", b"w" * 300, b"x" * 4000, b"y" * 4085]


def _path(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.05:
        return rng.choice([b"", b"//", b"/a/", b"\xff", b"@introduceDomain", b"@releaseDomain", b"a" * 3100])
    parts = [rng.choice(NAMES) for _ in range(rng.randint(0, 5))]
    if roll < 0.2:
        return b"/".join(parts) or b"a"  # relative
    return b"/" + b"/".join(parts)


def random_packet(rng: random.Random, tx_ids: list[int]) -> Packet:
    """One request as a careless or hostile client might send it."""
    op = rng.choice(list(Op))
    tx = rng.choice([0, 0, 0, *tx_ids, rng.randrange(1 << 32)])
    path = _path(rng)
    if op in (Op.WRITE,):
        payload = path + b"\0" + rng.randbytes(rng.choice([0, 3, 200, 2500]))
    elif op in (Op.WATCH, Op.UNWATCH):
        payload = path + b"\0" + rng.choice(TOKENS) + b"\0"
    elif op is Op.SET_PERMS:
        perms = [rng.choice([b"n0", b"r5", b"w6", b"b5", b"n5", b"x1", b"r99999"]) for _ in range(rng.randint(0, 7))]
        payload = path + b"\0" + b"".join(p + b"\0" for p in perms)
    elif op is Op.TRANSACTION_END:
        payload = rng.choice([b"T\0", b"F\0", b"X\0", b""])
    elif op in (Op.INTRODUCE, Op.RELEASE, Op.RESUME, Op.IS_DOMAIN_INTRODUCED, Op.SET_TARGET, Op.GET_DOMAIN_PATH):
        payload = b"".join(str(rng.choice([5, 6, 7, 0, 32752, 99999])).encode() + b"\0"
                           for _ in range(rng.randint(0, 3)))
    elif op is Op.DIRECTORY_PART:
        payload = path + b"\0" + str(rng.choice([0, 5, 10_000])).encode() + b"\0"
    elif rng.random() < 0.1:
        payload = rng.randbytes(rng.randint(0, 300))
    else:
        payload = path + b"\0"
    return Packet(op, rng.randrange(1 << 32), tx, payload[:PAYLOAD_MAX])


def check_books(store: Store) -> None:
    """Every count the store keeps equals a recount from scratch."""
    tree = store.tree
    counts: dict[int, int] = {}
    memory: dict[int, int] = {}
    for path, node in tree.nodes.items():
        counts[node.owner] = counts.get(node.owner, 0) + 1
        memory[node.owner] = memory.get(node.owner, 0) + node.charge(path)
        assert node.size == node.charge(path), path
        for child in node.children:
            assert f"{path.rstrip('/')}/{child}" in tree.nodes, (path, child)
        if path != "/":
            parent = path.rsplit("/", 1)[0] or "/"
            assert path.rsplit("/", 1)[1] in tree.nodes[parent].children, path
    assert {k: v for k, v in tree.counts.items() if v} == counts
    assert {k: v for k, v in tree.memory.items() if v} == memory
    for domid, usage in store.usage.items():
        conns = [conn for conn in store.connections.values() if conn.domid == domid]
        assert all(conn.usage is usage for conn in conns)
        assert usage.connections == len(conns)
        assert usage.watches == sum(len(conn.watches) for conn in conns)
        assert usage.transactions == sum(len(conn.transactions) for conn in conns)
        assert usage.held == (sum(watch.size for conn in conns for watch in conn.watches.values())
                              + sum(tx.view.charged for conn in conns for tx in conn.transactions.values()))
        assert usage.held >= 0 and not usage.idle
    assert len(store._watches) == sum(len(conn.watches) for conn in store.connections.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 120))
def test_random_requests_always_get_one_reply_and_keep_the_books(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    store = Store(Quotas(nodes=40, watches=6, transactions=3, memory=40_000, connections=3))
    store.introduce(5, 1, 1)
    store.introduce(6, 1, 1)
    conns = [store.connect(0), store.connect(5), store.connect(5), store.connect(6)]
    for _ in range(steps):
        conn = rng.choice([c for c in conns if c.id in store.connections] or [store.connect(0)])
        roll = rng.random()
        if roll < 0.03:
            store.disconnect(conn)
            continue
        if roll < 0.06:
            try:
                conns.append(store.connect(rng.choice([0, 5, 6])))
            except Exception as exc:  # a domain's connection quota
                assert "ENOSPC" in str(exc)
            continue
        packet = random_packet(rng, list(conn.transactions))
        out = store.handle(conn, packet)
        (first, reply), rest = out.sends[0], out.sends[1:]
        assert first is conn and reply.req_id == packet.req_id and reply.op in (packet.op, Op.ERROR)
        assert all(event.op is Op.WATCH_EVENT for _, event in rest)
        for _, sent in out.sends:
            encode(sent)
    check_books(store)
    for conn in list(store.connections.values()):
        store.disconnect(conn)
    assert not store.usage and not len(store._watches)


async def hammer(path: Path, seed: int, requests: int, *, reads: bool) -> None:
    """One client sending ``requests`` random requests (now and then bytes that are
    no request at all), reading the answers or not."""
    rng = random.Random(seed)
    client = await RawClient.connect(path)
    try:
        async with trio.open_nursery() as nursery:
            if reads:
                async def drain() -> None:
                    try:
                        while True:
                            await client.receive()
                    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                nursery.start_soon(drain)
            for _ in range(requests):
                if rng.random() < 0.01:
                    data = rng.choice([rng.randbytes(40), HEADER.pack(99, 1, 0, 0), HEADER.pack(2, 1, 0, 5000)])
                else:
                    data = encode(random_packet(rng, [1, 2]))
                try:
                    await client.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break  # closed for garbage, or for its quota: that client only
            with trio.move_on_after(1):
                await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    finally:
        await client.stream.aclose()


async def test_the_server_serves_on_whatever_its_clients_send(nursery: trio.Nursery, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    handle: XenstoredHandle = await nursery.start(serve_xenstored, tmp_path / "xs.sock")
    async with open_xenstore(str(handle.socket_path)) as xs:
        for domid in (5, 6):
            await xs.introduce(domid, 1, 1)
            await xs.write(f"/local/domain/{domid}/x", "")
        with trio.fail_after(60):
            async with trio.open_nursery() as clients:
                for n, (where, reads) in enumerate([(handle.socket_path, True), (handle.socket_path, False),
                                                     (handle.guest_socket(5), True), (handle.guest_socket(5), False),
                                                     (handle.guest_socket(6), True)]):
                    clients.start_soon(lambda p=where, s=n, r=reads: hammer(p, 1000 + s, 600, reads=r))
        await xs.write("/after", "fuzz")
        assert await xs.read("/after") == b"fuzz"
    async with open_xenstore(str(handle.socket_path)) as fresh:
        assert await fresh.read("/after") == b"fuzz"
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
