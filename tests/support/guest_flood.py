"""A hostile guest, as its own process: ``python guest_flood.py SOCKET DOMID...``.

For the fault tests (``tests/test_faults.py``).  Each domain, over its own guest
sockets (``SOCKET.d/DOMID``) and nothing but the wire codec, does again and again
what a guest trying to stop xenstored would:

* opens connections until they are refused (its connection quota);
* registers watches on every connection until E2BIG (its watch quota), with long
  tokens so that each costs memory;
* opens transactions until ENOSPC and writes into each until its memory or node
  quota says no (the transaction flood that used to grow the server by hundreds
  of megabytes);
* writes nodes of its own until ENOSPC or ENOMEM;
* asks what xenstored refuses guests (INTRODUCE, IS_DOMAIN_INTRODUCED about dom0,
  reads of dom0's nodes, SET_QUOTA);
* holding all that, sends as many reads as its connections carry (each keeps
  its domain's quota of outstanding requests in flight) for :data:`HOLD` seconds;
* then drops every connection at once (a teardown of all its watches) and starts
  over.

It runs until killed and prints one line per round (``round N: ...``) so that the
test knows the quotas have been reached; it prints a traceback and exits 1 if
anything unexpected happens (a quota not enforced, a reply it cannot parse).
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from rmrrd.xenstore.wire import Op, Packet, encode  # noqa: E402 - after the path fix
from support.raw_xenstore import RawClient  # noqa: E402

TOKEN = b"t" * 1000
"""Watch tokens this long cost the server memory for each watch."""
VALUE = b"v" * 1500
"""Node values this long reach the memory quota in a few hundred writes."""
REFUSED = (b"EACCES\0", b"EPERM\0")
HOLD = 1.0
"""Seconds each round holds its quotas full and pipelines reads."""
PIPELINE = 20
"""Reads each connection keeps in flight while it holds (C xenstored's default
outstanding-request quota per domain, as the simulated one's)."""


class Conn(RawClient):
    """One guest connection over the bare codec (requests one at a time)."""

    async def call(self, op: Op, *args: bytes, tx: int = 0, req: int = 1) -> Packet:
        """The reply to one request (watch events that arrive meanwhile are skipped)."""
        await self.stream.send_all(encode(Packet(op, req, tx, b"".join(a + b"\0" for a in args))))
        while (reply := await self.receive()).op is Op.WATCH_EVENT:
            pass
        return reply

    async def fill(self, op: Op, *args: bytes, tx: int = 0) -> bytes:
        """Send ``op`` until xenstored refuses it; the errno it refused it with."""
        for _ in range(100_000):
            reply = await self.call(op, *args, tx=tx)
            if reply.op is Op.ERROR:
                return reply.payload
            args = (args[0] + b"x", *args[1:]) if op is not Op.TRANSACTION_START else args
        raise AssertionError(f"{op.name} never refused: no quota")


async def connect_all(socket_path: Path) -> list[Conn]:
    """Connections until the server closes a new one at once (right after a
    teardown the server may not have seen the last round's go yet: then again)."""
    conns: list[Conn] = []
    while len(conns) < 1000:
        conn = Conn(await trio.open_unix_socket(str(socket_path)))
        try:
            reply = await conn.call(Op.GET_DOMAIN_PATH, b"0")
        except (EOFError, trio.BrokenResourceError):
            await conn.stream.aclose()
            if conns:
                return conns
            await trio.sleep(0.05)
            continue
        assert reply.op is Op.GET_DOMAIN_PATH, reply
        conns.append(conn)
    raise AssertionError("1000 connections accepted: no connection quota")


async def one_round(socket_path: Path, domid: int) -> str:
    conns = await connect_all(socket_path)
    watches = [await conn.fill(Op.WATCH, b"w", TOKEN) for conn in conns]
    transactions, refused = 0, b""
    for conn in conns:
        while not refused:
            reply = await conn.call(Op.TRANSACTION_START, b"")
            if reply.op is Op.ERROR:
                refused = reply.payload
                break
            transactions += 1
            await fill_values(conn, int(reply.payload.rstrip(b"\0")))
    nodes = await fill_values(conns[0], 0)
    for op, args in ((Op.INTRODUCE, (b"1", b"1", b"1")), (Op.IS_DOMAIN_INTRODUCED, (b"0",)),
                     (Op.READ, (b"/tool",)), (Op.SET_QUOTA, (b"1", b"1"))):
        for conn in conns:
            reply = await conn.call(op, *args)
            assert reply.op is Op.ERROR and reply.payload in REFUSED + (b"ENOENT\0", b"EINVAL\0", b"ENOSYS\0"), (op, reply)
    reads = 0

    async def pipeline(conn: Conn) -> None:
        nonlocal reads
        request = encode(Packet(Op.READ, 1, 0, b"n0\0"))
        await conn.stream.send_all(request * PIPELINE)
        while True:
            if (await conn.receive()).op is not Op.WATCH_EVENT:
                reads += 1
                await conn.stream.send_all(request)

    with trio.move_on_after(HOLD):
        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(pipeline, conn)
    for conn in conns:
        await conn.stream.aclose()
    return (f"dom{domid}: {len(conns)} connections, watches {watches[0]!r}, {transactions} transactions "
            f"{refused!r}, nodes {nodes!r}, {reads} reads in {HOLD:g} s")


async def fill_values(conn: Conn, tx: int) -> bytes:
    """Write ever more nodes of ``VALUE`` until refused."""
    n = 0
    while True:
        reply = await conn.call(Op.WRITE, b"n%d" % n, VALUE, tx=tx)
        if reply.op is Op.ERROR:
            return reply.payload
        n += 1
        assert n < 100_000, "writes never refused: no quota"


async def flood(socket: Path, domids: list[int]) -> None:
    async def guest(domid: int) -> None:
        for round_no in range(1, sys.maxsize):
            summary = await one_round(Path(f"{socket}.d/{domid}"), domid)
            print(f"round {round_no}: {summary}", flush=True)

    async with trio.open_nursery() as nursery:
        for domid in domids:
            nursery.start_soon(guest, domid)


if __name__ == "__main__":
    trio.run(flood, Path(sys.argv[1]), [int(arg) for arg in sys.argv[2:]])
