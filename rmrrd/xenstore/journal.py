"""``--persist FILE``: a write is on disk before its reply is sent.

What users expect of a store: once xenstored has answered a WRITE (or a
transaction's commit), a crash of any kind (SIGKILL, power) does not lose it.  So
the tree lives in two files:

* ``FILE``, a snapshot of the whole tree (:func:`rmrrd.xenstore.store_persist.dump`),
  replaced atomically (temporary file, fsync, rename, fsync of the directory);
* ``FILE.journal``, a write-ahead journal: one record per batch of changes, each
  the state now of every node changed (:func:`~rmrrd.xenstore.store_persist.encode_changes`),
  framed as ``<u32 length><u32 crc32><payload>``, appended and fsynced.

Group commit: the server handles requests as they come and, before it sends any
reply or watch event produced after a change, waits for :meth:`Journal.durable` to
cover that change.  The journal task takes every change made since its last
record in one go, so whatever all connections changed while one fsync ran goes to
disk in the next: one fsync per event-loop turn, not one per request, and
throughput holds (``bench/bench_daemon.py --persist``).  A reply that depends on
nothing new (most reads) waits for nothing.

When the journal grows past the snapshot (and past :data:`COMPACT_MIN`), a new
snapshot is written and the journal emptied.  Loading replays the records newer
than the snapshot; a record cut short at the end (the crash came while it was
written, so it was never acknowledged) is dropped with a warning; a damaged record
elsewhere, or a damaged snapshot, is an :class:`~rmrrd.errors.InputError` naming
the file.  If the journal cannot be written (disk full, I/O error) the server
stops with that error rather than acknowledge what it cannot keep.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import trio

from rmrrd import inputs
from rmrrd.errors import InputError
from rmrrd.xenstore import store_persist
from rmrrd.xenstore.store import Quotas, Snapshot, Store

log = logging.getLogger(__name__)

FRAME = struct.Struct("<II")
"""A record's header: payload length, CRC-32 of the payload."""
COMPACT_MIN = 8 * 1024 * 1024
"""The journal is folded into a new snapshot once it is larger than this and than
the snapshot: a restart replays at most that much."""


def journal_path(path: Path) -> Path:
    """Where the journal of the snapshot ``path`` lives."""
    return path.with_name(path.name + ".journal")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: Path, quotas: Quotas | None = None) -> Store:
    """The store kept in ``path`` and its journal (a fresh one if neither exists).

    A record cut short at the journal's end is cut off the file too, so the next
    record appends after the last good one.  Raises InputError naming the file for
    anything else that is not what this module writes.
    """
    if path.exists():
        store = store_persist.load(inputs.read_bytes(path, inputs.STORE, "saved xenstore tree"), str(path),
                                   quotas)
    else:
        store = Store(quotas)
    journal = journal_path(path)
    if journal.exists():
        data = inputs.read_bytes(journal, inputs.STORE, "xenstore journal")
        good = _replay(store, data, str(journal))
        if good < len(data):
            log.warning("%s: dropped %d bytes of a record cut short (never acknowledged)", journal, len(data) - good)
            with open(journal, "r+b") as handle:
                handle.truncate(good)
                os.fsync(handle.fileno())
    return store


def _replay(store: Store, data: bytes, source: str) -> int:
    """Apply every record of ``data``; the length of its whole records."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < FRAME.size:
            return offset
        size, crc = FRAME.unpack_from(data, offset)
        end = offset + FRAME.size + size
        if end > len(data):
            return offset
        payload = data[offset + FRAME.size:end]
        if zlib.crc32(payload) != crc:
            if end == len(data):
                return offset  # the last record, torn by the crash
            raise InputError(f"{source}: damaged record at byte {offset} (checksum)")
        try:
            store.apply_changes(store_persist.decode_changes(payload, f"{source} at byte {offset}"))
        except ValueError as exc:
            raise InputError(f"{source}: record at byte {offset}: {exc}") from None
        offset = end
    return offset


class Journal:
    """The journal of one running store; :meth:`run` is its task.

    ``durable`` is the store generation known to be on disk.
    """

    def __init__(self, path: Path, store: Store) -> None:
        self.path = path
        self.store = store
        store.track_changes()
        self.durable = store.generation
        self._journal = journal_path(path)
        self._handle = open(self._journal, "ab", buffering=0)
        self._size = self._handle.tell()
        self._snapshot_size = path.stat().st_size if path.exists() else 0
        self._wanted = trio.Event()
        self._committed = trio.Event()

    async def wait_durable(self, generation: int) -> None:
        """Return once every change up to ``generation`` is on disk."""
        while self.durable < generation:
            self._wanted.set()
            await self._committed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write what changed whenever someone waits for it; flush once more on the way out.

        Raises OSError if the journal or a snapshot cannot be written: the
        server stops rather than acknowledge a write it cannot keep.
        """
        task_status.started()
        try:
            while True:
                await self._wanted.wait()
                self._wanted = trio.Event()
                await self._commit()
                if self._size > max(COMPACT_MIN, self._snapshot_size):
                    await self._compact()
        finally:
            with trio.CancelScope(shield=True):
                changes = self.store.take_changes()
                if changes is not None:
                    self._append(_frame(store_persist.encode_changes(changes)))
                self._handle.close()

    async def _commit(self) -> None:
        changes = self.store.take_changes()
        if changes is not None:
            data = _frame(store_persist.encode_changes(changes))
            try:
                await trio.to_thread.run_sync(self._append, data)
            except OSError as exc:
                log.error("%s: cannot write: %s; stopping rather than acknowledge what is not kept",
                          self._journal, exc.strerror or exc)
                raise
            self.durable = changes.generation
        else:
            self.durable = self.store.generation
        self._committed.set()
        self._committed = trio.Event()

    def _append(self, data: bytes) -> None:
        self._handle.write(data)
        os.fdatasync(self._handle.fileno())
        self._size += len(data)

    async def _compact(self) -> None:
        """Fold the journal into a new snapshot, then empty it.

        The snapshot is taken now, in the loop, so it holds every change up to its
        generation; records written after it are newer and replay on top of it.
        """
        snapshot = self.store.snapshot()
        self._snapshot_size = await trio.to_thread.run_sync(self._write_snapshot, snapshot)
        log.info("%s: journal of %d bytes folded into a snapshot of %d bytes", self.path, self._size,
                 self._snapshot_size)
        self._size = 0

    def _write_snapshot(self, snapshot: Snapshot) -> int:
        data = store_persist.dump_snapshot(snapshot)
        write_atomically(self.path, data)
        # Only once the snapshot is durable may the journal go.
        self._handle.truncate(0)
        os.fsync(self._handle.fileno())
        return len(data)


def _frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload
