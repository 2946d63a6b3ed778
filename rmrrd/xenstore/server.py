"""The simulated xenstored's trio layer: unix sockets in, ``Store.handle`` in between.

One task per connection reads a chunk, decodes every complete packet in it, hands
each to the store and sends what the store answers in one ``send_all``.  Watch
events for other connections go to their output buffer and their writer task sends
them; events therefore always follow the reply of the request that caused them.

Guest identity: after dom0 INTRODUCEs domain N, the server also listens on
``<socket>.d/N``; whatever connects there acts as domain N, with its permissions and
quotas (that is how tests play hvmloader or a guest agent).  RELEASE of N closes that
socket and every connection made through it.

Persistence (``persist=``): after changes, coalesced, the tree is written to the file
atomically (temporary file, fsync, rename, fsync of the directory), and loaded from
it at start.

Sockets: the server never takes a socket it does not own.  A socket path where a
live socket accepts connections (Xen's own xenstored, another rmrrd) is refused with
an :class:`~rmrrd.errors.InputError` naming it; only a dead one (nobody listening,
left by a killed run) is replaced.  At exit it removes the sockets it bound, and only
while they are still the ones it bound, never whatever took their place.
"""

from __future__ import annotations

import errno
import logging
import os
import socket as stdlib_socket
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from rmrrd.errors import InputError
from rmrrd.xenstore import store_persist
from rmrrd.xenstore.store import Connection, DomainChange, Store
from rmrrd.xenstore.wire import Decoder, RemoteProtocolError, encode

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
# A connection that does not read its replies and events is dropped once this much
# is waiting for it (C xenstored drops watch events after a timeout instead).
OUTPUT_LIMIT = 8 * 1024 * 1024
# Changes within this many seconds go to the persistence file in one write.
PERSIST_DELAY = 0.05
# How long a probe of an existing socket waits for it to accept: a listener whose
# backlog is full is alive too, and must not be mistaken for a dead one.
PROBE_TIMEOUT = 1.0


@dataclass
class XenstoredHandle:
    """What ``serve_xenstored`` reports once it listens."""

    store: Store
    socket_path: Path
    guest_dir: Path

    def guest_socket(self, domid: int) -> Path:
        """The socket that acts as ``domid`` (exists while it is introduced)."""
        return self.guest_dir / str(domid)


@dataclass(eq=False)
class _Peer:
    conn: Connection
    stream: trio.SocketStream
    scope: trio.CancelScope
    out: bytearray = field(default_factory=bytearray)
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    wake: trio.Event = field(default_factory=trio.Event)


def _is_live(path: Path) -> bool:
    """Whether a socket at ``path`` accepts connections (False: nobody listens)."""
    probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        # EACCES, a timeout (a full backlog), anything else: someone's socket, alive
        # or not provably dead; not ours to replace.
        log.debug("probe of %s: %s", path, exc)
        return True
    finally:
        probe.close()
    return True


def _make_way(path: Path) -> None:
    """Unlink a dead socket at ``path``; refuse a live one or anything not a socket."""
    if path.is_socket():
        if _is_live(path):
            raise InputError(f"{path}: a socket there accepts connections (a running xenstored?); "
                             "not taking it over: give the simulated xenstored a path of its own")
        path.unlink()  # left by a killed run: nobody listens on it
    elif path.exists() or path.is_symlink():
        raise InputError(f"{path}: exists and is not a socket; not replacing it")


@dataclass(frozen=True)
class _Bound:
    """A listening socket this server created, and the file it got (device, inode)."""

    path: Path
    listener: trio.SocketListener
    identity: tuple[int, int]

    def remove(self) -> None:
        """Unlink the path if it is still this socket, never one that replaced it."""
        try:
            info = self.path.lstat()
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == self.identity:
            self.path.unlink(missing_ok=True)


def _listen(path: Path) -> _Bound:
    """Bind and listen on ``path``, making way only for a dead socket.

    A plain socket bound synchronously (trio has no unix listener helper), so a guest
    socket exists before the INTRODUCE reply goes out; trio adopts it afterwards.
    Raises InputError for a path that is taken or whose directory is missing.
    """
    _make_way(path)
    sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        info = path.lstat()
        sock.listen(128)
    except FileNotFoundError:
        sock.close()
        raise InputError(f"{path}: its directory {path.parent} does not exist") from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:  # bound by someone between the check and here
            raise InputError(f"{path}: another process bound it first") from None
        raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None  # bind names no path
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    return _Bound(path, listener, (info.st_dev, info.st_ino))


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _Server:
    def __init__(self, store: Store, nursery: trio.Nursery, guest_dir: Path) -> None:
        self.store = store
        self.nursery = nursery
        self.guest_dir = guest_dir
        self.peers: dict[int, _Peer] = {}
        self.guest_scopes: dict[int, trio.CancelScope] = {}
        self.guest_sockets: dict[int, _Bound] = {}
        self.changed = trio.Event()

    async def serve_connection(self, domid: int, stream: trio.SocketStream) -> None:
        conn = self.store.connect(domid)
        log.debug("dom%d conn %d connected", domid, conn.id)
        with trio.CancelScope() as scope:
            peer = _Peer(conn, stream, scope)
            self.peers[conn.id] = peer
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, peer)
                    await self._reader(peer)
                    nursery.cancel_scope.cancel()
            except* trio.BrokenResourceError:
                # Reader and writer run in one nursery, so a peer that hangs up
                # while we send arrives wrapped in an ExceptionGroup.
                log.debug("dom%d conn %d went away while we sent", domid, conn.id)
            finally:
                self.peers.pop(conn.id, None)
                self.store.disconnect(conn)
                with trio.CancelScope(shield=True):
                    await stream.aclose()
        log.debug("dom%d conn %d closed", domid, conn.id)

    async def _reader(self, peer: _Peer) -> None:
        decoder = Decoder()
        while True:
            try:
                data = await peer.stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            decoder.feed(data)
            touched: set[int] = set()
            changes: list[DomainChange] = []
            try:
                while (packet := decoder.next_packet()) is not None:
                    output = self.store.handle(peer.conn, packet)
                    for target, reply in output.sends:
                        self._queue(target, encode(reply))
                        touched.add(target.id)
                    changes += output.domain_changes
            except RemoteProtocolError as exc:
                # Garbage from one client closes that client only.
                log.warning("dom%d conn %d protocol error, closing: %s", peer.conn.domid, peer.conn.id, exc)
                await self._flush(peer)
                return
            self._after_batch(changes)
            for conn_id in touched:
                if conn_id == peer.conn.id:
                    await self._flush(peer)
                elif (other := self.peers.get(conn_id)) is not None:
                    other.wake.set()

    def _queue(self, target: Connection, data: bytes) -> None:
        peer = self.peers.get(target.id)
        if peer is None:  # closed by a RELEASE in this very batch
            return
        peer.out += data
        if len(peer.out) > OUTPUT_LIMIT:
            log.warning("dom%d conn %d reads too slowly, closing", target.domid, target.id)
            peer.out.clear()
            peer.scope.cancel()

    async def _flush(self, peer: _Peer) -> None:
        async with peer.send_lock:
            if peer.out:
                data = bytes(peer.out)
                peer.out.clear()
                await peer.stream.send_all(data)

    async def _writer(self, peer: _Peer) -> None:
        while True:
            await peer.wake.wait()
            peer.wake = trio.Event()
            await self._flush(peer)

    def _after_batch(self, changes: list[DomainChange]) -> None:
        for change in changes:
            if change.introduced:
                # Bound before the INTRODUCE reply goes out, so the caller can
                # connect as soon as it has its answer.
                self.open_guest(change.domid)
            else:
                scope = self.guest_scopes.pop(change.domid, None)
                if scope is not None:
                    scope.cancel()
                # Gone before the RELEASE reply goes out, like the domain.
                bound = self.guest_sockets.pop(change.domid, None)
                if bound is not None:
                    bound.remove()
                for peer in list(self.peers.values()):
                    if peer.conn.domid == change.domid:
                        peer.scope.cancel()
        self.changed.set()

    def open_guest(self, domid: int) -> None:
        """Listen on the guest socket of ``domid`` until it is released.

        A path some other live socket holds is left alone: the domain is introduced
        all the same, only without a guest-identity socket (logged).
        """
        path = self.guest_dir / str(domid)
        try:
            bound = _listen(path)
        except InputError as exc:
            log.error("dom%d: no guest socket: %s", domid, exc)
            return
        scope = trio.CancelScope()
        self.guest_scopes[domid] = scope
        self.guest_sockets[domid] = bound
        log.info("dom%d guest socket %s", domid, path)
        self.nursery.start_soon(self._serve_guest, domid, bound, scope)

    async def _serve_guest(self, domid: int, bound: _Bound, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await trio.serve_listeners(partial(self.serve_connection, domid), [bound.listener],
                                           handler_nursery=self.nursery)
            finally:
                bound.remove()
                with trio.CancelScope(shield=True):
                    await bound.listener.aclose()

    async def persist(self, path: Path) -> None:
        """Write the tree after changes, coalesced; once more on the way out."""
        saved = self.store.generation
        try:
            while True:
                await self.changed.wait()
                self.changed = trio.Event()
                await trio.sleep(PERSIST_DELAY)
                if self.store.generation != saved:
                    saved = self.store.generation
                    data = store_persist.dump(self.store)
                    await trio.to_thread.run_sync(write_atomically, path, data)
        finally:
            if self.store.generation != saved:
                write_atomically(path, store_persist.dump(self.store))


async def serve_xenstored(
    socket_path: str | os.PathLike[str],
    *,
    persist: Path | None = None,
    store: Store | None = None,
    task_status: trio.TaskStatus[XenstoredHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the simulated xenstored on ``socket_path`` until cancelled.

    ``persist`` names a file to load the tree from (if it exists) and to keep it
    in; ``store`` lets an embedding program supply its own (not with ``persist``).
    Reports an ``XenstoredHandle`` through ``task_status`` once listening; removes
    the sockets it bound on the way out (see the module's "Sockets").  Raises
    InputError for an unreadable persist file and for a socket path that is taken.
    """
    path = Path(socket_path)
    if store is None:
        if persist is not None and persist.exists():
            store = store_persist.load(persist.read_bytes(), str(persist))
        else:
            store = Store()
    main = _listen(path)
    guest_dir = Path(f"{path}.d")
    try:
        guest_dir.mkdir(exist_ok=True)
        log.info("simulated xenstored on %s", path)
        async with trio.open_nursery() as nursery:
            server = _Server(store, nursery, guest_dir)
            for domid in sorted(store.introduced):
                server.open_guest(domid)
            if persist is not None:
                nursery.start_soon(server.persist, persist)
            task_status.started(XenstoredHandle(store, path, guest_dir))
            await trio.serve_listeners(partial(server.serve_connection, 0), [main.listener], handler_nursery=nursery)
    finally:
        main.remove()
        with trio.CancelScope(shield=True):
            await main.listener.aclose()
        try:
            guest_dir.rmdir()
        except OSError:
            pass  # missing, or something else lives there: not ours to remove
