"""Crash safety: SIGKILL the daemon mid-burst, start it again;
and reconciliation after a xenstored restart that changed the tree meanwhile.

The daemon answers each domain in one xenstore transaction, and reconciles on
start; together that must mean a daemon killed at any instant leaves every answer
either absent or complete, and a restarted one brings every domain to a complete,
current answer as if it had never stopped.  These tests check that with real
processes: ``rmrrd xenstored`` (so the tree outlives the daemon) and ``rmrrd run``,
killed with SIGKILL, never a polite signal.

"Complete and current" is checked two ways: structurally (generation equals the
request, status present, every ``region/<n>`` has its four keys, every ``e820``
entry parses as a page-granular range and a type), and against the pure planner:
the answer's keys are exactly what :func:`answer_entries` gives for the request
now in xenstore.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import trio

from support import INVENTORIES
from support.processes import Daemon, XenstoredProcess, start_daemon

from rmrrd.edges.config import default_config
from rmrrd.daemon.setup import decide, read_setup_input
from rmrrd.xenstore.ops import read_list, read_text
from rmrrd.core.inventory_yaml import load_inventory_file
from rmrrd.core.ranges import parse_range
from rmrrd.app.toolstack import create_domain, guest_query
from rmrrd.protocol import ALLOCATED_ROOT, answer_entries, answer_path, rdm_path
from rmrrd.xenstore.client import Transaction, XenstoreClient, open_xenstore
from rmrrd.xenstore.wire import NoEntry, XenstoreError

pytestmark = pytest.mark.process
D1, D2 = "0000:00:14.0", "0000:00:02.0"
BURST = 200
KILL_AFTER = 40
"""Answers seen before the SIGKILL: some, far from all."""


def domain_keys(domid: int, memory_mib: int | None = None) -> dict[str, str]:
    """A request that differs between domains, so a mixed-up answer shows."""
    keys = {"memory": str(memory_mib or 1024 + 256 * (domid % 12)), "mmio_hole": "1024"}
    if domid % 2 == 0:
        keys["pci/0"] = D2
    if domid % 3 == 0:
        keys["hotplug/0"] = D1
    if domid % 5 == 0:
        keys["migrate/0"] = "node-b"
    return keys


def start_services(workdir: Path, daemons: list[Daemon], servers: list[XenstoredProcess]
                   ) -> tuple[XenstoredProcess, Daemon]:
    """``rmrrd xenstored --persist`` (so the tree outlives the daemon), then ``rmrrd run`` on it."""
    servers.append(XenstoredProcess(workdir / "xs.sock", persist=workdir / "tree"))
    return servers[-1], start(workdir, servers[-1], daemons)


def start(workdir: Path, xenstored: XenstoredProcess, daemons: list[Daemon]) -> Daemon:
    """``rmrrd run`` against ``xenstored`` (again, after a kill), once it says READY=1.

    A SIGKILLed daemon leaves ``status=ready`` behind in xenstore; READY=1 on this
    process's own notify socket is the new one's, sent once its first
    reconciliation has answered everything.
    """
    daemons.append(start_daemon(workdir, xenstore=xenstored.path))
    return daemons[-1]


async def request(xs: XenstoreClient, domid: int, keys: dict[str, str], generation: str) -> None:
    """The toolstack's request, keys and ``request`` in one transaction.

    ``/local/domain/<d>`` is created too, as libxl does when it makes a domain:
    without it every answer would add a child to ``/local/domain`` and the daemon's
    concurrent setups would conflict with each other (EAGAIN) on that one node.
    """
    base = rdm_path(domid)

    async def write(tx: Transaction) -> None:
        await tx.mkdir(f"/local/domain/{domid}")
        for key, value in keys.items():
            await tx.write(f"{base}/{key}", value)
        await tx.write(f"{base}/request", generation)

    await xs.run_transaction(write)


async def burst_and_kill(xs: XenstoreClient, victim: subprocess.Popen[bytes]) -> None:
    """Request BURST domains; SIGKILL ``victim`` once KILL_AFTER answers have appeared."""
    async with xs.watch("/local/domain") as events:
        async with trio.open_nursery() as nursery:

            async def write_all() -> None:
                for domid in range(1, BURST + 1):
                    await request(xs, domid, domain_keys(domid), "1")

            nursery.start_soon(write_all)
            seen = 0
            with trio.fail_after(60):
                async for event in events:
                    if event.path.endswith("/rmrr/generation"):
                        seen += 1
                        if seen == KILL_AFTER:
                            victim.send_signal(signal.SIGKILL)
                            break
    await trio.to_thread.run_sync(victim.wait)


async def answer_keys(xs: XenstoreClient, domid: int) -> dict[str, str]:
    """Every key the daemon owns under the domain's answer, relative to it."""
    base = answer_path(domid)
    keys: dict[str, str] = {}
    for key in ("generation", "status", "error", "lowmem_end", "highmem_end"):
        if (value := await read_text(xs, f"{base}/{key}")) is not None:
            keys[key] = value
    for n in await read_list(xs, f"{base}/region"):
        try:
            fields = await xs.directory(f"{base}/region/{n}")
        except NoEntry:
            continue
        for field in fields:
            keys[f"region/{n}/{field}"] = await read_text(xs, f"{base}/region/{n}/{field}") or ""
    for n, value in (await read_list(xs, f"{base}/e820")).items():
        keys[f"e820/{n}"] = value
    return keys


def assert_whole(domid: int, keys: dict[str, str]) -> None:
    """An answer is there entirely or not at all (structural check)."""
    if not keys:
        return
    assert {"generation", "status"} <= keys.keys(), f"domain {domid}: half an answer: {sorted(keys)}"
    regions = {key.split("/")[1] for key in keys if key.startswith("region/")}
    for n in regions:
        got = {key.split("/")[2] for key in keys if key.startswith(f"region/{n}/")}
        assert got == {"range", "source", "conflict", "action"}, f"domain {domid}: region {n} has {sorted(got)}"
    for key, value in keys.items():
        if key.startswith("e820/"):
            span, _, kind = value.partition(" ")
            parse_range(span)
            assert kind in ("ram", "reserved"), f"domain {domid}: {key} = {value!r}"
    if keys["status"] == "ready":
        assert {"lowmem_end", "highmem_end", "e820/0"} <= keys.keys(), f"domain {domid}: {sorted(keys)}"


async def assert_current(xs: XenstoreClient, domid: int) -> None:
    """The answer is whole, of the request now in xenstore, and what the planner says."""
    config = default_config(environ={})
    host = load_inventory_file(INVENTORIES / "node-a.yaml")
    peers = {"node-b": load_inventory_file(INVENTORIES / "node-b.yaml")}
    async with xs.transaction() as tx:
        given = await read_setup_input(tx, domid)
    assert given is not None
    keys = await answer_keys(xs, domid)
    assert_whole(domid, keys)
    assert keys.get("generation") == given.generation_text, f"domain {domid}: stale answer {keys.get('generation')}"
    outcome = decide(given, config.defaults, host, peers)
    assert keys == dict(answer_entries(given.generation_text, outcome.plan, outcome.error)), f"domain {domid}"


async def test_sigkill_mid_burst_then_restart_answers_every_domain(
        tmp_path: Path, daemons: list[Daemon], servers: list[XenstoredProcess]) -> None:
    xenstored, daemon = start_services(tmp_path, daemons, servers)
    async with open_xenstore(str(xenstored.path)) as xs:
        await burst_and_kill(xs, daemon.process)
        assert daemon.process.returncode == -signal.SIGKILL

        left = {domid: await answer_keys(xs, domid) for domid in range(1, BURST + 1)}
        for domid, keys in left.items():
            assert_whole(domid, keys)
        answered = sorted(domid for domid, keys in left.items() if keys)
        assert KILL_AFTER <= len(answered) < BURST, "the kill must land mid-burst"

        # While the daemon is down: one answered domain's request is rewritten (a
        # new generation, less memory), another answered domain disappears.
        rewritten, vanished = answered[0], answered[1]
        await request(xs, rewritten, domain_keys(rewritten, memory_mib=512), "2")
        await xs.rm(f"/libxl/{vanished}")

        daemon = start(tmp_path, xenstored, daemons)
        for domid in range(1, BURST + 1):
            if domid == vanished:
                assert not await xs.exists(answer_path(domid)), "answer of a vanished domain kept"
            else:
                await assert_current(xs, domid)
        assert await read_text(xs, f"{answer_path(rewritten)}/generation") == "2"
        assert xenstored.process.poll() is None, "xenstored must have outlived the daemon"


async def test_a_xenstored_restart_with_a_changed_tree_is_reconciled(
        tmp_path: Path, daemons: list[Daemon], servers: list[XenstoredProcess]) -> None:
    """Reconciliation after a reconnect, not only at start.

    While xenstored is down, the tree changes in ways no watch can report to the
    daemon: a second xenstored on another socket edits the saved tree (a new domain's
    request, a rewritten request, a vanished domain), then the first comes back with
    it.  The daemon, which never stopped, must reconnect and reconcile.
    """
    xenstored, daemon = start_services(tmp_path, daemons, servers)
    async with open_xenstore(str(xenstored.path)) as xs:
        for domid in (1, 2, 3):
            await create_domain(xs, domid, domain_keys(domid))
    xenstored.stop()
    assert xenstored.process.returncode == 0

    servers.append(XenstoredProcess(tmp_path / "editor.sock", persist=tmp_path / "tree"))
    async with open_xenstore(str(servers[-1].path)) as xs:
        await request(xs, 4, domain_keys(4), "1")
        await request(xs, 3, domain_keys(3, memory_mib=512), "2")
        await xs.rm("/libxl/2")
    servers[-1].stop()
    assert servers[-1].process.returncode == 0

    servers.append(XenstoredProcess(xenstored.path, persist=tmp_path / "tree"))
    async with open_xenstore(str(xenstored.path)) as xs, xs.watch("/local/domain") as events:
        with trio.fail_after(30):  # the daemon's reconnect backoff is at most 5 s
            async for _ in events:  # the initial event, then every change of an answer
                if (await read_text(xs, f"{answer_path(4)}/generation") == "1"
                        and await read_text(xs, f"{answer_path(3)}/generation") == "2"
                        and not await xs.exists(answer_path(2))):
                    break
        for domid in (1, 3, 4):
            await assert_current(xs, domid)
    assert daemon.process.poll() is None, "the daemon reconnects; it does not exit"


async def test_guest_allocations_survive_a_daemon_restart(
        tmp_path: Path, daemons: list[Daemon], servers: list[XenstoredProcess]) -> None:
    """``alloc`` is remembered until ``free`` or the domain's end, restarts included."""
    xenstored, daemon = start_services(tmp_path, daemons, servers)
    socket_path, records = xenstored.path, f"{ALLOCATED_ROOT}/1"
    async with open_xenstore(str(socket_path)) as xs:
        await create_domain(xs, 1, domain_keys(1))
        await xs.introduce(1, 0, 0)
        async with open_xenstore(f"{socket_path}.d/1") as guest:
            first = parse_range((await guest_query(guest, 1, "a1", "alloc 0x1000000")).removeprefix("ok "))
            assert await read_list(xs, records) == {f"{first.start:#x}": str(first)}
            # The record is dom0's: the guest can neither forge nor drop it.
            with pytest.raises(XenstoreError, match="EACCES"):
                await guest.write(f"{records}/0x0", "0x0-0xfffffff")
            with pytest.raises(XenstoreError, match="EACCES"):
                await guest.rm(records)

        daemon.process.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(daemon.process.wait)
        daemon = start(tmp_path, xenstored, daemons)
        async with open_xenstore(f"{socket_path}.d/1") as guest:
            second = parse_range((await guest_query(guest, 1, "a2", "alloc 0x1000000")).removeprefix("ok "))
            assert not first.overlaps(second), "the restarted daemon handed out a placement twice"
            assert (await guest_query(guest, 1, "f1", f"free {first}")).startswith("ok")
        assert await read_list(xs, records) == {f"{second.start:#x}": str(second)}

        # A new layout is a new boot: its allocations start afresh.
        await create_domain(xs, 1, domain_keys(1, memory_mib=512), "2")
        assert not await xs.exists(records)
