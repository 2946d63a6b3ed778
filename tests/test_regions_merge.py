"""Merging reserved regions: ranges cover the inputs' union, no source or device lost."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import PAGE_SIZE, Range, RangeSet
from rmrrd.core.regions import ReservedRegion, Source, combine_policies, merge_regions
from rmrrd.core.xlcfg import Policy

pytestmark = pytest.mark.unit

_sources = st.sampled_from([Source.of("pci", "0000:00:02.0"), Source.of("hotplug", "0000:00:14.0"),
                            Source.of("host"), Source.of("migrate", "node-b"), Source.of("reserve")])
_regions = st.builds(
    lambda start, pages, sources, devices, policy: ReservedRegion(
        Range(start * PAGE_SIZE, (start + pages) * PAGE_SIZE), tuple(sources), tuple(devices), policy),
    st.integers(0, 64), st.integers(1, 8), st.lists(_sources, min_size=1, max_size=2, unique=True),
    st.lists(st.builds(Bdf, st.just(0), st.just(0), st.integers(0, 3), st.just(0)), max_size=2, unique=True),
    st.sampled_from([None, *Policy]))


@given(st.lists(_regions, max_size=10))
def test_merge_keeps_everything(regions: list[ReservedRegion]) -> None:
    merged = merge_regions(regions)
    assert RangeSet(m.range for m in merged) == RangeSet(r.range for r in regions)
    # Merged regions are sorted and pairwise disjoint (they may touch).
    assert all(a.range.end <= b.range.start for a, b in zip(merged, merged[1:]))
    for region in regions:
        [holder] = [m for m in merged if m.range.contains(region.range)]
        assert set(region.sources) <= set(holder.sources)
        assert set(region.devices) <= set(holder.devices)
    for holder in merged:
        parts = [r for r in regions if holder.range.contains(r.range)]
        assert holder.policy == combine_policies(r.policy for r in parts)


def test_identical_regions_list_sources_in_documented_order() -> None:
    rng = Range(0xE0000, 0xF0000)
    merged = merge_regions([ReservedRegion(rng, (Source.of("migrate", "node-b"),)),
                            ReservedRegion(rng, (Source.of("host"),), policy=Policy.RELAXED),
                            ReservedRegion(rng, (Source.of("pci", "0000:00:14.0"),), policy=Policy.STRICT)])
    assert [(str(m.range), m.source_text, m.policy) for m in merged] == [
        ("0xe0000-0xeffff", "pci 0000:00:14.0 host migrate node-b", Policy.STRICT)]


def test_touching_regions_stay_apart() -> None:
    merged = merge_regions([ReservedRegion(Range(0, 0x1000), (Source.of("reserve"),)),
                            ReservedRegion(Range(0x1000, 0x2000), (Source.of("host"),))])
    assert len(merged) == 2
