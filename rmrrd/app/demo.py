"""The seed scenario end to end, on an embedded xenstored.

``rmrrd demo`` plays every role of the xen-devel design thread against a real
daemon: the toolstack (writing ``/libxl/<domid>/rdm/`` and check requests), the
domain builder's consumer (reading the answer), and hvmloader (querying through a
guest-identity connection with the guest's real permissions).  Each step prints
what happened next to what is expected, so the report doubles as a check.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import trio

from rmrrd.edges.config import MetricsConfig, default_config
from rmrrd.errors import InputError
from rmrrd.protocol import Answer, format_request
from rmrrd.xenstore.client import XenstoreClient, open_xenstore

from rmrrd.app.check import ask_daemon
from rmrrd.app.service import run_service
from rmrrd.app.toolstack import create_domain, guest_query

D1, D2, D3 = "0000:00:14.0", "0000:00:02.0", "0000:03:00.0"
SEED_DOMAIN = {"memory": "4096", "mmio_hole": "1024", "pci/0": D2, "hotplug/0": D1, "migrate/0": "node-b"}


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


def find_inventories() -> Path:
    """``etc/inventories`` of a source tree, or the copy a pip install puts in share/."""
    for candidate in (Path(__file__).resolve().parents[2] / "etc" / "inventories",
                      Path(sys.prefix) / "share" / "rmrrd" / "inventories"):
        if (candidate / "node-a.yaml").exists():
            return candidate
    raise InputError("cannot find the sample inventories node-a.yaml and node-b.yaml (etc/inventories)")


def region(answer: Answer, span: str) -> str:
    """How the answer treats the region ``span``: ``conflict=... action=...``, or "" if absent."""
    for found in answer.regions:
        if str(found.range) == span:
            return f"conflict={found.conflict} action={found.action}"
    return ""


def address(value: int | None) -> str:
    return "" if value is None else f"{value:#x}"


async def scenario(xs: XenstoreClient, xenstore_path: Path, guest_socket: Callable[[int], Path],
                   say: Callable[[str], None]) -> list[Step]:
    steps: list[Step] = []

    def expect(name: str, expected: str, got: str) -> None:
        step = Step(name, expected, got)
        steps.append(step)
        say(f"  [{'ok' if step.ok else 'MISMATCH'}] {name}: {got}" + ("" if step.ok else f" (expected {expected})"))

    say("STEP-1  domain 1: 4096 MiB, mmio_hole 1024 MiB, pci D2, hotplug D1, migrate node-b")
    answer = await create_domain(xs, 1, SEED_DOMAIN)
    expect("status", "ready", answer.status)
    expect("lowmem_end", "0xa0000000", address(answer.lowmem_end))
    expect("highmem_end", "0x160000000", address(answer.highmem_end))
    expect("D2 region 0xa0000000-0xa37fffff", "conflict=none action=avoided", region(answer, "0xa0000000-0xa37fffff"))
    expect("node-b region 0x40000000-0x40003fff", "conflict=ram action=warned", region(answer, "0x40000000-0x40003fff"))
    expect("D1 region 0xe0000-0xeffff", "conflict=bios action=warned", region(answer, "0xe0000-0xeffff"))
    say(f"  e820: {', '.join(answer.e820)}")

    say("STEP-3  hvmloader in domain 1 queries through its own guest connection")
    await xs.introduce(1, 0, 0)
    async with open_xenstore(str(guest_socket(1))) as guest:
        say(f"  e820    -> {await guest_query(guest, 1, 'q1', 'e820')}")
        say(f"  regions -> {await guest_query(guest, 1, 'q2', 'regions')}")
        bar = await guest_query(guest, 1, "q3", "alloc 0x1000000")
        expect("alloc a 16 MiB BAR in the MMIO hole", "ok", bar.split(" ", 1)[0])
        say(f"  alloc 0x1000000 -> {bar}")

    say("STEP-2/4/5  toolstack checks")
    for name, op, devices, target, expected in (
        ("assign D2", "assign", (D2,), None, "ok"),
        ("hotplug D1", "hotplug", (D1,), None, "fail"),
        ("hotplug D1 rdm_policy=relaxed", "hotplug", (f"{D1},rdm_policy=relaxed",), None, "warn"),
        ("migrate to node-b with D3", "migrate", (D3,), "node-b", "fail"),
        ("migrate to node-b with D3 rdm_policy=relaxed", "migrate", (f"{D3},rdm_policy=relaxed",), "node-b", "warn"),
    ):
        # The command line's blocking client, in a thread: the embedded xenstored runs in this loop.
        request = format_request(op, 1, devices, target)  # type: ignore[arg-type]
        _, result = await trio.to_thread.run_sync(ask_daemon, str(xenstore_path), request, 10.0)
        expect(name, expected, result.verdict)
        say(f"      {result.reason}")

    say("rdm_mem_boundary=4096: D2 lies below the boundary and cannot be avoided")
    strict = await create_domain(xs, 2, {**SEED_DOMAIN, "mem_boundary": "4096"})
    expect("domain 2, D2 strict", "error", strict.status)
    say(f"      {strict.error}")
    relaxed = await create_domain(xs, 3, {**SEED_DOMAIN, "mem_boundary": "4096", "pci/0": f"{D2},rdm_policy=relaxed"})
    expect("domain 3, D2 relaxed", "ready", relaxed.status)
    expect("domain 3, D2 region", "conflict=ram action=warned", region(relaxed, "0xa0000000-0xa37fffff"))
    return steps


async def run_demo(say: Callable[[str], None], workdir: Path) -> list[Step]:
    """Start an embedded xenstored and the daemon in ``workdir``, play the scenario."""
    inventories = find_inventories()
    base = default_config(environ={})
    config = replace(
        base,
        xenstore=replace(base.xenstore, path=workdir / "xenstored.socket", embedded=True),
        host=replace(base.host, name="node-a", sources=(inventories / "node-a.yaml",)),
        peers=(inventories / "node-b.yaml",),
        metrics=MetricsConfig(port=0),
    )
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(partial(run_service, config, install_signals=False))
        say(f"rmrrd serving on embedded xenstored {handle.xenstore_path} (metrics on 127.0.0.1:{handle.http_port})")
        async with open_xenstore(str(handle.xenstore_path)) as xs:
            steps = await scenario(xs, handle.xenstore_path,
                                   lambda domid: Path(f"{handle.xenstore_path}.d/{domid}"), say)
        nursery.cancel_scope.cancel()
    return steps


def demo(say: Callable[[str], None] = print) -> int:
    """Run the scenario in a temporary directory; 0 when every step is as expected."""
    with tempfile.TemporaryDirectory(prefix="rmrrd-demo-") as workdir:
        steps = trio.run(run_demo, say, Path(workdir))
    good = sum(step.ok for step in steps)
    say(f"{good} of {len(steps)} steps as expected")
    return 0 if good == len(steps) else 1
