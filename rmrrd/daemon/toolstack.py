"""Toolstack checks: ``/tool/rmrrd/request/<id>`` in, ``result/<id>`` out.

Each request is answered in one transaction that also removes the request node, so
a request is either pending (node present) or answered (result present), and a
restarted daemon finds exactly the pending ones.  Results are kept for
``limits.results_kept`` requests, oldest removed first.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import trio

from rmrrd.core.checks import Verdict, check_operation
from rmrrd.core.newest import note_newest
from rmrrd.errors import InputError
from rmrrd.core.pci import Bdf
from rmrrd.protocol import (REQUEST_ROOT, RESULT_ROOT, Result, ToolRequest, assigned_path, attachment_entry,
                            parse_request, request_path, result_entries, result_path)
from rmrrd.xenstore.client import Transaction
from rmrrd.xenstore.wire import NoEntry

from rmrrd.daemon.domains import Domains
from rmrrd.daemon.lifecycle import DeviceAttached, Domain
from rmrrd.daemon.settings import Settings
from rmrrd.xenstore.ops import gather, rm_quietly

log = logging.getLogger(__name__)


def evaluate(settings: Settings, domain: Domain, request: ToolRequest,
             elsewhere: Callable[[], Mapping[Bdf, int]]) -> tuple[Verdict, list[str]]:
    """The verdict for ``request`` and, for ``migrate`` without a target, the ranking.

    ``domain`` is the one the request names, as its owner holds it; ``elsewhere``
    gives the devices every other domain holds (asked only for an assign or a
    hotplug: it walks every domain).  Raises :class:`InputError` when the
    request cannot be checked at all (unknown domain, unknown target): the caller
    answers ``fail`` with that reason.
    """
    plan = domain.plan
    if plan is None:
        raise InputError(f"domain {request.domid} has no rmrrd answer; write /libxl/{request.domid}/rdm/request first")
    if plan.status != "ready":
        raise InputError(f"domain {request.domid} was refused at setup: {plan.error}")
    return check_operation(plan, settings.host, settings.peers, request.op, request.devices, request.target,
                           elsewhere)


class ToolstackHandler:
    """Answers request nodes and keeps the bounded list of results.

    Requests are answered one after another: a verdict must see the devices the
    previous one accepted.  A well-formed request is answered by the owner of the
    domain it names (:meth:`Domains.check`), in that domain's order, so an accepted
    attachment can never be recorded after the domain's release removed its records.
    """

    def __init__(self, domains: Domains) -> None:
        self._domains = domains
        self._results: deque[str] = deque()

    async def scan(self) -> None:
        """Learn the results already kept and answer every pending request (reconcile)."""
        xs = self._domains.xs
        try:
            kept = await xs.directory(RESULT_ROOT)
        except NoEntry:
            kept = []
        self._results = deque(name for name in kept if name not in self._results)
        try:
            pending = await xs.directory(REQUEST_ROOT)
        except NoEntry:
            pending = []
        for req_id in pending:
            await self.handle(req_id)

    async def handle(self, req_id: str) -> None:
        """Answer ``/tool/rmrrd/request/<req_id>`` if it is still pending."""
        started = trio.current_time()
        try:
            raw = await self._domains.xs.read(request_path(req_id))
        except NoEntry:
            return  # answered already (our own removal fires the watch too)
        try:
            request = parse_request(raw.decode("ascii"))
        except UnicodeDecodeError:
            await self._answer(req_id, started, None, Verdict("fail", "invalid request: not ASCII"))
        except InputError as exc:
            await self._answer(req_id, started, None, Verdict("fail", f"invalid request: {exc}"))
        else:
            await self._domains.check(request.domid, _Check(self, req_id, request, started))

    async def _answer(self, req_id: str, started: float, request: ToolRequest | None, verdict: Verdict,
                      ranking: list[str] | None = None, *, holds: bool = False) -> DeviceAttached | None:
        """Write the result and remove the request in one transaction; count and log it.

        ``holds``: an accepted ``assign`` or ``hotplug`` makes the domain hold the device
        (recorded with the result).  Not for a learned domain: what it holds is what
        libxl's PCI backend lists once the attach is done, and an attach that fails or
        never comes must not leave the device held (Xen itself refuses a device that
        another domain has).
        """
        domains = self._domains
        attach = None
        if holds and request is not None and request.op != "migrate" and verdict.verdict != "fail":
            attach = DeviceAttached(request.devices[0].bdf, request.op)

        result = Result(verdict.verdict, verdict.reason, tuple(str(c) for c in verdict.conflicts), tuple(ranking or ()))

        async def answer(tx: Transaction) -> None:
            base = result_path(req_id)
            await rm_quietly(tx, base)
            writes = [(f"{base}/{key}", value) for key, value in result_entries(result)]
            if attach is not None and request is not None:
                key, value = attachment_entry(attach.bdf, attach.op)
                writes.append((f"{assigned_path(request.domid)}/{key}", value))
            await gather(lambda write: tx.write(*write), writes)
            await rm_quietly(tx, request_path(req_id))

        await domains.xs.run_transaction(answer)
        domains.observer.request_done(request.op if request is not None else "other", verdict.verdict,
                                      trio.current_time() - started)
        for conflict in verdict.conflicts:
            domains.observer.conflict(conflict.kind, "failed" if conflict.severity == "fail" else "warned")
        level = logging.INFO if verdict.verdict == "ok" else logging.WARNING
        subject = (f"domain {request.domid} {request.op} " + " ".join(str(d.bdf) for d in request.devices)
                   if request is not None else "malformed")
        log.log(level, "request %s: %s: %s: %s", req_id, subject.strip(), verdict.verdict, verdict.reason)
        for old in note_newest(self._results, req_id, domains.settings.results_kept):
            await rm_quietly(domains.xs, f"{RESULT_ROOT}/{old}")
        return attach


@dataclass(frozen=True, slots=True)
class _Check:
    """A parsed request waiting in its domain's mailbox (a :class:`lifecycle.Check`)."""

    handler: ToolstackHandler
    req_id: str
    request: ToolRequest
    started: float

    async def answer(self, domain: Domain) -> DeviceAttached | None:
        domains = self.handler._domains
        try:
            verdict, ranking = evaluate(domains.settings, domain, self.request,
                                        partial(domains.devices_elsewhere, self.request.domid))
        except InputError as exc:
            verdict, ranking = Verdict("fail", str(exc)), []
        return await self.handler._answer(self.req_id, self.started, self.request, verdict, ranking,
                                          holds=not domain.learned)
