#!/usr/bin/env python3
"""Xenstore request rate and latency: rmrrd client vs pyxs vs a bare socket loop.

Run from the repository root: ``.venv/bin/python bench/bench_xenstore.py [-n N]``.

Every row talks to the same simulated xenstored (``rmrrd.xenstore.server``), started
in its own process, reading one existing node over one connection:

* ``bare loop``: stdlib socket, pre-encoded request bytes, blocking recv of the
  reply; no decoding beyond the header.  The floor for any Python client.
  ``bare batch x100``: 100 requests written at once, then 100 replies read.
* ``rmrrd sequential``: ``await xs.read(path)`` one after another.
* ``rmrrd pipelined x100``: 100 tasks reading concurrently on the one connection.
* ``plain connection``: the same two rows, the same client, with its connection
  (``rmrrd.xenstore.client_conn.Connection``, hand-scheduled on a raw descriptor)
  replaced by the obvious trio design, :class:`PlainConnection` below: a
  ``SocketStream``, a send lock and an Event per request.  What the hand
  scheduling earns is the ratio of these rows to the two above.
* ``pyxs``: Debian's python3-pyxs, run by /usr/bin/python3 (where it is installed).

Latency is per request, from the call to its answer (for the batch rows: the whole
batch's round trip divided by nothing, i.e. the time until the last reply).
The numbers and their ratios are recorded in docs/xenstore-client.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rmrrd.xenstore import client as client_module  # noqa: E402 - after the path fix
from rmrrd.xenstore.client import open_xenstore  # noqa: E402
from rmrrd.xenstore.client_conn import Channel, ConnectionLost  # noqa: E402
from rmrrd.xenstore.wire import HEADER, Decoder, Op, Packet, encode  # noqa: E402

PATH = "/bench/key"
SYSTEM_PYTHON = "/usr/bin/python3"

SERVER = """
import sys, trio
from rmrrd.xenstore.server import serve_xenstored
try:
    trio.run(serve_xenstored, sys.argv[1])
except* KeyboardInterrupt:
    pass
"""

PYXS = """
import json, sys, time
from pyxs import Client
path, n = sys.argv[1].encode(), int(sys.argv[2])
lat = []
with Client(unix_socket_path=sys.argv[3]) as c:
    c.read(path)
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter_ns()
        c.read(path)
        lat.append(time.perf_counter_ns() - t)
    total = time.perf_counter() - start
print(json.dumps({"total": total, "lat": lat}))
"""


class Row:
    """One measured configuration: requests, wall time, per-request latencies (ns)."""

    def __init__(self, name: str, requests: int, seconds: float, latencies: list[int]) -> None:
        self.name = name
        self.rate = requests / seconds
        ordered = sorted(latencies)
        self.p50 = ordered[len(ordered) // 2] / 1000
        self.p99 = ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] / 1000


def bare_loop(sock_path: str, n: int, batch: int) -> Row:
    """Pre-encoded requests on a blocking socket: the cost of the server and the kernel."""
    request = encode(Packet(Op.READ, 0, 0, PATH.encode() + b"\0")) * batch
    latencies: list[int] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(sock_path)
        start = time.perf_counter()
        for _ in range(n // batch):
            t = time.perf_counter_ns()
            sock.sendall(request)
            for _ in range(batch):
                _recv_reply(sock)
            latencies.append(time.perf_counter_ns() - t)
        total = time.perf_counter() - start
    name = "bare loop" if batch == 1 else f"bare batch x{batch}"
    return Row(name, n // batch * batch, total, latencies)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection")
        data += chunk
    return data


def _recv_reply(sock: socket.socket) -> bytes:
    _, _, _, size = HEADER.unpack(_recv_exact(sock, HEADER.size))
    return _recv_exact(sock, size)


async def rmrrd_client(sock_path: str, n: int, in_flight: int) -> Row:
    """The rmrrd client, one connection, ``in_flight`` concurrent readers."""
    latencies: list[int] = []
    async with open_xenstore(sock_path) as xs:
        await xs.write(PATH, "value")
        # A live watch, as the daemon has: reads must not pay for it.
        async with xs.watch("/bench/watched"):

            async def reader(count: int) -> None:
                for _ in range(count):
                    t = time.perf_counter_ns()
                    await xs.read(PATH)
                    latencies.append(time.perf_counter_ns() - t)

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(in_flight):
                    nursery.start_soon(reader, n // in_flight)
            total = time.perf_counter() - start
    name = "rmrrd sequential" if in_flight == 1 else f"rmrrd pipelined x{in_flight}"
    return Row(name, n // in_flight * in_flight, total, latencies)


class PlainConnection:
    """The straightforward trio connection, for comparison (same interface as
    ``client_conn.Connection``): writes under a lock through a ``SocketStream``, one
    reader task, each waiting request woken by its own ``trio.Event``."""

    def __init__(self, channel: Channel, on_event: Callable[[Packet], None], name: str) -> None:
        assert isinstance(channel, socket.socket), "the plain connection is for unix sockets"
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(channel))
        self.name = name
        self.closed: str | None = None
        self._on_event = on_event
        self._pending: dict[int, tuple[trio.Event, list[Packet]]] = {}
        self._send_lock = trio.Lock()

    async def call(self, req_id: int, data: bytes) -> Packet:
        if self.closed is not None:
            raise ConnectionLost(self.closed)
        done, box = trio.Event(), list[Packet]()
        self._pending[req_id] = (done, box)
        try:
            async with self._send_lock:
                await self.stream.send_all(data)
            await done.wait()
        finally:
            self._pending.pop(req_id, None)
        if not box:
            raise ConnectionLost(f"{self.name}: {self.closed}")
        return box[0]

    async def run(self) -> None:
        decoder = Decoder()
        try:
            while data := await self.stream.receive_some(65536):
                decoder.feed(data)
                for packet in decoder.packets():
                    if packet.op is Op.WATCH_EVENT:
                        self._on_event(packet)
                    elif (entry := self._pending.pop(packet.req_id, None)) is not None:
                        entry[1].append(packet)
                        entry[0].set()
        finally:
            self.closed = self.closed or "connection closed"
            for done, _ in self._pending.values():
                done.set()
            with trio.CancelScope(shield=True):
                await self.stream.aclose()


async def plain_client(sock_path: str, n: int, in_flight: int) -> Row:
    """:func:`rmrrd_client` with :class:`PlainConnection` in place of rmrrd's own."""
    # The name client.py looks up when it connects (imported there from client_conn).
    real = getattr(client_module, "Connection")
    setattr(client_module, "Connection", PlainConnection)
    try:
        row = await rmrrd_client(sock_path, n, in_flight)
    finally:
        setattr(client_module, "Connection", real)
    row.name = row.name.replace("rmrrd", "plain connection,")
    return row


def pyxs(sock_path: str, n: int) -> Row | None:
    """Debian's pyxs in a /usr/bin/python3 subprocess, or None where it is missing."""
    try:
        done = subprocess.run(
            [SYSTEM_PYTHON, "-c", PYXS, PATH, str(n), sock_path], capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"pyxs: skipped ({exc})", file=sys.stderr)
        return None
    if done.returncode != 0:
        print(f"pyxs: skipped ({done.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    result = json.loads(done.stdout)
    return Row("pyxs (Debian 0.4.2)", n, result["total"], result["lat"])


def start_server(sock_path: str) -> subprocess.Popen[bytes]:
    """The simulated xenstored in its own process (so the client gets the other core)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    server = subprocess.Popen([sys.executable, "-c", SERVER, sock_path], env=env)
    deadline = time.monotonic() + 20
    while not os.path.exists(sock_path):
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"simulated xenstored did not start (exit status {server.poll()})")
        time.sleep(0.05)
    return server


def best_of(runs: int, measure: Callable[[], Row]) -> Row:
    """The fastest of a few runs: the machine is shared, and noise only slows things."""
    return max((measure() for _ in range(runs)), key=lambda row: row.rate)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000, help="requests per row (default 20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per row, best kept (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sock_path = os.path.join(tmp, "xs.sock")
        server = start_server(sock_path)
        try:
            rows = [
                best_of(args.runs, lambda: trio.run(rmrrd_client, sock_path, args.n, 1)),
                best_of(args.runs, lambda: trio.run(rmrrd_client, sock_path, args.n, 100)),
                best_of(args.runs, lambda: bare_loop(sock_path, args.n, 1)),
                best_of(args.runs, lambda: bare_loop(sock_path, args.n, 100)),
                best_of(args.runs, lambda: trio.run(plain_client, sock_path, args.n, 1)),
                best_of(args.runs, lambda: trio.run(plain_client, sock_path, args.n, 100)),
            ]
            if (row := pyxs(sock_path, args.n)) is not None:
                rows.append(row)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=20)
    floor = {1: rows[2].rate, 100: rows[3].rate}
    print(f"{'client':<34}{'req/s':>10}{'p50 us':>10}{'p99 us':>10}{'vs bare':>9}")
    for row in rows:
        base = floor[100] if "x100" in row.name else floor[1]
        print(f"{row.name:<34}{row.rate:>10.0f}{row.p50:>10.1f}{row.p99:>10.1f}{row.rate / base:>9.2f}")
    print(f"hand-scheduled connection over plain: sequential {rows[0].rate / rows[4].rate:.2f}x, "
          f"pipelined x100 {rows[1].rate / rows[5].rate:.2f}x")
    print("(batch rows: latency is the round trip of a whole batch of 100)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
