#!/usr/bin/env python3
"""CPU seconds per domain setup and per toolstack check, everything in one process.

Run from the repository root: ``.venv/bin/python bench/bench_cpu.py [-n N]``.

The daemon (``run_service`` with its embedded simulated xenstored, under
``short_gc_pauses`` as ``rmrrd run`` has it) and the toolstack (rmrrd's own client)
run in this one trio run, so ``time.process_time``
counts all of their work and none of anyone else's: on a shared machine, whose
load moves wall times by a factor of two or more, this is the number that tells one
version of the code from another.  Rows:

* ``setups``: N domains requested (50 transactions at a time, each domain's
  ``/libxl/<domid>`` and ``/local/domain/<domid>`` made beforehand, as libxl does),
  until every answer is there;
* ``checks``: then N checks one after another (assign, hotplug, migrate in turn, as
  ``bench_daemon.py`` asks them), each until its verdict is there.

The numbers go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import trio

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from bench_daemon import ask_check  # noqa: E402

from rmrrd.app.service import run_service  # noqa: E402 - after the path fix
from rmrrd.app.toolstack import write_request  # noqa: E402
from rmrrd.edges.config import MetricsConfig, default_config  # noqa: E402
from rmrrd.edges.gc_pauses import short_gc_pauses  # noqa: E402
from rmrrd.protocol import answer_path, format_request  # noqa: E402
from rmrrd.xenstore.client import XenstoreClient, open_xenstore  # noqa: E402
from rmrrd.xenstore.ops import read_text  # noqa: E402

INVENTORIES = REPO / "etc" / "inventories"
D1, D2, D3 = "0000:00:14.0", "0000:00:02.0", "0000:03:00.0"
SEED = {"memory": "4096", "mmio_hole": "1024", "pci/0": D2, "hotplug/0": D1, "migrate/0": "node-b"}
CHECKS = [("assign", (D2,), None), ("hotplug", (f"{D1},rdm_policy=relaxed",), None), ("migrate", (D3,), "node-b")]


async def answered(xs: XenstoreClient, domid: int) -> None:
    """Until the domain's answer is there (a watch: its first event is the initial one)."""
    path = f"{answer_path(domid)}/generation"
    async with xs.watch(path) as events:
        async for _ in events:
            if await read_text(xs, path) is not None:
                return


async def measure(workdir: Path, n: int) -> tuple[float, float]:
    base = default_config(environ={})
    config = replace(base, xenstore=replace(base.xenstore, path=workdir / "xs.sock", embedded=True),
                     host=replace(base.host, name="node-a", sources=(INVENTORIES / "node-a.yaml",)),
                     peers=(INVENTORIES / "node-b.yaml",), metrics=MetricsConfig(port=0))
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(partial(run_service, config, install_signals=False))
        async with open_xenstore(str(handle.xenstore_path)) as xs:
            for domid in range(1, n + 1):
                await xs.mkdir(f"/local/domain/{domid}")
                await xs.mkdir(f"/libxl/{domid}")
            slots = trio.CapacityLimiter(50)

            async def request(domid: int) -> None:
                async with slots:
                    await write_request(xs, domid, SEED)

            start = time.process_time()
            async with trio.open_nursery() as writers:
                for domid in range(1, n + 1):
                    writers.start_soon(request, domid)
            for domid in range(1, n + 1):
                await answered(xs, domid)
            setups = time.process_time() - start
            start = time.process_time()
            for domid in range(1, n + 1):
                op, devices, target = CHECKS[domid % len(CHECKS)]
                line = format_request(op, domid, devices, target)  # type: ignore[arg-type]
                await ask_check(xs, f"bench-{domid}", line)
            checks = time.process_time() - start
        nursery.cancel_scope.cancel()
    return setups, checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="domains, and checks (default 1000)")
    parser.add_argument("--runs", type=int, default=3, help="runs, the least CPU kept (default 3)")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # the seed's conflicts are warnings, a thousand times
    results = []
    for _ in range(args.runs):
        # As `rmrrd run` runs the daemon: full collections freeze what survives.
        with tempfile.TemporaryDirectory() as workdir, short_gc_pauses():
            results.append(trio.run(measure, Path(workdir), args.n))
    setups, checks = min(r[0] for r in results), min(r[1] for r in results)
    print(f"{'row':<10}{'count':>7}{'CPU s':>9}{'ms each':>9}   (least of {args.runs} runs)")
    print(f"{'setups':<10}{args.n:>7}{setups:>9.2f}{setups / args.n * 1e3:>9.2f}")
    print(f"{'checks':<10}{args.n:>7}{checks:>9.2f}{checks / args.n * 1e3:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
