"""The wire codec as the peer: requests to a pure ``Store``, or raw bytes on a socket.

For the simulated xenstored's own tests, below any client: :func:`call` and
:func:`events` feed one request to a ``Store`` and look at what it returns;
:class:`RawClient` speaks the protocol on a socket with nothing but the codec.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from rmrrd.xenstore.store import Connection, Store
from rmrrd.xenstore.wire import Decoder, Op, Packet, encode


def call(store: Store, conn: Connection, op: Op, *args: bytes, tx: int = 0, raw: bytes | None = None) -> tuple[Op, bytes]:
    """One request to a pure store: (reply type, reply payload); events dropped."""
    payload = raw if raw is not None else b"".join(a + b"\0" for a in args)
    out = store.handle(conn, Packet(op, 7, tx, payload)).sends
    reply = out[0][1]
    assert out[0][0] is conn and reply.req_id == 7 and reply.tx_id == tx
    return reply.op, reply.payload


def tree_op(store: Store, conn: Connection, kind: str, parts: list[str]) -> bool:
    """One of the random tree changes the persistence tests draw: ``w`` (write the
    path as its own value), ``rm``, ``perm``; False for another kind."""
    path = ("/" + "/".join(parts)).encode()
    if kind == "w":
        call(store, conn, Op.WRITE, raw=path + b"\0" + path)
    elif kind == "rm":
        call(store, conn, Op.RM, path)
    elif kind == "perm":
        call(store, conn, Op.SET_PERMS, path, b"r3", b"w4")
    else:
        return False
    return True


def events(store: Store, conn: Connection, op: Op, *args: bytes, tx: int = 0) -> list[tuple[int, bytes]]:
    """The watch events a request causes: (receiving connection id, payload)."""
    out = store.handle(conn, Packet(op, 1, tx, b"".join(a + b"\0" for a in args))).sends
    assert out[0][1].op in (op, Op.ERROR)
    assert all(p.op is Op.WATCH_EVENT for _, p in out[1:])
    return [(c.id, p.payload) for c, p in out[1:]]


@contextmanager
def listening_socket(path: Path) -> Iterator[socket.socket]:
    """A live unix socket at ``path``, accepting connections: someone else's server
    (Xen's xenstored on a dom0), for tests that rmrrd leaves it alone."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(str(path))
        server.listen(8)
        yield server
    finally:
        server.close()


class RawClient:
    """A minimal client over the codec, for talking to the trio server."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = Decoder()

    @classmethod
    async def connect(cls, path: Path) -> RawClient:
        return cls(await trio.open_unix_socket(str(path)))

    async def receive(self) -> Packet:
        while (packet := self.decoder.next_packet()) is None:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.decoder.feed(data)
        return packet

    async def call(self, op: Op, *args: bytes, tx: int = 0, req: int = 1) -> Packet:
        await self.stream.send_all(encode(Packet(op, req, tx, b"".join(a + b"\0" for a in args))))
        return await self.receive()

