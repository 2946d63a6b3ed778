"""The simulated xenstored's trio layer: unix sockets in, ``Store.handle`` in between.

One task per connection reads a chunk, decodes every complete packet in it, hands
each to the store and sends what the store answers in one ``send_all``.  Watch
events for other connections go to their output buffer and their writer task sends
them; events therefore always follow the reply of the request that caused them.

One client can never stop the server for the others: whatever it sends gets an
answer or a refusal from the store, and a fault while serving it (a bug) is logged
with its trace and ends that connection only.

Guest identity: after dom0 INTRODUCEs domain N, the server also listens on
``<socket>.d/N``; whatever connects there acts as domain N, with its permissions and
quotas (that is how tests play hvmloader or a guest agent).  RELEASE of N closes that
socket and every connection made through it.  A guest's quotas hold however many
connections it opens (:class:`~rmrrd.xenstore.store.Quotas`, per domain): beyond its
connections, a new one is closed at once; beyond its outstanding replies, the
server stops reading it until it reads them (C's ``domain_can_read``); beyond its
memory, events for it are dropped.  Guests together never hold the descriptors dom0
needs: past :data:`DOM0_RESERVE` below the descriptor limit, their connections are
refused and dom0's still accepted.

Persistence (``persist=``): every change is in a write-ahead journal on disk before
any reply or event showing it is sent (:mod:`rmrrd.xenstore.journal`).

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
import resource
import socket as stdlib_socket
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from rmrrd.errors import InputError
from rmrrd.xenstore.journal import Journal
from rmrrd.xenstore.journal import load as journal_load
from rmrrd.xenstore.store import Connection, DomainChange, Quotas, Store
from rmrrd.xenstore.wire import Decoder, Op, Packet, RemoteProtocolError, XenstoreError, encode

log = logging.getLogger(__name__)

RECEIVE_SIZE = 65536
# A dom0 connection that does not read its replies and events is dropped once this
# much is waiting for it (a guest's events are dropped at its memory quota before).
OUTPUT_LIMIT = 8 * 1024 * 1024
DOM0_RESERVE = 256
"""Descriptors guests' connections never take: dom0's connections, listeners, files."""
DESCRIPTORS_WANTED = 65536
"""The descriptor limit the server raises its soft limit to, when the hard one allows."""
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
    """One client's connection and the output waiting for it."""

    conn: Connection
    stream: trio.SocketStream
    scope: trio.CancelScope
    out: bytearray = field(default_factory=bytearray)
    out_gen: int = 0
    """The store's generation when output was last queued: with a journal, it
    leaves once that generation is on disk."""
    held: int = 0
    """Bytes of ``out`` charged to the domain's memory (guests only)."""
    replies: int = 0
    """Replies in ``out`` (the outstanding-request quota counts them)."""
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


class _Server:
    """The sockets of one simulated xenstored around its :class:`Store`."""

    def __init__(self, store: Store, nursery: trio.Nursery, guest_dir: Path, journal: Journal | None) -> None:
        self.store = store
        self.nursery = nursery
        self.guest_dir = guest_dir
        self.journal = journal
        self.peers: dict[int, _Peer] = {}
        self.guest_scopes: dict[int, trio.CancelScope] = {}
        self.guest_sockets: dict[int, _Bound] = {}
        self.guest_budget = _guest_budget()
        self._guests = 0
        self._drained: dict[int, trio.Event] = {}
        self._warned: set[tuple[int, str]] = set()

    def _warn_once(self, domid: int, what: str, message: str, *args: object) -> None:
        """One warning per domain and kind of trouble; more of it goes to debug."""
        key = (domid, what)
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        log.log(level, message, *args)

    async def serve_connection(self, domid: int, stream: trio.SocketStream) -> None:
        """Serve one client until it goes; never raises (a fault ends this client only)."""
        if domid != 0 and self._guests >= self.guest_budget:
            # Guests never take the descriptors dom0 needs to connect.
            self._warn_once(domid, "descriptors", "dom%d: connection refused: guests hold %d connections, "
                            "the most this server's descriptor limit allows beside dom0's", domid, self._guests)
            await _close(stream)
            return
        try:
            conn = self.store.connect(domid)
        except XenstoreError as exc:
            self._warn_once(domid, "connections", "dom%d: connection refused: %s", domid, exc)
            await _close(stream)
            return
        self._guests += domid != 0
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
            except* Exception:
                # A bug (in the store, say) while serving this client: it loses its
                # connection, every other client is served on.
                log.exception("dom%d conn %d: internal error; this connection is closed", domid, conn.id)
            finally:
                self.peers.pop(conn.id, None)
                self._release_output(peer)
                self.store.disconnect(conn)
                self._guests -= domid != 0
                await _close(stream)
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
            while True:
                if peer.conn.usage is not None:
                    await self._room(peer)
                try:
                    packet = decoder.next_packet()
                except RemoteProtocolError as exc:
                    # Garbage from one client closes that client only.
                    log.warning("dom%d conn %d protocol error, closing: %s", peer.conn.domid, peer.conn.id, exc)
                    await self._flush(peer)
                    return
                if packet is None:
                    break
                self._serve(peer, packet)
            await self._flush(peer)

    def _serve(self, peer: _Peer, packet: Packet) -> None:
        """One request: the store's answer queued, domains opened or closed, other
        connections woken for their events."""
        output = self.store.handle(peer.conn, packet)
        for target, reply in output.sends:
            if target.id == peer.conn.id and reply.op is not Op.WATCH_EVENT:
                self._queue_reply(peer, encode(reply))
            else:
                self._queue_event(target, encode(reply))
        # Before the reply goes out: a guest socket exists once INTRODUCE is answered.
        self._domains_changed(output.domain_changes)

    async def _room(self, peer: _Peer) -> None:
        """Wait while the guest's domain has its quota of replies unsent (C's
        ``domain_can_read``): its own are sent first; another connection's, when
        its client reads them."""
        usage = peer.conn.usage
        assert usage is not None
        while usage.outstanding >= self.store.quotas.outstanding:
            if peer.replies:
                await self._flush(peer)
            else:
                drained = self._drained.setdefault(peer.conn.domid, trio.Event())
                await drained.wait()

    def _queue_reply(self, peer: _Peer, data: bytes) -> None:
        usage = peer.conn.usage
        if usage is not None:
            usage.outstanding += 1
            usage.held += len(data)
            peer.held += len(data)
        peer.replies += 1
        self._append(peer, data)

    def _queue_event(self, target: Connection, data: bytes) -> None:
        peer = self.peers.get(target.id)
        if peer is None:  # closed by a RELEASE in this very batch
            return
        usage = target.usage
        if usage is not None:
            if self.store.memory(target.domid) + len(data) > self.store.quotas.memory:
                # As C's send_event: over its memory quota, a guest's events are dropped.
                self._warn_once(target.domid, "memory", "dom%d conn %d: watch events dropped: the domain holds "
                                "its memory quota (it does not read them)", target.domid, target.id)
                return
            usage.held += len(data)
            peer.held += len(data)
        self._append(peer, data)
        if len(peer.out) > OUTPUT_LIMIT:
            log.warning("dom%d conn %d reads too slowly, closing", target.domid, target.id)
            self._release_output(peer)
            peer.scope.cancel()
            return
        peer.wake.set()

    def _append(self, peer: _Peer, data: bytes) -> None:
        peer.out += data
        peer.out_gen = self.store.generation

    def _release_output(self, peer: _Peer) -> None:
        """Drop the output queued for ``peer`` (it is closing) and what it was charged."""
        self._give_back(peer.conn, peer.held, peer.replies)
        peer.out.clear()
        peer.held = peer.replies = 0

    def _give_back(self, conn: Connection, held: int, replies: int) -> None:
        usage = conn.usage
        if usage is None or not (held or replies):
            return
        usage.held -= held
        usage.outstanding -= replies
        drained = self._drained.pop(conn.domid, None)
        if drained is not None:
            drained.set()

    async def _flush(self, peer: _Peer) -> None:
        async with peer.send_lock:
            if self.journal is not None:
                # Nothing that shows a change leaves before the change is on disk.
                while peer.out and self.journal.durable < peer.out_gen:
                    await self.journal.wait_durable(peer.out_gen)
            if not peer.out:
                return
            data, held, replies = bytes(peer.out), peer.held, peer.replies
            peer.out.clear()
            peer.held = peer.replies = 0
            try:
                await peer.stream.send_all(data)
            finally:
                # Charged until the kernel has it: a client that does not read holds
                # its domain's quota, and the server stops reading it.
                self._give_back(peer.conn, held, replies)

    async def _writer(self, peer: _Peer) -> None:
        while True:
            await peer.wake.wait()
            peer.wake = trio.Event()
            await self._flush(peer)

    def _domains_changed(self, changes: list[DomainChange]) -> None:
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

    def open_guest(self, domid: int) -> None:
        """Listen on the guest socket of ``domid`` until it is released.

        A path some other live socket holds, or no descriptor left to bind with,
        leaves the domain introduced all the same, without a guest socket (logged).
        """
        path = self.guest_dir / str(domid)
        try:
            bound = _listen(path)
        except (InputError, OSError) as exc:
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


async def _close(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True):
        await stream.aclose()


def _guest_budget() -> int:
    """How many guest connections may be open at once: the descriptor limit (raised
    to its hard limit when allowed) less :data:`DOM0_RESERVE`, so that dom0 can
    always connect however many connections guests open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        wanted = min(DESCRIPTORS_WANTED, hard) if hard != resource.RLIM_INFINITY else DESCRIPTORS_WANTED
        if wanted > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
            except (ValueError, OSError):
                pass
    limit = DESCRIPTORS_WANTED if soft == resource.RLIM_INFINITY else soft
    return max(0, limit - DOM0_RESERVE)


async def serve_xenstored(
    socket_path: str | os.PathLike[str],
    *,
    persist: Path | None = None,
    store: Store | None = None,
    quotas: Quotas | None = None,
    task_status: trio.TaskStatus[XenstoredHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the simulated xenstored on ``socket_path`` until cancelled.

    ``persist`` names a file to load the tree from (if it exists) and to keep it
    in, every change on disk before it is acknowledged (:mod:`rmrrd.xenstore.journal`);
    ``store`` lets an embedding program supply its own (not with ``persist``);
    ``quotas`` those of a new store.  Reports an ``XenstoredHandle`` through
    ``task_status`` once listening; removes the sockets it bound on the way out
    (see the module's "Sockets").  Raises InputError for an unreadable persist file
    and for a socket path that is taken; OSError if the journal cannot be written.
    """
    path = Path(socket_path)
    if store is None:
        store = journal_load(persist, quotas) if persist is not None else Store(quotas)
    main = _listen(path)
    guest_dir = Path(f"{path}.d")
    try:
        guest_dir.mkdir(exist_ok=True)
        log.info("simulated xenstored on %s", path)
        async with trio.open_nursery() as nursery:
            journal = None
            if persist is not None:
                journal = Journal(persist, store)
                await nursery.start(journal.run)
            server = _Server(store, nursery, guest_dir, journal)
            for domid in sorted(store.introduced):
                server.open_guest(domid)
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
