"""Every domain the daemon knows, each with its owner task; reconciliation.

:class:`Domains` routes each event to the domain it concerns (starting an owner on
first sight), answers the questions that span domains (which devices the others
hold, which are still introduced), and reconciles xenstore with memory after a
start or a reconnect.  What happens to one domain is decided by its state machine
(:mod:`rmrrd.daemon.lifecycle`) and carried out by its owner
(:mod:`rmrrd.daemon.owner`), so different domains proceed side by side while one
domain's events never interleave.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import trio

from rmrrd import __version__
from rmrrd.errors import InputError
from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import Range
from rmrrd.protocol import (ALLOCATED_ROOT, ASSIGNED_ROOT, LIBXL_ROOT, answer_path, decode_allocation, decode_attachment,
                            parse_domid, shown, status_entries)
from rmrrd.xenstore.client import XenstoreClient
from rmrrd.xenstore.wire import NoEntry

from rmrrd.daemon.lifecycle import (Check, CheckAsked, Domain, Event, IntroducedSeen, Limits, Released, Reloaded,
                                    RequestChanged, SetupOutcome, State)
from rmrrd.daemon.owner import DomainOwner
from rmrrd.daemon.settings import Observer, Settings
from rmrrd.xenstore.ops import gather, read_values, rm_quietly

log = logging.getLogger(__name__)

SETUP_CONCURRENCY = 64
"""Setups (and releases) carried out at once: enough to keep the xenstore connection
pipelined, few enough that a burst of a thousand requests does not open a thousand
transactions."""


class Domains:
    """The owners of every known domain, by domid; see the module docstring."""

    def __init__(self, xs: XenstoreClient, settings: Settings, limits: Limits, observer: Observer,
                 nursery: trio.Nursery, *, setup_concurrency: int = SETUP_CONCURRENCY) -> None:
        self.xs = xs
        self.settings = settings
        """Replaced whole by a reload; owners read it when they use it."""
        self.limits = limits
        self.observer = observer
        self.nursery = nursery
        self.setup_slots = trio.CapacityLimiter(setup_concurrency)
        self._owners: dict[int, DomainOwner] = {}
        self._answered: set[int] = set()
        self._holders: dict[Bdf, dict[int, None]] = {}
        """Each device held, and the domains holding it, in the order they took it."""
        self._seen_introduced: set[int] = set()
        """Domains under ``/libxl`` already seen introduced (each is set up once for it)."""
        self._work = 0
        self._idle = trio.Event()
        self._idle.set()

    def __len__(self) -> int:
        """Domains answered (what ``rmrrd_domains`` and the status line count)."""
        return len(self._answered)

    def __iter__(self) -> Iterator[Domain]:
        return iter([owner.machine.domain for owner in self._owners.values()])

    def get(self, domid: int) -> Domain | None:
        """The domain's data as its owner holds it now (for reading only)."""
        owner = self._owners.get(domid)
        return owner.machine.domain if owner is not None else None

    # --- events --------------------------------------------------------------------------

    def _owner(self, domid: int) -> DomainOwner:
        owner = self._owners.get(domid)
        if owner is None:
            owner = self._owners[domid] = DomainOwner(domid, self)
        return owner

    def post(self, domid: int, event: Event) -> None:
        """Queue ``event`` for the domain, starting its owner if it has none."""
        self._owner(domid).post(event)

    def changed(self, domid: int) -> None:
        """Something under ``/libxl/<domid>`` changed that may need a new answer."""
        self.post(domid, RequestChanged(trio.current_time()))

    async def check(self, domid: int, check: Check) -> None:
        """Answer a toolstack check in the domain's order; return once it is answered."""
        await self._owner(domid).call(CheckAsked(check))

    async def released(self) -> None:
        """``@releaseDomain`` fired: release every introduced domain that is gone."""
        known = [domain for domain in self if domain.introduced]
        alive = await gather(lambda domain: self.xs.is_introduced(domain.domid), known)
        for domain, up in zip(known, alive):
            if not up:
                self.post(domain.domid, Released("released"))

    async def introduced(self) -> None:
        """``@introduceDomain`` fired: tell each answered domain not yet introduced, and
        set up each new one libxl describes (a domain xl created is learned)."""
        pending = [domain for domain in self if not domain.introduced and domain.generation is not None]
        alive = await gather(lambda domain: self.xs.is_introduced(domain.domid), pending)
        for domain, up in zip(pending, alive):
            if up:
                self.post(domain.domid, IntroducedSeen(True))
        try:
            names = await self.xs.directory(LIBXL_ROOT)
        except NoEntry:
            names = []
        live = {domid for domid in map(parse_domid, names) if domid}
        self._seen_introduced &= live
        unanswered = [domid for domid in sorted(live - self._seen_introduced) if not self._answered_ever(domid)]
        for domid, up in zip(unanswered, await gather(self.xs.is_introduced, unanswered)):
            if up:
                self._seen_introduced.add(domid)
                self.changed(domid)

    def _answered_ever(self, domid: int) -> bool:
        known = self.get(domid)
        return known is not None and known.generation is not None

    # --- what owners report ------------------------------------------------------------

    def work_started(self) -> None:
        self._work += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def work_finished(self) -> None:
        self._work -= 1
        if not self._work:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no setup, release or reload is queued or running."""
        await self._idle.wait()

    def ended(self, owner: DomainOwner) -> None:
        if self._owners.get(owner.domid) is owner:
            del self._owners[owner.domid]

    def state_changed(self, domid: int, state: State) -> None:
        count = len(self._answered)
        if state is State.ANSWERED:
            self._answered.add(domid)
        elif state is not State.PLANNING:
            self._answered.discard(domid)
        if len(self._answered) != count:
            self.observer.set_domains(len(self._answered))

    def devices_changed(self, domid: int, before: set[Bdf], after: set[Bdf]) -> None:
        """An owner says which devices its domain holds now (statically assigned plus
        attached; none once released)."""
        for device in before - after:
            holders = self._holders[device]
            del holders[domid]
            if not holders:
                del self._holders[device]
        for device in after - before:
            self._holders.setdefault(device, {})[domid] = None

    def devices_elsewhere(self, domid: int) -> dict[Bdf, int]:
        """Devices held by every domain but ``domid``, with their (first) holder.

        This is what makes a region shared with another guest's device a ``fail``:
        the map is rebuilt from xenstore on every reconcile.  Kept as an index by the
        owners, so a check costs the devices held, not a walk of every domain.
        """
        held: dict[Bdf, int] = {}
        for device, holders in self._holders.items():
            for holder in holders:
                if holder != domid:
                    held[device] = holder
                    break
        return held

    def report_setup(self, domid: int, generation: str, outcome: SetupOutcome, seconds: float) -> None:
        """Metrics and one log line per event: the answer, and each conflict left."""
        observer = self.observer
        observer.setup_done(outcome.status, seconds)
        plan = outcome.plan
        generation = shown(generation)
        what = f"request {generation}"
        if outcome.learned is not None:
            saved = "" if plan is None else ", its saved configuration read" if outcome.saved else (
                ", its configuration not saved yet")
            what = f"learned from libxl ({outcome.learned}{saved})"
        if plan is None:
            log.warning("domain %d: %s invalid: %s", domid, what, outcome.error)
            return
        for region in plan.regions:
            if region.action == "avoided":
                observer.conflict("ram", "avoided")
            for kind in region.conflict:
                observer.conflict(kind, region.action)
            if region.action in ("warned", "failed"):
                log.warning("domain %d: region %s (%s) overlaps %s: %s", domid, region.range,
                            region.source_text, region.conflict_text, region.action)
        passthrough = "" if plan.passthrough else ", no passthrough"
        if plan.status == "ready" and plan.guest != "hvm":
            log.info("domain %d: %s ready: no layout (%s guest%s)", domid, what, plan.guest, passthrough)
        elif plan.status == "ready":
            log.info("domain %d: %s ready: lowmem_end %#x highmem_end %#x, %d regions%s", domid,
                     what, plan.lowmem_end, plan.highmem_end, len(plan.regions), passthrough)
        else:
            log.error("domain %d: %s refused: %s", domid, what, plan.error)

    # --- reconciliation ----------------------------------------------------------------

    async def reconcile(self) -> None:
        """Make xenstore and memory agree, as if the daemon had never stopped.

        Answers every request whose answer is missing or stale, removes answers,
        attachments and allocations of domains that are gone, and rebuilds which
        domain holds which device and which MMIO ranges each guest was given.  Runs
        on start and after every xenstore reconnect.
        """
        xs = self.xs
        try:
            names = await xs.directory(LIBXL_ROOT)
        except NoEntry:
            names = []
        live = {domid for domid in map(parse_domid, names) if domid is not None}
        for domid in list(self._owners):
            if domid not in live:
                self.post(domid, Released("released"))
        attached = await self._records(ASSIGNED_ROOT, live)
        allocations = await self._records(ALLOCATED_ROOT, live)
        for domid in sorted(set(attached) | set(allocations)):
            self.post(domid, Reloaded(_attached(domid, attached.get(domid)), _allocations(domid, allocations.get(domid))))
        await self._drop_orphan_answers(live)
        now = trio.current_time()
        for domid in sorted(live):
            self.post(domid, RequestChanged(now))
        await self.wait_idle()
        await gather(lambda entry: xs.write(*entry), status_entries(__version__, os.getpid()))
        log.info("reconciled: %d domains answered", len(self))

    async def _records(self, root: str, live: set[int]) -> dict[int, dict[str, str]]:
        """The per-domain records under ``root`` of live domains; those of gone ones removed."""
        xs = self.xs
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
                # Decoded leniently: a damaged record is one warning (_attached,
                # _allocations), never a reconcile that fails for every domain.
                values = await read_values(xs, f"{root}/{name}")
                records[domid] = {n: raw.decode("ascii", "replace") for n, raw in values.items()}
        return records

    async def _drop_orphan_answers(self, live: set[int]) -> None:
        xs = self.xs
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


def _attached(domid: int, values: dict[str, str] | None) -> dict[Bdf, str] | None:
    """Devices a domain holds, from its accepted assign/hotplug records."""
    if values is None:
        return None
    attached: dict[Bdf, str] = {}
    for value in values.values():
        try:
            bdf, op = decode_attachment(value)
            attached[bdf] = op
        except InputError:
            log.warning("domain %d: ignoring malformed attached device %r", domid, value[:40])
    return attached


def _allocations(domid: int, values: dict[str, str] | None) -> tuple[Range, ...] | None:
    """A guest's ``alloc`` placements, from its records."""
    if values is None:
        return None
    ranges: list[Range] = []
    for value in values.values():
        try:
            ranges.append(decode_allocation(value))
        except InputError:
            log.warning("domain %d: ignoring malformed allocation record %r", domid, value[:40])
    return tuple(ranges)
