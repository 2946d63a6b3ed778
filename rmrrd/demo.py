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

from rmrrd.commands.check import ask_daemon
from rmrrd.config import MetricsConfig, default_config
from rmrrd.daemon.requests import format_request
from rmrrd.daemon.service import run_service
from rmrrd.daemon.xsutil import read_list, read_text
from rmrrd.errors import InputError
from rmrrd.schema import answer_path, rdm_path
from rmrrd.xenstore.client import Transaction, XenstoreClient, open_xenstore

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
    for candidate in (Path(__file__).resolve().parents[1] / "etc" / "inventories",
                      Path(sys.prefix) / "share" / "rmrrd" / "inventories"):
        if (candidate / "node-a.yaml").exists():
            return candidate
    raise InputError("cannot find the sample inventories node-a.yaml and node-b.yaml (etc/inventories)")


async def write_request(xs: XenstoreClient, domid: int, keys: dict[str, str], generation: str = "1") -> None:
    """A domain's request as a toolstack writes it: its keys and ``request``, in one transaction."""
    base = rdm_path(domid)

    async def write(tx: Transaction) -> None:
        for key, value in keys.items():
            await tx.write(f"{base}/{key}", value)
        await tx.write(f"{base}/request", generation)

    await xs.run_transaction(write)


async def create_domain(xs: XenstoreClient, domid: int, keys: dict[str, str], generation: str = "1") -> dict[str, str]:
    """Write a domain's request as a toolstack does, and wait for rmrrd's answer."""
    answer = answer_path(domid)
    async with xs.watch(f"{answer}/generation") as events:
        await write_request(xs, domid, keys, generation)
        with trio.fail_after(10):
            async for _ in events:
                if await read_text(xs, f"{answer}/generation") == generation:
                    break
    return await read_answer(xs, domid)


async def read_answer(xs: XenstoreClient, domid: int) -> dict[str, str]:
    """The answer's scalar keys plus one ``region <range>`` entry per region."""
    answer = answer_path(domid)
    result = {key: await read_text(xs, f"{answer}/{key}") or "" for key in
              ("status", "error", "lowmem_end", "highmem_end")}
    for n in (await read_list(xs, f"{answer}/region")):
        fields = {key: await read_text(xs, f"{answer}/region/{n}/{key}") or ""
                  for key in ("range", "source", "conflict", "action")}
        result[f"region {fields['range']}"] = f"conflict={fields['conflict']} action={fields['action']}"
    result["e820"] = ", ".join((await read_list(xs, f"{answer}/e820")).values())
    return result


async def guest_query(guest: XenstoreClient, domid: int, qid: str, query: str) -> str:
    """Write a query as the guest and wait for its reply."""
    reply = f"{answer_path(domid)}/reply/{qid}"
    async with guest.watch(reply) as events:
        await guest.write(f"{answer_path(domid)}/query/{qid}", query)
        with trio.fail_after(10):
            async for _ in events:
                text = await read_text(guest, reply)
                if text is not None:
                    return text
    raise AssertionError("unreachable")


async def scenario(xs: XenstoreClient, xenstore_path: Path, guest_socket: Callable[[int], Path],
                   say: Callable[[str], None]) -> list[Step]:
    steps: list[Step] = []

    def expect(name: str, expected: str, got: str) -> None:
        step = Step(name, expected, got)
        steps.append(step)
        say(f"  [{'ok' if step.ok else 'MISMATCH'}] {name}: {got}" + ("" if step.ok else f" (expected {expected})"))

    say("STEP-1  domain 1: 4096 MiB, mmio_hole 1024 MiB, pci D2, hotplug D1, migrate node-b")
    answer = await create_domain(xs, 1, SEED_DOMAIN)
    expect("status", "ready", answer["status"])
    expect("lowmem_end", "0xa0000000", answer["lowmem_end"])
    expect("highmem_end", "0x160000000", answer["highmem_end"])
    expect("D2 region 0xa0000000-0xa37fffff", "conflict=none action=avoided", answer.get("region 0xa0000000-0xa37fffff", ""))
    expect("node-b region 0x40000000-0x40003fff", "conflict=ram action=warned", answer.get("region 0x40000000-0x40003fff", ""))
    expect("D1 region 0xe0000-0xeffff", "conflict=bios action=warned", answer.get("region 0xe0000-0xeffff", ""))
    say(f"  e820: {answer['e820']}")

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
        result = await trio.to_thread.run_sync(ask_daemon, str(xenstore_path), request, 10.0)
        expect(name, expected, result["verdict"])
        say(f"      {result['reason']}")

    say("rdm_mem_boundary=4096: D2 lies below the boundary and cannot be avoided")
    strict = await create_domain(xs, 2, {**SEED_DOMAIN, "mem_boundary": "4096"})
    expect("domain 2, D2 strict", "error", strict["status"])
    say(f"      {strict['error']}")
    relaxed = await create_domain(xs, 3, {**SEED_DOMAIN, "mem_boundary": "4096", "pci/0": f"{D2},rdm_policy=relaxed"})
    expect("domain 3, D2 relaxed", "ready", relaxed["status"])
    expect("domain 3, D2 region", "conflict=ram action=warned", relaxed.get("region 0xa0000000-0xa37fffff", ""))
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
