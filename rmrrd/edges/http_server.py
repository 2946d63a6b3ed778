"""A small HTTP/1.1 listener inside the daemon's trio loop: ``/metrics`` and friends.

Why not client_python's ``start_http_server``: it serves from a thread, and the
daemon's model is mutated only by trio tasks (no locks).  Here every request is
answered by a route coroutine running in the daemon's own loop, so a route reads
the model directly and a scrape is cancelled with the daemon's nursery.

HTTP parsing is h11's (sans-IO: bytes in, events out), so this module only moves
bytes and applies the limits an endpoint on a dom0 needs even on loopback:

* a request (line, headers and any body) larger than ``max_request_bytes`` is
  answered ``413``/``431`` and the connection closed;
* a connection that does not deliver a complete request within ``timeout`` seconds
  is closed (slow or idle clients cannot pile up);
* only ``GET`` and ``HEAD`` exist (``405`` otherwise); unknown paths get ``404``;
* at most ``max_connections`` connections are served at once; one more gets ``503``
  and is closed, so file descriptors stay bounded whatever clients do;
* malformed HTTP gets ``400`` and closes that connection only; a route that raises
  gets ``500`` and is logged; nothing a client sends stops the listener.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import h11
import trio

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Request:
    """What a route may look at: the request's path and headers (names in lower case)."""

    method: str
    path: str
    headers: Mapping[str, str]


#: A route answers ``(status, content type, body)``; HEAD sends the same headers.
Route = Callable[[Request], Awaitable[tuple[int, str, bytes]]]

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024
DEFAULT_TIMEOUT_SECONDS = 10.0
DEFAULT_MAX_CONNECTIONS = 64
_READ_CHUNK = 4096
# After an error answer: how long and how much of the client's leftovers to drain.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1024 * 1024


class _Reject(Exception):
    """Answer this status and close: the request cannot be served."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


async def serve_http(
    host: str,
    port: int,
    routes: Mapping[str, Route],
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``routes`` (path to route) on ``host:port`` until cancelled.

    ``port`` 0 picks a free port; the bound port is reported through
    ``task_status.started(port)``, so ``await nursery.start(serve_http, ...)``
    returns once connections are accepted.  Raises ``OSError`` if it cannot bind,
    with the address as its ``filename`` (trio's names none).
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, f"HTTP listener {host}:{port}") from None
    bound: int = listeners[0].socket.getsockname()[1]
    log.info("HTTP listener on %s port %d: %s", host, bound, ", ".join(sorted(routes)))

    slots = trio.CapacityLimiter(max_connections)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            slots.acquire_on_behalf_of_nowait(stream)
        except trio.WouldBlock:
            await _refuse(stream)
            return
        try:
            await _serve_connection(stream, routes, max_request_bytes, timeout)
        finally:
            slots.release_on_behalf_of(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)


async def _serve_connection(
    stream: trio.abc.Stream, routes: Mapping[str, Route], max_request_bytes: int, timeout: float
) -> None:
    """Answer requests on one connection (keep-alive) until it closes or misbehaves."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_request_bytes)
    try:
        async with stream:
            while True:
                try:
                    with trio.fail_after(timeout):
                        request = await _read_request(stream, conn, max_request_bytes)
                except trio.TooSlowError:
                    return  # idle keep-alive or a slow client: just close
                except _Reject as reject:
                    await _send_error(stream, conn, reject.status, str(reject))
                    await _linger(stream)
                    return
                if request is None:
                    return  # the client closed between requests
                await _respond(stream, conn, request, routes)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # "Connection: close", or HTTP/1.0: not reusable
                conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        # The client went away mid-answer: that connection's problem only.
        return


async def _refuse(stream: trio.SocketStream) -> None:
    """Answer 503 without reading the request: every connection slot is taken."""
    conn = h11.Connection(h11.SERVER)
    try:
        async with stream:
            await _send_error(stream, conn, 503, "too many connections")
            await _linger(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def _read_request(
    stream: trio.abc.Stream, conn: h11.Connection, max_request_bytes: int
) -> h11.Request | None:
    """The next complete request (its body read and dropped), or None at a clean close."""
    request: h11.Request | None = None
    received = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _Reject(exc.error_status_hint, f"bad request: {exc}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_READ_CHUNK)
            received += len(data)
            if received > max_request_bytes and request is not None:
                raise _Reject(413, "request body too large")
            conn.receive_data(bytes(data))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            if request is not None:
                raise _Reject(400, "connection closed inside a request")
            return None
        # h11.Data: a body nobody asked for, counted above and dropped.


async def _respond(
    stream: trio.abc.Stream, conn: h11.Connection, request: h11.Request, routes: Mapping[str, Route]
) -> None:
    method = request.method.decode("ascii", "replace")
    path = request.target.decode("ascii", "replace").partition("?")[0]
    route = routes.get(path)
    if method not in ("GET", "HEAD"):
        await _send(stream, conn, 405, "text/plain; charset=utf-8", b"only GET and HEAD\n", [(b"allow", b"GET, HEAD")])
        return
    if route is None:
        await _send(stream, conn, 404, "text/plain; charset=utf-8", f"no such path: {path}\n".encode())
        return
    # A repeated header (Accept may come as two lines) is one comma-separated list.
    headers: dict[str, str] = {}
    for name, value in request.headers:
        key = name.decode("ascii", "replace").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    try:
        status, content_type, body = await route(Request(method, path, headers))
    except Exception:
        # A bug in a route must not take the listener (or the daemon) down.
        log.exception("HTTP route %s failed", path)
        status, content_type, body = 500, "text/plain; charset=utf-8", b"internal error\n"
    await _send(stream, conn, status, content_type, body, head=method == "HEAD")


async def _linger(stream: trio.abc.Stream) -> None:
    """Close gently after an error answer, so the client gets to read it.

    Closing a socket with unread request bytes in it makes the kernel send a reset,
    which can destroy the answer before the client reads it.  So: end our side, then
    read and drop what the client still sends, for a bounded time and amount.
    """
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    with trio.move_on_after(_LINGER_SECONDS):
        drained = 0
        while drained < _LINGER_BYTES:
            chunk = await stream.receive_some(_READ_CHUNK)
            if not chunk:
                return
            drained += len(chunk)


async def _send_error(stream: trio.abc.Stream, conn: h11.Connection, status: int, reason: str) -> None:
    log.debug("HTTP %d, closing the connection: %s", status, reason)
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    await _send(stream, conn, status, "text/plain; charset=utf-8", reason.encode() + b"\n", [(b"connection", b"close")])


async def _send(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    content_type: str,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    """One whole response in one write; HEAD gets GET's headers and no body."""
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"server", b"rmrrd"),
        *(extra or []),
    ]
    chunks = [conn.send(h11.Response(status_code=status, headers=headers))]
    if body and not head:
        chunks.append(conn.send(h11.Data(data=body)))
    chunks.append(conn.send(h11.EndOfMessage()))
    await stream.send_all(b"".join(chunk for chunk in chunks if chunk))
