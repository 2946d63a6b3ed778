"""The simulated xenstored against a hostile guest, in the pure store: quotas per
domain however many connections it opens, C xenstored's privileged-only requests,
and replies and events held to the wire's limits.

C xenstored's facts (Xen 4.17, ``tools/xenstore/``): ``wire_funcs[]`` in
xenstored_core.c marks CONTROL, INTRODUCE, RELEASE, IS_DOMAIN_INTRODUCED, RESUME and
SET_TARGET ``XS_FLAG_PRIV`` (EACCES for a guest before anything else is looked at);
``process_message`` looks up the transaction of every request but WATCH and
UNWATCH (ENOENT for an unknown one); ``send_event`` drops an event larger than
XENSTORE_PAYLOAD_MAX; ``send_reply`` answers E2BIG for a reply that large.
"""

from __future__ import annotations

import pytest

from support.raw_xenstore import call, events
from rmrrd.xenstore.store import Quotas, Store
from rmrrd.xenstore.wire import PAYLOAD_MAX, Op, Packet, encode

pytestmark = pytest.mark.unit


def guest_store(quotas: Quotas | None = None) -> Store:
    store = Store(quotas)
    store.introduce(5, 1, 1)
    store.introduce(6, 1, 1)
    dom0 = store.connect(0)
    for domid in (5, 6):
        call(store, dom0, Op.WRITE, raw=f"/local/domain/{domid}\0".encode())
        call(store, dom0, Op.SET_PERMS, f"/local/domain/{domid}".encode(), f"n{domid}".encode())
    return store


@pytest.mark.parametrize(("op", "args"), [
    (Op.IS_DOMAIN_INTRODUCED, [b"6"]),
    (Op.IS_DOMAIN_INTRODUCED, [b"5"]),
    (Op.INTRODUCE, [b"7", b"1", b"1"]),
    (Op.RELEASE, [b"6"]),
    (Op.RESUME, [b"6"]),
    (Op.SET_TARGET, [b"5", b"6"]),
    (Op.CONTROL, [b"help"]),
    (Op.CONTROL, [b"no-such-command"]),
])
def test_privileged_requests_are_eacces_for_a_guest_whatever_they_say(op: Op, args: list[bytes]) -> None:
    """XSA-115: a guest may not even ask whether another domain exists."""
    store = guest_store()
    assert call(store, store.connect(5), op, *args) == (Op.ERROR, b"EACCES\0")
    assert call(store, store.connect(0), Op.IS_DOMAIN_INTRODUCED, b"6") == (Op.IS_DOMAIN_INTRODUCED, b"T\0")


def test_get_domain_path_is_open_to_guests_as_in_c_xenstored() -> None:
    store = guest_store()
    assert call(store, store.connect(5), Op.GET_DOMAIN_PATH, b"6") == (Op.GET_DOMAIN_PATH, b"/local/domain/6\0")


@pytest.mark.parametrize("op", [Op.READ, Op.DIRECTORY, Op.GET_DOMAIN_PATH, Op.RESET_WATCHES, Op.TRANSACTION_END])
def test_an_unknown_transaction_is_enoent_for_every_request_but_watches(op: Op) -> None:
    store = guest_store()
    conn = store.connect(0)
    assert call(store, conn, op, b"/local", tx=99) == (Op.ERROR, b"ENOENT\0")
    assert call(store, conn, Op.WATCH, b"/local", b"t", tx=99) == (Op.WATCH, b"OK\0")
    assert call(store, conn, Op.UNWATCH, b"/local", b"t", tx=99) == (Op.UNWATCH, b"OK\0")


def test_a_watch_event_too_large_for_the_wire_is_dropped_not_fatal() -> None:
    """The attack that stopped the whole server: a token so long that the event for
    a long path cannot be encoded.  Now the event is dropped (C's send_event) and
    every other watch still fires."""
    store = guest_store()
    guest, dom0 = store.connect(5), store.connect(0)
    token = b"t" * (PAYLOAD_MAX - 40)
    # The initial event (path + token) still fits: it is sent.
    assert [len(p) for _, p in events(store, guest, Op.WATCH, b"/local/domain/5", token)] == [15 + 1 + len(token) + 1]
    call(store, dom0, Op.WATCH, b"/local/domain/5", b"ok")
    deep = b"/local/domain/5/" + b"x" * 100
    out = store.handle(guest, Packet(Op.WRITE, 1, 0, deep + b"\0v")).sends
    assert out[0][1].op is Op.WRITE
    assert [(conn.id, packet.payload) for conn, packet in out[1:]] == [(dom0.id, deep + b"\0ok\0")]
    for _, packet in out:
        encode(packet)  # every packet the store hands out fits the wire


def test_a_reply_too_large_for_the_wire_is_e2big() -> None:
    """A value can only be as large as a WRITE carries, but a saved tree is not a
    WRITE: a READ reply is held to the limit all the same (C's send_reply)."""
    store = guest_store()
    store.tree.nodes["/local"].value = b"v" * (PAYLOAD_MAX + 1)
    assert call(store, store.connect(0), Op.READ, b"/local") == (Op.ERROR, b"E2BIG\0")


def test_watch_quota_counts_every_connection_of_the_domain() -> None:
    store = guest_store(Quotas(watches=3))
    first, second = store.connect(5), store.connect(5)
    for n in range(2):
        assert call(store, first, Op.WATCH, b"/local/domain/5", str(n).encode())[0] is Op.WATCH
    assert call(store, second, Op.WATCH, b"/local/domain/5", b"x")[0] is Op.WATCH
    assert call(store, second, Op.WATCH, b"/local/domain/5", b"y") == (Op.ERROR, b"E2BIG\0")
    assert call(store, store.connect(6), Op.WATCH, b"/local/domain/6", b"y")[0] is Op.WATCH  # another domain's own
    store.disconnect(first)
    assert call(store, second, Op.WATCH, b"/local/domain/5", b"y")[0] is Op.WATCH


def test_transaction_quota_counts_every_connection_of_the_domain() -> None:
    store = guest_store(Quotas(transactions=2))
    conns = [store.connect(5) for _ in range(3)]
    assert call(store, conns[0], Op.TRANSACTION_START, b"")[0] is Op.TRANSACTION_START
    assert call(store, conns[1], Op.TRANSACTION_START, b"")[0] is Op.TRANSACTION_START
    assert call(store, conns[2], Op.TRANSACTION_START, b"") == (Op.ERROR, b"ENOSPC\0")
    call(store, conns[0], Op.RESET_WATCHES, b"")  # drops its transactions too
    assert call(store, conns[2], Op.TRANSACTION_START, b"")[0] is Op.TRANSACTION_START


def test_connection_quota_per_domain_and_never_for_dom0() -> None:
    store = guest_store(Quotas(connections=2))
    kept = [store.connect(5), store.connect(5)]
    with pytest.raises(Exception, match="ENOSPC"):
        store.connect(5)
    store.connect(6)
    for _ in range(10):
        store.connect(0)
    store.disconnect(kept[0])
    store.connect(5)


def test_a_transaction_flood_is_enomem_at_the_memory_quota_and_given_back() -> None:
    """Each transaction's copies are charged to the domain that opened it: a guest
    that reads its whole subtree in transaction after transaction meets ENOMEM,
    and gets the memory back when they end."""
    quotas = Quotas(memory=64 * 1024, transactions=100)
    store = guest_store(quotas)
    guest = store.connect(5)
    value = b"v" * 1500
    for n in range(20):
        assert call(store, guest, Op.WRITE, raw=f"/local/domain/5/n{n}\0".encode() + value)[0] is Op.WRITE
    owned = store.memory(5)
    assert 20 * 1500 < owned < 64 * 1024
    errors = []
    for _ in range(20):
        tx = int(call(store, guest, Op.TRANSACTION_START, b"")[1].rstrip(b"\0"))
        for n in range(20):
            op, payload = call(store, guest, Op.READ, f"/local/domain/5/n{n}".encode(), tx=tx)
            if op is Op.ERROR:
                errors.append(payload)
    assert errors and set(errors) == {b"ENOMEM\0"}
    assert store.memory(5) <= quotas.memory
    call(store, guest, Op.RESET_WATCHES, b"")
    assert store.memory(5) == owned
    store.disconnect(guest)
    assert 5 not in store.usage  # nothing held: the domain's usage is forgotten


def test_watch_tokens_count_against_memory_and_writes_too() -> None:
    store = guest_store(Quotas(memory=16 * 1024, watches=1000))
    guest = store.connect(5)
    replies = [call(store, guest, Op.WATCH, b"/local/domain/5", str(n).encode() + b"t" * 2000)[1] for n in range(10)]
    assert b"ENOMEM\0" in replies and store.memory(5) <= 16 * 1024
    assert call(store, guest, Op.WRITE, raw=b"/local/domain/5/big\0" + b"v" * 2000) == (Op.ERROR, b"ENOMEM\0")
    assert store.tree.get("/local/domain/5/big") is None  # refused whole


def test_dom0_is_exempt_from_every_quota() -> None:
    store = Store(Quotas(memory=1024, watches=1, transactions=1, connections=1))
    dom0 = store.connect(0)
    for n in range(5):
        assert call(store, dom0, Op.WATCH, b"/", str(n).encode() + b"t" * 1000)[0] is Op.WATCH
        assert call(store, dom0, Op.TRANSACTION_START, b"")[0] is Op.TRANSACTION_START
        assert call(store, dom0, Op.WRITE, raw=f"/n{n}\0".encode() + b"v" * 3000)[0] is Op.WRITE
    assert not store.usage


def test_teardown_leaves_other_connections_watches_in_place() -> None:
    """Many watches on one path, from many connections: removing one connection's
    removes exactly those, in O(its watches) (the index keeps a dict per path)."""
    store = Store()
    conns = [store.connect(0) for _ in range(50)]
    for conn in conns:
        for n in range(20):
            call(store, conn, Op.WATCH, b"/a", f"{conn.id}-{n}".encode())
    for conn in conns[::2]:
        store.disconnect(conn)
    fired = events(store, conns[1], Op.WRITE, b"/a")
    assert sorted(fired) == sorted((conn.id, f"/a\0{conn.id}-{n}\0".encode())
                                   for conn in conns[1::2] for n in range(20))
