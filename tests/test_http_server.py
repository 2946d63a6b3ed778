"""The HTTP listener over real sockets: urllib as the client, and raw bytes for abuse."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from functools import partial

import pytest
import trio
import trio.testing

from rmrrd.edges.http_server import Request, Route, serve_http

HOST = "127.0.0.1"


async def hello(request: Request) -> tuple[int, str, bytes]:
    return 200, "text/plain; charset=utf-8", b"hello\n"


async def broken(request: Request) -> tuple[int, str, bytes]:
    raise RuntimeError("route bug")


async def accept(request: Request) -> tuple[int, str, bytes]:
    """Echoes what the route was given: method, path and the Accept header."""
    return 200, "text/plain; charset=utf-8", f"{request.method} {request.path} {request.headers.get('accept')}".encode()


ROUTES: dict[str, Route] = {"/hello": hello, "/broken": broken, "/accept": accept}


@pytest.fixture
async def port(nursery: trio.Nursery) -> AsyncIterator[int]:
    bound: int = await nursery.start(serve_http, HOST, 0, ROUTES)
    yield bound


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, lower_keys(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, lower_keys(error.headers.items()), error.read()


def lower_keys(items: list[tuple[str, str]]) -> dict[str, str]:
    return {key.lower(): value for key, value in items}


async def fetch_in_thread(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await trio.to_thread.run_sync(fetch, f"http://{HOST}:{port}{path}", method)


async def raw(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the server closes the connection."""
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(data)
        received = b""
        while chunk := await stream.receive_some(65536):
            received += chunk
        return received


async def test_get(port: int) -> None:
    status, headers, body = await fetch_in_thread(port, "/hello?x=1")
    assert (status, body) == (200, b"hello\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["content-length"] == "6"


async def test_head_has_headers_and_no_body(port: int) -> None:
    answer = await raw(port, b"HEAD /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: 6" in head.lower()
    assert body == b""


async def test_unknown_path_is_404(port: int) -> None:
    status, _, body = await fetch_in_thread(port, "/nope")
    assert status == 404 and b"/nope" in body


async def test_other_methods_are_405(port: int) -> None:
    status, headers, _ = await fetch_in_thread(port, "/hello", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


async def test_failing_route_is_500_and_listener_survives(port: int) -> None:
    status, _, body = await fetch_in_thread(port, "/broken")
    assert (status, body) == (500, b"internal error\n")
    assert (await fetch_in_thread(port, "/hello"))[0] == 200


async def test_keep_alive_serves_several_requests(port: int) -> None:
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await raw(port, request * 2 + last)
    assert answer.count(b"HTTP/1.1 200 ") == 3
    assert answer.count(b"hello\n") == 3


async def test_malformed_request_closes_only_that_connection(port: int) -> None:
    answer = await raw(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert (await fetch_in_thread(port, "/hello"))[0] == 200


async def test_oversized_headers_are_refused(port: int) -> None:
    huge = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n"
    answer = await raw(port, huge)
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_oversized_body_is_refused(port: int) -> None:
    body = b"a" * 40_000
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer = await raw(port, request + body)
    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_small_body_is_read_and_ignored(port: int) -> None:
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    answer = await raw(port, request)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello\n")


async def test_request_cut_short_gets_400(port: int) -> None:
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        await stream.send_eof()
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_silent_client_is_disconnected_after_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    port = await nursery.start(serve_http, HOST, 0, ROUTES)
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(b"GET /hello HTTP/1.1\r\n")  # never finished
        start = trio.current_time()
        assert await stream.receive_some(100) == b""
        assert trio.current_time() - start >= 10.0  # the default per-request timeout


async def test_bind_failure_is_an_oserror(nursery: trio.Nursery, port: int) -> None:
    with pytest.raises(OSError):
        await nursery.start(serve_http, HOST, port, ROUTES)


async def test_a_stalled_client_does_not_hold_up_others(port: int) -> None:
    stalled = await trio.open_tcp_stream(HOST, port)
    async with stalled:
        await stalled.send_all(b"GET /hel")  # and nothing more
        assert (await fetch_in_thread(port, "/hello"))[0] == 200


async def test_connections_beyond_the_limit_get_503(nursery: trio.Nursery) -> None:
    port = await nursery.start(partial(serve_http, HOST, 0, ROUTES, max_connections=1))
    holder = await trio.open_tcp_stream(HOST, port)
    async with holder:
        await holder.send_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"hello\n" in await holder.receive_some(4096)  # the slot is held (keep-alive)
        answer = await raw(port, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 ")
    # The slot is free again once the holder has gone: the server, in this trio
    # run, has seen the hang-up once every task is blocked again.
    await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    answer = await raw(port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), "the connection slot was not released"


async def test_a_route_sees_method_path_and_headers(port: int) -> None:
    """Header names in lower case; a repeated header joined with commas, as HTTP reads it."""
    answer = await raw(port, b"GET /accept?x=1 HTTP/1.1\r\nHost: x\r\nACCEPT: text/plain;q=0.5\r\n"
                             b"Accept: application/openmetrics-text\r\nConnection: close\r\n\r\n")
    assert answer.endswith(b"\r\n\r\nGET /accept text/plain;q=0.5,application/openmetrics-text")
