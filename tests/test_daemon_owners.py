"""Domain owners in process: one task per domain, its mailbox, the setup slots.

:class:`rmrrd.daemon.domains.Domains` runs here against the simulated xenstored in
the same trio run, through rmrrd's own client, so the owners do real setups.  To
see how setups overlap, ``run_setup`` is wrapped (it still does the work): the
wrapper counts runs and can hold one at a gate.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from support import INVENTORIES
from rmrrd.edges.config import DefaultsConfig
from rmrrd.daemon import owner as owner_module
from rmrrd.daemon.domains import Domains
from rmrrd.core.pci import Bdf
from rmrrd.daemon.lifecycle import Limits, Released, Reloaded, SetupResult
from rmrrd.daemon.watches import Daemon
from rmrrd.daemon.settings import Settings
from rmrrd.app.demo import SEED_DOMAIN
from rmrrd.app.toolstack import create_domain, guest_query, write_request
from rmrrd.core.inventory_yaml import load_inventory_file
from rmrrd.protocol import ALLOCATED_ROOT, answer_path, format_request, request_path, result_path
from rmrrd.xenstore.client import ConnectionLost, XenstoreClient, XenstoreTimeout, open_xenstore
from rmrrd.xenstore.server import XenstoredHandle
from rmrrd.xenstore.wire import NoEntry, NoSpace

LIMITS = Limits(query_rate=1000, query_burst=1000, max_allocations=8)
HOLE_START = "0xa3800000"
"""Where the seed domain's first allocation lands: just past D2's region."""


class Recorder:
    """An Observer that keeps what it is told."""

    def __init__(self) -> None:
        self.setups: list[tuple[str, float | None]] = []
        self.domains: list[int] = []

    def set_domains(self, count: int) -> None:
        self.domains.append(count)

    def setup_done(self, status: str, seconds: float | None = None) -> None:
        self.setups.append((status, seconds))

    def conflict(self, kind: str, action: str) -> None:
        pass

    def request_done(self, op: str, verdict: str, seconds: float) -> None:
        pass

    def guest_query(self, kind: str, outcome: str) -> None:
        pass

    def watch_event(self, watch: str) -> None:
        pass


def seed_settings() -> Settings:
    host = load_inventory_file(INVENTORIES / "node-a.yaml")
    return Settings(DefaultsConfig(), host, {"node-b": load_inventory_file(INVENTORIES / "node-b.yaml")},
                    max_query_length=256, results_kept=64, shutdown_grace=5.0)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def domains(nursery: trio.Nursery, xs: XenstoreClient, recorder: Recorder) -> Domains:
    return Domains(xs, seed_settings(), LIMITS, recorder, nursery)


Setup = Callable[..., Awaitable[SetupResult]]


def wrap_setups(monkeypatch: pytest.MonkeyPatch, before: Callable[[int], Awaitable[None]]) -> None:
    """Run ``before(domid)`` at the start of every setup transaction, then the setup."""
    real: Setup = owner_module.run_setup

    async def wrapped(tx: Any, domid: int, known: str | None, **deciders: Any) -> SetupResult:
        await before(domid)
        return await real(tx, domid, known, **deciders)

    monkeypatch.setattr(owner_module, "run_setup", wrapped)


async def test_changes_during_a_setup_coalesce_into_one_more(
        domains: Domains, xs: XenstoreClient, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    running, gate = trio.Event(), trio.Event()

    async def before(domid: int) -> None:
        runs.append(domid)
        if len(runs) == 1:
            running.set()
            await gate.wait()

    wrap_setups(monkeypatch, before)
    await write_request(xs, 1, SEED_DOMAIN)
    domains.changed(1)
    await running.wait()
    for _ in range(5):
        domains.changed(1)  # while the first run is held
    gate.set()
    await domains.wait_idle()
    assert runs == [1, 1]
    assert await xs.read(f"{answer_path(1)}/status") == b"ready"


async def test_setups_of_different_domains_overlap_up_to_the_slots(
        nursery: trio.Nursery, xs: XenstoreClient, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    domains = Domains(xs, seed_settings(), LIMITS, recorder, nursery, setup_concurrency=3)
    running, peak = 0, 0
    full, gate = trio.Event(), trio.Event()

    async def before(domid: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            full.set()
        await gate.wait()
        running -= 1

    wrap_setups(monkeypatch, before)
    for domid in range(1, 11):
        await write_request(xs, domid, {"memory": "1024"})
    for domid in range(1, 11):
        domains.changed(domid)
    await full.wait()
    await trio.testing.wait_all_tasks_blocked()  # a fourth setup would have started by now
    assert peak == 3
    gate.set()
    await domains.wait_idle()
    assert len(domains) == 10 and recorder.domains[-1] == 10


async def test_a_failed_setup_is_one_warning_and_retried_until_it_goes_through(
        domains: Domains, xs: XenstoreClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No later event is needed: the owner retries with backoff by itself."""
    calls: list[int] = []

    async def before(domid: int) -> None:
        calls.append(domid)
        if len(calls) <= 3:
            raise NoSpace("transaction touches too many nodes")

    wrap_setups(monkeypatch, before)
    await write_request(xs, 7, {"memory": "1024"})
    with caplog.at_level(logging.DEBUG, logger="rmrrd"):
        async with xs.watch(f"{answer_path(7)}/status") as events:
            domains.changed(7)
            with trio.fail_after(10):
                async for _ in events:
                    if await xs.exists(f"{answer_path(7)}/status"):
                        break
    assert calls == [7, 7, 7, 7]
    assert await xs.read(f"{answer_path(7)}/status") == b"ready"
    lines = [(record.levelno, record.getMessage()) for record in caplog.records if record.name.startswith("rmrrd.daemon")
             and "domain 7: setup" in record.getMessage()]
    assert [level for level, _ in lines] == [logging.WARNING, logging.DEBUG, logging.DEBUG, logging.INFO]
    assert "domain 7: setup failed: NoSpace: ENOSPC" in lines[0][1]
    assert lines[-1][1] == "domain 7: setup done after 3 failed attempts"
    assert not [record for record in caplog.records if record.exc_info is not None]


async def test_a_bug_in_one_domains_setup_is_contained_and_logged_with_its_trace(
        domains: Domains, xs: XenstoreClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def before(domid: int) -> None:
        if domid == 1:
            raise RuntimeError("a bug")

    wrap_setups(monkeypatch, before)
    await write_request(xs, 1, {"memory": "1024"})
    await write_request(xs, 2, {"memory": "1024"})
    with caplog.at_level(logging.WARNING, logger="rmrrd"):
        domains.changed(1)
        domains.changed(2)
        await domains.wait_idle()
    assert not await xs.exists(answer_path(1))
    assert await xs.read(f"{answer_path(2)}/status") == b"ready"
    traced = [record for record in caplog.records if record.exc_info is not None]
    assert [record.getMessage() for record in traced] == ["domain 1: setup failed"]
    monkeypatch.undo()
    domains.changed(1)  # out of PLANNING: the next change is served
    await domains.wait_idle()
    assert await xs.read(f"{answer_path(1)}/status") == b"ready"


async def test_the_devices_of_other_domains_follow_setups_and_releases(domains: Domains, xs: XenstoreClient) -> None:
    d1, d2 = Bdf.parse(SEED_DOMAIN["hotplug/0"]), Bdf.parse(SEED_DOMAIN["pci/0"])
    await write_request(xs, 1, SEED_DOMAIN)
    await write_request(xs, 2, {"memory": "1024", "pci/0": SEED_DOMAIN["pci/0"]})
    domains.changed(1)
    domains.changed(2)
    await domains.wait_idle()
    assert domains.devices_elsewhere(3).keys() == {d2}  # held by both; either is named
    assert domains.devices_elsewhere(1) == {d2: 2}  # the same device in two domains: the other's
    domains.post(1, Reloaded({d1: "hotplug"}, None))
    await trio.testing.wait_all_tasks_blocked()
    assert domains.devices_elsewhere(2) == {d2: 1, d1: 1}
    domains.post(1, Released("released"))
    await domains.wait_idle()
    assert domains.devices_elsewhere(2) == {} and domains.devices_elsewhere(3) == {d2: 2}


async def test_a_domain_refused_at_setup_holds_no_devices(domains: Domains, xs: XenstoreClient) -> None:
    """Refused (status=error), the domain is never built: its pci devices are free
    for the others' checks, and taken again once a request of it is ready."""
    d2 = Bdf.parse(SEED_DOMAIN["pci/0"])
    await write_request(xs, 2, {**SEED_DOMAIN, "mem_boundary": "4096"})  # strict D2 below the boundary
    domains.changed(2)
    await domains.wait_idle()
    assert await xs.read(f"{answer_path(2)}/status") == b"error"
    assert domains.devices_elsewhere(1) == {}
    await xs.rm("/libxl/2/rdm/mem_boundary")
    await write_request(xs, 2, SEED_DOMAIN, generation="2")
    domains.changed(2)
    await domains.wait_idle()
    assert domains.devices_elsewhere(1) == {d2: 2}


async def test_wait_idle_returns_at_once_when_nothing_was_posted(domains: Domains) -> None:
    with trio.fail_after(1):
        await domains.wait_idle()


async def test_setup_latency_counts_from_the_first_trigger_a_setup_serves(
        nursery: trio.Nursery, xs: XenstoreClient, recorder: Recorder, monkeypatch: pytest.MonkeyPatch,
        mock_clock: trio.testing.MockClock) -> None:
    """The time reported includes the wait for a slot and coalesced repeats."""
    domains = Domains(xs, seed_settings(), LIMITS, recorder, nursery, setup_concurrency=1)
    held, gate = trio.Event(), trio.Event()

    async def before(domid: int) -> None:
        if not held.is_set():
            held.set()
            await gate.wait()
        elif domid == 2:
            # Domain 1's second run comes after this one: give it a new layout to write.
            await write_request(xs, 1, {"memory": "2048"}, generation="2")

    wrap_setups(monkeypatch, before)
    await write_request(xs, 1, {"memory": "1024"})
    await write_request(xs, 2, {"memory": "1024"})
    domains.changed(1)               # t=0, runs at once and is held
    await held.wait()
    mock_clock.jump(1)
    domains.changed(2)               # t=1, waits for the slot
    mock_clock.jump(1)
    domains.changed(2)               # t=2, served by the waiting run
    domains.changed(1)               # t=2, one more run of 1 after the current one
    mock_clock.jump(1)
    domains.changed(1)               # t=3, coalesced: the trigger at t=2 is the first
    gate.set()
    await domains.wait_idle()
    # All three commit at t=3: domain 1's first answer, domain 2's, domain 1's second.
    assert recorder.setups == [("ready", 3.0), ("ready", 2.0), ("ready", 1.0)]


async def test_an_owner_ends_when_its_domain_holds_nothing(domains: Domains, xs: XenstoreClient) -> None:
    await xs.mkdir("/libxl/4")       # a domain that never asks rmrrd anything
    domains.changed(4)
    await domains.wait_idle()
    await trio.testing.wait_all_tasks_blocked()
    assert domains.get(4) is None
    await write_request(xs, 4, {"memory": "1024"})
    domains.changed(4)
    await domains.wait_idle()
    assert domains.get(4) is not None and len(domains) == 1
    domains.post(4, Released("released"))
    await domains.wait_idle()
    await trio.testing.wait_all_tasks_blocked()
    assert domains.get(4) is None and len(domains) == 0
    assert not await xs.exists(answer_path(4))


async def test_a_request_after_a_release_is_served_by_the_next_owner(domains: Domains, xs: XenstoreClient) -> None:
    await write_request(xs, 5, {"memory": "1024"})
    domains.changed(5)
    await domains.wait_idle()
    domains.post(5, Released("released"))
    domains.changed(5)  # the toolstack asks again before the release was handled
    await domains.wait_idle()
    assert domains.get(5) is not None and domains.get(5).generation == "1"  # type: ignore[union-attr]
    assert await xs.read(f"{answer_path(5)}/status") == b"ready"


# --- through the whole daemon ---------------------------------------------------------------------

@asynccontextmanager
async def daemon_with_domain_1(xs: XenstoreClient) -> AsyncIterator[Daemon]:
    """The daemon's watches and owners on ``xs``, the seed's domain 1 answered and introduced."""
    daemon = Daemon(xs, seed_settings(), LIMITS, Recorder())
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.serve)
        await create_domain(xs, 1, SEED_DOMAIN)
        await xs.introduce(1, 0, 0)
        yield daemon
        daemon.stop()


async def test_allocation_records_match_memory_after_queries_race_new_layouts(
        xs: XenstoreClient, xenstored: XenstoredHandle) -> None:
    """Regression: an ``alloc`` answered while a rewritten setup removed the records
    wrote its record afterwards, and a restart reloaded an allocation of the old layout."""
    async with daemon_with_domain_1(xs) as daemon:
        async with open_xenstore(str(xenstored.guest_socket(1))) as guest:
            for generation in range(2, 12):
                async with trio.open_nursery() as both:
                    both.start_soon(guest_query, guest, 1, f"q{generation}", "alloc 0x1000")
                    both.start_soon(create_domain, xs, 1, SEED_DOMAIN, str(generation))
                # The setup that wrote the answer came from a request change, which
                # wait_idle waits for until its owner has handled what it found.
                await daemon.domains.wait_idle()
                held = daemon.domains.get(1)
                assert held is not None and held.generation == str(generation)
                assert await _records(xs, 1) == sorted(str(rng) for rng in held.allocations.ranges())


async def test_a_domain_recreated_on_its_domid_starts_afresh(
        xs: XenstoreClient, xenstored: XenstoredHandle, caplog: pytest.LogCaptureFixture) -> None:
    """As ``xl create`` reusing a domid: libxl removes /local/domain/<domid> and
    /libxl/<domid> in one transaction, then the toolstack asks again."""
    async with daemon_with_domain_1(xs):
        async with open_xenstore(str(xenstored.guest_socket(1))) as guest:
            assert (await guest_query(guest, 1, "q1", "alloc 0x1000")).startswith(f"ok {HOLE_START}")
        assert await _records(xs, 1) == [f"{HOLE_START}-0xa3800fff"]
        with caplog.at_level(logging.INFO, logger="rmrrd"):
            async with xs.watch(f"{ALLOCATED_ROOT}/1") as events:
                async with xs.transaction() as tx:
                    await tx.rm("/local/domain/1")
                    await tx.rm("/libxl/1")
                    await tx.mkdir("/libxl/1")
                    await tx.mkdir("/local/domain/1")
                with trio.fail_after(10):
                    async for _ in events:  # the old domain's records go
                        if not await xs.exists(f"{ALLOCATED_ROOT}/1"):
                            break
            answer = await create_domain(xs, 1, SEED_DOMAIN)
        assert answer.status == "ready"
        recreated = [record.getMessage() for record in caplog.records if "re-created" in record.getMessage()]
        assert recreated == ["domain 1: request and answer gone, /libxl/1 still there (domain re-created on this "
                             "domid?): its allocations and attached devices dropped"]
        async with open_xenstore(str(xenstored.guest_socket(1))) as guest:
            # The new domain's first BAR goes where the old domain's was.
            assert (await guest_query(guest, 1, "q1", "alloc 0x1000")).startswith(f"ok {HOLE_START}")


async def test_a_restart_reloads_the_placements_before_any_domain_event_is_handled(
        xs: XenstoreClient, xenstored: XenstoredHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the ``@introduceDomain`` watch's first event, handled while the
    restarted daemon's first reconciliation was still reading the records, set the
    introduced domain up; the placements reloaded after that were for a domain with a
    plan already, so they were dropped and the guest's next ``alloc`` was given its
    earlier BAR's range again (seen once in CI, ``test_daemon_crash.py``)."""
    async with daemon_with_domain_1(xs):
        async with open_xenstore(str(xenstored.guest_socket(1))) as guest:
            first = (await guest_query(guest, 1, "q1", "alloc 0x1000")).removeprefix("ok ")
    # The next daemon's reconciliation reads the records slowly: until domain 1 has a
    # plan, as when a setup overtook it, or for half a second when none does.
    restarted = Daemon(xs, seed_settings(), LIMITS, Recorder())
    real_records = Domains._records

    async def slow_records(self: Domains, root: str, live: set[int]) -> dict[int, dict[str, str]]:
        with trio.move_on_after(0.5):
            while (domain := restarted.domains.get(1)) is None or domain.plan is None:
                await trio.sleep(0.01)
        return await real_records(self, root, live)

    monkeypatch.setattr(Domains, "_records", slow_records)
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.serve)
        async with open_xenstore(str(xenstored.guest_socket(1))) as guest:
            second = (await guest_query(guest, 1, "q2", "alloc 0x1000")).removeprefix("ok ")
        restarted.stop()
    assert second != first, "the restarted daemon gave the guest a placement it already held"
    assert await _records(xs, 1) == sorted([first, second])


def fail_reply_writes(xs: XenstoreClient, monkeypatch: pytest.MonkeyPatch, failing: dict[str, int]) -> None:
    """``xs.write`` of a guest's reply times out ``failing["reply"]`` times."""
    real_write = xs.write

    async def write(path: str, value: bytes | str) -> None:
        if "/reply/" in path and failing["reply"]:
            failing["reply"] -= 1
            raise XenstoreTimeout(f"no answer to WRITE {path}")
        await real_write(path, value)

    monkeypatch.setattr(xs, "write", write)


async def test_effects_that_fail_on_xenstore_are_carried_out_again(
        xs: XenstoreClient, xenstored: XenstoredHandle, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A guest's reply and a toolstack's result whose writes time out are written
    again until xenstored answers: no query or check is left unanswered, each
    fault is one warning line and its end one info line, no trace.  (The two
    faults come within FAULT_EPISODE of each other, which would make them one:
    set to 0 here so that each shows.)"""
    monkeypatch.setattr(owner_module, "FAULT_EPISODE", 0.0)
    async with daemon_with_domain_1(xs):
        failing = {"reply": 2, "result": 2}
        real_transaction = xs.run_transaction
        fail_reply_writes(xs, monkeypatch, failing)

        async def run_transaction(fn: Any, **kwargs: Any) -> Any:
            if getattr(fn, "__qualname__", "").startswith("ToolstackHandler._answer") and failing["result"]:
                failing["result"] -= 1
                raise ConnectionLost("xenstored went away")
            return await real_transaction(fn, **kwargs)

        monkeypatch.setattr(xs, "run_transaction", run_transaction)
        with caplog.at_level(logging.DEBUG, logger="rmrrd"):
            async with open_xenstore(str(xenstored.guest_socket(1))) as guest:
                assert (await guest_query(guest, 1, "q1", "e820")).startswith("ok ")
            async with xs.watch(f"{result_path('c1')}/verdict") as events:
                await xs.write(request_path("c1"), format_request("assign", 1, (SEED_DOMAIN["pci/0"],)))
                with trio.fail_after(10):
                    async for _ in events:
                        if await xs.exists(f"{result_path('c1')}/verdict"):
                            break
        assert await xs.read(f"{result_path('c1')}/verdict") == b"ok" and failing == {"reply": 0, "result": 0}
    lines = [(record.levelno, record.getMessage()) for record in caplog.records if "not completed" in record.getMessage()
             or "completed after" in record.getMessage()]
    assert [level for level, _ in lines] == [logging.WARNING, logging.DEBUG, logging.INFO] * 2
    assert "domain 1: QueryWritten not completed: XenstoreTimeout" in lines[0][1]
    assert lines[2][1] == "domain 1: QueryWritten completed after 2 failed attempts"
    assert "domain 1: CheckAsked not completed: ConnectionLost" in lines[3][1]
    assert not [record for record in caplog.records if record.exc_info is not None]


async def test_one_fault_is_one_warning_per_domain_whatever_it_made_fail(
        xs: XenstoreClient, xenstored: XenstoredHandle, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """xenstored stalled: the guest-query listing and then the guest's reply fail
    (each is retried, and goes through); one warning line for the domain, the rest
    debug."""
    failing = {"listing": 1, "reply": 1}
    real_directory = xs.directory
    fail_reply_writes(xs, monkeypatch, failing)

    async def directory(path: str) -> list[str]:
        if path.endswith("/rmrr/query") and failing["listing"]:
            failing["listing"] -= 1
            raise XenstoreTimeout(f"no answer to DIRECTORY {path}")
        return await real_directory(path)

    monkeypatch.setattr(xs, "directory", directory)
    with caplog.at_level(logging.DEBUG, logger="rmrrd"):
        async with daemon_with_domain_1(xs):
            async with open_xenstore(str(xenstored.guest_socket(1))) as guest:
                assert (await guest_query(guest, 1, "q1", "e820")).startswith("ok ")
    assert failing == {"listing": 0, "reply": 0}
    faults = [(record.levelno, record.getMessage()) for record in caplog.records
              if record.getMessage().startswith("domain 1: ") and "XenstoreTimeout" in record.getMessage()]
    assert [level for level, _ in faults] == [logging.WARNING, logging.DEBUG], faults


async def _records(xs: XenstoreClient, domid: int) -> list[str]:
    """The allocation records of ``domid``, sorted."""
    try:
        names = await xs.directory(f"{ALLOCATED_ROOT}/{domid}")
    except NoEntry:
        return []
    return sorted([(await xs.read(f"{ALLOCATED_ROOT}/{domid}/{name}")).decode() for name in names])
