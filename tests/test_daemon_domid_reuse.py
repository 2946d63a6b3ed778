"""A new domain on a domid rmrrd answered for: the old layout must not judge it.

When ``xl create`` takes a domid, ``libxl__domain_make`` (tools/libs/light/
libxl_create.c) removes ``/libxl/<domid>`` and ``/local/domain/<domid>`` and makes them
anew, in one transaction: a request written there before the domain existed is gone,
and so is rmrrd's answer.  Seen on the real Xen (tests/xen/test_xen_domains.py); here
the same transaction is played against ``rmrrd run --simulate``.
"""

from __future__ import annotations

import pytest

from support import D1, D3, SEED_DOMAIN
from support.processes import Daemon
from support.xs_tools import Xenstore, needs_xenstore_tools, request_setup, toolstack_check, watching
from rmrrd.xenstore.client import Transaction, open_xenstore

pytestmark = [needs_xenstore_tools, pytest.mark.process]

NEW_DOMAIN = {"memory": "256", "migrate/0": "node-b"}
"""The guest xl then builds on domid 1: 256 MiB, which node-b's region at 1 GiB clears."""


async def xl_create_takes(xs: Xenstore, domid: int, request: dict[str, str] | None = None) -> None:
    """What libxl__domain_make does to the domid it takes (and, with ``request``, a
    toolstack that writes its new request in the same transaction)."""
    async with open_xenstore(str(xs.socket)) as client:

        async def make(tx: Transaction) -> None:
            await tx.rm(f"/local/domain/{domid}")
            await tx.mkdir(f"/local/domain/{domid}")
            await tx.rm(f"/libxl/{domid}")
            await tx.write(f"/libxl/{domid}/type", "pvh")
            for key, value in (request or {}).items():
                await tx.write(f"/libxl/{domid}/rdm/{key}", value)

        await client.run_transaction(make)


async def hold_d1(xs: Xenstore) -> None:
    """Domain 1 as the old domain: the seed layout, and D1 accepted for hotplug."""
    assert (await request_setup(xs, 1, SEED_DOMAIN)).status == "ready"
    assert (await toolstack_check(xs, "1", f"op=hotplug domid=1 device={D1},rdm_policy=relaxed")).verdict == "warn"
    assert await xs.list("/tool/rmrrd/assigned/1")


async def test_the_old_layout_is_dropped_when_xl_create_takes_the_domid(rmrrd_daemon: Daemon) -> None:
    xs = rmrrd_daemon.xs
    await hold_d1(xs)
    async with watching(xs, "/tool/rmrrd/assigned/1") as watch:
        await xl_create_takes(xs, 1)
        await watch.until("/tool/rmrrd/assigned/1", lambda value: value is None)
    # Judged by the old 4096 MiB layout, node-b's region would be a RAM conflict.
    refused = await toolstack_check(xs, "2", f"op=migrate domid=1 target=node-b device={D3}")
    assert (refused.verdict, refused.conflicts) == ("fail", [])
    assert "domain 1 has no rmrrd answer" in refused.reason
    answer = await request_setup(xs, 1, NEW_DOMAIN)
    assert (answer.status, answer.lowmem_end) == ("ready", "0x10000000")
    assert (await toolstack_check(xs, "3", f"op=migrate domid=1 target=node-b device={D3}")).verdict == "ok"
    # D1 went with the old domain: another domain may have it now.
    assert (await request_setup(xs, 2, {"memory": "256"})).status == "ready"
    assert (await toolstack_check(xs, "4", f"op=hotplug domid=2 device={D1},rdm_policy=relaxed")).verdict == "warn"
    said = [line for line in rmrrd_daemon.log_lines() if "re-created on this domid" in line]
    assert len(said) == 1 and "domain 1: " in said[0], said


@pytest.mark.parametrize("generation", ["1", "2"])
async def test_a_request_written_with_the_new_domain_is_answered_afresh(rmrrd_daemon: Daemon,
                                                                       generation: str) -> None:
    # The request comes back in the same transaction, even with the old generation:
    # the answer is still new, and nothing the old domain held is kept.
    xs = rmrrd_daemon.xs
    await hold_d1(xs)
    async with watching(xs, "/local/domain/1/rmrr/lowmem_end") as watch:
        await xl_create_takes(xs, 1, {**NEW_DOMAIN, "request": generation})
        await watch.until("/local/domain/1/rmrr/lowmem_end", lambda value: value == "0x10000000")
    assert await xs.list("/tool/rmrrd/assigned/1") == []
    assert (await toolstack_check(xs, "2", f"op=migrate domid=1 target=node-b device={D3}")).verdict == "ok"
    said = [line for line in rmrrd_daemon.log_lines() if "re-created on this domid" in line]
    assert len(said) == 1 and "domain 1: " in said[0], said
