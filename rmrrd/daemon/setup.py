"""Domain setup: read ``/libxl/<domid>/rdm/``, plan, answer.

The whole answer is written in one transaction (retried on EAGAIN), so a reader
never sees half of it, and a daemon killed mid-write leaves the old answer or the
new one, never a mix.  The answer's directory is readable by the guest; its
``query/`` node writable by it; nothing else (docs/xenstore-schema.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from rmrrd.config import DefaultsConfig
from rmrrd.errors import InputError
from rmrrd.inventory import Inventory
from rmrrd.planner import DomainRequest, Plan, parse_domain_request, plan
from rmrrd.schema import DEVICE_LISTS, OWNED_ANSWER_KEYS, SCALAR_KEYS, answer_entries, answer_path, rdm_path
from rmrrd.xenstore.client import Transaction

from rmrrd.daemon.xsutil import gather, guest_perms, read_list, read_text, rm_quietly

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SetupInput:
    """The raw keys of one domain's request, as read in one transaction."""

    generation: str
    memory: str | None
    mmio_hole: str | None
    config: str | None
    mem_boundary: str | None
    videoram: str | None
    hap: str | None
    bios: str | None
    lists: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class SetupOutcome:
    """What the planner made of a request: a plan, or why there is none."""

    request: DomainRequest | None
    plan: Plan | None
    error: str | None

    @property
    def status(self) -> str:
        return self.plan.status if self.plan is not None else "error"


async def read_setup_input(tx: Transaction, domid: int) -> SetupInput | None:
    """The domain's request keys, or None when it has written no ``request`` yet."""
    base = rdm_path(domid)
    generation = await read_text(tx, f"{base}/request")
    if generation is None:
        return None
    memory, mmio_hole, config, mem_boundary, videoram, hap, bios = await gather(
        lambda key: read_text(tx, f"{base}/{key}"), SCALAR_KEYS)
    lists = await gather(lambda key: read_list(tx, f"{base}/{key}"), DEVICE_LISTS)
    return SetupInput(generation, memory, mmio_hole, config, mem_boundary, videoram, hap, bios,
                      dict(zip(DEVICE_LISTS, lists)))


def decide(given: SetupInput, defaults: DefaultsConfig, host: Inventory,
           peers: Mapping[str, Inventory]) -> SetupOutcome:
    """Plan the domain, or say which key made its request invalid (pure)."""
    try:
        if given.memory is None:
            raise InputError("memory: missing (guest RAM in MiB is required)")
        request = parse_domain_request(
            given.memory, given.mmio_hole, given.config, given.mem_boundary,
            pci=given.lists["pci"], hotplug=given.lists["hotplug"],
            migrate=given.lists["migrate"], reserve=given.lists["reserve"], defaults=defaults,
            videoram=given.videoram, hap=given.hap, bios=given.bios)
        return SetupOutcome(request, plan(request, host, peers), None)
    except InputError as exc:
        return SetupOutcome(None, None, str(exc))


async def write_answer(tx: Transaction, domid: int, generation: str, outcome: SetupOutcome) -> None:
    """Replace the domain's answer with ``outcome``, inside ``tx``.

    Old answer keys go first (a new plan may have fewer regions); the guest's
    ``query/`` and the ``reply/`` nodes stay, so queries in flight are not lost.
    """
    base = answer_path(domid)
    await gather(lambda key: rm_quietly(tx, f"{base}/{key}"), OWNED_ANSWER_KEYS)
    await tx.mkdir(base)
    await tx.set_perms(base, guest_perms(domid, "r"))
    dirs = {f"{base}/query": guest_perms(domid, "b"), f"{base}/reply": guest_perms(domid, "r")}
    await gather(tx.mkdir, dirs)
    await gather(lambda path: tx.set_perms(path, dirs[path]), dirs)
    entries = answer_entries(generation, outcome.plan, outcome.error)
    await gather(lambda entry: tx.write(f"{base}/{entry[0]}", entry[1]), entries)


async def read_answer_generation(tx: Transaction, domid: int) -> str | None:
    """The generation of the complete answer already in xenstore, if any."""
    base = answer_path(domid)
    generation, status = await gather(lambda key: read_text(tx, f"{base}/{key}"), ("generation", "status"))
    return generation if status is not None else None
