"""The domain side of the daemon: setups, releases and reconciliation.

Every change to one domain (answer its request, forget it) runs as a job of a
:class:`KeyedWorkQueue` keyed by domid, so two jobs for one domain never interleave
while different domains proceed side by side.
"""

from __future__ import annotations

import logging
import os

import trio

from rmrrd import __version__
from rmrrd.ranges import parse_range
from rmrrd.schema import (ALLOCATED_ROOT, ASSIGNED_ROOT, LIBXL_ROOT, PID_KEY, STATUS_KEY, VERSION_KEY,
                          allocated_path, answer_path, assigned_path, parse_domid)
from rmrrd.pci import Bdf
from rmrrd.errors import InputError
from rmrrd.xenstore.client import Transaction
from rmrrd.xenstore.wire import NoEntry

from rmrrd.daemon.context import Context
from rmrrd.daemon.queries import serve_guest_queries
from rmrrd.daemon.setup import SetupOutcome, decide, read_answer_generation, read_setup_input, write_answer
from rmrrd.daemon.state import Domain
from rmrrd.daemon.workqueue import KeyedWorkQueue
from rmrrd.daemon.xsutil import gather, read_list, rm_quietly

log = logging.getLogger(__name__)

SETUP_CONCURRENCY = 64
"""Domains set up at once: enough to keep the xenstore connection pipelined, few
enough that a burst of a thousand requests does not open a thousand transactions."""


class Domains:
    """Owns the per-domain jobs and the per-domain guest query tasks."""

    def __init__(self, ctx: Context, nursery: trio.Nursery) -> None:
        self._ctx = ctx
        self._nursery = nursery
        self._released: set[int] = set()
        self.queue: KeyedWorkQueue[int] = KeyedWorkQueue(
            nursery, self._job, concurrency=SETUP_CONCURRENCY, name="domain")

    # --- triggers ---------------------------------------------------------------

    def changed(self, domid: int) -> None:
        """Something under ``/libxl/<domid>`` changed that may need a new answer."""
        self.queue.submit(domid)

    async def released(self) -> None:
        """``@releaseDomain`` fired: forget every introduced domain that is gone."""
        known = [domain for domain in self._ctx.registry if domain.introduced]
        alive = await gather(lambda domain: self._ctx.xs.is_introduced(domain.domid), known)
        for domain, up in zip(known, alive):
            if not up:
                self._released.add(domain.domid)
                self.queue.submit(domain.domid)

    async def introduced(self) -> None:
        """``@introduceDomain`` fired: note which known domains are now introduced."""
        pending = [domain for domain in self._ctx.registry if not domain.introduced]
        alive = await gather(lambda domain: self._ctx.xs.is_introduced(domain.domid), pending)
        for domain, up in zip(pending, alive):
            domain.introduced = domain.introduced or up

    async def reconcile(self) -> None:
        """Make xenstore and memory agree, as if the daemon had never stopped.

        Answers every request whose answer is missing or stale, removes answers,
        attachments and allocations of domains that are gone, and rebuilds which
        domain holds which device and which MMIO ranges each guest was given.  Runs
        on start and after every xenstore reconnect.
        """
        xs = self._ctx.xs
        try:
            names = await xs.directory(LIBXL_ROOT)
        except NoEntry:
            names = []
        live = {domid for domid in map(parse_domid, names) if domid is not None}
        for domain in self._ctx.registry:
            if domain.domid not in live:
                self._released.add(domain.domid)
                self.queue.submit(domain.domid)
        await self._load_attached(live)
        await self._load_allocations(live)
        await self._drop_orphan_answers(live)
        for domid in sorted(live):
            self.queue.submit(domid)
        await self.queue.wait_idle()
        status = {STATUS_KEY: "ready", VERSION_KEY: __version__, PID_KEY: str(os.getpid())}
        await gather(lambda key: xs.write(key, status[key]), status)
        log.info("reconciled: %d domains answered", len(self._ctx.registry))

    async def _records(self, root: str, live: set[int]) -> dict[int, dict[str, str]]:
        """The per-domain records under ``root`` of live domains; those of gone ones removed."""
        xs = self._ctx.xs
        try:
            names = await xs.directory(root)
        except NoEntry:
            return {}
        records: dict[int, dict[str, str]] = {}
        for name in names:
            domid = parse_domid(name)
            if domid is None or domid not in live:
                await rm_quietly(xs, f"{root}/{name}")
            else:
                records[domid] = await read_list(xs, f"{root}/{name}")
        return records

    async def _load_attached(self, live: set[int]) -> None:
        """Which devices each live domain holds, from accepted assign/hotplug checks."""
        for domid, values in (await self._records(ASSIGNED_ROOT, live)).items():
            attached: dict[Bdf, str] = {}
            for value in values.values():
                device, _, op = value.partition(" ")
                try:
                    attached[Bdf.parse(device)] = op
                except InputError:
                    log.warning("domain %d: ignoring malformed attached device %r", domid, value[:40])
            self._ctx.registry.ensure(domid).attached = attached

    async def _load_allocations(self, live: set[int]) -> None:
        """Each live guest's ``alloc`` placements, as recorded by its guest-query task.

        Only for domains this process has not set up yet (a start): after a reconnect
        the allocations in memory are current, and a query being answered right now
        may not have recorded its allocation yet.
        """
        for domid, values in (await self._records(ALLOCATED_ROOT, live)).items():
            known = self._ctx.registry.get(domid)
            if known is not None and known.plan is not None:
                continue
            allocations = self._ctx.registry.new_allocations()
            for value in values.values():
                try:
                    allocations.add(parse_range(value))
                except InputError:
                    log.warning("domain %d: ignoring malformed allocation record %r", domid, value[:40])
            self._ctx.registry.ensure(domid).allocations = allocations

    async def _drop_orphan_answers(self, live: set[int]) -> None:
        xs = self._ctx.xs
        try:
            names = await xs.directory("/local/domain")
        except NoEntry:
            return
        gone = [domid for domid in map(parse_domid, names) if domid is not None and domid not in live]
        present = await gather(lambda domid: xs.exists(answer_path(domid)), gone)
        for domid, has_answer in zip(gone, present):
            if has_answer:
                await rm_quietly(xs, answer_path(domid))
                log.info("domain %d: gone from /libxl; stale answer removed", domid)

    # --- the job ----------------------------------------------------------------

    async def _job(self, domid: int, triggered: float) -> None:
        if domid in self._released:
            self._released.discard(domid)
            await self._forget(domid, "released")
            return
        await self._setup(domid, triggered)

    async def _setup(self, domid: int, triggered: float) -> None:
        """Answer the domain's request; ``triggered``: when the change was noticed."""
        ctx = self._ctx
        known = ctx.registry.get(domid)

        async def run(tx: Transaction) -> tuple[str, str | None, SetupOutcome | None]:
            given = await read_setup_input(tx, domid)
            if given is None:
                return ("waiting" if await tx.exists(f"{LIBXL_ROOT}/{domid}") else "absent"), None, None
            answered = await read_answer_generation(tx, domid)
            if answered == given.generation and known is not None and known.generation == given.generation:
                return "current", given.generation, None
            outcome = decide(given, ctx.config.defaults, ctx.host, ctx.peers)
            if answered == given.generation:
                # Answered before a restart: the guest was built on that layout, so
                # keep it and only relearn the plan.
                return "relearned", given.generation, outcome
            await write_answer(tx, domid, given.generation, outcome)
            if answered is None:
                return "written", given.generation, outcome
            # A new layout is a new boot: BARs placed in the old one mean nothing.
            await rm_quietly(tx, allocated_path(domid))
            return "rewritten", given.generation, outcome

        state, generation, outcome = await ctx.xs.run_transaction(run)
        if state == "absent":
            if known is not None or await ctx.xs.exists(answer_path(domid)):
                await self._forget(domid, "removed from /libxl")
            return
        if outcome is None:
            return
        domain = ctx.registry.ensure(domid)
        if state == "rewritten":
            domain.allocations = ctx.registry.new_allocations()
        domain.generation, domain.request, domain.plan = generation, outcome.request, outcome.plan
        if not domain.introduced:
            domain.introduced = await ctx.xs.is_introduced(domid)
        if domain.queries is None:
            domain.queries = trio.CancelScope()
            self._nursery.start_soon(self._run_queries, domain, domain.queries)
        ctx.metrics.set_domains(len(ctx.registry))
        if state in ("written", "rewritten"):
            self._report(domid, generation, outcome, trio.current_time() - triggered)

    def _report(self, domid: int, generation: str | None, outcome: SetupOutcome, seconds: float) -> None:
        """Metrics and one log line per event: the answer, and each conflict left."""
        metrics = self._ctx.metrics
        metrics.setup_done(outcome.status, seconds)
        plan = outcome.plan
        if plan is None:
            log.warning("domain %d: request %s invalid: %s", domid, generation, outcome.error)
            return
        for region in plan.regions:
            if region.action == "avoided":
                metrics.conflict("ram", "avoided")
            for kind in region.conflict:
                metrics.conflict(kind, region.action)
            if region.action in ("warned", "failed"):
                log.warning("domain %d: region %s (%s) overlaps %s: %s", domid, region.range,
                            region.source_text, region.conflict_text, region.action)
        if plan.status == "ready":
            log.info("domain %d: request %s ready: lowmem_end %#x highmem_end %#x, %d regions", domid,
                     generation, plan.lowmem_end, plan.highmem_end, len(plan.regions))
        else:
            log.error("domain %d: request %s refused: %s", domid, generation, plan.error)

    async def _run_queries(self, domain: Domain, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await serve_guest_queries(self._ctx, domain)
            except Exception:
                log.exception("domain %d: guest queries stopped", domain.domid)
        if domain.queries is scope:
            domain.queries = None

    async def _forget(self, domid: int, why: str) -> None:
        ctx = self._ctx
        domain = ctx.registry.forget(domid)
        if domain is not None and domain.queries is not None:
            domain.queries.cancel()

        async def run(tx: Transaction) -> None:
            await rm_quietly(tx, answer_path(domid))
            await rm_quietly(tx, assigned_path(domid))
            await rm_quietly(tx, allocated_path(domid))

        await ctx.xs.run_transaction(run)
        ctx.metrics.set_domains(len(ctx.registry))
        log.info("domain %d: %s; answer removed", domid, why)
