"""The pure store: permissions, watches, transactions, quotas, domains (no sockets)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from rmrrd.errors import InputError

from rmrrd.xenstore.store import DomainChange, Quotas, Store
from rmrrd.xenstore.store_persist import dump, load
from rmrrd.xenstore.wire import Op, Packet
from support.raw_xenstore import call, events, tree_op

pytestmark = pytest.mark.unit

OK = (Op.WRITE, b"OK\0")


def _guest_setup(store: Store) -> None:
    dom0 = store.connect(0)
    call(store, dom0, Op.INTRODUCE, b"5", b"1234", b"7")
    call(store, dom0, Op.MKDIR, b"/local/domain/5")
    call(store, dom0, Op.SET_PERMS, b"/local/domain/5", b"n5", b"r0")
    call(store, dom0, Op.WRITE, raw=b"/local/domain/5/data\0x")  # inherits n5 r0
    call(store, dom0, Op.WRITE, raw=b"/secret/key\0s3")
    call(store, dom0, Op.WRITE, raw=b"/public/ro\0v")
    call(store, dom0, Op.SET_PERMS, b"/public", b"n0", b"r5")
    call(store, dom0, Op.SET_PERMS, b"/public/ro", b"n0", b"r5")


def test_write_read_and_missing_parents_are_created_empty() -> None:
    store = Store()
    conn = store.connect(0)
    assert call(store, conn, Op.WRITE, raw=b"/a/b/c\0value") == OK
    assert call(store, conn, Op.READ, b"/a/b/c") == (Op.READ, b"value")
    assert call(store, conn, Op.READ, b"/a/b") == (Op.READ, b"")
    assert call(store, conn, Op.DIRECTORY, b"/a") == (Op.DIRECTORY, b"b\0")
    assert call(store, conn, Op.READ, b"/a/x") == (Op.ERROR, b"ENOENT\0")


def test_relative_paths_resolve_under_the_domain_home() -> None:
    store = Store()
    conn = store.connect(0)
    call(store, conn, Op.WRITE, raw=b"rel/x\0v")
    assert call(store, conn, Op.READ, b"/local/domain/0/rel/x") == (Op.READ, b"v")


def test_bad_paths_and_payloads_are_einval() -> None:
    store = Store()
    conn = store.connect(0)
    for bad in (b"/a//b", b"/a/", b"", b"/a b", b"/a\n", b"/\xff", b"/" + b"a" * 3072):
        assert call(store, conn, Op.READ, bad) == (Op.ERROR, b"EINVAL\0"), bad
    assert call(store, conn, Op.READ, raw=b"/a") == (Op.ERROR, b"EINVAL\0")  # no NUL
    assert call(store, conn, Op.WRITE, raw=b"/a") == (Op.ERROR, b"EINVAL\0")
    assert call(store, conn, Op.RM, b"/") == (Op.ERROR, b"EINVAL\0")
    assert call(store, conn, Op.TRANSACTION_END, b"X", tx=0) == (Op.ERROR, b"EINVAL\0")


def test_rm_missing_node_ok_if_parent_exists_else_enoent() -> None:
    store = Store()
    conn = store.connect(0)
    call(store, conn, Op.WRITE, raw=b"/p/c\0v")
    assert call(store, conn, Op.RM, b"/p/missing") == (Op.RM, b"OK\0")
    assert call(store, conn, Op.RM, b"/q/missing") == (Op.ERROR, b"ENOENT\0")
    assert call(store, conn, Op.RM, b"/p") == (Op.RM, b"OK\0")
    assert call(store, conn, Op.READ, b"/p/c") == (Op.ERROR, b"ENOENT\0")
    assert call(store, conn, Op.DIRECTORY, b"/") == (Op.DIRECTORY, b"tool\0")


def test_fresh_store_holds_tool_xenstored_as_c_xenstored() -> None:
    store = Store()
    dom0, guest = store.connect(0), store.connect(5)
    assert call(store, dom0, Op.DIRECTORY, b"/") == (Op.DIRECTORY, b"tool\0")
    assert call(store, dom0, Op.DIRECTORY, b"/tool") == (Op.DIRECTORY, b"xenstored\0")
    assert call(store, dom0, Op.READ, b"/tool/xenstored") == (Op.READ, b"")
    assert call(store, dom0, Op.GET_PERMS, b"/tool/xenstored") == (Op.GET_PERMS, b"n0\0")
    assert call(store, guest, Op.READ, b"/tool") == (Op.ERROR, b"EACCES\0")
    assert store.tree.count(0) == 3  # the root and the two, all dom0's


def test_guest_permissions_owner_default_and_listed_domains() -> None:
    store = Store()
    _guest_setup(store)
    guest = store.connect(5)
    assert call(store, guest, Op.READ, b"data") == (Op.READ, b"x")  # owner, relative
    assert call(store, guest, Op.READ, b"/secret/key") == (Op.ERROR, b"EACCES\0")
    assert call(store, guest, Op.READ, b"/public/ro") == (Op.READ, b"v")
    assert call(store, guest, Op.WRITE, raw=b"/public/ro\0w") == (Op.ERROR, b"EACCES\0")
    assert call(store, guest, Op.RM, b"/public/ro") == (Op.ERROR, b"EACCES\0")
    assert call(store, guest, Op.SET_PERMS, b"/public/ro", b"b5") == (Op.ERROR, b"EACCES\0")
    other = store.connect(6)
    assert call(store, other, Op.READ, b"/public/ro") == (Op.ERROR, b"EACCES\0")


def test_missing_node_is_eacces_when_the_parent_is_hidden() -> None:
    # C's errno_from_parents: a guest must not learn whether a hidden node exists.
    store = Store()
    _guest_setup(store)
    guest = store.connect(5)
    assert call(store, guest, Op.READ, b"/secret/nothing") == (Op.ERROR, b"EACCES\0")
    assert call(store, guest, Op.READ, b"/public/nothing") == (Op.ERROR, b"ENOENT\0")
    # Creating needs write on the nearest existing ancestor.
    assert call(store, guest, Op.WRITE, raw=b"/public/new\0x") == (Op.ERROR, b"EACCES\0")
    assert call(store, guest, Op.MKDIR, b"/public/new") == (Op.ERROR, b"EACCES\0")


def test_guest_creations_are_owned_by_the_guest_and_inherit_the_rest() -> None:
    store = Store()
    _guest_setup(store)
    guest = store.connect(5)
    assert call(store, guest, Op.WRITE, raw=b"a/b\0v") == OK
    assert call(store, guest, Op.GET_PERMS, b"a/b") == (Op.GET_PERMS, b"n5\0r0\0")
    # A guest cannot give its node away (C: EPERM), but can change the others.
    assert call(store, guest, Op.SET_PERMS, b"a/b", b"n0") == (Op.ERROR, b"EPERM\0")
    assert call(store, guest, Op.SET_PERMS, b"a/b", b"n5", b"b7") == (Op.SET_PERMS, b"OK\0")


def test_set_target_grants_the_target_domains_rights() -> None:
    store = Store()
    _guest_setup(store)
    dom0 = store.connect(0)
    call(store, dom0, Op.INTRODUCE, b"9", b"1", b"1")
    stubdom = store.connect(9)
    assert call(store, stubdom, Op.READ, b"/local/domain/5/data") == (Op.ERROR, b"EACCES\0")
    assert call(store, dom0, Op.SET_TARGET, b"9", b"5") == (Op.SET_TARGET, b"OK\0")
    assert call(store, stubdom, Op.READ, b"/local/domain/5/data") == (Op.READ, b"x")
    assert call(store, stubdom, Op.SET_TARGET, b"9", b"0") == (Op.ERROR, b"EACCES\0")


def test_watch_fires_initially_for_node_and_children_not_siblings() -> None:
    store = Store()
    conn = store.connect(0)
    assert events(store, conn, Op.WATCH, b"/w", b"tok") == [(conn.id, b"/w\0tok\0")]
    assert events(store, conn, Op.WRITE, b"/w/a/b") == [(conn.id, b"/w/a/b\0tok\0")]
    assert events(store, conn, Op.WRITE, b"/wx") == []
    assert events(store, conn, Op.WATCH, b"/w", b"tok") == []  # EEXIST
    assert call(store, conn, Op.WATCH, b"/w", b"tok") == (Op.ERROR, b"EEXIST\0")
    assert call(store, conn, Op.UNWATCH, b"/w", b"tok") == (Op.UNWATCH, b"OK\0")
    assert events(store, conn, Op.WRITE, b"/w/a") == []
    assert call(store, conn, Op.UNWATCH, b"/w", b"tok") == (Op.ERROR, b"ENOENT\0")


def test_relative_watch_gets_relative_event_paths() -> None:
    store = Store()
    conn = store.connect(0)
    assert events(store, conn, Op.WATCH, b"dev", b"t") == [(conn.id, b"dev\0t\0")]
    assert events(store, conn, Op.WRITE, b"/local/domain/0/dev/x") == [(conn.id, b"dev/x\0t\0")]


def test_removing_a_parent_fires_watches_below_with_their_own_path() -> None:
    store = Store()
    conn = store.connect(0)
    call(store, conn, Op.WRITE, raw=b"/r/a/b\0v")
    events(store, conn, Op.WATCH, b"/r/a/b", b"deep")
    events(store, conn, Op.WATCH, b"/r/a/never", b"gone")
    events(store, conn, Op.WATCH, b"/", b"root")
    got = sorted(events(store, conn, Op.RM, b"/r"))
    assert got == sorted([(conn.id, b"/r\0root\0"), (conn.id, b"/r/a/b\0deep\0"), (conn.id, b"/r/a/never\0gone\0")])


def test_events_only_reach_connections_that_may_read_the_node() -> None:
    store = Store()
    _guest_setup(store)
    dom0 = store.connect(0)
    guest = store.connect(5)
    events(store, guest, Op.WATCH, b"/public", b"g")
    got = events(store, dom0, Op.WRITE, b"/public/ro")
    assert got == [(guest.id, b"/public/ro\0g\0")]
    call(store, dom0, Op.WRITE, raw=b"/public/hidden\0x")
    call(store, dom0, Op.SET_PERMS, b"/public/hidden", b"n0")
    assert events(store, dom0, Op.WRITE, b"/public/hidden") == []


def test_special_watches_fire_on_introduce_and_release_only() -> None:
    store = Store()
    dom0 = store.connect(0)
    events(store, dom0, Op.WATCH, b"@introduceDomain", b"i")
    events(store, dom0, Op.WATCH, b"@releaseDomain", b"r")
    events(store, dom0, Op.WATCH, b"/", b"all")
    assert events(store, dom0, Op.INTRODUCE, b"3", b"1", b"2") == [(dom0.id, b"@introduceDomain\0i\0")]
    assert call(store, dom0, Op.IS_DOMAIN_INTRODUCED, b"3") == (Op.IS_DOMAIN_INTRODUCED, b"T\0")
    assert call(store, dom0, Op.GET_DOMAIN_PATH, b"3") == (Op.GET_DOMAIN_PATH, b"/local/domain/3\0")
    assert events(store, dom0, Op.RELEASE, b"3") == [(dom0.id, b"@releaseDomain\0r\0")]
    assert call(store, dom0, Op.IS_DOMAIN_INTRODUCED, b"3") == (Op.IS_DOMAIN_INTRODUCED, b"F\0")
    assert call(store, dom0, Op.RELEASE, b"3") == (Op.ERROR, b"ENOENT\0")


def test_introduce_and_release_return_their_events_and_domain_changes() -> None:
    """Through a request or called directly, nothing is parked in the store."""
    store = Store()
    dom0 = store.connect(0)
    events(store, dom0, Op.WATCH, b"@introduceDomain", b"i")
    events(store, dom0, Op.WATCH, b"@releaseDomain", b"r")
    by_request = store.handle(dom0, Packet(Op.INTRODUCE, 1, 0, b"3\x001\x002\x00"))
    assert by_request.domain_changes == [DomainChange(True, 3)]
    assert [packet.payload for _, packet in by_request.sends[1:]] == [b"@introduceDomain\0i\0"]
    direct = store.introduce(4, 1, 2)
    assert direct.domain_changes == [DomainChange(True, 4)]
    assert [(conn, packet.payload) for conn, packet in direct.sends] == [(dom0, b"@introduceDomain\0i\0")]
    released = store.release(4)
    assert released.domain_changes == [DomainChange(False, 4)]
    assert [packet.payload for _, packet in released.sends] == [b"@releaseDomain\0r\0"]
    failed = store.handle(dom0, Packet(Op.RELEASE, 2, 0, b"4\x00"))
    assert failed.domain_changes == [] and failed.sends[0][1].op is Op.ERROR


def test_release_removes_the_guests_nodes_and_guests_cannot_introduce() -> None:
    store = Store()
    _guest_setup(store)
    dom0 = store.connect(0)
    guest = store.connect(5)
    assert call(store, guest, Op.INTRODUCE, b"6", b"1", b"1") == (Op.ERROR, b"EACCES\0")
    call(store, dom0, Op.RELEASE, b"5")
    assert call(store, dom0, Op.READ, b"/local/domain/5/data") == (Op.ERROR, b"ENOENT\0")
    assert call(store, dom0, Op.READ, b"/public/ro") == (Op.READ, b"v")  # dom0's stays
    assert guest.id not in store.connections


def test_a_permission_set_before_its_domain_was_introduced_grants_nothing() -> None:
    """As C xenstored (domain_alloc_permrefs, domain_adjust_node_perms): an entry for a
    domain that did not exist yet, or for an earlier domain with the same id, is kept
    and shown but grants nothing, on the node and on the nodes later created under
    it, until the permissions are set again."""
    store = Store()
    dom0 = store.connect(0)
    call(store, dom0, Op.WRITE, raw=b"/early/old\0v")
    call(store, dom0, Op.SET_PERMS, b"/early", b"n0", b"r5")
    call(store, dom0, Op.SET_PERMS, b"/early/old", b"n0", b"r5")
    call(store, dom0, Op.INTRODUCE, b"5", b"1", b"1")
    call(store, dom0, Op.WRITE, raw=b"/early/new\0v")  # inherits the ignored entry
    guest = store.connect(5)
    for path in (b"/early/old", b"/early/new"):
        assert call(store, guest, Op.READ, path) == (Op.ERROR, b"EACCES\0"), path
    assert call(store, dom0, Op.GET_PERMS, b"/early/old") == (Op.GET_PERMS, b"n0\0r5\0")
    call(store, dom0, Op.SET_PERMS, b"/early/old", b"n0", b"r5")  # set again: granted
    assert call(store, guest, Op.READ, b"/early/old") == (Op.READ, b"v")
    call(store, dom0, Op.SET_PERMS, b"/early", b"n0", b"r5")
    call(store, dom0, Op.WRITE, raw=b"/early/newer\0w")
    assert call(store, guest, Op.READ, b"/early/newer") == (Op.READ, b"w")
    # The domain goes; another is introduced with its id: the old grants are not its.
    call(store, dom0, Op.RELEASE, b"5")
    call(store, dom0, Op.INTRODUCE, b"5", b"1", b"1")
    assert call(store, store.connect(5), Op.READ, b"/early/old") == (Op.ERROR, b"EACCES\0")
    # Set inside a transaction after the introduction, they grant too.
    _, tx = call(store, dom0, Op.TRANSACTION_START, b"")
    tx_id = int(tx.rstrip(b"\0"))
    call(store, dom0, Op.SET_PERMS, b"/early/old", b"n0", b"r5", tx=tx_id)
    call(store, dom0, Op.TRANSACTION_END, b"T", tx=tx_id)
    assert call(store, store.connect(5), Op.READ, b"/early/old") == (Op.READ, b"v")


def test_transaction_is_isolated_and_commits() -> None:
    store = Store()
    conn = store.connect(0)
    call(store, conn, Op.WRITE, raw=b"/t/a\0old")
    events(store, conn, Op.WATCH, b"/t", b"w")
    op, tx = call(store, conn, Op.TRANSACTION_START, b"")
    tx_id = int(tx.rstrip(b"\0"))
    assert events(store, conn, Op.WRITE, b"/t/a", tx=tx_id) == []  # not before commit
    call(store, conn, Op.WRITE, raw=b"/t/a\0new", tx=tx_id)
    assert call(store, conn, Op.READ, b"/t/a", tx=tx_id) == (Op.READ, b"new")
    assert call(store, conn, Op.READ, b"/t/a") == (Op.READ, b"old")
    got = events(store, conn, Op.TRANSACTION_END, b"T", tx=tx_id)
    assert got == [(conn.id, b"/t/a\0w\0"), (conn.id, b"/t/a\0w\0")]
    assert call(store, conn, Op.READ, b"/t/a") == (Op.READ, b"new")
    assert call(store, conn, Op.READ, b"/t/a", tx=tx_id) == (Op.ERROR, b"ENOENT\0")


def test_transaction_conflict_is_eagain_and_abort_discards() -> None:
    store = Store()
    conn = store.connect(0)
    call(store, conn, Op.WRITE, raw=b"/c\0a")
    tx1 = int(call(store, conn, Op.TRANSACTION_START, b"")[1].rstrip(b"\0"))
    tx2 = int(call(store, conn, Op.TRANSACTION_START, b"")[1].rstrip(b"\0"))
    assert tx1 != tx2
    call(store, conn, Op.READ, b"/c", tx=tx1)
    call(store, conn, Op.WRITE, raw=b"/c\0b")  # outside: conflicts with tx1's read
    call(store, conn, Op.WRITE, raw=b"/other\0x", tx=tx2)  # tx2 touched nothing changed
    assert call(store, conn, Op.TRANSACTION_END, b"T", tx=tx1) == (Op.ERROR, b"EAGAIN\0")
    assert call(store, conn, Op.TRANSACTION_END, b"T", tx=tx2) == (Op.TRANSACTION_END, b"OK\0")
    tx3 = int(call(store, conn, Op.TRANSACTION_START, b"")[1].rstrip(b"\0"))
    call(store, conn, Op.RM, b"/c", tx=tx3)
    assert call(store, conn, Op.TRANSACTION_END, b"F", tx=tx3) == (Op.TRANSACTION_END, b"OK\0")
    assert call(store, conn, Op.READ, b"/c") == (Op.READ, b"b")
    # As C xenstored: a request naming a transaction looks it up first (ENOENT for one
    # that ended); only starting one inside an open one is EBUSY.
    assert call(store, conn, Op.TRANSACTION_START, b"", tx=tx3) == (Op.ERROR, b"ENOENT\0")
    tx4 = int(call(store, conn, Op.TRANSACTION_START, b"")[1].rstrip(b"\0"))
    assert call(store, conn, Op.TRANSACTION_START, b"", tx=tx4) == (Op.ERROR, b"EBUSY\0")


def test_quotas_apply_to_guests_with_xenstored_errors() -> None:
    quotas = Quotas(nodes=4, watches=2, transactions=1, node_perms=2, node_size=100)
    store = Store(quotas)
    _guest_setup(store)
    guest = store.connect(5)
    # dom5 owns /local/domain/5 and /data already (2 of 4).
    assert call(store, guest, Op.WRITE, raw=b"a/b/c\0v") == (Op.ERROR, b"ENOSPC\0")
    assert call(store, guest, Op.READ, b"a") == (Op.ERROR, b"ENOENT\0")  # nothing half-made
    assert call(store, guest, Op.WRITE, raw=b"a/b\0v") == OK
    assert call(store, guest, Op.WRITE, raw=b"c\0v") == (Op.ERROR, b"ENOSPC\0")
    assert call(store, guest, Op.WRITE, raw=b"data\0" + b"x" * 100) == (Op.ERROR, b"ENOSPC\0")
    assert call(store, guest, Op.READ, b"data") == (Op.READ, b"x")
    assert call(store, guest, Op.SET_PERMS, b"data", b"n5", b"r1", b"r2") == (Op.ERROR, b"ENOSPC\0")
    call(store, guest, Op.WATCH, b"data", b"1")
    call(store, guest, Op.WATCH, b"data", b"2")
    assert call(store, guest, Op.WATCH, b"data", b"3") == (Op.ERROR, b"E2BIG\0")
    call(store, guest, Op.TRANSACTION_START, b"")
    assert call(store, guest, Op.TRANSACTION_START, b"") == (Op.ERROR, b"ENOSPC\0")
    dom0 = store.connect(0)  # privileged: no quotas, as C xenstored
    for i in range(5):
        assert call(store, dom0, Op.WATCH, b"/x", str(i).encode()) == (Op.WATCH, b"OK\0")


def _names(count: int) -> list[bytes]:
    return [f"child-with-a-long-name-{i:05d}".encode() for i in range(count)]


def test_directory_over_one_payload_is_e2big_and_directory_part_pages_it() -> None:
    store = Store()
    conn = store.connect(0)
    names = _names(300)  # about 9 KiB of names
    for name in names:
        call(store, conn, Op.WRITE, raw=b"/big/" + name + b"\0")
    assert call(store, conn, Op.DIRECTORY, b"/big") == (Op.ERROR, b"E2BIG\0")
    got: list[bytes] = []
    offset, gens = 0, set()
    while True:
        op, payload = call(store, conn, Op.DIRECTORY_PART, b"/big", str(offset).encode())
        assert op is Op.DIRECTORY_PART and len(payload) <= 4096
        gen, _, rest = payload.partition(b"\0")
        gens.add(gen)
        if rest == b"\0" or rest == b"":
            break
        final = rest.endswith(b"\0\0")
        chunk = rest[:-1] if final else rest
        got.extend(chunk.rstrip(b"\0").split(b"\0"))
        offset += len(chunk)
        if final:
            break
    assert got == names and len(gens) == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["w", "rm", "perm"]), st.lists(st.sampled_from(["a", "b", "c", "tool"]), min_size=1, max_size=3)), max_size=25))
def test_persisted_tree_round_trips(ops: list[tuple[str, list[str]]]) -> None:
    store = Store()
    conn = store.connect(0)
    for kind, parts in ops:
        tree_op(store, conn, kind, parts)
    again = load(dump(store), "test")
    assert dump(again) == dump(store)
    assert again.tree.nodes.keys() == store.tree.nodes.keys()  # a removed /tool stays removed
    assert {k: v for k, v in again.tree.counts.items() if v} == {k: v for k, v in store.tree.counts.items() if v}
    for name, node in store.tree.nodes.items():
        twin = again.tree.nodes[name]
        assert (twin.value, twin.perms, list(twin.children)) == (node.value, node.perms, list(node.children))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"{not json", "not valid JSON: Expecting property name"),
        (b"[" * 100_000, "not valid JSON"),
        (b"[" * 100 + b"]" * 100, "nested deeper than 64 levels"),
        (b"[1, 2]", "not a saved xenstore tree: 'list' object has no attribute 'get'"),
        (b'{"version": 9}', "not a saved xenstore tree: format version 9, expected 1"),
        (b'{"version": 1, "nodes": [], "special": {}, "domains": {}, "targets": {}}',
         "not a saved xenstore tree: no root node"),
        (b'{"version": 1, "nodes": [["/", "", ["n0"]], ["/a//b", "", ["n0"]]], "special": {}, "domains": {}, '
         b'"targets": {}}', "not a saved xenstore tree: invalid path '/a//b'"),
        (b'{"version": 1, "nodes": [["/", "' + b"A" * 8000 + b'", ["n0"]]], "special": {}, "domains": {}, '
         b'"targets": {}}', "not a saved xenstore tree: a value of 6000 bytes, more than one payload"),
        (b'{"version": 1, "nodes": [["/", "", ["x0"]]], "special": {}, "domains": {}, "targets": {}}',
         "not a saved xenstore tree: EINVAL: permission #0"),
    ],
)
def test_damaged_persistence_file_is_an_input_error_naming_it(data: bytes, why: str) -> None:
    with pytest.raises(InputError, match=f"^/var/lib/tree.json: {re.escape(why)}"):
        load(data, "/var/lib/tree.json")


def test_transaction_node_and_path_length_quotas_for_guests() -> None:
    store = Store(Quotas(transaction_nodes=3, path_max=12))
    _guest_setup(store)
    guest = store.connect(5)
    tx = int(call(store, guest, Op.TRANSACTION_START, b"")[1].rstrip(b"\0"))
    assert call(store, guest, Op.WRITE, raw=b"data\0y", tx=tx) == OK  # touches 1 node
    assert call(store, guest, Op.WRITE, raw=b"n1\0z", tx=tx) == OK  # n1 and its parent: 3
    assert call(store, guest, Op.WRITE, raw=b"n2\0z", tx=tx) == (Op.ERROR, b"ENOSPC\0")
    assert call(store, guest, Op.TRANSACTION_END, b"T", tx=tx) == (Op.TRANSACTION_END, b"OK\0")
    assert call(store, guest, Op.READ, b"n1") == (Op.READ, b"z")
    assert call(store, guest, Op.READ, b"n2") == (Op.ERROR, b"ENOENT\0")
    assert call(store, guest, Op.WRITE, raw=b"twelve-bytes\0v") == OK  # 12 below its home
    assert call(store, guest, Op.WRITE, raw=b"thirteen-byte\0v") == (Op.ERROR, b"EINVAL\0")
    dom0 = store.connect(0)  # privileged: neither quota
    assert call(store, dom0, Op.WRITE, raw=b"/local/domain/5/thirteen-byte\0v") == OK
