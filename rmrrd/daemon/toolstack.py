"""Toolstack checks: ``/tool/rmrrd/request/<id>`` in, ``result/<id>`` out.

Each request is answered in one transaction that also removes the request node, so
a request is either pending (node present) or answered (result present), and a
restarted daemon finds exactly the pending ones.  Results are kept for
``limits.results_kept`` requests, oldest removed first.
"""

from __future__ import annotations

import logging
from collections import deque

import trio

from rmrrd.checks import Verdict, check_assign, check_hotplug, check_migrate, rank_migration_targets
from rmrrd.errors import InputError
from rmrrd.schema import REQUEST_ROOT, RESULT_ROOT, assigned_path
from rmrrd.xenstore.client import Transaction
from rmrrd.xenstore.wire import NoEntry

from rmrrd.daemon.context import Context
from rmrrd.daemon.requests import ToolRequest, parse_request
from rmrrd.daemon.xsutil import device_key, gather, keep_newest, rm_quietly

log = logging.getLogger(__name__)


def evaluate(ctx: Context, request: ToolRequest) -> tuple[Verdict, list[str]]:
    """The verdict for ``request`` and, for ``migrate`` without a target, the ranking.

    Raises :class:`InputError` when the request cannot be checked at all (unknown
    domain, unknown target): the caller answers ``fail`` with that reason.
    """
    domain = ctx.registry.get(request.domid)
    if domain is None or domain.plan is None:
        raise InputError(f"domain {request.domid} has no rmrrd answer; write /libxl/{request.domid}/rdm/request first")
    plan = domain.plan
    if plan.status != "ready":
        raise InputError(f"domain {request.domid} was refused at setup: {plan.error}")
    if request.op == "migrate":
        if request.target is not None:
            return check_migrate(plan, ctx.peers, request.target, request.devices), []
        ranking = rank_migration_targets(plan, ctx.peers)
        if not ranking:
            raise InputError("no peer hosts are configured to rank")
        lines = [f"{host} {verdict.verdict} fail={verdict.count('fail')} warn={verdict.count('warn')}"
                 for host, verdict in ranking]
        best_host, best = ranking[0]
        return Verdict(best.verdict, f"best target {best_host}: {best.reason}", best.conflicts), lines
    check = check_assign if request.op == "assign" else check_hotplug
    return check(plan, ctx.host, request.devices[0], ctx.registry.devices_elsewhere(request.domid)), []


class ToolstackHandler:
    """Answers request nodes and keeps the bounded list of results."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._results: deque[str] = deque()

    async def scan(self) -> None:
        """Learn the results already kept and answer every pending request (reconcile)."""
        xs = self._ctx.xs
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
        ctx = self._ctx
        started = trio.current_time()
        path = f"{REQUEST_ROOT}/{req_id}"
        try:
            raw = await ctx.xs.read(path)
        except NoEntry:
            return  # answered already (our own removal fires the watch too)
        op, request, ranking = "other", None, list[str]()
        try:
            request = parse_request(raw.decode("ascii"))
            op = request.op
            verdict, ranking = evaluate(ctx, request)
        except UnicodeDecodeError:
            verdict = Verdict("fail", "invalid request: not ASCII")
        except InputError as exc:
            verdict = Verdict("fail", f"invalid request: {exc}" if request is None else str(exc))
        attach = request is not None and request.op != "migrate" and verdict.verdict != "fail"

        async def answer(tx: Transaction) -> None:
            base = f"{RESULT_ROOT}/{req_id}"
            await rm_quietly(tx, base)
            writes = [(f"{base}/verdict", verdict.verdict), (f"{base}/reason", verdict.reason)]
            writes += [(f"{base}/conflict/{n}", str(c)) for n, c in enumerate(verdict.conflicts)]
            writes += [(f"{base}/rank/{n}", line) for n, line in enumerate(ranking)]
            if attach:
                assert request is not None
                bdf = request.devices[0].bdf
                writes.append((f"{assigned_path(request.domid)}/{device_key(bdf)}", f"{bdf} {request.op}"))
            await gather(lambda write: tx.write(*write), writes)
            await rm_quietly(tx, path)

        await ctx.xs.run_transaction(answer)
        if attach and request is not None:
            domain = ctx.registry.get(request.domid)
            if domain is not None:
                domain.attached[request.devices[0].bdf] = request.op
        ctx.metrics.request_done(op, verdict.verdict, trio.current_time() - started)
        for conflict in verdict.conflicts:
            ctx.metrics.conflict(conflict.kind, "failed" if conflict.severity == "fail" else "warned")
        level = logging.INFO if verdict.verdict == "ok" else logging.WARNING
        subject = (f"domain {request.domid} {request.op} " + " ".join(str(d.bdf) for d in request.devices)
                   if request is not None else "malformed")
        log.log(level, "request %s: %s: %s: %s", req_id, subject.strip(), verdict.verdict, verdict.reason)
        await keep_newest(ctx.xs, self._results, req_id, ctx.config.limits.results_kept, RESULT_ROOT)
