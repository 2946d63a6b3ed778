#!/usr/bin/env python3
"""Hook latency: from process start to verdict, as a toolstack hook pays it.

Run from the repository root: ``.venv/bin/python bench/bench_hooks.py [-n RUNS]``.

Each row starts a fresh process ``RUNS`` times (after 3 warm-up runs, as hyperfine
does, which also write the bytecode an installed package has) and reports the median
and the 90th percentile of the wall time from spawn to exit.  The rows take turns, one
run each per round, so that load from elsewhere on the machine falls on every row
alike.  The floors are measured in the same run: ``/usr/bin/python3 -c pass`` (Debian's
Python, by its path: a ``python3`` earlier on ``PATH`` may be a version manager's shim),
the virtualenv's ``python -c pass`` (what every entry point starts with) and
``xenstore-read`` (a C client doing one request).  The checks run against a real
daemon on the simulated xenstored (two processes, as ``bench_daemon.py`` starts them)
with the seed's domain 1 set up:

* ``rmrrd check hotplug``: one toolstack check through the daemon;
* ``rmrrd check hotplug --xl-config``: the same check offline, for an xl.cfg file
  (read, planned against this host's inventory, which is cached as for the libvirt
  hook after the warm-up runs);
* ``rmrrd-xl pci-attach``: the xl wrapper's check, then exec of ``/bin/true`` in
  place of xl;
* ``rmrrd-xl create``: the xl wrapper's prediction for the same xl.cfg file (read,
  planned against the cached inventory), then exec of ``/bin/true``;
* ``rmrrd-libvirt-hook prepare``: a domain XML without PCI devices (the common case),
  with the GPU (planned here against this host's inventory: configuration, YAML and
  planner loaded), and an operation the hook does not check.

Aim: every hook row at most 80 ms median.  The numbers go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))

from bench_daemon import GENERATION, services, wait_ready, write_request  # noqa: E402
from rmrrd.xenstore.ops import read_text  # noqa: E402
from rmrrd.protocol import answer_path  # noqa: E402
from rmrrd.xenstore.client import open_xenstore  # noqa: E402

VENV_BIN = Path(sys.executable).parent
GPU_XML = (REPO / "tests" / "data" / "libvirt" / "hvm-gpu.xml").read_text()
NO_DEVICE_XML = GPU_XML[:GPU_XML.index("    <hostdev")] + GPU_XML[GPU_XML.index("    </hostdev>\n") + 15:]
XL_CONFIG = REPO / "tests" / "data" / "xl" / "hvm-2g-host.cfg"
"""A 2 GiB HVM guest with rdm="strategy=host": the offline check plans it, the GPU's region reserved."""
AIM_MS = 80.0


Row = tuple[str, list[str], str]
"""A row's name, its command line and what it reads on stdin."""


def once(argv: list[str], env: dict[str, str], stdin: str) -> float:
    """The wall time in ms of one run of ``argv``, which must exit 0."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, input=stdin.encode(), capture_output=True, check=False)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode().strip()}")
    return elapsed


def timed(rows: list[Row], env: dict[str, str], runs: int) -> list[tuple[str, list[float]]]:
    """Each row's wall times in ms: ``runs`` rounds after 3 unmeasured ones.

    A round runs every row once, so a burst of load on the shared machine lands on all
    rows alike (the floors included) instead of on whichever row was running then.
    """
    times: list[list[float]] = [[] for _ in rows]
    for index in range(runs + 3):
        for (_, argv, stdin), row_times in zip(rows, times):
            elapsed = once(argv, env, stdin)
            if index >= 3:
                row_times.append(elapsed)
    return [(name, row_times) for (name, _, _), row_times in zip(rows, times)]


async def set_up_domain(socket_path: Path) -> None:
    async with open_xenstore(str(socket_path)) as xs:
        await wait_ready(xs)
        async with xs.watch(f"{answer_path(1)}/generation") as events:
            await write_request(xs, 1)
            async for _ in events:
                if await read_text(xs, f"{answer_path(1)}/generation") == GENERATION:
                    return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=30)
    parser.add_argument("--runtime-dir", type=Path, help="where the libvirt hook caches the inventory "
                                                           "(default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, services(Path(tmp)) as (socket_path, _, _):
        trio.run(set_up_domain, socket_path)
        workdir = Path(tmp)
        config = workdir / "rmrrd.yaml"  # written by services(): node-a, peer node-b
        env = dict(os.environ, XENSTORED_PATH=str(socket_path), RMRRD_XL="/bin/true", RMRRD_CONFIG=str(config),
                   RMRRD_RUNTIME_DIR=str(args.runtime_dir or workdir / "run"))
        # An installed rmrrd runs from bytecode (pip compiles at install); a checkout gets
        # it from the warm-up runs, unless the environment forbids writing it.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        rows: list[Row] = [
            ("/usr/bin/python3 -c pass (floor)", ["/usr/bin/python3", "-c", "pass"], ""),
            ("venv python -c pass (floor)", [sys.executable, "-c", "pass"], ""),
            ("xenstore-read (floor)", ["xenstore-read", "/tool/rmrrd/status"], ""),
            ("rmrrd check hotplug", [str(VENV_BIN / "rmrrd"), "check", "hotplug", "--domid", "1",
                                     "--device", "0000:00:02.0"], ""),
            ("rmrrd check hotplug --xl-config", [str(VENV_BIN / "rmrrd"), "check", "hotplug", "--xl-config",
                                                 str(XL_CONFIG), "--device", "0000:00:02.0"], ""),
            ("rmrrd-xl pci-attach", [str(VENV_BIN / "rmrrd-xl"), "pci-attach", "1", "0000:00:02.0"], ""),
            ("rmrrd-xl create", [str(VENV_BIN / "rmrrd-xl"), "create", str(XL_CONFIG)], ""),
            ("rmrrd-libvirt-hook prepare, no PCI device",
             [str(VENV_BIN / "rmrrd-libvirt-hook"), "g", "prepare", "begin", "-"], NO_DEVICE_XML),
            ("rmrrd-libvirt-hook prepare, GPU",
             [str(VENV_BIN / "rmrrd-libvirt-hook"), "g", "prepare", "begin", "-"], GPU_XML),
            ("rmrrd-libvirt-hook start (not checked)",
             [str(VENV_BIN / "rmrrd-libvirt-hook"), "g", "start", "begin", "-"], GPU_XML),
        ]
        results = timed(rows, env, args.runs)
    floor = statistics.median(results[1][1])
    print(f"{args.runs} runs each, after 3 warm-up runs; ms from spawn to exit")
    print(f"| {'process':<42} | {'min':>6} | {'median':>7} | {'p90':>7} | {'vs venv python':>14} | aim |")
    print(f"| {'-' * 42} | {'-' * 5}: | {'-' * 6}: | {'-' * 6}: | {'-' * 13}: | --- |")
    for name, times in results:
        median = statistics.median(times)
        p90 = sorted(times)[int(len(times) * 0.9) - 1]
        aim = "" if "floor" in name else ("ok" if median <= AIM_MS else "MISSED")
        print(f"| {name:<42} | {min(times):6.1f} | {median:7.1f} | {p90:7.1f} | {median / floor:14.2f} | {aim} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
