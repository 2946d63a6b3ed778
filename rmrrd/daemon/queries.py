"""Guest queries: one watch per domain on its ``rmrr/query/``.

The guest is untrusted.  Whatever it writes is bounded (xenstored's own quotas and
``limits.max_query_length``), rate limited per domain, answered by the pure
:func:`rmrrd.guest_queries.handle_query`, and can only ever cause a write to that
domain's own ``reply/<id>`` and the removal of its own ``query/<id>`` (and, for
``alloc`` and ``free``, the dom0-owned record of that domain's allocations).
"""

from __future__ import annotations

import logging

import trio

from rmrrd.guest_queries import QueryResult, handle_query
from rmrrd.ranges import Range
from rmrrd.schema import allocated_path, allocation_key, answer_path, is_valid_id
from rmrrd.xenstore.wire import NoEntry

from rmrrd.daemon.context import Context
from rmrrd.daemon.state import Domain
from rmrrd.daemon.xsutil import keep_newest, rm_quietly

log = logging.getLogger(__name__)

REPLIES_KEPT = 64
"""Replies kept per domain, oldest removed first: reply nodes are dom0's, outside the
guest's node quota, so without a bound a guest writing fresh ids would grow the store."""

RATE_LIMITED = QueryResult("error EBUSY query rate limit reached; retry later", "other", "rejected")


async def serve_guest_queries(ctx: Context, domain: Domain, *,
                              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer the domain's queries until cancelled (when the domain is forgotten)."""
    queries = f"{answer_path(domain.domid)}/query"
    async with ctx.xs.watch(queries) as events:
        task_status.started()
        async for event in events:
            ctx.metrics.watch_event("query")
            if event.path == queries:
                # The initial event (also after a reconnect): answer what is waiting.
                try:
                    pending = await ctx.xs.directory(queries)
                except NoEntry:
                    pending = []
                for name in pending:
                    await answer_query(ctx, domain, name)
            elif event.path.startswith(queries + "/"):
                await answer_query(ctx, domain, event.path[len(queries) + 1:].split("/", 1)[0])


async def answer_query(ctx: Context, domain: Domain, name: str) -> None:
    """Answer ``query/<name>`` into ``reply/<name>`` and remove the query, atomically."""
    base = answer_path(domain.domid)
    query = f"{base}/query/{name}"
    if not is_valid_id(name):
        # No reply can be named after it; removing it is the answer.
        await rm_quietly(ctx.xs, query)
        ctx.metrics.guest_query("other", "rejected")
        log.debug("domain %d: query node %r has an invalid id: removed", domain.domid, name[:40])
        return
    try:
        raw = await ctx.xs.read(query)
    except NoEntry:
        return  # answered already: our own removal fires the watch as well
    if not domain.limiter.take(trio.current_time()):
        result = RATE_LIMITED
    elif domain.plan is None:
        result = QueryResult("error ENODEV this domain has no reserved-memory answer yet", "other", "error")
    else:
        held = set(domain.allocations.ranges())
        result = handle_query(raw, domain.plan, domain.allocations,
                              max_length=ctx.config.limits.max_query_length)
        await _record_allocations(ctx, domain.domid, held, set(domain.allocations.ranges()))

    # The allocation record first, then the reply, then remove the query: one write
    # is atomic for a reader, and no transaction is needed. A transaction here would
    # conflict with every new query node the guest creates beside it, so a flooding
    # guest would starve itself. A crash in between leaves the query, answered again
    # after the restart; an allocation recorded but never replied is then held until
    # the domain's end (bounded by the cap), never handed out twice.
    await ctx.xs.write(f"{base}/reply/{name}", result.reply)
    await rm_quietly(ctx.xs, query)
    await keep_newest(ctx.xs, domain.replies, name, REPLIES_KEPT, f"{base}/reply")
    ctx.metrics.guest_query(result.kind, result.outcome)
    if result.outcome != "ok":
        log.debug("domain %d: query %s: %s", domain.domid, name, result.reply[:120])


async def _record_allocations(ctx: Context, domid: int, before: set[Range], after: set[Range]) -> None:
    """Mirror an ``alloc`` or ``free`` into ``/tool/rmrrd/allocated/<domid>``."""
    base = allocated_path(domid)
    for gone in before - after:
        await rm_quietly(ctx.xs, f"{base}/{allocation_key(gone.start)}")
    for new in after - before:
        await ctx.xs.write(f"{base}/{allocation_key(new.start)}", str(new))
