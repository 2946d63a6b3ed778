"""Where things live in xenstore (docs/xenstore-schema.md), as pure functions.

Every xenstore path the daemon reads or writes is built here, and every path that
arrives in a watch event is classified here, so the layout is written down once and
the I/O layer never splits strings itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: the toolstack's short commands need the paths, not the planner
    from rmrrd.planner import Plan

LIBXL_ROOT = "/libxl"
TOOL_ROOT = "/tool/rmrrd"
REQUEST_ROOT = f"{TOOL_ROOT}/request"
RESULT_ROOT = f"{TOOL_ROOT}/result"
ASSIGNED_ROOT = f"{TOOL_ROOT}/assigned"
ALLOCATED_ROOT = f"{TOOL_ROOT}/allocated"
STATUS_KEY = f"{TOOL_ROOT}/status"
VERSION_KEY = f"{TOOL_ROOT}/version"
PID_KEY = f"{TOOL_ROOT}/pid"

DEVICE_LISTS = ("pci", "hotplug", "migrate", "reserve")
"""The numbered lists under ``/libxl/<domid>/rdm/``."""

SCALAR_KEYS = ("memory", "mmio_hole", "config", "mem_boundary", "videoram", "hap", "bios")
"""The single-valued keys under ``/libxl/<domid>/rdm/``, in the order setup reads them."""

_DOMID_RE = re.compile(r"0|[1-9][0-9]{0,4}")
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
DOMID_MAX = 0x7FEF
"""DOMID_FIRST_RESERVED - 1 (xen/include/public/xen.h): larger ids are not guests."""


def parse_domid(text: str) -> int | None:
    """A domain id as written in a path component, or None if it is not one."""
    if _DOMID_RE.fullmatch(text) is None:
        return None
    domid = int(text)
    return domid if domid <= DOMID_MAX else None


def is_valid_id(text: str) -> bool:
    """Whether a query or request id is safe to use as a path component."""
    return _ID_RE.fullmatch(text) is not None


def rdm_path(domid: int) -> str:
    return f"{LIBXL_ROOT}/{domid}/rdm"


def answer_path(domid: int) -> str:
    return f"/local/domain/{domid}/rmrr"


def assigned_path(domid: int) -> str:
    """Devices accepted by assign/hotplug checks, kept so a restarted daemon knows them."""
    return f"{ASSIGNED_ROOT}/{domid}"


def allocated_path(domid: int) -> str:
    """A guest's ``alloc`` placements, kept so a restarted daemon never hands one out twice.

    Under ``/tool`` (dom0's), not under the guest's ``rmrr/``: the guest must not be
    able to forge or drop them.
    """
    return f"{ALLOCATED_ROOT}/{domid}"


def allocation_key(start: int) -> str:
    """The node of one allocation under :func:`allocated_path`: its start address."""
    return f"{start:#x}"


@dataclass(frozen=True, slots=True)
class LibxlEvent:
    """What a watch event under ``/libxl`` is about.

    ``request`` is True when the event names the ``request`` key itself (the trigger
    of a domain setup); ``domid`` is None for the event on ``/libxl`` (initial event).
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


OWNED_ANSWER_KEYS = ("generation", "status", "error", "lowmem_end", "highmem_end", "region", "e820")
"""The answer's keys under :func:`answer_path`: the daemon rewrites these, never
``query/`` (the guest's) or ``reply/`` (answers to queries)."""


def answer_entries(generation: str, plan: Plan | None, error: str | None) -> list[tuple[str, str]]:
    """The keys of a setup answer, relative to :func:`answer_path`, in writing order.

    ``plan`` is None when the request itself was invalid: the answer is then only
    ``status=error`` with the reason.  Absent values (``error`` of a ready plan) are
    left out rather than written empty.
    """
    if plan is None:
        return [("generation", generation), ("status", "error"), ("error", error or "invalid request")]
    answer = plan.to_dict()
    entries = [("generation", generation), ("status", plan.status)]
    if plan.error:
        entries.append(("error", plan.error))
    entries += [("lowmem_end", answer["lowmem_end"]), ("highmem_end", answer["highmem_end"])]
    for n, region in enumerate(answer["regions"]):
        entries += [(f"region/{n}/{key}", region[key]) for key in ("range", "source", "conflict", "action")]
    entries += [(f"e820/{n}", entry) for n, entry in enumerate(answer["e820"])]
    return entries
