"""Page-granular physical address ranges.

Internally a range is half-open, ``[start, end)``: lengths are ``end - start`` and
adjacency is ``a.end == b.start``, with no off-by-one.  The contract (and firmware:
an RMRR has an inclusive *limit*) speaks of inclusive ``START-END`` strings; those are
converted here, at the edge, by :func:`parse_range` and :meth:`Range.__str__`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rmrrd.errors import InputError

PAGE_SIZE = 0x1000
"""Reserved regions are 4 KiB granular (contract section 1)."""

_RANGE_RE = re.compile(r"(0x[0-9a-fA-F]+)-(0x[0-9a-fA-F]+)")
_ADDR_RE = re.compile(r"0x[0-9a-fA-F]+")
_MAX_ADDRESS = 1 << 64


@dataclass(frozen=True, order=True, slots=True)
class Range:
    """A non-empty half-open range ``[start, end)`` of guest or host physical addresses."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= _MAX_ADDRESS:
            raise InputError(f"invalid range [{self.start:#x}, {self.end:#x})")

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


def parse_address(text: str) -> int:
    """Parse a ``0x``-prefixed hexadecimal address, as the contract writes them."""
    if not _ADDR_RE.fullmatch(text):
        raise InputError(f"invalid address {text!r}: expected hexadecimal with 0x")
    return int(text, 16)


def parse_range(text: str) -> Range:
    """Parse an inclusive ``START-END`` string and insist that it is page granular.

    Non-granular input is rejected, never rounded (contract section 1): a toolstack
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
