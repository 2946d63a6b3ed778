"""Every xenstore key and value rmrrd reads or writes, with typed encode and decode.

The one place the layout of ``docs/xenstore-schema.md`` is written down: paths are
built here, watch events are classified here, and each value rmrrd writes has its
encoder here and its decoder beside it, so the daemon, the ``rmrrd`` CLI, the demo
and the tests all speak the same protocol and none of them splits a path or formats
a value itself.  Pure: strings in, strings out, no xenstore connection (reading and
writing is :mod:`rmrrd.daemon` and :mod:`rmrrd.xenstore.ops`).

Sections, in the order of the schema page: the domain's setup request (read), its
answer (written), guest queries, toolstack checks and their results, the records
rmrrd keeps for a restart, the daemon's status.  Decoders raise
:class:`~rmrrd.errors.InputError` naming what was wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, NamedTuple

from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import Range, parse_range
from rmrrd.core.xlcfg import DeviceSpec, parse_device_spec
from rmrrd.errors import InputError
from rmrrd.xenstore.wire import DOMID_FIRST_RESERVED, Perm

if TYPE_CHECKING:  # only for annotations: the toolstack's short commands need the keys, not the planner
    from rmrrd.core.planner import Plan

# --- where things live ----------------------------------------------------------------------

LIBXL_ROOT = "/libxl"
TOOL_ROOT = "/tool/rmrrd"
REQUEST_ROOT = f"{TOOL_ROOT}/request"
RESULT_ROOT = f"{TOOL_ROOT}/result"
ASSIGNED_ROOT = f"{TOOL_ROOT}/assigned"
ALLOCATED_ROOT = f"{TOOL_ROOT}/allocated"
STATUS_KEY = f"{TOOL_ROOT}/status"
VERSION_KEY = f"{TOOL_ROOT}/version"
PID_KEY = f"{TOOL_ROOT}/pid"

_DOMID_RE = re.compile(r"0|[1-9][0-9]{0,4}")
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def parse_domid(text: str) -> int | None:
    """A domain id as written in a path component, or None if it is not one."""
    if _DOMID_RE.fullmatch(text) is None:
        return None
    domid = int(text)
    return domid if domid < DOMID_FIRST_RESERVED else None  # larger ids are not guests


def is_valid_id(text: str) -> bool:
    """Whether a query or request id is safe to use as a path component."""
    return _ID_RE.fullmatch(text) is not None


def rdm_path(domid: int) -> str:
    """The toolstack's setup request for ``domid``."""
    return f"{LIBXL_ROOT}/{domid}/rdm"


def answer_path(domid: int) -> str:
    """rmrrd's answer to it, readable by the guest."""
    return f"/local/domain/{domid}/rmrr"


def query_path(domid: int, name: str | None = None) -> str:
    """The guest's query node (``name`` None), or one query in it."""
    base = f"{answer_path(domid)}/query"
    return base if name is None else f"{base}/{name}"


def reply_path(domid: int, name: str | None = None) -> str:
    """rmrrd's reply node (``name`` None), or one reply in it."""
    base = f"{answer_path(domid)}/reply"
    return base if name is None else f"{base}/{name}"


# --- what libxl writes, read to learn the domains it created (docs/xenstore-schema.md) --------

PCI_BACKEND_ROOT = "/local/domain/0/backend/pci"
"""libxl's PCI backend directories (``libxl__device_pci_add_xenstore``), one per domain."""
LIBXL_JSON = "userdata-d.{domid}.{uuid}.libxl-json"
"""The file, under libxl's directory (``/var/lib/xen``), where libxl keeps a domain's
configuration (``libxl__userdata_path``, ``libxl__set_domain_configuration``)."""


def libxl_type_path(domid: int) -> str:
    """``hvm``, ``pv`` or ``pvh``: written by libxl when it makes the domain."""
    return f"{LIBXL_ROOT}/{domid}/type"


def domain_keys(domid: int) -> dict[str, str]:
    """The keys libxl writes under the domain's home before introducing it
    (``libxl__build_post``, ``libxl__domain_build``), by the name rmrrd uses."""
    home = f"/local/domain/{domid}"
    return {"static_max": f"{home}/memory/static-max", "target": f"{home}/memory/target",
            "videoram": f"{home}/memory/videoram", "mmio_hole": f"{home}/platform/mmio_hole_size",
            "device_model": f"{home}/platform/device-model", "vm": f"{home}/vm"}


def pci_backend_path(domid: int) -> str:
    """The domain's PCI backend: ``dev-<n>`` the device, ``opts-<n>`` its options."""
    return f"{PCI_BACKEND_ROOT}/{domid}/0"


def pci_backend_domid(path: str) -> int | None:
    """The domain a watch event under :data:`PCI_BACKEND_ROOT` concerns, if any."""
    if not path.startswith(PCI_BACKEND_ROOT + "/"):
        return None
    return parse_domid(path[len(PCI_BACKEND_ROOT) + 1:].split("/", 1)[0])


def request_path(req_id: str) -> str:
    """One toolstack check request."""
    return f"{REQUEST_ROOT}/{req_id}"


def result_path(req_id: str) -> str:
    """The result of one toolstack check."""
    return f"{RESULT_ROOT}/{req_id}"


def assigned_path(domid: int) -> str:
    """Devices accepted by assign/hotplug checks, kept so a restarted daemon knows them."""
    return f"{ASSIGNED_ROOT}/{domid}"


def allocated_path(domid: int) -> str:
    """A guest's ``alloc`` placements, kept so a restarted daemon never hands one out twice.

    Under ``/tool`` (dom0's), not under the guest's ``rmrr/``: the guest must not be
    able to forge or drop them.
    """
    return f"{ALLOCATED_ROOT}/{domid}"


def guest_perms(domid: int, access: str) -> list[Perm]:
    """Owned by dom0, nobody else may touch it, except ``domid`` with ``access``."""
    return [Perm(0, "n")] if domid == 0 else [Perm(0, "n"), Perm(domid, access)]


ANSWER_PERMS = "r"
"""The guest reads its answer (and its ``reply/``) ..."""
QUERY_PERMS = "b"
"""... and creates its queries under ``query/``, which it then owns."""


# --- watch events under /libxl --------------------------------------------------------------

class LibxlEvent(NamedTuple):
    """What a watch event under ``/libxl`` is about.

    ``request`` is True when the event names the ``request`` key itself (the trigger
    of a setup); ``domid`` is None for the event on ``/libxl`` (initial event).
    """

    domid: int | None
    request: bool
    domain_node: bool


def classify_libxl_path(path: str) -> LibxlEvent | None:
    """Classify a path under ``/libxl``; None for paths rmrrd does not care about."""
    if path == LIBXL_ROOT:
        return LibxlEvent(None, request=False, domain_node=False)
    parts = path.split("/")
    if len(parts) < 3 or parts[1] != "libxl":
        return None
    domid = parse_domid(parts[2])
    if domid is None:
        return None
    rest = parts[3:]
    return LibxlEvent(domid, request=rest == ["rdm", "request"], domain_node=not rest)


# --- the setup request (read) ------------------------------------------------------------------

REQUEST_KEY = "request"
"""Under :func:`rdm_path`: the generation; written last, or in the same transaction."""
SCALAR_KEYS = ("memory", "mmio_hole", "config", "mem_boundary", "videoram", "hap", "bios")
"""The single-valued keys under :func:`rdm_path`, in the order setup reads them."""
DEVICE_LISTS = ("pci", "hotplug", "migrate", "reserve")
"""The numbered lists under :func:`rdm_path`."""


def decode_generation(raw: bytes) -> str:
    """A ``request`` value as rmrrd echoes it in the answer's ``generation``.

    Any bytes, kept byte for byte (what is not UTF-8 as surrogate escapes, which
    :func:`encode_value` turns back into the same bytes), so a toolstack waiting
    for its own value always sees it, even one rmrrd answers with an error.
    """
    return raw.decode("utf-8", "surrogateescape")


def encode_value(text: str) -> bytes:
    """A value as rmrrd writes it: UTF-8, a generation's escapes back to its bytes."""
    return text.encode("utf-8", "surrogateescape")


def shown(text: str) -> str:
    """``text`` fit for a log line: anything not printable ASCII escaped."""
    return encode_value(text).decode("ascii", "backslashreplace") if not text.isascii() else text


def request_entries(keys: Mapping[str, str], generation: str) -> list[tuple[str, str]]:
    """A setup request as the toolstack writes it, relative to :func:`rdm_path`:
    its keys (``memory``, ``pci/0``...), then ``request`` last."""
    return [*keys.items(), (REQUEST_KEY, generation)]


# --- the answer (written) ------------------------------------------------------------------------

OWNED_ANSWER_KEYS = ("generation", "status", "error", "origin", "type", "lowmem_end", "highmem_end", "region",
                     "e820")
"""The answer's keys under :func:`answer_path`: the daemon rewrites these, never
``query/`` (the guest's) or ``reply/`` (answers to queries)."""
REGION_FIELDS = ("range", "source", "conflict", "action")
"""The keys of each ``region/<n>``."""


ORIGIN_LEARNED = "learned"
"""``origin`` of an answer rmrrd computed from what libxl wrote, not from a request."""


def answer_entries(generation: str, plan: Plan | None, error: str | None,
                   learned: str | None = None) -> list[tuple[str, str]]:
    """The keys of a setup answer, relative to :func:`answer_path`, in writing order.

    ``plan`` is None when the request itself was invalid: the answer is then only
    ``status=error`` with the reason.  Absent values (``error`` of a ready plan) are
    left out rather than written empty.  ``learned`` is the guest type of a domain
    learned from libxl: the answer says ``origin=learned`` and ``type``, and a PV or
    PVH guest's has no layout.
    """
    origin = [] if learned is None else [("origin", ORIGIN_LEARNED), ("type", learned)]
    if plan is None:
        return [("generation", generation), ("status", "error"), *origin, ("error", error or "invalid request")]
    answer = plan.to_dict()
    entries = [("generation", generation), ("status", plan.status), *origin]
    if plan.error:
        entries.append(("error", plan.error))
    if plan.guest != "hvm":
        return entries
    entries += [("lowmem_end", answer["lowmem_end"]), ("highmem_end", answer["highmem_end"])]
    for n, region in enumerate(answer["regions"]):
        entries += [(f"region/{n}/{key}", region[key]) for key in REGION_FIELDS]
    entries += [(f"e820/{n}", entry) for n, entry in enumerate(answer["e820"])]
    return entries


class AnswerRegion(NamedTuple):
    """One ``region/<n>``: its range and why it is there, as written."""

    range: Range
    source: str
    conflict: str
    action: str


class Answer(NamedTuple):
    """A setup answer as a toolstack or a guest reads it back."""

    generation: str
    status: Literal["ready", "error"]
    error: str | None
    lowmem_end: int | None
    highmem_end: int | None
    regions: tuple[AnswerRegion, ...]
    e820: tuple[str, ...]
    origin: str | None = None
    """``learned`` for a domain rmrrd learned from libxl; None for a request's answer."""


def decode_answer(entries: Mapping[str, str]) -> Answer:
    """The answer from its keys relative to :func:`answer_path` (``query/`` and
    ``reply/`` may be there too and are ignored)."""
    def number(key: str) -> int | None:
        text = entries.get(key)
        if text is None:
            return None
        if re.fullmatch(r"0x[0-9a-f]+", text) is None:
            raise InputError(f"{key}: {text[:40]!r} is not a hexadecimal address")
        return int(text, 16)

    if entries.get("status") not in ("ready", "error") or "generation" not in entries:
        raise InputError(f"not a complete answer: status {entries.get('status')!r}, "
                         f"generation {entries.get('generation')!r}")
    status: Literal["ready", "error"] = "ready" if entries["status"] == "ready" else "error"
    regions = []
    for n in _numbered(entries, "region"):
        try:
            fields = [entries[f"region/{n}/{key}"] for key in REGION_FIELDS]
        except KeyError as exc:
            raise InputError(f"region/{n}: no {exc.args[0].rsplit('/', 1)[1]}") from None
        regions.append(AnswerRegion(parse_range(fields[0]), *fields[1:]))
    return Answer(entries["generation"], status, entries.get("error"), number("lowmem_end"),
                  number("highmem_end"), tuple(regions),
                  tuple(entries[f"e820/{n}"] for n in _numbered(entries, "e820")), entries.get("origin"))


def _numbered(entries: Mapping[str, str], prefix: str) -> list[int]:
    """The ``n`` of every ``prefix/<n>...`` key, in order."""
    found = {int(key.split("/")[1]) for key in entries
             if key.startswith(prefix + "/") and key.split("/")[1].isdigit()}
    return sorted(found)


# --- toolstack checks: the request line ---------------------------------------------------------

Op = Literal["assign", "hotplug", "migrate"]
OPS: tuple[Op, ...] = ("assign", "hotplug", "migrate")
MAX_REQUEST_LENGTH = 4096
_WORD_RE = re.compile(r"([a-z_]+)=(\S+)")
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


class ToolRequest(NamedTuple):
    """One ``/tool/rmrrd/request/<id>`` value, parsed."""

    op: Op
    domid: int
    devices: tuple[DeviceSpec, ...]
    target: str | None


def parse_request(text: str) -> ToolRequest:
    """Parse a request line, e.g. ``op=hotplug domid=1 device=0000:00:14.0,rdm_policy=relaxed``.

    One line of space-separated ``key=value`` words; ``device`` may repeat (only for
    ``migrate``); every other key appears once.  Raises :class:`InputError` naming
    the word that is wrong: its message becomes the ``fail`` reason.
    """
    if len(text) > MAX_REQUEST_LENGTH:
        raise InputError(f"request is {len(text)} bytes, longer than {MAX_REQUEST_LENGTH}")
    words: dict[str, list[str]] = {}
    for word in text.split():
        match = _WORD_RE.fullmatch(word)
        if match is None:
            raise InputError(f"malformed word {word[:40]!r}: expected key=value")
        words.setdefault(match[1], []).append(match[2])
    unknown = sorted(set(words) - {"op", "domid", "device", "target"})
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r}: expected op, domid, device, target")
    op = _single(words, "op")
    if op not in OPS:
        raise InputError(f"op={op[:40]!r} is not one of {', '.join(OPS)}")
    domid = parse_domid(_single(words, "domid"))
    if domid is None:
        raise InputError(f"domid={words['domid'][0][:40]!r} is not a domain id")
    if len(words.get("target", [])) > 1:
        raise InputError("target given more than once")
    devices, target = parse_check(op, words.get("device", []), words["target"][0] if "target" in words else None)
    return ToolRequest(op, domid, devices, target)


def parse_check(op: Op, devices: Sequence[str], target: str | None) -> tuple[tuple[DeviceSpec, ...], str | None]:
    """A check's devices and target, by the rules of the request line (whoever checks:
    the daemon, or ``rmrrd check --xl-config`` without one).

    ``assign`` and ``hotplug`` take exactly one device and no target; ``migrate`` any
    number of devices and at most one target, a host name.  Raises :class:`InputError`
    naming what is wrong.
    """
    specs = tuple(parse_device_spec(spec) for spec in devices)
    if target is not None and _HOST_RE.fullmatch(target) is None:
        raise InputError(f"target={target[:40]!r} is not a host name")
    if op != "migrate":
        if target is not None:
            raise InputError(f"op={op} takes no target")
        if len(specs) != 1:
            raise InputError(f"op={op} needs exactly one device=SPEC, got {len(specs)}")
    return specs, target


def _single(words: dict[str, list[str]], key: str) -> str:
    values = words.get(key)
    if not values:
        raise InputError(f"missing {key}=")
    if len(values) > 1:
        raise InputError(f"{key} given more than once")
    return values[0]


def format_request(op: Op, domid: int, devices: tuple[str, ...] = (), target: str | None = None) -> str:
    """The request line :func:`parse_request` reads (what ``rmrrd check`` writes)."""
    words = [f"op={op}", f"domid={domid}"]
    if target is not None:
        words.append(f"target={target}")
    words += [f"device={device}" for device in devices]
    return " ".join(words)


# --- toolstack checks: the result ------------------------------------------------------------------

Verdict = Literal["ok", "warn", "fail"]


class Result(NamedTuple):
    """``/tool/rmrrd/result/<id>``: the verdict, why, each conflict, and for a
    ``migrate`` without a target the peers ranked best first."""

    verdict: Verdict
    reason: str
    conflicts: tuple[str, ...] = ()
    ranking: tuple[str, ...] = ()


def result_entries(result: Result) -> list[tuple[str, str]]:
    """The keys of a result, relative to :func:`result_path`."""
    entries = [("verdict", result.verdict), ("reason", result.reason)]
    entries += [(f"conflict/{n}", conflict) for n, conflict in enumerate(result.conflicts)]
    entries += [(f"rank/{n}", line) for n, line in enumerate(result.ranking)]
    return entries


def decode_result(entries: Mapping[str, str]) -> Result:
    """A result from its keys relative to :func:`result_path`."""
    verdict = entries.get("verdict")
    if verdict not in ("ok", "warn", "fail"):
        raise InputError(f"verdict {verdict!r} is not ok, warn or fail")
    return Result(verdict, entries.get("reason", ""),  # type: ignore[arg-type]  # checked above
                  tuple(entries[f"conflict/{n}"] for n in _numbered(entries, "conflict")),
                  tuple(entries[f"rank/{n}"] for n in _numbered(entries, "rank")))


# --- records rmrrd keeps for a restart -----------------------------------------------------------

def attachment_entry(bdf: Bdf, op: str) -> tuple[str, str]:
    """A device an ``assign``/``hotplug`` check accepted, relative to :func:`assigned_path`.

    The key is the BDF with ``:`` and ``.`` turned into ``-`` (not allowed in paths).
    """
    return str(bdf).replace(":", "-").replace(".", "-"), f"{bdf} {op}"


def decode_attachment(value: str) -> tuple[Bdf, str]:
    """``BDF OP`` back; InputError for a malformed record."""
    device, _, op = value.partition(" ")
    if op not in ("assign", "hotplug"):
        raise InputError(f"attachment {value[:40]!r}: expected 'BDF assign' or 'BDF hotplug'")
    return Bdf.parse(device), op


def allocation_entry(rng: Range) -> tuple[str, str]:
    """One ``alloc`` placement, relative to :func:`allocated_path`: keyed by its start."""
    return f"{rng.start:#x}", str(rng)


def decode_allocation(value: str) -> Range:
    """``START-END`` back; InputError for a malformed record."""
    return parse_range(value)


# --- the daemon's status ---------------------------------------------------------------------------

READY, STOPPED = "ready", "stopped"


def status_entries(version: str, pid: int) -> list[tuple[str, str]]:
    """What a daemon writes once its first reconciliation is done."""
    return [(STATUS_KEY, READY), (VERSION_KEY, version), (PID_KEY, str(pid))]

