"""rmrrd's trio xenstore client: pipelined requests, watches, transactions, reconnects.

Usage::

    async with open_xenstore() as xs:
        await xs.write("/local/domain/5/rmrrd/state", "ready")
        async with xs.watch("/local/domain/5/rmrrd/request") as events:
            async for event in events:
                ...

Where it connects (``locate_xenstore``): the ``path`` argument, else
``$XENSTORED_PATH``, else the dom0 sockets ``/run/xenstored/socket`` and
``/var/run/xenstored/socket``, else the xenbus device ``/dev/xen/xenbus`` (the same
framing through the kernel; opened non-blocking and polled like the socket, since
the xenbus driver supports poll and O_NONBLOCK, so no thread is needed).

Behaviour worth knowing:

* Many requests may be in flight on the one connection; each has its own timeout
  (``XenstoreTimeout``).  Server errors raise the XenstoreError subclass of their
  errno name (``NoEntry``, ``PermissionDenied``, ``Again``...; see ``wire.py``): a
  :class:`~rmrrd.errors.PeerError`.  A lost connection or a timeout is a
  :class:`~rmrrd.errors.TransportError`, never confused with an errno.
* When the connection drops, requests in flight fail at once with
  ``ConnectionLost``; the client reconnects with exponential backoff and jitter,
  re-registers its watches (each fires its initial event again), then calls
  ``on_reconnect`` so the user can reconcile; ``on_lost`` and ``on_connect_failed``
  tell it when the connection dropped and each attempt that failed.  Requests made while it is down wait
  for the new connection within their timeout.  Transactions do not survive a
  reconnect (xenstored forgets them): using one afterwards raises ConnectionLost,
  and ``run_transaction`` starts over.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import stat
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar

import trio

from rmrrd.errors import TransportError
from rmrrd.xenstore.client_conn import Channel, Connection, ConnectionLost, DeviceChannel
from rmrrd.xenstore.client_watch import Watch, WatchEvent
from rmrrd.xenstore.locate import locate_xenstore
from rmrrd.xenstore.wire import (
    Again,
    LocalProtocolError,
    NoEntry,
    NotSupported,
    Op,
    Packet,
    Perm,
    RemoteProtocolError,
    TooBig,
    XenstoreError,
    encode,
    error_for,
    format_perms,
    join_args,
    parse_perms,
    split_args,
    validate_path,
)

__all__ = [
    "ConnectionLost", "Transaction", "Watch", "WatchEvent", "XenstoreClient", "XenstoreTimeout",
    "locate_xenstore", "open_xenstore",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 5.0
TRANSACTION_ATTEMPTS = 16
CLEANUP_WAIT = 1.0
"""Seconds a cancelled block waits for its UNWATCH or transaction abort to be answered.

The request is on the wire by then, so xenstored carries it out even unanswered; a
longer wait would only hold up a shutdown while xenstored hangs (the request timeout,
10 s, once per cleanup step)."""

Connector = Callable[[], Awaitable[Channel]]


class XenstoreTimeout(TransportError):
    """xenstored did not answer a request within the client's timeout."""


async def _open_path(path: str) -> Channel:
    """A channel to ``path``: a unix socket, or the xenbus character device."""
    try:
        if stat.S_ISCHR(os.stat(path).st_mode):
            return DeviceChannel(os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError as exc:
        raise ConnectionLost(f"cannot connect to xenstored at {path}: {exc.strerror or exc}") from None
    try:
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:  # listen backlog full: wait for room, then check
            await trio.lowlevel.wait_writable(sock)
            if error := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                raise OSError(error, os.strerror(error)) from None
    except OSError as exc:
        sock.close()
        raise ConnectionLost(f"cannot connect to xenstored at {path}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def _decode_path(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} {raw[:60]!r} is not ASCII") from None


class _Operations(ABC):
    """The node operations, shared by the client (tx 0) and a transaction (its tx id)."""

    _tx_id = 0

    @abstractmethod
    async def _request(self, op: Op, payload: bytes) -> bytes:
        """Send one request in this context (client or transaction); its reply payload."""

    async def _path_request(self, op: Op, path: str, *more: bytes, special_ok: bool = False) -> bytes:
        validate_path(path, special_ok=special_ok)
        return await self._request(op, join_args(path.encode(), *more))

    async def read(self, path: str) -> bytes:
        """The value at ``path``; NoEntry if it does not exist."""
        return await self._path_request(Op.READ, path)

    async def write(self, path: str, value: bytes | str) -> None:
        """Set the value at ``path``, creating it and missing parents."""
        validate_path(path, special_ok=False)
        data = value.encode() if isinstance(value, str) else value
        await self._request(Op.WRITE, join_args(path.encode(), data, trailing_nul=False))

    async def mkdir(self, path: str) -> None:
        """Make sure ``path`` exists (an existing value is kept)."""
        await self._path_request(Op.MKDIR, path)

    async def rm(self, path: str) -> None:
        """Remove ``path`` and everything below; fine if absent, NoEntry if its parent is."""
        await self._path_request(Op.RM, path)

    async def exists(self, path: str) -> bool:
        """Whether ``path`` exists (a READ that tells ENOENT from a value)."""
        try:
            await self.read(path)
        except NoEntry:
            return False
        return True

    async def directory(self, path: str) -> list[str]:
        """The names of the children of ``path``.

        As libxenstore does: DIRECTORY first; if the listing exceeds one payload
        (E2BIG), DIRECTORY_PART in pieces, restarting if the node changes meanwhile.
        """
        try:
            payload = await self._path_request(Op.DIRECTORY, path)
        except TooBig:
            payload = await self._directory_parts(path)
        return [_decode_path(name, "child name") for name in split_args(payload)]

    async def _directory_parts(self, path: str) -> bytes:
        # Reply: <gencnt>|<names>|*, the final part ending with an empty name.
        chunks: list[bytes] = []
        generation: bytes | None = None
        while True:
            offset = sum(map(len, chunks))
            try:
                payload = await self._path_request(Op.DIRECTORY_PART, path, str(offset).encode())
            except NotSupported:  # as libxenstore: no DIRECTORY_PART means E2BIG
                raise TooBig(f"children of {path} exceed one payload and the server has no DIRECTORY_PART") from None
            gen, sep, chunk = payload.partition(b"\0")
            if not sep or (chunk and not chunk.endswith(b"\0")):
                raise RemoteProtocolError(f"malformed DIRECTORY_PART reply for {path}: {payload[:60]!r}")
            if generation is not None and gen != generation:
                log.debug("directory %s changed while listed in parts; starting over", path)
                chunks.clear()
                generation = None
                continue
            generation = gen
            if chunk == b"\0" or chunk.endswith(b"\0\0") or not chunk:
                chunks.append(chunk[:-1] if chunk else b"")
                return b"".join(chunks)
            chunks.append(chunk)

    async def get_perms(self, path: str) -> list[Perm]:
        """The permissions of ``path``: owner (and default access) first."""
        payload = await self._path_request(Op.GET_PERMS, path, special_ok=True)
        try:
            return parse_perms(split_args(payload))
        except XenstoreError as exc:
            raise RemoteProtocolError(f"bad GET_PERMS reply for {path}: {exc}") from None

    async def set_perms(self, path: str, perms: Sequence[Perm]) -> None:
        """Replace the permissions of ``path``; the first entry is the owner."""
        await self._path_request(Op.SET_PERMS, path, *format_perms(perms), special_ok=True)


class Transaction(_Operations):
    """Node operations inside one xenstore transaction (from ``XenstoreClient.transaction``)."""

    def __init__(self, client: XenstoreClient, tx_id: int, conn: Connection) -> None:
        self._client = client
        self._tx_id = tx_id
        self._conn = conn
        self.id = tx_id

    async def _request(self, op: Op, payload: bytes) -> bytes:
        # xenstored forgets transactions with their connection: a tx id sent on a
        # new connection is at best unknown, at worst someone else's.
        if self._client._conn is not self._conn:
            raise ConnectionLost(f"transaction {self._tx_id} died with its connection")
        return await self._client._call(op, payload, self._tx_id)


class XenstoreClient(_Operations):
    """A connection to xenstored that survives xenstored restarts (see the module doc).

    Made by ``open_xenstore``; do not construct directly.
    """

    def __init__(
        self,
        connect: Connector,
        name: str,
        *,
        timeout: float,
        on_reconnect: Callable[[], Awaitable[None]] | None,
        on_lost: Callable[[str], None] | None = None,
        on_connect_failed: Callable[[str], None] | None = None,
    ) -> None:
        self._connect = connect
        self.name = name
        self.timeout = timeout
        self._on_reconnect = on_reconnect
        self._on_lost = on_lost
        self._on_connect_failed = on_connect_failed
        self._conn: Connection | None = None
        self._up = trio.Event()
        self._watches: dict[str, Watch] = {}
        self._next_req = 0
        self._next_token = 0
        self.generation = -1
        """How many times the client has reconnected (0 on the first connection)."""
        self._restored = -1  # the last generation whose watches were all restored

    # -- requests --------------------------------------------------------------------

    async def _request(self, op: Op, payload: bytes) -> bytes:
        return await self._call(op, payload, 0)

    async def _call(self, op: Op, payload: bytes, tx_id: int) -> bytes:
        """Send one request and return the reply payload (or raise its error)."""
        self._next_req = req_id = (self._next_req + 1) & 0xFFFFFFFF
        data = encode(Packet(op, req_id, tx_id, payload))
        with trio.move_on_after(self.timeout) as scope:
            conn = self._conn
            while conn is None:
                await self._up.wait()
                conn = self._conn
            reply = await conn.call(req_id, data)
        if scope.cancelled_caught:
            raise XenstoreTimeout(f"{self.name}: no answer to {op.name} within {self.timeout} s")
        if reply.op is op:
            return reply.payload
        if reply.op is Op.ERROR:
            name = split_args(reply.payload)[0].decode("ascii", "replace") if reply.payload else "EIO"
            subject = payload.split(b"\0", 1)[0][:80].decode("ascii", "replace")
            raise error_for(name, f"{op.name} {subject}")
        raise RemoteProtocolError(f"{self.name}: {reply.op.name} reply to a {op.name} request")

    # -- watches ---------------------------------------------------------------------

    @asynccontextmanager
    async def watch(self, path: str, token: str | None = None) -> AsyncIterator[Watch]:
        """Watch ``path`` and its children; yields an async iterator of WatchEvent.

        The first event is xenstored's initial one (``path`` itself), and again after
        every reconnect.  ``token`` defaults to a unique one; a token is unique per
        client, since events are routed by it.  Leaving the block unwatches.
        """
        validate_path(path, special_ok=True)
        if token is None:
            self._next_token += 1
            token = f"rmrrd-{self._next_token}"
        elif token in self._watches:
            raise LocalProtocolError(f"watch token {token!r} is already in use on this client")
        if "\0" in token or not token:
            raise LocalProtocolError(f"watch token {token!r} must be non-empty and without NUL")
        watch = Watch(path, token)
        # Registered before the request, so the initial event finds it.
        self._watches[token] = watch
        try:
            await self._register(watch)
        except BaseException:
            self._watches.pop(token, None)
            raise
        try:
            yield watch
        finally:
            with trio.move_on_after(CLEANUP_WAIT, shield=True):
                await self.unwatch(path, token)

    async def _register(self, watch: Watch) -> None:
        generation = self.generation
        await self._call(Op.WATCH, join_args(watch.path.encode(), watch.token.encode()), 0)
        watch.generation = generation

    async def unwatch(self, path: str, token: str) -> None:
        """Remove a watch; its iterator ends.  Fine if xenstored already forgot it."""
        watch = self._watches.pop(token, None)
        if watch is not None:
            watch.end()
        if self._conn is None:
            return  # the server side went with the connection
        try:
            await self._path_request(Op.UNWATCH, path, token.encode(), special_ok=True)
        except (NoEntry, TransportError) as exc:
            log.debug("unwatch %s token %s: %s", path, token, exc)

    def _on_event(self, packet: Packet) -> None:
        parts = split_args(packet.payload)
        if len(parts) < 2:
            log.warning("%s: malformed watch event %r", self.name, packet.payload[:80])
            return
        token = parts[1].decode("ascii", "replace")
        watch = self._watches.get(token)
        if watch is None:
            log.debug("%s: event for unknown token %s", self.name, token)
            return
        watch.deliver(WatchEvent(parts[0].decode("ascii", "replace"), token))

    async def reset_watches(self) -> None:
        """Drop every watch and transaction of this connection (RESET_WATCHES)."""
        await self._request(Op.RESET_WATCHES, b"\0")
        watches, self._watches = self._watches, {}
        for watch in watches.values():
            watch.end()

    # -- transactions ----------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction: commits when the block ends normally, aborts on an exception.

        The commit raises ``Again`` if another change conflicted; ``run_transaction``
        retries for you.
        """
        reply = await self._request(Op.TRANSACTION_START, b"\0")
        try:
            tx_id = int(split_args(reply)[0])
        except (ValueError, IndexError):
            raise RemoteProtocolError(f"bad TRANSACTION_START reply {reply[:40]!r}") from None
        conn = self._conn
        if conn is None:
            raise ConnectionLost(f"{self.name}: connection dropped as transaction {tx_id} started")
        tx = Transaction(self, tx_id, conn)
        try:
            yield tx
        except BaseException:
            with trio.move_on_after(CLEANUP_WAIT, shield=True):
                await self._end_transaction(tx, commit=False)
            raise
        await self._end_transaction(tx, commit=True)

    async def _end_transaction(self, tx: Transaction, *, commit: bool) -> None:
        try:
            await tx._request(Op.TRANSACTION_END, b"T\0" if commit else b"F\0")
        except (TransportError, NoEntry):
            if commit:
                raise
            # Aborting a transaction the server already forgot: nothing to undo.

    async def run_transaction(self, fn: Callable[[Transaction], Awaitable[T]], *, attempts: int = TRANSACTION_ATTEMPTS) -> T:
        """Run ``fn`` in a transaction until it commits, retrying on EAGAIN or a reconnect.

        ``fn`` may run several times: it must only touch xenstore through its
        argument.  Between attempts it waits a random, growing delay (so competing
        writers spread out).  After ``attempts`` conflicts the last ``Again`` is raised.
        """
        delay = BACKOFF_FIRST / 10
        for attempt in range(1, attempts + 1):
            try:
                async with self.transaction() as tx:
                    result = await fn(tx)
                return result
            except (Again, ConnectionLost) as exc:
                if attempt == attempts:
                    raise
                log.debug("%s: transaction attempt %d failed (%s), retrying", self.name, attempt, type(exc).__name__)
                await trio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, BACKOFF_MAX)
        raise AssertionError("unreachable: the loop returns or raises")

    # -- domains ---------------------------------------------------------------------

    async def _domain_request(self, op: Op, *args: int) -> bytes:
        return await self._request(op, join_args(*(str(arg).encode() for arg in args)))

    async def introduce(self, domid: int, mfn: int, port: int) -> None:
        """Tell xenstored about a new domain (its store page and event channel)."""
        await self._domain_request(Op.INTRODUCE, domid, mfn, port)

    async def release(self, domid: int) -> None:
        """Tell xenstored a domain is gone (fires @releaseDomain)."""
        await self._domain_request(Op.RELEASE, domid)

    async def is_introduced(self, domid: int) -> bool:
        """Whether xenstored is talking to ``domid``."""
        return await self._domain_request(Op.IS_DOMAIN_INTRODUCED, domid) == b"T\0"

    async def get_domain_path(self, domid: int) -> str:
        """The home of ``domid`` (``/local/domain/<domid>``)."""
        return _decode_path(split_args(await self._domain_request(Op.GET_DOMAIN_PATH, domid))[0], "domain path")

    async def set_target(self, domid: int, target: int) -> None:
        """Let ``domid`` act for ``target`` (a device model for its guest)."""
        await self._domain_request(Op.SET_TARGET, domid, target)

    # -- connection lifetime ---------------------------------------------------------

    async def _maintain(
        self, stream: Channel | None, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep a connection up for the client's lifetime (runs as a background task).

        ``stream`` is the first connection, made by ``open_xenstore`` so its error
        reaches the caller unwrapped; later connects back off exponentially, with
        jitter, until one works.
        """
        delay = BACKOFF_FIRST
        while True:
            try:
                if stream is None:
                    stream = await self._connect()
            except ConnectionLost as exc:
                log.warning("%s: reconnect failed (%s); next try in %.2f s", self.name, exc, delay)
                if self._on_connect_failed is not None:
                    self._on_connect_failed(str(exc))
                await trio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_FIRST
            conn = Connection(stream, self._on_event, self.name)
            stream = None
            self.generation += 1
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve, conn, nursery.cancel_scope)
                self._conn = conn
                self._up.set()
                if self.generation == 0:
                    log.info("%s: connected", self.name)
                    self._restored = 0
                    task_status.started()
                else:
                    nursery.start_soon(self._restore, self.generation)
            log.warning("%s: connection lost (%s); reconnecting", self.name, conn.closed)
            # A connection dropped before its watches were back (xenstored dying as it
            # accepted it) never served: for the user that was a failed attempt.
            callback = self._on_lost if self._restored == self.generation else self._on_connect_failed
            if callback is not None:
                callback(f"connection lost: {conn.closed}")

    async def _serve(self, conn: Connection, scope: trio.CancelScope) -> None:
        try:
            await conn.run()
        finally:
            self._conn = None
            self._up = trio.Event()
            scope.cancel()

    async def _restore(self, generation: int) -> None:
        """After a reconnect: re-register the watches, then tell the user."""
        for watch in list(self._watches.values()):
            if watch.generation is None or watch.generation >= generation:
                continue  # being registered right now by its own watch() call
            try:
                await self._register(watch)
            except TransportError:
                return  # down again: the next connection restores them
            except XenstoreError as exc:
                log.warning("%s: watch %s lost on reconnect: %s", self.name, watch.path, exc)
                self._watches.pop(watch.token, None)
                watch.end(exc)
        log.info("%s: reconnected (#%d), %d watches restored", self.name, generation, len(self._watches))
        self._restored = generation
        if self._on_reconnect is not None:
            await self._on_reconnect()


@asynccontextmanager
async def open_xenstore(
    path: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    on_lost: Callable[[str], None] | None = None,
    on_connect_failed: Callable[[str], None] | None = None,
    connect: Connector | None = None,
) -> AsyncIterator[XenstoreClient]:
    """A connected client, kept connected until the block ends.

    ``path``: see ``locate_xenstore``.  ``timeout``: seconds per request.
    ``on_reconnect``: awaited (in the client's background task) after each
    reconnect, once the watches are back.  ``on_lost``: called with the reason when a
    connection that served (the first, or one whose watches were restored) drops;
    ``on_connect_failed``: when an attempt to get it back fails, or drops before its
    watches are back.  ``connect``: a stream factory replacing the path (tests use
    in-memory streams).  Raises ConnectionLost if the first
    connection cannot be made.
    """
    if connect is None:
        where = locate_xenstore(path)
        connect = partial(_open_path, where)
    else:
        where = "custom stream"
    client = XenstoreClient(connect, f"xenstore {where}", timeout=timeout, on_reconnect=on_reconnect,
                            on_lost=on_lost, on_connect_failed=on_connect_failed)
    # The body's exception is raised outside the nursery, so callers see it as it
    # is, not wrapped in an ExceptionGroup with the background task.
    body_error: BaseException | None = None
    stream = await connect()
    async with trio.open_nursery() as nursery:
        await nursery.start(client._maintain, stream)
        try:
            yield client
        except BaseException as exc:
            body_error = exc
        finally:
            nursery.cancel_scope.cancel()
            for watch in client._watches.values():
                watch.end()
    if body_error is not None:
        raise body_error
