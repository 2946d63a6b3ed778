"""Domain setup: read ``/libxl/<domid>/rdm/``, plan, answer.

The whole answer is written in one transaction (retried on EAGAIN), so a reader
never sees half of it, and a daemon killed mid-write leaves the old answer or the
new one, never a mix.  The answer's directory is readable by the guest; its
``query/`` node writable by it; nothing else (docs/xenstore-schema.md).  What to do is decided
by :func:`rmrrd.daemon.lifecycle.setup_kind`; this module does the reading and
writing, and is carried out by the domain's owner as its ``RunSetup`` effect.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rmrrd.errors import InputError
from rmrrd.core.inventory import Inventory
from rmrrd.core.planner import RequestDefaults, parse_domain_request, plan
from rmrrd.protocol import (ANSWER_PERMS, DEVICE_LISTS, LIBXL_ROOT, OWNED_ANSWER_KEYS, QUERY_PERMS, REQUEST_KEY,
                            SCALAR_KEYS, allocated_path, answer_entries, answer_path, decode_generation, encode_value,
                            guest_perms, query_path, rdm_path, reply_path)
from rmrrd.xenstore.client import Transaction

from rmrrd.daemon.learn import LibxlKeys, read_libxl_keys
from rmrrd.daemon.lifecycle import SetupKind, SetupOutcome, SetupResult, ends_placements, setup_kind
from rmrrd.xenstore.ops import gather, list_tree, read_value, read_values, rm_quietly


@dataclass(frozen=True, slots=True)
class SetupInput:
    """One domain's request as read in one transaction, values as they are:
    :func:`decide` decodes them, so a value that is not text is an answer naming
    its key, never a setup that fails."""

    generation: bytes
    scalars: Mapping[str, bytes]
    """The keys of :data:`SCALAR_KEYS` present."""
    lists: Mapping[str, Mapping[str, bytes]]
    """Each list of :data:`DEVICE_LISTS`, {n: value}."""

    @property
    def generation_text(self) -> str:
        return decode_generation(self.generation)


async def read_setup_input(tx: Transaction, domid: int) -> SetupInput | None:
    """The domain's request keys, or None when it has written no ``request`` yet."""
    base = rdm_path(domid)
    generation = await read_value(tx, f"{base}/{REQUEST_KEY}")
    if generation is None:
        return None
    scalars = await gather(lambda key: read_value(tx, f"{base}/{key}"), SCALAR_KEYS)
    lists = await gather(lambda key: read_values(tx, f"{base}/{key}"), DEVICE_LISTS)
    return SetupInput(generation, {key: value for key, value in zip(SCALAR_KEYS, scalars) if value is not None},
                      dict(zip(DEVICE_LISTS, lists)))


def _text(key: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{key}: not valid UTF-8 (byte {exc.start} of {len(raw)})") from None


def decide(given: SetupInput, defaults: RequestDefaults, host: Inventory,
           peers: Mapping[str, Inventory]) -> SetupOutcome:
    """Plan the domain, or say which key made its request invalid (pure).

    Never raises for anything the toolstack wrote: a value that is not UTF-8 or
    not in its key's grammar is an outcome whose error starts with the key.
    """
    try:
        _text(REQUEST_KEY, given.generation)  # echoed as it is, but it must be text
        text = {key: _text(key, raw) for key, raw in given.scalars.items()}
        lists = {name: {n: _text(f"{name}/{n}", raw) for n, raw in entries.items()}
                 for name, entries in given.lists.items()}
        if "memory" not in text:
            raise InputError("memory: missing (guest RAM in MiB is required)")
        request = parse_domain_request(
            text["memory"], text.get("mmio_hole"), text.get("config"), text.get("mem_boundary"),
            pci=lists["pci"], hotplug=lists["hotplug"], migrate=lists["migrate"], reserve=lists["reserve"],
            defaults=defaults, videoram=text.get("videoram"), hap=text.get("hap"), bios=text.get("bios"))
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
    await tx.set_perms(base, guest_perms(domid, ANSWER_PERMS))
    dirs = {query_path(domid): guest_perms(domid, QUERY_PERMS), reply_path(domid): guest_perms(domid, ANSWER_PERMS)}
    await gather(tx.mkdir, dirs)
    await gather(lambda path: tx.set_perms(path, dirs[path]), dirs)
    entries = answer_entries(generation, outcome.plan, outcome.error, outcome.learned)
    await gather(lambda entry: tx.write(f"{base}/{entry[0]}", encode_value(entry[1])), entries)


async def grant_answer(tx: Transaction, domid: int) -> int:
    """Set the permissions of every node of the answer again, inside ``tx``; how many.

    For a domain introduced after its answer was written: C xenstored gave its
    permission entries nothing (see :class:`rmrrd.daemon.lifecycle.GrantAnswer`).
    The guest's own query nodes are its to keep and are left alone.
    """
    base, queries = answer_path(domid), query_path(domid)
    if not await tx.exists(base):
        return 0  # gone meanwhile (a release, a re-created domain): nothing to grant
    nodes = [base] + [f"{base}/{rel}" for rel in await list_tree(tx, base, prune={queries[len(base) + 1:]})]
    await gather(lambda path: tx.set_perms(path, guest_perms(domid, QUERY_PERMS if path == queries else ANSWER_PERMS)),
                 nodes)
    return len(nodes)


async def read_answer_generation(tx: Transaction, domid: int) -> str | None:
    """The generation of the complete answer already in xenstore, if any."""
    base = answer_path(domid)
    generation, status = await gather(lambda key: read_value(tx, f"{base}/{key}"), ("generation", "status"))
    return decode_generation(generation) if status is not None and generation is not None else None


async def run_setup(tx: Transaction, domid: int, known: str | None,
                    decide_for: Callable[[SetupInput], SetupOutcome],
                    learn_for: Callable[[LibxlKeys], tuple[str, SetupOutcome]]) -> SetupResult:
    """One setup inside ``tx``: what :func:`setup_kind` says, carried out.

    ``known`` is the generation the daemon answered before (None: none);
    ``decide_for`` plans a request against the inventories of the moment, and
    ``learn_for`` a domain libxl built without one (:mod:`rmrrd.daemon.learn`).  May
    run several times (``run_transaction`` retries it), so it only touches ``tx``.
    """
    given = await read_setup_input(tx, domid)
    learned: SetupOutcome | None = None
    if given is not None:
        generation = given.generation_text
    else:
        described = await read_libxl_keys(tx, domid)
        if described is None:
            kind: SetupKind = "waiting" if await tx.exists(f"{LIBXL_ROOT}/{domid}") else "absent"
            return SetupResult(kind, answer_present=await tx.exists(answer_path(domid)))
        generation, learned = learn_for(described)
    answered = await read_answer_generation(tx, domid)
    kind = setup_kind(generation, answered, known)
    if kind == "current":
        return SetupResult(kind, generation, learned)
    outcome = decide_for(given) if given is not None else learned
    assert outcome is not None  # learned when there is no request
    if kind != "relearned":
        await write_answer(tx, domid, generation, outcome)
    if ends_placements(kind, outcome):
        await rm_quietly(tx, allocated_path(domid))
    return SetupResult(kind, generation, outcome)
