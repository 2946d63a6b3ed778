"""RangeSet algebra, checked against plain Python sets of page numbers.

Small ranges (a few dozen pages) keep the reference sets tiny, so hypothesis can
explore many shapes: overlapping, touching, nested, identical, empty.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmrrd.errors import InputError
from rmrrd.core.ranges import PAGE_SIZE, Range, RangeSet, parse_range

pytestmark = pytest.mark.unit

_pages = st.tuples(st.integers(0, 40), st.integers(1, 8)).map(
    lambda t: Range(t[0] * PAGE_SIZE, (t[0] + t[1]) * PAGE_SIZE))
_sets = st.lists(_pages, max_size=8).map(RangeSet)


def _as_pages(rs: RangeSet) -> set[int]:
    return {page for r in rs for page in range(r.start // PAGE_SIZE, r.end // PAGE_SIZE)}


def _is_normal(rs: RangeSet) -> bool:
    """Sorted, and neither overlapping nor touching: the canonical form."""
    ranges = list(rs)
    return all(a.end < b.start for a, b in zip(ranges, ranges[1:]))


@given(st.lists(_pages, max_size=8))
def test_construction_covers_exactly_the_inputs(ranges: list[Range]) -> None:
    rs = RangeSet(ranges)
    assert _is_normal(rs)
    assert _as_pages(rs) == {p for r in ranges for p in range(r.start // PAGE_SIZE, r.end // PAGE_SIZE)}


@given(_sets, _sets)
def test_union_intersection_difference_match_page_sets(a: RangeSet, b: RangeSet) -> None:
    for result, expected in ((a | b, _as_pages(a) | _as_pages(b)),
                             (a & b, _as_pages(a) & _as_pages(b)),
                             (a - b, _as_pages(a) - _as_pages(b)),
                             (b - a, _as_pages(b) - _as_pages(a))):
        assert _is_normal(result)
        assert _as_pages(result) == expected
        assert result.size == len(expected) * PAGE_SIZE


@given(_sets, _sets)
def test_overlaps_agrees_with_intersection(a: RangeSet, b: RangeSet) -> None:
    assert a.overlaps(b) == bool(_as_pages(a) & _as_pages(b))
    for rng in b:
        assert a.overlaps(rng) == bool(_as_pages(a) & _as_pages(RangeSet([rng])))


@given(_sets, _sets)
def test_equal_addresses_mean_equal_sets(a: RangeSet, b: RangeSet) -> None:
    assert (a == b) == (_as_pages(a) == _as_pages(b))
    if a == b:
        assert hash(a) == hash(b)


def test_touching_ranges_coalesce_and_iteration_is_sorted() -> None:
    rs = RangeSet([parse_range("0x3000-0x3fff"), parse_range("0x0-0xfff"), parse_range("0x1000-0x1fff")])
    assert [str(r) for r in rs] == ["0x0-0x1fff", "0x3000-0x3fff"]
    assert len(rs) == 2 and rs and not RangeSet()


def test_parse_range_rejects_what_it_must() -> None:
    with pytest.raises(InputError, match="not page granular"):
        parse_range("0xe0000-0xe0ffe")
    with pytest.raises(InputError, match="end is below start"):
        parse_range("0x2000-0xfff")
    with pytest.raises(InputError, match="expected START-END"):
        parse_range("e0000-effff")
