"""The other side of rmrrd's protocol, over xenstore: what a toolstack and a guest do.

Write a domain's setup request and wait for the answer, send a guest's query and
wait for its reply (a toolstack check is :mod:`rmrrd.app.check`, blocking, for the
short-lived commands).  The demo, the tests and the benchmarks use these, so they
exercise the daemon exactly as the schema page tells a toolstack to
(docs/xenstore-schema.md, docs/toolstack.md).  Each wait is a watch, bounded by a
deadline.
"""

from __future__ import annotations

import trio

from rmrrd.protocol import Answer, answer_path, decode_answer, query_path, rdm_path, reply_path, request_entries
from rmrrd.xenstore.client import Transaction, XenstoreClient
from rmrrd.xenstore.ops import read_text, read_tree
from rmrrd.xenstore.wire import NoEntry, PermissionDenied

WAIT = 10.0
"""Seconds to wait for the daemon before giving up."""


async def write_request(xs: XenstoreClient, domid: int, keys: dict[str, str], generation: str = "1") -> None:
    """A domain's request as a toolstack writes it: its keys and ``request``, in one transaction."""
    base = rdm_path(domid)

    async def write(tx: Transaction) -> None:
        for key, value in request_entries(keys, generation):
            await tx.write(f"{base}/{key}", value)

    await xs.run_transaction(write)


async def read_answer(xs: XenstoreClient, domid: int) -> Answer:
    """The domain's answer as it is in xenstore now."""
    return decode_answer(await read_tree(xs, answer_path(domid)))


async def create_domain(xs: XenstoreClient, domid: int, keys: dict[str, str], generation: str = "1") -> Answer:
    """Write a domain's request as a toolstack does, and wait for rmrrd's answer to it."""
    answer = answer_path(domid)
    async with xs.watch(f"{answer}/generation") as events:
        await write_request(xs, domid, keys, generation)
        with trio.fail_after(WAIT):
            async for _ in events:
                if await read_text(xs, f"{answer}/generation") == generation:
                    break
    return await read_answer(xs, domid)


async def wait_granted(guest: XenstoreClient, domid: int) -> None:
    """Wait, as the guest, until it may read its answer.

    An answer written before its domain was introduced grants the guest nothing on
    C xenstored until rmrrd sets its permissions again, which it does when the
    domain is introduced (docs/xenstore-schema.md, "Permissions"); its watch event
    says when.
    """
    status = f"{answer_path(domid)}/status"
    async with guest.watch(status) as events:
        with trio.fail_after(WAIT):
            async for _ in events:
                try:
                    await guest.read(status)
                    return
                except (PermissionDenied, NoEntry):
                    continue


async def guest_query(guest: XenstoreClient, domid: int, qid: str, query: str) -> str:
    """Write a query as the guest, once it may, and wait for its reply."""
    await wait_granted(guest, domid)
    reply = reply_path(domid, qid)
    async with guest.watch(reply) as events:
        await guest.write(query_path(domid, qid), query)
        with trio.fail_after(WAIT):
            async for _ in events:
                text = await read_text(guest, reply)
                if text is not None:
                    return text
    raise AssertionError("unreachable: the watch ends only with the client")
