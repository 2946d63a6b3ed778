"""``rmrrd xenstored --persist``: an acknowledged write survives any crash.

The pure part first: a snapshot plus the journal's records rebuilds exactly the
live store, whatever was done to it (hypothesis), including across a compaction.
Then the files: a record cut short by the crash is dropped, damage elsewhere is an
error naming the file.  Then the promise itself, with real processes: writes and
transactions acknowledged by ``rmrrd xenstored --persist`` are all there after a
SIGKILL, however soon after the acknowledgement it came.  Last, a journal that
cannot be written stops the server before it acknowledges anything.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from support.processes import XenstoredProcess
from support.raw_xenstore import call, tree_op
from rmrrd.errors import InputError
from rmrrd.xenstore import journal
from rmrrd.xenstore.client import ConnectionLost, Transaction, open_xenstore
from rmrrd.xenstore.journal import FRAME, journal_path, load
from rmrrd.xenstore.server import serve_xenstored
from rmrrd.xenstore.store import Store
from rmrrd.xenstore.store_persist import decode_changes, dump, dump_snapshot, encode_changes
from rmrrd.xenstore.wire import Op

OPS = st.lists(st.tuples(st.sampled_from(["w", "rm", "perm", "tx", "intro", "release", "take", "snap"]),
                         st.lists(st.sampled_from(["a", "b", "c", "tool", "local"]), min_size=1, max_size=3)),
               max_size=40)


@pytest.mark.unit
@settings(max_examples=60, deadline=None)
@given(OPS)
def test_snapshot_and_journal_rebuild_the_live_store(ops: list[tuple[str, list[str]]]) -> None:
    store = Store()
    store.track_changes()
    conn = store.connect(0)
    snapshot, records = dump(store), []
    for kind, parts in ops:
        path = ("/" + "/".join(parts)).encode()
        if tree_op(store, conn, kind, parts):
            pass
        elif kind == "tx":
            tx = int(call(store, conn, Op.TRANSACTION_START, b"")[1].rstrip(b"\0"))
            call(store, conn, Op.WRITE, raw=path + b"/t\0x", tx=tx)
            call(store, conn, Op.RM, b"/" + parts[0].encode(), tx=tx)
            call(store, conn, Op.TRANSACTION_END, b"T", tx=tx)
        elif kind == "intro":
            store.introduce(len(parts) + 2, 1, 2)
        elif kind == "release" and len(parts) + 2 in store.introduced:
            store.release(len(parts) + 2)
        elif kind == "take" and (changes := store.take_changes()) is not None:
            records.append(encode_changes(changes))
        elif kind == "snap":
            snapshot = dump_snapshot(store.snapshot())  # a compaction: later records replay on it
    if (changes := store.take_changes()) is not None:
        records.append(encode_changes(changes))
    rebuilt = journal.store_persist.load(snapshot, "snapshot")
    for n, record in enumerate(records):
        rebuilt.apply_changes(decode_changes(record, f"record {n}"))
    assert dump(rebuilt) == dump(store)
    assert rebuilt.generation == store.generation
    for path, node in store.tree.nodes.items():
        assert list(rebuilt.tree.nodes[path].children) == list(node.children)
    assert {k: v for k, v in rebuilt.tree.memory.items() if v} == {k: v for k, v in store.tree.memory.items() if v}


def frame(payload: bytes) -> bytes:
    import zlib
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def saved(tmp_path: Path, *writes: bytes) -> tuple[Path, list[bytes]]:
    """A snapshot of a fresh store in tmp_path/tree, and one journal record per write."""
    store = Store()
    path = tmp_path / "tree"
    path.write_bytes(dump(store))
    store.track_changes()
    conn = store.connect(0)
    records = []
    for write in writes:
        call(store, conn, Op.WRITE, raw=write)
        changes = store.take_changes()
        assert changes is not None
        records.append(frame(encode_changes(changes)))
    return path, records


@pytest.mark.unit
@pytest.mark.parametrize("cut", [1, FRAME.size, FRAME.size + 3, -1])
def test_a_record_cut_short_by_the_crash_is_dropped(tmp_path: Path, cut: int,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    path, records = saved(tmp_path, b"/a\0one", b"/b\0two")
    torn = records[1][:cut]
    journal_path(path).write_bytes(records[0] + torn)
    store = load(path)
    assert store.tree.get("/a") is not None and store.tree.get("/b") is None
    assert f"dropped {len(torn)} bytes of a record cut short" in caplog.text
    assert journal_path(path).read_bytes() == records[0]  # the next record appends after the good one


@pytest.mark.unit
def test_a_damaged_record_before_the_end_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path, records = saved(tmp_path, b"/a\0one", b"/b\0two")
    damaged = bytearray(records[0])
    damaged[-2] ^= 0xFF
    journal_path(path).write_bytes(bytes(damaged) + records[1])
    with pytest.raises(InputError, match=rf"^{journal_path(path)}: damaged record at byte 0 \(checksum\)$"):
        load(path)


@pytest.mark.unit
@pytest.mark.parametrize(("payload", "why"), [
    (b'{"generation": 99, "nodes": [["/x", "", ["n0"], ["ghost"]]]}', "leaves /x without its parent or child ghost"),
    (b'{"generation": 99, "nodes": [["//", "", ["n0"], []]]}', "not a journal record: invalid path '//'"),
    (b'["not", "a", "record"]', "not a journal record"),
    (b"[" * 5000, "not valid JSON"),
])
def test_a_record_that_is_not_one_is_an_error_naming_the_file(tmp_path: Path, payload: bytes, why: str) -> None:
    path, records = saved(tmp_path, b"/a\0one")
    journal_path(path).write_bytes(records[0] + frame(payload) + records[0])
    with pytest.raises(InputError, match=rf"^{journal_path(path)}.*{why}"):
        load(path)


@pytest.mark.unit
def test_files_larger_than_a_store_are_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "tree"
    os.symlink("/dev/zero", path)
    with pytest.raises(InputError, match=r"tree: larger than \d+ bytes: not a saved xenstore tree$"):
        load(path)


@pytest.mark.unit
async def test_the_journal_is_folded_into_the_snapshot_and_both_reload(
        nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "COMPACT_MIN", 20_000)
    path = tmp_path / "tree"
    scope = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[object]) -> None:
        with scope:
            await serve_xenstored(tmp_path / "xs.sock", persist=path, task_status=task_status)

    handle = await nursery.start(serve)
    async with open_xenstore(str(tmp_path / "xs.sock")) as xs:
        for n in range(300):
            await xs.write(f"/data/{n}", "x" * 200)
    assert journal_path(path).stat().st_size < 20_000 + 300 * 400  # folded at least once
    live = dump(handle.store)  # type: ignore[attr-defined]
    scope.cancel()
    await trio.sleep(0)
    assert dump(load(path)) == live


@pytest.mark.unit
async def test_a_journal_that_cannot_be_written_stops_the_server_unacknowledged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def full(self: journal.Journal, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    acknowledged = []
    with pytest.raises(BaseExceptionGroup) as stopped:
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: serve_xenstored(tmp_path / "xs.sock", persist=tmp_path / "tree",
                                                                    task_status=task_status))
            monkeypatch.setattr(journal.Journal, "_append", full)
            async with open_xenstore(str(tmp_path / "xs.sock"), timeout=5) as xs:
                try:
                    await xs.write("/lost", "v")
                    acknowledged.append("/lost")
                except ConnectionLost:
                    pass
    assert stopped.value.subgroup(OSError) is not None  # at any depth, as trio nests them
    assert acknowledged == []
    assert "cannot write: No space left on device; stopping" in caplog.text


async def acknowledged_writes(socket: Path, count: int) -> list[tuple[str, str]]:
    """``count`` writes, half of them as two-key transactions, 20 at a time, until
    the server dies; every (path, value) xenstored acknowledged."""
    done: list[tuple[str, str]] = []
    failed = []
    async with open_xenstore(str(socket), timeout=1) as xs:
        async def one(n: int) -> None:
            try:
                if n % 2:
                    await xs.write(f"/w/{n}", str(n))
                    done.append((f"/w/{n}", str(n)))
                else:
                    async def tx(t: Transaction) -> None:
                        await t.write(f"/t/{n}/a", str(n))
                        await t.write(f"/t/{n}/b", str(n))
                    await xs.run_transaction(tx)  # EAGAIN between them is retried
                    done.extend([(f"/t/{n}/a", str(n)), (f"/t/{n}/b", str(n))])
            except Exception:
                failed.append(n)  # not acknowledged: the server died first

        for start in range(0, count, 20):
            if failed:
                break
            async with trio.open_nursery() as nursery:
                for n in range(start, start + 20):
                    nursery.start_soon(one, n)
    return done


@pytest.mark.process
def test_every_acknowledged_write_survives_sigkill(tmp_path: Path) -> None:
    """SIGKILL while a client writes as fast as it can: every write and transaction
    xenstored answered OK is there after the restart (the old persistence batched
    writes for 50 ms and lost what it had acknowledged meanwhile)."""
    socket, tree = Path(f"/tmp/rmrrd-journal-{os.getpid()}.sock"), tmp_path / "tree"
    server = XenstoredProcess(socket, persist=tree)

    async def write_and_kill() -> list[tuple[str, str]]:
        async with trio.open_nursery() as nursery:
            async def kill() -> None:
                await trio.sleep(0.7)
                server.process.send_signal(signal.SIGKILL)
            nursery.start_soon(kill)
            return await acknowledged_writes(socket, 100_000)

    try:
        done = trio.run(write_and_kill)
        server.process.wait()
    finally:
        server.stop()
    assert len(done) > 100  # it was killed mid-burst, not before
    restarted = XenstoredProcess(socket, persist=tree)
    try:
        async def read_back() -> list[tuple[str, str]]:
            lost = []
            async with open_xenstore(str(socket)) as xs:
                for path, value in done:
                    try:
                        if await xs.read(path) != value.encode():
                            lost.append((path, value))
                    except Exception:
                        lost.append((path, value))
            return lost

        assert trio.run(read_back) == []
    finally:
        restarted.stop()
