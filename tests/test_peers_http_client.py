"""The peers' HTTP GET (``rmrrd.edges.http_client``) against raw trio servers over real sockets:
what it sends, the answer framings it reads, and the URLs it refuses."""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio

from rmrrd.errors import InputError
from rmrrd.edges.http_client import HttpError, HttpUnreachable, http_get


async def one_answer(nursery: trio.Nursery, answer: bytes, host: str = "127.0.0.1") -> tuple[int, list[bytes]]:
    """A server that reads one request, sends ``answer`` and closes; the port, and a
    list that receives the request's head as sent."""
    requests: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
        requests.append(head)
        await stream.send_all(answer)

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=host))
    return listeners[0].socket.getsockname()[1], requests


async def test_request_head_and_content_length_body(nursery: trio.Nursery) -> None:
    port, requests = await one_answer(nursery, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert await http_get(f"http://127.0.0.1:{port}/a/inventory?x=1", timeout=5) == b"hello"
    lines = requests[0].decode().split("\r\n")
    assert lines[0] == "GET /a/inventory?x=1 HTTP/1.1"
    assert f"host: 127.0.0.1:{port}" in lines
    assert "connection: close" in lines


async def test_chunked_body_after_an_informational_answer(nursery: trio.Nursery) -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n"
              b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    port, _ = await one_answer(nursery, answer)
    assert await http_get(f"http://127.0.0.1:{port}", timeout=5) == b"abcdefg"


async def test_body_until_close_and_the_bound(nursery: trio.Nursery) -> None:
    answer = b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 1000
    port, _ = await one_answer(nursery, answer)
    assert await http_get(f"http://127.0.0.1:{port}/", timeout=5, max_body=1000) == b"x" * 1000
    port, _ = await one_answer(nursery, answer)
    with pytest.raises(HttpError, match=r"/: answer body larger than 999 bytes$"):
        await http_get(f"http://127.0.0.1:{port}/", timeout=5, max_body=999)


async def test_content_length_shorter_than_promised(nursery: trio.Nursery) -> None:
    port, _ = await one_answer(nursery, b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort")
    with pytest.raises(HttpError, match="invalid HTTP answer"):
        await http_get(f"http://127.0.0.1:{port}/inventory", timeout=5)


async def test_headers_beyond_the_bound(nursery: trio.Nursery) -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"y" * 70_000 + b"\r\n\r\n"
    port, _ = await one_answer(nursery, answer)
    with pytest.raises(HttpError, match="invalid HTTP answer"):
        await http_get(f"http://127.0.0.1:{port}/inventory", timeout=5)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_literal(nursery: trio.Nursery) -> None:
    port, requests = await one_answer(nursery, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", host="::1")
    assert await http_get(f"http://[::1]:{port}/inventory", timeout=5) == b"ok"
    assert f"host: [::1]:{port}" in requests[0].decode().split("\r\n")


@pytest.mark.parametrize("url, message", [
    ("https://node-b/inventory", "only http:// URLs"),
    ("http://node-b:port/inventory", "invalid port"),
    ("http://node-b:99999/inventory", "invalid port"),
    ("http:///inventory", "no host"),
    ("http://nöde-b/inventory", "not ASCII"),
])
async def test_refused_urls(url: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        await http_get(url, timeout=5)
    assert str(info.value).startswith(f"{url}: ")


async def test_unknown_host_name() -> None:
    # .invalid never resolves (RFC 6761), with or without a network.
    with pytest.raises(HttpUnreachable, match=r"^http://node-b\.invalid/inventory: cannot connect: "):
        await http_get("http://node-b.invalid/inventory", timeout=5)
