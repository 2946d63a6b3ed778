"""Guest queries as a pure function: untrusted bytes in, one reply out.

A guest (hvmloader or a guest tool) writes ``rmrr/query/<id>``; the daemon reads the
value, applies the per-domain rate limit, and calls :func:`handle_query` with the
domain's :class:`~rmrrd.core.planner.Plan` and its :class:`Allocations`.  Everything here
is sans-IO: no xenstore, no clock, so each rule is testable on its own.

The guest is untrusted, so the parser is strict and bounded (``docs/guest-queries.md``
has the grammar):

* a value longer than ``max_length`` is refused before anything is decoded;
* only printable ASCII tokens separated by single spaces are accepted, checked with
  ``re.fullmatch`` (a ``match`` with ``$`` would let a trailing newline through);
* numbers are ``0x`` hexadecimal of at most 16 digits, so no guest can make rmrrd
  convert an enormous integer or echo a long token;
* an error message quotes at most :data:`QUOTE_MAX` characters of guest text, with
  :func:`ascii`, so control characters never reach a reply or a log line.

Every outcome is a :class:`QueryResult`; nothing a guest writes raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from rmrrd.errors import InputError
from rmrrd.core.planner import Plan
from rmrrd.core.ranges import PAGE_SIZE, Range, RangeSet, parse_range

Kind = Literal["e820", "regions", "check", "alloc", "free", "other"]
Outcome = Literal["ok", "error", "rejected"]

HOLE_END = 0xFC000000
"""End of the MMIO hole hvmloader places BARs in: ``pci_mem_end = RESERVED_MEMBASE``
(``tools/firmware/hvmloader/pci.c``; ``config.h``: where the firmware's special pages
begin), called ``PCI_MEM_END`` in releases before 4.17."""

MAX_REPLY_BYTES = 2048 - 20 - 8 * 5
"""The longest reply value: it must fit a xenstore node a guest could own.  C
xenstored (``hard_quotas`` in ``tools/xenstored/domain.c``, mirrored by our simulated
store) limits a node record to 2048 bytes: a 20-byte header, 8 bytes for each of at
most 5 permission entries, then the value.  A longer ``e820``/``regions`` answer is
refused with ``E2BIG`` pointing at the per-entry keys."""

QUOTE_MAX = 40
"""How many characters of guest text an error message may quote."""

_TOKENS_RE = re.compile(rb"[!-~]+(?: [!-~]+)*")
_BAD_BYTE_RE = re.compile(rb"[^ -~]")
_HEX_RE = re.compile(r"0x[0-9a-fA-F]{1,16}")
# Two bounded hexadecimal numbers: parse_range may then quote the token whole.
_RANGE_TOKEN_RE = re.compile(r"0x[0-9a-fA-F]{1,16}-0x[0-9a-fA-F]{1,16}")
_OPTION_RE = re.compile(r"([a-z]+)=(.*)")


class Allocations:
    """One domain's ``alloc`` results, kept until ``free`` or the domain's end.

    Owned by the daemon's domain state machine (one per domain), which applies what
    :func:`handle_query` decided (:meth:`apply`).  ``cap`` bounds how many a guest
    may hold at once (``limits.max_allocations``), so a guest cannot make rmrrd's
    memory grow without bound.
    """

    __slots__ = ("_cap", "_ranges")

    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise InputError(f"allocation cap {cap} is negative")
        self._cap = cap
        self._ranges: list[Range] = []

    def __len__(self) -> int:
        return len(self._ranges)

    @property
    def cap(self) -> int:
        return self._cap

    @property
    def full(self) -> bool:
        return len(self._ranges) >= self._cap

    def ranges(self) -> tuple[Range, ...]:
        """The allocations in address order."""
        return tuple(self._ranges)

    def as_set(self) -> RangeSet:
        return RangeSet(self._ranges)

    def add(self, rng: Range) -> None:
        """Remember an allocation; the caller has found it clear of the others."""
        self._ranges.append(rng)
        self._ranges.sort()

    def remove(self, rng: Range) -> bool:
        """Forget exactly ``rng``; False when it is not an allocation."""
        try:
            self._ranges.remove(rng)
        except ValueError:
            return False
        return True

    def __contains__(self, rng: object) -> bool:
        return rng in self._ranges

    def apply(self, result: QueryResult) -> None:
        """Carry out the allocation or release a query's result decided."""
        if result.allocated is not None:
            self.add(result.allocated)
        if result.freed is not None:
            self.remove(result.freed)


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The answer to one query and how the metrics should count it."""

    reply: str
    """The whole value for ``reply/<id>``: ``ok ...`` or ``error CODE message``."""
    kind: str
    """``e820``, ``regions``, ``check``, ``alloc``, ``free`` or ``other``."""
    outcome: str
    """``ok``, ``error`` (a valid query that cannot be satisfied) or ``rejected``
    (malformed, too long, or over the allocation cap)."""
    allocated: Range | None = None
    """The range an ``alloc`` hands out: the caller records it, then applies it."""
    freed: Range | None = None
    """The allocation a ``free`` gives back."""


def _ok(kind: Kind, text: str = "", *, allocated: Range | None = None, freed: Range | None = None) -> QueryResult:
    return QueryResult(f"ok {text}" if text else "ok", kind, "ok", allocated, freed)


def _error(kind: Kind, code: str, message: str, outcome: Outcome = "error") -> QueryResult:
    return QueryResult(f"error {code} {message}", kind, outcome)


def quote(text: str) -> str:
    """Guest text for a message: at most :data:`QUOTE_MAX` characters, escaped."""
    if len(text) > QUOTE_MAX:
        return ascii(text[:QUOTE_MAX]) + "..."
    return ascii(text)


# --- parsing -----------------------------------------------------------------------

def _tokens(raw: bytes, max_length: int) -> list[str]:
    """Split a query into tokens, refusing anything but single-spaced printable ASCII."""
    if len(raw) > max_length:
        raise InputError(f"query is {len(raw)} bytes, longer than the limit of {max_length}")
    if _TOKENS_RE.fullmatch(raw) is None:
        if not raw:
            raise InputError("empty query")
        bad = _BAD_BYTE_RE.search(raw)
        if bad is not None:
            raise InputError(f"byte {bad.group()[0]:#04x} at offset {bad.start()} is not printable ASCII")
        raise InputError("tokens must be separated by single spaces, with none leading or trailing")
    return raw.decode("ascii").split(" ")


def _hex(what: str, token: str) -> int:
    if _HEX_RE.fullmatch(token) is None:
        raise InputError(f"{what} {quote(token)} is not a hexadecimal number 0x... of at most 16 digits")
    return int(token, 16)


def _range(verb: str, token: str) -> Range:
    if _RANGE_TOKEN_RE.fullmatch(token) is None:
        raise InputError(f"{verb}: {quote(token)} is not START-END, two hexadecimal numbers 0x... "
                         "of at most 16 digits, e.g. 0xa0000000-0xa0003fff")
    try:
        return parse_range(token)
    except InputError as exc:
        # The token is short (checked above), so parse_range's message stays bounded.
        raise InputError(f"{verb}: {exc}") from None


def _arity(verb: str, args: Sequence[str], low: int, high: int, usage: str) -> None:
    if not low <= len(args) <= high:
        raise InputError(f"{verb} takes {usage}, got {len(args)} argument{'s' if len(args) != 1 else ''}")


@dataclass(frozen=True, slots=True)
class E820Query:
    kind: ClassVar[Kind] = "e820"

    def answer(self, plan: Plan, allocations: Allocations) -> QueryResult:
        entries = [str(entry) for entry in plan.e820]
        return _listing(self.kind, entries, f"read rmrr/e820/0 to rmrr/e820/{len(entries) - 1}")


@dataclass(frozen=True, slots=True)
class RegionsQuery:
    kind: ClassVar[Kind] = "regions"

    def answer(self, plan: Plan, allocations: Allocations) -> QueryResult:
        # The same ranges, in the same order, as the answer's region/<n>/range keys.
        ranges = [str(region.range) for region in plan.regions]
        if not ranges:
            return _ok(self.kind, "none")
        return _listing(self.kind, ranges, f"read rmrr/region/<n>/range for n from 0 to {len(ranges) - 1}")


def _listing(kind: Kind, items: Sequence[str], where: str) -> QueryResult:
    """``ok`` with the items joined by commas, or ``E2BIG`` saying where they are."""
    result = _ok(kind, ",".join(items))
    if len(result.reply) <= MAX_REPLY_BYTES:
        return result
    return _error(kind, "E2BIG", f"{len(items)} entries are too long for one reply: {where}")


@dataclass(frozen=True, slots=True)
class CheckQuery:
    """``check START-END``: is the range clear of everything the guest must not map over?"""

    range: Range
    kind: ClassVar[Kind] = "check"

    def answer(self, plan: Plan, allocations: Allocations) -> QueryResult:
        kinds: list[str] = []
        if plan.reserved.overlaps(self.range):
            kinds.append("reserved")
        kinds += plan.conflict_kinds(self.range)
        if allocations.as_set().overlaps(self.range):
            kinds.append("allocated")
        return _ok(self.kind, "overlaps " + " ".join(kinds) if kinds else "clear")


@dataclass(frozen=True, slots=True)
class AllocQuery:
    """``alloc SIZE [align=A] [below=ADDR]``: room for a BAR or an OpRegion in the hole."""

    size: int
    align: int
    below: int | None
    kind: ClassVar[Kind] = "alloc"

    def answer(self, plan: Plan, allocations: Allocations) -> QueryResult:
        if allocations.full:
            return _error(self.kind, "EDQUOT", f"this domain holds {len(allocations)} allocations, "
                          f"the limit is {allocations.cap}; free one first", "rejected")
        found = find_room(mmio_hole_free(plan, allocations), self.size, self.align,
                          HOLE_END if self.below is None else min(self.below, HOLE_END))
        if found is None:
            below = "" if self.below is None else f" ending at or below {self.below:#x}"
            return _error(self.kind, "ENOSPC", f"no room for {self.size:#x} bytes aligned to "
                          f"{self.align:#x}{below} in the MMIO hole {plan.lowmem_end:#x}-{HOLE_END - 1:#x}")
        return _ok(self.kind, str(found), allocated=found)


@dataclass(frozen=True, slots=True)
class FreeQuery:
    """``free START-END``: give back exactly one earlier allocation."""

    range: Range
    kind: ClassVar[Kind] = "free"

    def answer(self, plan: Plan, allocations: Allocations) -> QueryResult:
        if self.range in allocations:
            return _ok(self.kind, freed=self.range)
        return _error(self.kind, "ENOENT", f"{self.range} is not an allocation of this domain")


Query = E820Query | RegionsQuery | CheckQuery | AllocQuery | FreeQuery


def _parse_e820(args: Sequence[str]) -> Query:
    _arity("e820", args, 0, 0, "no arguments")
    return E820Query()


def _parse_regions(args: Sequence[str]) -> Query:
    _arity("regions", args, 0, 0, "no arguments")
    return RegionsQuery()


def _parse_check(args: Sequence[str]) -> Query:
    _arity("check", args, 1, 1, "one range START-END")
    return CheckQuery(_range("check", args[0]))


def _parse_free(args: Sequence[str]) -> Query:
    _arity("free", args, 1, 1, "one range START-END")
    return FreeQuery(_range("free", args[0]))


def _parse_alloc(args: Sequence[str]) -> Query:
    _arity("alloc", args, 1, 3, "SIZE [align=A] [below=ADDR]")
    size = _hex("alloc size", args[0])
    if size == 0 or size % PAGE_SIZE:
        raise InputError(f"alloc size {size:#x} is not a non-zero multiple of {PAGE_SIZE:#x}")
    options: dict[str, int] = {}
    for token in args[1:]:
        match = _OPTION_RE.fullmatch(token)
        if match is None or match[1] not in ("align", "below"):
            raise InputError(f"alloc option {quote(token)} is not align=A or below=ADDR")
        if match[1] in options:
            raise InputError(f"alloc option {match[1]} is given twice")
        options[match[1]] = _hex(f"alloc {match[1]}", match[2])
    # Default: the size rounded up to a power of two, a PCI BAR's natural alignment.
    align = options.get("align", 1 << (size - 1).bit_length())
    if align < PAGE_SIZE or align & (align - 1):
        raise InputError(f"alloc align {align:#x} is not a power of two of at least {PAGE_SIZE:#x}")
    return AllocQuery(size, align, options.get("below"))


_PARSERS: dict[str, tuple[Kind, Callable[[Sequence[str]], Query]]] = {
    "e820": ("e820", _parse_e820),
    "regions": ("regions", _parse_regions),
    "check": ("check", _parse_check),
    "alloc": ("alloc", _parse_alloc),
    "free": ("free", _parse_free),
}
"""Each verb with its metrics kind (the same word) and its argument parser."""


class MalformedQuery(InputError):
    """A query rmrrd refuses to parse; ``kind`` is its verb when that much was valid."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind: Kind = kind


def parse_query(raw: bytes, max_length: int) -> Query:
    """Parse one query value; raises :class:`MalformedQuery` with a bounded ASCII message."""
    try:
        verb, *args = _tokens(raw, max_length)
    except InputError as exc:
        raise MalformedQuery("other", str(exc)) from None
    if verb not in _PARSERS:
        raise MalformedQuery("other", f"unknown query {quote(verb)}: expected one of {', '.join(_PARSERS)}")
    kind, parser = _PARSERS[verb]
    try:
        return parser(args)
    except InputError as exc:
        raise MalformedQuery(kind, str(exc)) from None


# --- room in the MMIO hole -------------------------------------------------------------

def mmio_hole_free(plan: Plan, allocations: Allocations) -> RangeSet:
    """The part of the guest's MMIO hole below 4 GiB that ``alloc`` may hand out.

    The hole is where hvmloader puts BARs: from the end of low RAM
    (``hvm_info->low_mem_pgend``, i.e. ``plan.lowmem_end``) to :data:`HOLE_END`.  Reserved
    regions and earlier allocations are taken out.
    """
    if plan.lowmem_end >= HOLE_END:
        return RangeSet()
    return RangeSet([Range(plan.lowmem_end, HOLE_END)]) - plan.reserved - allocations.as_set()


def find_room(free: RangeSet, size: int, align: int, limit: int) -> Range | None:
    """The lowest ``align``-aligned range of ``size`` bytes in ``free`` ending by ``limit``.

    Lowest first is hvmloader's own order (``pci_setup`` in ``tools/firmware/hvmloader/
    pci.c``): it walks ``mem_resource.base`` upwards from the hole's start, aligns each
    BAR to its size, and when a BAR meets a reserved e820 entry (``find_next_rmrr``)
    moves past that entry and aligns again.  Answering the same way keeps rmrrd's
    choices where a guest tool reading hvmloader's code would expect them.
    """
    for free_range in free:
        if free_range.start >= limit:
            break
        start = -(-free_range.start // align) * align
        if start + size <= min(free_range.end, limit):
            return Range(start, start + size)
    return None


# --- the entry point ---------------------------------------------------------------------

def handle_query(raw: bytes, plan: Plan, allocations: Allocations, *, max_length: int) -> QueryResult:
    """Answer one guest query (docs/guest-queries.md); never raises for anything the guest wrote.

    Malformed queries are ``error EINVAL`` (outcome ``rejected``), checked before the
    plan's status so that a guest learns its syntax is wrong even on a failed domain.
    A domain whose setup failed (``status=error``) has no layout to answer from: every
    well-formed query gets ``error ENODEV``.  Nothing is changed: an ``alloc`` or
    ``free`` says in its result what to record and apply (:meth:`Allocations.apply`).
    """
    try:
        query = parse_query(raw, max_length)
    except MalformedQuery as exc:
        return _error(exc.kind, "EINVAL", str(exc), "rejected")
    if plan.status != "ready":
        return _error(query.kind, "ENODEV", "this domain's layout failed (status=error); "
                      "read rmrr/error for why")
    return query.answer(plan, allocations)
