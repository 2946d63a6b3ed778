"""Fault tests: a bad day on the xenstore side, a crash, a hostile guest, each in the
middle of a burst of domain setups, with ``rmrrd xenstored --persist`` and ``rmrrd
run`` as their own processes.

Every test asserts the same four things:

* zero crashes: every process the test did not kill is still running, and no log
  holds a traceback;
* zero lost acknowledged writes: every request whose commit xenstored acknowledged
  is still in the store at the end, and so is the answer to it;
* zero unanswered domains: every domain requested gets its answer;
* the other domains are served as before: the p99 setup latency of a burst after
  the fault (during the flood, for the flooding guest) is within
  :data:`P99_RATIO` of a quiet run's, measured in the same test (the larger of a
  quiet burst before and one after, so that the machine's load changing in between
  is not taken for the fault's doing: the two cores are shared).

Latency is from the request's transaction starting to the watch event of the
answer's ``generation``; a burst keeps :data:`IN_FLIGHT` requests unanswered at most,
as a busy toolstack would.  The figures each run measures (recovery after the fault,
the p99s, the flooding guests' cost in memory) are printed, and are what
docs/reliability.md reports.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio

from support import WAIT
from support.processes import Daemon, XenstoredProcess, start_daemon, start_guest_flood
from rmrrd.errors import TransportError
from rmrrd.protocol import answer_path, rdm_path
from rmrrd.xenstore.client import Transaction, XenstoreClient, open_xenstore
from rmrrd.xenstore.ops import read_text
from rmrrd.xenstore.wire import Perm

pytestmark = pytest.mark.process

N = 120
"""Domains per burst."""
IN_FLIGHT = 20
P99_RATIO = 2.0
STOP_SECONDS = 12.0
"""How long xenstored stays stopped: longer than the client's request timeout (10 s),
so that the daemon's requests time out and its setups fail and are retried."""
FLOODERS = [901, 902, 903, 904]
"""The hostile guests' domids."""
RSS_PER_FLOODER = 6 * 1024 * 1024
"""How much the simulated xenstored may grow for each guest flooding it (bytes of
RSS): its quotas hold a domain to 2.5 MiB of nodes, watches, transactions and queued
output as xenstored counts them; the rest is Python's own cost for those objects."""
ANSWER = re.compile(r"^/local/domain/(\d+)/rmrr/generation$")


def domain_keys(domid: int) -> dict[str, str]:
    """A request that differs between domains."""
    return {"memory": str(1024 + 256 * (domid % 12)), "mmio_hole": "1024"}


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[math.ceil(len(ordered) * 0.99) - 1]


@dataclass
class Toolstack:
    """The test's toolstack: requests domains, notes what xenstored acknowledged,
    and when each answer appeared (one watch, rescanned after every reconnect)."""

    xs: XenstoreClient
    acknowledged: set[int] = field(default_factory=set)
    pending: dict[int, trio.Event] = field(default_factory=dict)
    answered_at: dict[int, float] = field(default_factory=dict)

    async def watch_answers(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Note each answer as its ``generation`` appears (its value is checked at
        the end); after every (re)registration, look for those that came meanwhile."""
        async with self.xs.watch("/local/domain") as events:
            task_status.started()
            async for event in events:
                if (match := ANSWER.match(event.path)) is not None:
                    self._answered(int(match[1]))
                elif event.path == "/local/domain":
                    for domid in list(self.pending):
                        if await self.xs.exists(f"{answer_path(domid)}/generation"):
                            self._answered(domid)

    def _answered(self, domid: int) -> None:
        if (answered := self.pending.pop(domid, None)) is not None:
            self.answered_at[domid] = trio.current_time()
            answered.set()

    async def create(self, domids: range) -> None:
        """The domains' directories, as libxl makes them before it builds a domain
        (``libxl__domain_make``); one at a time, untimed: new children of
        ``/local/domain`` and ``/libxl`` conflict with every transaction adding one."""
        for domid in domids:
            for path in (f"/local/domain/{domid}", f"/libxl/{domid}"):
                await self.retried(lambda: self.xs.mkdir(path))

    async def setup(self, domid: int) -> float:
        """Request ``domid``'s answer as libxl does; wait for it; the latency."""
        answered = self.pending[domid] = trio.Event()
        start = trio.current_time()

        async def write(tx: Transaction) -> None:
            for key, value in domain_keys(domid).items():
                await tx.write(f"{rdm_path(domid)}/{key}", value)
            await tx.write(f"{rdm_path(domid)}/request", "1")

        await self.retried(lambda: self.xs.run_transaction(write))
        self.acknowledged.add(domid)
        await answered.wait()
        return self.answered_at[domid] - start

    @staticmethod
    async def retried(request: Callable[[], Awaitable[None]]) -> None:
        """``request`` until xenstored acknowledges it, as a toolstack retries."""
        while True:
            try:
                return await request()
            except TransportError:
                pass

    async def burst(self, domids: range, *, after_answers: int = 0,
                    fault: Callable[[], Awaitable[None]] | None = None) -> list[float]:
        """Set up ``domids``, IN_FLIGHT at most unanswered; ``fault`` runs (beside
        the burst) once ``after_answers`` of them are answered.  The latencies."""
        await self.create(domids)
        latencies: list[float] = []
        limit = trio.Semaphore(IN_FLIGHT)
        enough = trio.Event()

        async def one(domid: int) -> None:
            latencies.append(await self.setup(domid))
            limit.release()
            if len(latencies) == after_answers:
                enough.set()

        with trio.fail_after(WAIT * 4):
            async with trio.open_nursery() as nursery:
                if fault is not None:
                    async def at_the_right_time() -> None:
                        await enough.wait()
                        await fault()
                    nursery.start_soon(at_the_right_time)
                for domid in domids:
                    await limit.acquire()
                    nursery.start_soon(one, domid)
        return latencies

    async def assert_nothing_lost(self) -> None:
        """Every acknowledged request is in the store, and its answer."""
        for domid in sorted(self.acknowledged):
            assert await read_text(self.xs, f"{rdm_path(domid)}/request") == "1", f"domain {domid}: request lost"
            assert await read_text(self.xs, f"{answer_path(domid)}/generation") == "1", f"domain {domid}: answer lost"
            assert await read_text(self.xs, f"{answer_path(domid)}/status") in ("ready", "error"), domid


@dataclass
class Services:
    workdir: Path
    xenstored: XenstoredProcess
    daemon: Daemon
    killed: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def restart_xenstored(self) -> None:
        self.xenstored = XenstoredProcess(self.xenstored.path, persist=self.workdir / "tree")

    def restart_daemon(self) -> None:
        self.daemon = start_daemon(self.workdir, xenstore=self.xenstored.path)

    def assert_alive(self, logs: list[str]) -> None:
        assert self.xenstored.process.poll() is None, "xenstored exited"
        assert self.daemon.process.poll() is None, "rmrrd exited"
        for text in logs:
            assert "Traceback" not in text


@contextmanager
def services(workdir: Path) -> Iterator[Services]:
    running = Services(workdir, XenstoredProcess(workdir / "xs.sock", persist=workdir / "tree"),
                       start_daemon(workdir, xenstore=workdir / "xs.sock"))
    try:
        yield running
    finally:
        running.daemon.close()
        running.xenstored.stop()


@dataclass
class Figures:
    quiet: list[float]
    faulted: list[float]
    quiet_again: list[float]

    def assert_within(self, what: str) -> None:
        floor = max(p99(self.quiet), p99(self.quiet_again))
        ratio = p99(self.faulted) / floor
        print(f"{what}: p99 quiet {p99(self.quiet) * 1000:.0f} / {p99(self.quiet_again) * 1000:.0f} ms, "
              f"{p99(self.faulted) * 1000:.0f} ms: {ratio:.2f}x")
        assert ratio <= P99_RATIO, f"{what}: p99 {ratio:.2f}x the quiet run's"


async def run_fault(services: Services, fault: Callable[[Toolstack], Awaitable[float]], what: str) -> None:
    """Quiet burst, the fault in the middle of a burst, a burst after it, a quiet
    one: every domain answered, nothing lost, the figures printed.

    How long after the fault's end every domain in the faulted burst had its answer
    is the bound docs/reliability.md reports; the burst right after measures whether
    anything of the fault lingers (retries, a reconciliation after a reconnect).
    """
    async with open_xenstore(str(services.xenstored.path)) as xs, trio.open_nursery() as nursery:
        toolstack = Toolstack(xs)
        await nursery.start(toolstack.watch_answers)
        await toolstack.burst(range(1, 21))  # warm-up
        quiet = await toolstack.burst(range(100, 100 + N))
        ended: list[float] = []

        async def inject() -> None:
            ended.append(await fault(toolstack))

        faulted = range(1000, 1000 + N)
        await toolstack.burst(faulted, after_answers=N // 4, fault=inject)
        answered = max(toolstack.answered_at[d] for d in faulted) - ended[0]
        print(f"{what}: every domain answered {answered:.1f} s after the fault ended")
        after = await toolstack.burst(range(2000, 2000 + N))
        quiet_again = await toolstack.burst(range(3000, 3000 + N))
        await toolstack.assert_nothing_lost()
        nursery.cancel_scope.cancel()
    Figures(quiet, after, quiet_again).assert_within(f"{what}, the burst after")


async def test_xenstored_stopped_and_resumed_mid_burst(workdir: Path) -> None:
    """SIGSTOP for longer than a request may wait: the daemon's requests time out,
    its setups fail and are retried with backoff; after SIGCONT every domain is
    answered, with one warning line per domain at most."""
    with services(workdir) as running:
        async def stop(toolstack: Toolstack) -> float:
            running.xenstored.process.send_signal(signal.SIGSTOP)
            try:
                await trio.sleep(STOP_SECONDS)
            finally:
                running.xenstored.process.send_signal(signal.SIGCONT)
            return trio.current_time()

        await run_fault(running, stop, "xenstored stopped")
        running.assert_alive([running.daemon.log(), running.xenstored.log.text()])
        warnings = [line for line in running.daemon.log_lines() if " WARNING " in line]
        per_domain: dict[str, int] = {}
        for line in warnings:
            if (match := re.search(r"domain (\d+):", line)) is not None:
                per_domain[match[1]] = per_domain.get(match[1], 0) + 1
        assert warnings, "a fault this long should be reported"
        assert max(per_domain.values(), default=0) <= 1, per_domain


async def test_xenstored_sigkilled_and_restarted_with_persist_mid_burst(workdir: Path) -> None:
    """SIGKILL: whatever xenstored acknowledged is in its journal; the restarted one
    has every request and every answer, and the daemon reconnects and answers the rest."""
    with services(workdir) as running:
        async def kill(toolstack: Toolstack) -> float:
            running.xenstored.process.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(running.xenstored.process.wait)
            await trio.to_thread.run_sync(running.restart_xenstored)
            return trio.current_time()

        await run_fault(running, kill, "xenstored SIGKILLed")
        running.assert_alive([running.daemon.log(), running.xenstored.log.text()])


async def test_rmrrd_sigkilled_mid_burst(workdir: Path) -> None:
    """SIGKILL of the daemon: a new one reconciles and answers every domain."""
    with services(workdir) as running:
        async def kill(toolstack: Toolstack) -> float:
            running.daemon.process.send_signal(signal.SIGKILL)
            await trio.to_thread.run_sync(running.daemon.process.wait)
            running.daemon.close()
            restarted = trio.current_time()  # as systemd would restart it: the start counts
            await trio.to_thread.run_sync(running.restart_daemon)
            return restarted

        await run_fault(running, kill, "rmrrd SIGKILLed")
        running.assert_alive([running.daemon.log(), running.xenstored.log.text()])


def rss(pid: int) -> int:
    """Resident bytes of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)
    assert match is not None
    return int(match[1]) * 1024


async def test_a_guest_flood_while_other_domains_are_set_up(workdir: Path) -> None:
    """Guests filling their quotas of connections, watches, transactions and memory,
    and dropping everything to start again, in their own process, while dom0 sets
    up domains: others' p99 within P99_RATIO of quiet, xenstored's growth bounded
    per flooding domain.

    The guests' process runs at the lowest priority: on a host a guest's CPU is its
    own, not dom0's; what xenstored spends serving it is counted in full.
    """
    with services(workdir) as running:
        async with open_xenstore(str(running.xenstored.path)) as xs, trio.open_nursery() as nursery:
            for domid in FLOODERS:
                await xs.introduce(domid, 1, 1)
                await xs.mkdir(f"/local/domain/{domid}")
                await xs.set_perms(f"/local/domain/{domid}", [Perm(domid, "n")])
            toolstack = Toolstack(xs)
            await nursery.start(toolstack.watch_answers)
            await toolstack.burst(range(1, 21))
            quiet = await toolstack.burst(range(100, 100 + N))
            before = rss(running.xenstored.process.pid)
            peak = [before]

            async def sample() -> None:
                while True:
                    peak.append(rss(running.xenstored.process.pid))
                    await trio.sleep(0.1)

            flood = start_guest_flood(workdir, running.xenstored.path, FLOODERS)
            nursery.start_soon(sample)
            try:
                for domid in FLOODERS:  # every quota reached once
                    await trio.to_thread.run_sync(flood.log.wait_for, f"round 1: dom{domid}:")
                done_before = len(flood.log.lines())
                flooded = await toolstack.burst(range(1000, 1000 + N))
                for domid in FLOODERS:  # the rounds the burst overlapped, to report
                    await trio.to_thread.run_sync(partial(flood.log.wait_for, f": dom{domid}:", after=done_before))
                assert flood.process.poll() is None, f"the flood stopped:\n{flood.log.text()}"
            finally:
                flood.stop()
            rounds = flood.log.lines()[done_before:]
            quiet_again = await toolstack.burst(range(3000, 3000 + N))
            await toolstack.assert_nothing_lost()
            nursery.cancel_scope.cancel()
        growth = (max(peak) - before) / len(FLOODERS)
        print(f"guest flood: {len(FLOODERS)} guests, xenstored RSS {before / 2**20:.0f} -> "
              f"{max(peak) / 2**20:.0f} MiB: {growth / 2**20:.1f} MiB per flooding domain; the rounds the burst overlapped:")
        print("\n".join(rounds))
        assert growth <= RSS_PER_FLOODER
        Figures(quiet, flooded, quiet_again).assert_within("guest flood, the other domains")
        running.assert_alive([running.daemon.log(), running.xenstored.log.text()])
