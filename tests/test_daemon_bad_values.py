"""Values that are not text, or not in their key's grammar, from the toolstack or a
guest: each gets an answer naming the key, at the speed of any other answer.

A non-UTF-8 byte under ``/libxl/<domid>/rdm/`` used to get no answer at all (a
failed setup, again on every reconcile) and the toolstack waited forever.  Now
``decide`` decodes every value itself (hypothesis holds it to never raising, for
any bytes in any key) and the daemon writes ``status=error`` with the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from support import INVENTORIES, SEED_DOMAIN
from support.inprocess import inprocess_daemon
from rmrrd.core.inventory_yaml import load_inventory_file
from rmrrd.daemon.setup import SetupInput, decide
from rmrrd.edges.config import DefaultsConfig
from rmrrd.app.toolstack import wait_granted
from rmrrd.protocol import DEVICE_LISTS, SCALAR_KEYS, answer_path, rdm_path, request_path, result_path
from rmrrd.xenstore.client import Transaction, XenstoreClient

HOST = load_inventory_file(INVENTORIES / "node-a.yaml")
PEERS = {"node-b": load_inventory_file(INVENTORIES / "node-b.yaml")}
KEYS = {*SCALAR_KEYS, *DEVICE_LISTS, "request"}

VALUES = st.one_of(st.binary(max_size=40), st.sampled_from(
    [b"1024", b"\xff", b"10\x0024", "１０２４".encode(), b"0000:00:02.0", b"00:14.0,rdm_policy=relaxed",
     b"node-b", b"0xe0000-0xeffff", b"policy=strict,strategy=host", b"1", b"seabios", b"\xc3\x28", b" 1024"]))


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(generation=VALUES, scalars=st.dictionaries(st.sampled_from(SCALAR_KEYS), VALUES),
       lists=st.fixed_dictionaries({name: st.dictionaries(st.sampled_from(["0", "1", "7"]), VALUES, max_size=2)
                                    for name in DEVICE_LISTS}))
def test_any_bytes_in_any_key_give_an_outcome_naming_the_key(generation: bytes, scalars: dict[str, bytes],
                                                             lists: dict[str, dict[str, bytes]]) -> None:
    outcome = decide(SetupInput(generation, scalars, lists), DefaultsConfig(), HOST, PEERS)
    if outcome.error is not None:
        key = outcome.error.split(":")[0].split(" ")[0].split("/")[0]
        assert key in KEYS, outcome.error
    else:
        assert outcome.plan is not None


async def answer_of(xs: XenstoreClient, domid: int, values: dict[str, bytes]) -> dict[str, bytes]:
    """Write a request with these raw values (``request`` last), wait for the answer."""
    base = rdm_path(domid)

    async def write(tx: Transaction) -> None:
        for key, value in values.items():
            await tx.write(f"{base}/{key}", value)

    async with xs.watch(f"{answer_path(domid)}/generation") as events:
        await xs.run_transaction(write)
        with trio.fail_after(10):
            async for _ in events:
                if await xs.exists(f"{answer_path(domid)}/generation") and \
                        await xs.read(f"{answer_path(domid)}/generation") == values["request"]:
                    break
    return {key: await xs.read(f"{answer_path(domid)}/{key}") for key in ("generation", "status", "error")
            if await xs.exists(f"{answer_path(domid)}/{key}")}


@pytest.mark.unit
async def test_toolstack_values_that_are_not_text_are_answered_with_the_key(tmp_path: Path) -> None:
    seed = {key: value.encode() for key, value in SEED_DOMAIN.items()}
    async with inprocess_daemon(tmp_path) as daemon:
        xs = daemon.xs
        answer = await answer_of(xs, 1, {**seed, "pci/0": b"0000:00:02.0\xff", "request": b"1"})
        assert answer == {"generation": b"1", "status": b"error",
                          "error": b"pci/0: not valid UTF-8 (byte 12 of 13)"}
        # The generation itself: echoed byte for byte, so the toolstack sees its own.
        answer = await answer_of(xs, 2, {**seed, "request": b"gen-\xfe\xff"})
        assert answer == {"generation": b"gen-\xfe\xff", "status": b"error",
                          "error": b"request: not valid UTF-8 (byte 4 of 6)"}
        # Text, but not a size: fullwidth digits are digits to Python, not to xl.
        answer = await answer_of(xs, 3, {**seed, "memory": "１０２４".encode(), "request": b"1"})
        assert answer["status"] == b"error" and answer["error"].startswith(b"memory: ")
        # The same domain, fixed: answered as any other.
        answer = await answer_of(xs, 1, {**seed, "request": b"2"})
        assert answer["status"] == b"ready" and answer["generation"] == b"2"
        # A toolstack check that is not text: a fail verdict, not silence.
        async with xs.watch(f"{result_path('bad')}/verdict") as events:
            await xs.write(request_path("bad"), b"op=assign domid=1 device=\xff")
            with trio.fail_after(10):
                async for _ in events:
                    if await xs.exists(f"{result_path('bad')}/verdict"):
                        break
        assert await xs.read(f"{result_path('bad')}/verdict") == b"fail"
        assert await xs.read(f"{result_path('bad')}/reason") == b"invalid request: not ASCII"
        # A guest's query that is not text: an error reply.
        await xs.introduce(1, 0, 0)
        async with daemon.guest(1) as guest:
            await wait_granted(guest, 1)
            async with guest.watch(f"{answer_path(1)}/reply/q1") as events:
                await guest.write(f"{answer_path(1)}/query/q1", b"e820\xff")
                with trio.fail_after(10):
                    async for _ in events:
                        if await guest.exists(f"{answer_path(1)}/reply/q1"):
                            break
            assert (await guest.read(f"{answer_path(1)}/reply/q1")).startswith(b"error EINVAL")
