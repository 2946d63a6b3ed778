"""A bounded HTTP/1.1 GET inside the trio loop: how rmrrd reads a peer's ``/inventory``.

Why not urllib or an HTTP library: urllib blocks (it would need a thread, and a
thread cannot be cancelled when the daemon reloads or stops), and the project
already parses HTTP with h11 for its own listener (:mod:`rmrrd.edges.http_server`).  Here
h11 does the parsing (status line, headers, ``Content-Length`` or chunked bodies)
and this module only moves bytes, under the limits a daemon needs when the other
end is another machine that may be down, slow or broken:

* the whole exchange (name lookup, connect, request, answer) has one deadline;
* the body is bounded (``max_body`` bytes, 16 MiB by default): a ``Content-Length``
  over the bound is refused before reading, a body that grows past it is cut off;
* the status line and headers are bounded (h11's ``max_incomplete_event_size``);
* only ``http://`` URLs and status 200 are accepted; redirects are not followed
  (a peer's ``/inventory`` never redirects, and following one could lead anywhere).

Every failure names the URL and what went wrong, in one line, under the root of
:mod:`rmrrd.errors` that says whose it is: a URL rmrrd cannot use is an
:class:`~rmrrd.errors.InputError` (the operator's to fix), a host that cannot be
reached in time an :class:`HttpUnreachable` (transport), an answer that is not a
usable 200 an :class:`HttpError` (the peer's).
"""

from __future__ import annotations

import logging
from urllib.parse import SplitResult, urlsplit

import h11
import trio

from rmrrd.errors import InputError, PeerError, TransportError

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 16 * 1024 * 1024
#: Status line plus headers: an inventory answer has a handful of short headers.
#: h11 checks it only while the headers are incomplete, so one read more may pass:
#: the read size matches, keeping the real bound at twice this.
MAX_HEADER_BYTES = 16 * 1024
_READ_CHUNK = MAX_HEADER_BYTES


class HttpError(PeerError):
    """The peer answered, but not with a usable 200: names the URL."""


class HttpUnreachable(TransportError):
    """The peer could not be reached, or did not answer in time: names the URL."""


def _parse_url(url: str) -> tuple[SplitResult, str, int]:
    """The split URL, its host name and its port (80 when not given)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise InputError(f"{url}: only http:// URLs are supported")
    try:
        port = parts.port or 80
    except ValueError:
        raise InputError(f"{url}: invalid port") from None
    if not parts.hostname:
        raise InputError(f"{url}: no host in the URL")
    if not parts.hostname.isascii():
        # Header values are ASCII; IDNA conversion is left to the operator.
        raise InputError(f"{url}: host name is not ASCII (write its xn-- form)")
    return parts, parts.hostname, port


async def http_get(url: str, *, timeout: float, max_body: int = DEFAULT_MAX_BODY) -> bytes:
    """GET ``url`` and return the body of its 200 answer.

    Raises :class:`~rmrrd.errors.InputError` when the URL is not one rmrrd can use,
    :class:`HttpUnreachable` when the host cannot be reached or nothing complete
    arrives within ``timeout`` seconds, :class:`HttpError` when the answer is not
    valid HTTP, its status is not 200, or its body exceeds ``max_body`` bytes.
    """
    parts, host, port = _parse_url(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    # The Host header carries the port as the URL gives it (RFC 9110 7.2: absent means 80);
    # an IPv6 literal keeps its brackets there.
    authority = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        authority += f":{port}"
    request = h11.Request(method="GET", target=target, headers=[
        (b"host", authority.encode("ascii")),
        (b"accept", b"application/json"),
        (b"user-agent", b"rmrrd"),
        (b"connection", b"close"),
    ])
    try:
        with trio.fail_after(timeout):
            return await _exchange(url, host, port, request, max_body)
    except trio.TooSlowError:
        raise HttpUnreachable(f"{url}: no complete answer within {timeout:g} s") from None
    except OSError as exc:
        # Name lookup failures (socket.gaierror) and refused connections alike.
        raise HttpUnreachable(f"{url}: cannot connect: {exc.strerror or exc}") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise HttpUnreachable(f"{url}: connection broken: {exc}") from None
    except h11.ProtocolError as exc:
        raise HttpError(f"{url}: invalid HTTP answer: {exc}") from None


async def _exchange(url: str, host: str, port: int, request: h11.Request, max_body: int) -> bytes:
    """Send the request on a fresh connection and read the whole answer."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(_READ_CHUNK)))
            elif isinstance(event, h11.Response):
                _check_response(url, event, max_body)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body:
                    raise HttpError(f"{url}: answer body larger than {max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                log.debug("GET %s: %d bytes", url, len(body))
                return bytes(body)
            elif isinstance(event, h11.ConnectionClosed):  # pragma: no cover - h11 raises first
                raise HttpError(f"{url}: connection closed before the answer ended")
            # h11.InformationalResponse (1xx): wait for the final answer.


def _check_response(url: str, response: h11.Response, max_body: int) -> None:
    """Refuse a non-200 status, or a declared body over the bound, before reading it."""
    if response.status_code != 200:
        reason = response.reason.decode("ascii", "replace")
        raise HttpError(f"{url}: HTTP status {response.status_code} {reason}".rstrip())
    for name, value in response.headers:
        # h11 has already checked that Content-Length is a number.
        if name == b"content-length" and int(value) > max_body:
            raise HttpError(f"{url}: answer body of {int(value)} bytes, more than {max_body}")
