#!/usr/bin/env python3
"""Domain setup under load: the daemon against the same xenstore traffic issued bare.

Run from the repository root: ``.venv/bin/python bench/bench_daemon.py [-n N]``.

Three processes, as on a dom0: the simulated xenstored (``rmrrd xenstored``), the
daemon (``rmrrd run`` with ``xenstore.embedded: false``), and this script playing
the toolstack.  Every domain is requested as the seed's domain 1 (4096 MiB,
``mmio_hole`` 1024, one assigned, one hotplug device, one migration target), each
request in one transaction, on fresh domids, with a watch on the answer's
``generation`` set beforehand.  Rows:

* ``daemon burst``: N requests written at once; wall time from the first request
  to the last answer seen, and per domain the latency from the request's commit
  to the watch event of its answer's ``generation``.
* ``daemon 200 in flight``: N requests, a new one whenever an answer arrives,
  never more than 200 unanswered.
* ``daemon paced 200/s``: N requests arriving at a steady 200 per second (an
  open loop): the latency one domain sees when the host is busy but not flooded.
* ``toolstack checks``: N assign / hotplug / migrate checks (in turn) on the domains
  just answered, one at a time as a toolstack asks them (it waits for the verdict
  before it acts); latency from the request's write to the watch event of its
  ``verdict``.
* ``bare replay``: the same requests, then, at the daemon's concurrency, the
  daemon's own xenstore operations per domain (``read_setup_input``,
  ``read_answer_generation``, ``write_answer`` in one transaction, the guest-query
  watch and its initial directory read, ``is_introduced``) issued by this client,
  with the answer planned once beforehand.  ``vs bare`` is the daemon row's wall
  time over this one: what watches, planning and the second process cost.

``--persist`` measures the durable store's cost instead: the burst and in-flight
rows against a xenstored without and with ``--persist`` (every change fsynced to
its journal before it is acknowledged, :mod:`rmrrd.xenstore.journal`), the two
alternating ``--repeats`` times so that the machine's load falls on both alike,
each on fresh processes, in a directory on the disk (``--dir``, default the
system's temporary directory: make sure it is not a tmpfs, where fsync costs
nothing).  It prints each run and the ratio of the best times.

Aims: N=1000 answered within 5 s on 2 cores, p99 under 20 ms at 200 in
flight, ratio under 1.5; ``--persist`` costs at most 1.5x setups per second.
``--profile DIR`` also records a py-spy profile of the daemon (and of the
xenstored) during the burst, if py-spy is on PATH.  The numbers go to
docs/performance.md.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rmrrd.edges.config import default_config  # noqa: E402 - after the path fix
from rmrrd.daemon.domains import SETUP_CONCURRENCY  # noqa: E402
from rmrrd.daemon.setup import decide, read_answer_generation, read_setup_input, write_answer  # noqa: E402
from rmrrd.xenstore.ops import gather, read_text  # noqa: E402
from rmrrd.core.inventory_yaml import load_inventory_file  # noqa: E402
from rmrrd.protocol import format_request  # noqa: E402
from rmrrd.protocol import REQUEST_ROOT, RESULT_ROOT, STATUS_KEY, answer_path, rdm_path  # noqa: E402
from rmrrd.xenstore.client import XenstoreClient, open_xenstore  # noqa: E402
from rmrrd.xenstore.wire import Again, NoEntry  # noqa: E402

INVENTORIES = REPO / "etc" / "inventories"
DOMAIN = {"memory": "4096", "mmio_hole": "1024", "pci/0": "0000:00:02.0",
          "hotplug/0": "0000:00:14.0", "migrate/0": "node-b"}
GENERATION = "1"


@dataclass(frozen=True, slots=True)
class Row:
    """One measured run: how many domains, wall seconds, latencies in seconds."""

    name: str
    domains: int
    seconds: float
    latencies: list[float]

    def line(self, last: str) -> str:
        """The row as the tables print it, ``last`` in the final column."""
        return (f"{self.name:<32}{self.domains:>8}{self.seconds:>9.2f}{self.domains / self.seconds:>8.0f}"
                f"{self.percentile(0.5) * 1000:>9.1f}{self.percentile(0.99) * 1000:>9.1f}"
                f"{max(self.latencies) * 1000:>9.1f}{last:>9}")

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(len(ordered) * q) - 1)] if ordered else math.nan


def free_port() -> int:
    """A loopback port nobody listens on now (the config wants a real port, not 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_config(workdir: Path, socket_path: Path) -> Path:
    config = workdir / "rmrrd.yaml"
    config.write_text(
        f"xenstore: {{path: {socket_path}, embedded: false}}\n"
        f"host: {{name: node-a, sources: [{INVENTORIES / 'node-a.yaml'}]}}\n"
        f"peers: [{INVENTORIES / 'node-b.yaml'}]\n"
        f"metrics: {{listen: '127.0.0.1:{free_port()}'}}\n"
        "log: {level: warning}\n")
    return config


def rmrrd_process(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "rmrrd", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)


@contextmanager
def services(workdir: Path, *, persist: bool = False
             ) -> Iterator[tuple[Path, subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """xenstored (``--persist`` in ``workdir`` if asked) and the daemon, each in its
    own process; stopped on the way out."""
    socket_path = workdir / "xs.sock"
    config = write_config(workdir, socket_path)
    extra = ["--persist", str(workdir / "tree")] if persist else []
    xenstored = rmrrd_process("xenstored", "--socket", str(socket_path), *extra, log=workdir / "xenstored.log")
    daemon: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            if xenstored.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"xenstored did not start: {(workdir / 'xenstored.log').read_text()}")
            time.sleep(0.05)
        daemon = rmrrd_process("run", "--config", str(config), log=workdir / "daemon.log")
        yield socket_path, xenstored, daemon
    finally:
        for process in (daemon, xenstored):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=20)


async def wait_ready(xs: XenstoreClient) -> None:
    """Until the daemon has reconciled and says so in ``/tool/rmrrd/status``."""
    async with xs.watch(STATUS_KEY) as events:
        with trio.fail_after(30):
            async for _ in events:
                if await read_text(xs, STATUS_KEY) == "ready":
                    return


async def write_request(xs: XenstoreClient, domid: int) -> float:
    """The toolstack's request in one transaction; returns when its commit was sent."""
    base = rdm_path(domid)
    items = [*DOMAIN.items(), ("request", GENERATION)]
    while True:
        try:
            async with xs.transaction() as tx:
                await gather(lambda item: tx.write(f"{base}/{item[0]}", item[1]), items)
                committed = time.perf_counter()
            return committed
        except Again:
            continue  # another new domain created a sibling under /libxl first


async def create_domains(xs: XenstoreClient, domids: range, daemon_pid: int | None) -> None:
    """Create the domains' directories as libxl does when it makes a domain, untimed.

    libxl (``libxl__domain_make``) creates ``/local/domain/<d>`` and ``/libxl/<d>``
    before building; new children of ``/local/domain`` and ``/libxl`` conflict with
    every concurrent transaction that adds one too, so doing this inside the timed
    burst would measure EAGAIN retries, not setups.  Then wait for the daemon to
    have looked at each new domain (no request yet) and gone idle.
    """
    for domid in domids:  # one at a time: concurrent ones would conflict
        await gather(xs.mkdir, (f"/local/domain/{domid}", f"/libxl/{domid}"))
    if daemon_pid is not None:
        await wait_idle(daemon_pid)


async def wait_idle(pid: int) -> None:
    """Until the process has used no CPU for a while (its backlog is done)."""
    def cpu() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks

    before = cpu()
    while True:
        await trio.sleep(0.3)
        now = cpu()
        if now == before:
            return
        before = now


async def request_domains(xs: XenstoreClient, domids: range, in_flight: int, name: str,
                          rate: float | None = None) -> Row:
    """Request every domain, ``in_flight`` unanswered at most; wait for every answer.

    ``rate``: start a request every ``1/rate`` seconds (an open loop, as domains
    arriving on their own) instead of all at once.
    """
    latencies: list[float] = []
    limiter = trio.CapacityLimiter(in_flight)
    async with AsyncExitStack() as stack:
        watches = {domid: await stack.enter_async_context(xs.watch(f"{answer_path(domid)}/generation"))
                   for domid in domids}
        for events in watches.values():
            await events.__anext__()  # the initial event, before anything is written

        async def one(domid: int) -> None:
            async with limiter:
                committed = await write_request(xs, domid)
                async for event in watches[domid]:
                    if event.path.endswith("/generation"):
                        latencies.append(time.perf_counter() - committed)
                        return

        start = time.perf_counter()
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                paced_start = trio.current_time()
                for index, domid in enumerate(domids):
                    nursery.start_soon(one, domid)
                    if rate is not None:
                        await trio.sleep_until(paced_start + (index + 1) / rate)
        seconds = time.perf_counter() - start
    return Row(name, len(domids), seconds, latencies)


CHECKS = (("assign", (DOMAIN["pci/0"],), None), ("hotplug", (DOMAIN["hotplug/0"],), None),
          ("migrate", (), DOMAIN["migrate/0"]))
CHECKS_IN_FLIGHT = 1


async def ask_check(xs: XenstoreClient, req_id: str, request: str) -> float:
    """Write one check request as a toolstack does; returns the seconds until its verdict."""
    async with xs.watch(f"{RESULT_ROOT}/{req_id}/verdict") as events:
        await events.__anext__()  # the initial event, before anything is written
        sent = time.perf_counter()
        await xs.write(f"{REQUEST_ROOT}/{req_id}", request)
        await events.__anext__()
        return time.perf_counter() - sent


async def check_requests(xs: XenstoreClient, domids: range) -> Row:
    """A toolstack check per domain, in turn assign, hotplug and migrate."""
    latencies: list[float] = []
    limiter = trio.CapacityLimiter(CHECKS_IN_FLIGHT)

    async def one(index: int, domid: int) -> None:
        op, devices, target = CHECKS[index % len(CHECKS)]
        async with limiter:
            request = format_request(op, domid, devices, target)  # type: ignore[arg-type]
            latencies.append(await ask_check(xs, f"bench-{index}", request))

    start = time.perf_counter()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for index, domid in enumerate(domids):
                nursery.start_soon(one, index, domid)
    return Row(f"toolstack checks, {CHECKS_IN_FLIGHT} at once", len(domids), time.perf_counter() - start,
               latencies)


async def replay_bare(xs: XenstoreClient, domids: range) -> Row:
    """The daemon's per-domain xenstore operations, issued by this client, no planning."""
    defaults, host = default_config(environ={}).defaults, load_inventory_file(INVENTORIES / "node-a.yaml")
    peers = {"node-b": load_inventory_file(INVENTORIES / "node-b.yaml")}
    setups = trio.CapacityLimiter(SETUP_CONCURRENCY)
    latencies: list[float] = []
    async with AsyncExitStack() as stack:
        first = domids[0]
        await write_request(xs, first)
        given = await xs.run_transaction(lambda tx: read_setup_input(tx, first))
        assert given is not None
        outcome = decide(given, defaults, host, peers)

        async def one(domid: int) -> None:
            committed = await write_request(xs, domid)
            async with setups:
                async def setup(tx: object) -> None:
                    assert await read_setup_input(tx, domid) is not None  # type: ignore[arg-type]
                    await read_answer_generation(tx, domid)  # type: ignore[arg-type]
                    await write_answer(tx, domid, GENERATION, outcome)  # type: ignore[arg-type]

                await xs.run_transaction(setup)
                await xs.is_introduced(domid)
                query = f"{answer_path(domid)}/query"
                await stack.enter_async_context(xs.watch(query))
                try:
                    await xs.directory(query)
                except NoEntry:
                    pass
            latencies.append(time.perf_counter() - committed)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for domid in domids:
                nursery.start_soon(one, domid)
        seconds = time.perf_counter() - start
    return Row("bare replay (client only)", len(domids), seconds, latencies)


async def setup_rows(xs: XenstoreClient, daemon: subprocess.Popen[bytes], batches: list[range], n: int,
                     in_flight: int, label: str) -> list[Row]:
    """The burst row on ``batches[0]``, the in-flight row on ``batches[1]``."""
    await create_domains(xs, batches[0], daemon.pid)
    burst = await request_domains(xs, batches[0], n, f"{label} burst of {n}")
    await create_domains(xs, batches[1], daemon.pid)
    steady = await request_domains(xs, batches[1], in_flight, f"{label} {in_flight} in flight")
    return [burst, steady]


async def measure_setups(socket_path: Path, daemon: subprocess.Popen[bytes], n: int, in_flight: int,
                         label: str) -> list[Row]:
    """The burst and in-flight rows alone (for the ``--persist`` comparison)."""
    async with open_xenstore(str(socket_path)) as xs:
        await wait_ready(xs)
        return await setup_rows(xs, daemon, [range(k * n + 1, (k + 1) * n + 1) for k in range(2)], n, in_flight,
                                label)


async def measure(socket_path: Path, daemon: subprocess.Popen[bytes], n: int, in_flight: int,
                  rate: float) -> list[Row]:
    async with open_xenstore(str(socket_path)) as xs:
        await wait_ready(xs)
        batches = [range(k * n + 1, (k + 1) * n + 1) for k in range(4)]
        burst, steady = await setup_rows(xs, daemon, batches, n, in_flight, "daemon")
        await create_domains(xs, batches[2], daemon.pid)
        paced = await request_domains(xs, batches[2], n, f"daemon paced {rate:g}/s", rate)
        checks = await check_requests(xs, batches[2])
        # The daemon would answer these too: stop it, so that only the client works.
        daemon.terminate()
        await trio.to_thread.run_sync(daemon.wait)
        await create_domains(xs, batches[3], None)
        bare = await replay_bare(xs, batches[3])
    return [burst, steady, paced, checks, bare]


def compare_persist(n: int, in_flight: int, repeats: int, directory: Path | None) -> None:
    """Setups per second without and with ``--persist``, alternating, each on fresh
    processes and a fresh store; prints every run and the ratio of the best times."""
    runs: dict[str, list[list[Row]]] = {"plain": [], "--persist": []}
    for _ in range(repeats):
        for label in runs:
            with tempfile.TemporaryDirectory(prefix="rmrrd-bench-", dir=directory) as tmp:
                with services(Path(tmp), persist=label == "--persist") as (socket_path, _, daemon):
                    runs[label].append(trio.run(measure_setups, socket_path, daemon, n, in_flight, label))
    print(f"{'row':<32}{'domains':>8}{'wall s':>9}{'per s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'run':>9}")
    for label, rounds in runs.items():
        for k, rows in enumerate(rounds, 1):
            for row in rows:
                print(row.line(str(k)))
    for index in range(2):
        plain = min(rows[index].seconds for rows in runs["plain"])
        durable = min(rows[index].seconds for rows in runs["--persist"])
        kind = runs["plain"][0][index].name.split(" ", 1)[1]
        print(f"{kind}: best {n / plain:.0f} setups/s without --persist, {n / durable:.0f} with: "
              f"{durable / plain:.2f}x the time")
    print(f"({os.cpu_count()} cores; store in {directory or tempfile.gettempdir()})")


@contextmanager
def profiling(out: Path | None, processes: dict[str, int]) -> Iterator[None]:
    """py-spy records each named process while the body runs (when asked and installed)."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    recorders = []
    if out is not None and spy is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, pid in processes.items():
            recorders.append(subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--format", "raw",
                 "--output", str(out / f"{name}.txt"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1)  # py-spy attaches before the burst starts
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)  # py-spy writes its profile and exits
            recorder.wait(timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="domains per row (default 1000)")
    parser.add_argument("--in-flight", type=int, default=200, help="unanswered requests at most (default 200)")
    parser.add_argument("--rate", type=float, default=200, help="requests per second of the paced row (default 200)")
    parser.add_argument("--profile", type=Path, help="write py-spy raw profiles of the daemon and xenstored here")
    parser.add_argument("--persist", action="store_true",
                        help="also run the setup rows against a xenstored with --persist, and compare")
    parser.add_argument("--dir", type=Path, help="where the xenstored's files go (default: the temporary directory)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side with --persist (default 3)")
    args = parser.parse_args()
    if args.persist:
        compare_persist(args.n, args.in_flight, args.repeats, args.dir)
        return 0
    with tempfile.TemporaryDirectory(prefix="rmrrd-bench-", dir=args.dir) as tmp:
        with services(Path(tmp)) as (socket_path, xenstored, daemon):
            with profiling(args.profile, {"daemon": daemon.pid, "xenstored": xenstored.pid}):
                rows = trio.run(measure, socket_path, daemon, args.n, args.in_flight, args.rate)
    paced, checks, bare = rows[2:]
    print(f"{'row':<32}{'domains':>8}{'wall s':>9}{'per s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'vs bare':>9}")
    for row in rows:
        # The paced row's wall time is set by its rate, and checks are not setups:
        # no ratio for them.
        ratio = "-" if row in (paced, checks) else f"{row.seconds / bare.seconds:.2f}"
        print(row.line(ratio))
    print(f"({os.cpu_count()} cores; latency: request commit sent -> answer generation event; "
          "checks: request written -> verdict event; "
          "bare replay latency: request commit sent -> its replayed setup done)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
