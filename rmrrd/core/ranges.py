"""Page-granular physical address ranges.

Internally a range is half-open, ``[start, end)``: lengths are ``end - start`` and
adjacency is ``a.end == b.start``, with no off-by-one.  The xenstore keys (and firmware:
an RMRR has an inclusive *limit*) speaks of inclusive ``START-END`` strings; those are
converted here, at the edge, by :func:`parse_range` and :meth:`Range.__str__`.
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

from rmrrd.errors import InputError

PAGE_SIZE = 0x1000
"""Reserved regions are 4 KiB granular."""

_RANGE_RE = re.compile(r"(0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)")
_MAX_ADDRESS = 1 << 64


class _RangeFields(NamedTuple):
    start: int
    end: int


class Range(_RangeFields):
    """A non-empty half-open range ``[start, end)`` of guest or host physical addresses.

    A value (docs/design.md, "Values"), ordered by start then end; an empty,
    reversed or beyond-64-bit range raises :class:`InputError` when made.
    """

    __slots__ = ()

    def __new__(cls, start: int, end: int) -> Range:
        if not 0 <= start < end <= _MAX_ADDRESS:
            raise InputError(f"invalid range [{start:#x}, {end:#x})")
        return super().__new__(cls, start, end)

    @classmethod
    def inclusive(cls, start: int, last: int) -> Range:
        """The range from ``start`` to ``last``, both included (an RMRR's base and limit)."""
        return cls(start, last + 1)

    @property
    def last(self) -> int:
        """The last address in the range (inclusive end)."""
        return self.end - 1

    @property
    def size(self) -> int:
        return self.end - self.start

    def is_page_aligned(self) -> bool:
        return self.start % PAGE_SIZE == 0 and self.end % PAGE_SIZE == 0

    def overlaps(self, other: Range) -> bool:
        return self.start < other.end and other.start < self.end

    def contains(self, other: Range) -> bool:
        return self.start <= other.start and other.end <= self.end

    def __str__(self) -> str:
        return f"{self.start:#x}-{self.last:#x}"


def parse_range(text: str) -> Range:
    """Parse an inclusive ``START-END`` string and insist that it is page granular.

    Non-granular input is rejected, never rounded: a toolstack
    that asks for ``0xe0000-0xe0fff`` and silently got a page more or less would not
    know it.
    """
    match = _RANGE_RE.fullmatch(text)
    if match is None:
        raise InputError(f"invalid range {text!r}: expected START-END in hexadecimal, e.g. 0xe0000-0xeffff")
    start, last = int(match[1], 16), int(match[2], 16)
    if last < start:
        raise InputError(f"invalid range {text!r}: end is below start")
    if last >= _MAX_ADDRESS:
        raise InputError(f"invalid range {text!r}: beyond 64-bit addresses")
    rng = Range.inclusive(start, last)
    if not rng.is_page_aligned():
        raise InputError(f"range {text!r} is not page granular: start and end+1 must be multiples of 0x1000")
    return rng


class RangeSet:
    """An immutable set of addresses kept as sorted, disjoint, coalesced ranges.

    Adjacent ranges are joined (``[0, 4K) + [4K, 8K)`` is one range), so two sets with
    the same addresses have the same ranges and compare equal.  Every operation is a
    linear merge of two sorted lists: ``O(n + m)``, never quadratic, because the
    planner feeds it tens of thousands of host regions.
    """

    __slots__ = ("_ranges",)

    _ranges: tuple[Range, ...]

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self._ranges = _coalesce(sorted(ranges))

    @classmethod
    def _from_normal(cls, ranges: list[Range]) -> RangeSet:
        # Results of the merges below are already sorted and coalesced: skip the sort.
        result = cls.__new__(cls)
        result._ranges = _coalesce(ranges)
        return result

    def __iter__(self) -> Iterator[Range]:
        return iter(self._ranges)

    def __len__(self) -> int:
        return len(self._ranges)

    def __bool__(self) -> bool:
        return bool(self._ranges)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self._ranges == other._ranges

    def __hash__(self) -> int:
        return hash(self._ranges)

    def __repr__(self) -> str:
        return f"RangeSet([{', '.join(str(r) for r in self._ranges)}])"

    @property
    def size(self) -> int:
        """How many addresses the set holds."""
        return sum(r.size for r in self._ranges)

    def union(self, other: RangeSet) -> RangeSet:
        return RangeSet._from_normal(list(heapq.merge(self._ranges, other._ranges)))

    def intersection(self, other: RangeSet) -> RangeSet:
        out: list[Range] = []
        mine, theirs = self._ranges, other._ranges
        i = j = 0
        while i < len(mine) and j < len(theirs):
            start = max(mine[i].start, theirs[j].start)
            end = min(mine[i].end, theirs[j].end)
            if start < end:
                out.append(Range(start, end))
            # Drop whichever range finishes first: it cannot meet anything further on.
            if mine[i].end <= theirs[j].end:
                i += 1
            else:
                j += 1
        return RangeSet._from_normal(out)

    def difference(self, other: RangeSet) -> RangeSet:
        out: list[Range] = []
        cuts = other._ranges
        j = 0
        for rng in self._ranges:
            start = rng.start
            # Skip cuts wholly before this range; they are before every later one too.
            while j < len(cuts) and cuts[j].end <= start:
                j += 1
            k = j
            while k < len(cuts) and cuts[k].start < rng.end:
                if cuts[k].start > start:
                    out.append(Range(start, cuts[k].start))
                start = max(start, cuts[k].end)
                k += 1
            if start < rng.end:
                out.append(Range(start, rng.end))
        return RangeSet._from_normal(out)

    __or__ = union
    __and__ = intersection
    __sub__ = difference

    def overlaps(self, other: Range | RangeSet) -> bool:
        """Whether any address is in both; a single range is looked up by bisection."""
        if isinstance(other, RangeSet):
            return bool(self.intersection(other))
        index = bisect.bisect_right(self._ranges, other.start, key=lambda r: r.start)
        # Only the range starting at or before other.start, and the next one, can meet it.
        return any(r.overlaps(other) for r in self._ranges[max(index - 1, 0):index + 1])


def _coalesce(ranges: Sequence[Range]) -> tuple[Range, ...]:
    """Join overlapping and touching neighbours of a start-sorted sequence."""
    out: list[Range] = []
    for rng in ranges:
        if out and rng.start <= out[-1].end:
            if rng.end > out[-1].end:
                out[-1] = Range(out[-1].start, rng.end)
        else:
            out.append(rng)
    return tuple(out)
