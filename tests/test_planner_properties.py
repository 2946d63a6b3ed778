"""The planner's invariants, over random hosts and requests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmrrd.guest_layout import FOUR_GIB, MIB
from rmrrd.inventory import HostRegion, Inventory
from rmrrd.pci import Bdf
from rmrrd.planner import DomainRequest, plan, requested_regions
from rmrrd.ranges import PAGE_SIZE, Range, RangeSet
from rmrrd.xlcfg import DeviceSpec, Policy, RdmConfig, Strategy

pytestmark = pytest.mark.unit

_DEVICES = [Bdf(0, 0, n, 0) for n in range(4)]
_policies = st.sampled_from(list(Policy))


@st.composite
def _region(draw: st.DrawFn) -> HostRegion:
    # Below 6 GiB so regions land in low RAM, the hole, the fixed areas and high RAM.
    start = draw(st.integers(0, (6 << 30) // PAGE_SIZE)) * PAGE_SIZE
    pages = draw(st.sampled_from([1, 4, 16, 256, 0x4000]))
    devices = draw(st.lists(st.sampled_from(_DEVICES), max_size=2, unique=True))
    return HostRegion(Range(start, start + pages * PAGE_SIZE), tuple(devices))


@st.composite
def _case(draw: st.DrawFn) -> tuple[DomainRequest, Inventory, dict[str, Inventory]]:
    host = Inventory("here", tuple(draw(st.lists(_region(), max_size=12))))
    peer = Inventory("there", tuple(draw(st.lists(_region(), max_size=4))))
    request = DomainRequest(
        memory_mib=draw(st.integers(2, 8192)),
        mmio_hole_mib=draw(st.integers(256, 3840)),
        rdm=RdmConfig(draw(st.sampled_from([None, Strategy.HOST])), draw(_policies)),
        mem_boundary_mib=draw(st.integers(0, 4096)),
        pci=tuple(DeviceSpec(bdf, draw(_policies)) for bdf in draw(st.lists(st.sampled_from(_DEVICES),
                                                                           max_size=2, unique=True))),
        hotplug=tuple(DeviceSpec(bdf) for bdf in draw(st.lists(st.sampled_from(_DEVICES), max_size=1))),
        migrate=("there",) if draw(st.booleans()) else (),
        reserve=tuple(r.range for r in draw(st.lists(_region(), max_size=2))),
    )
    return request, host, {"there": peer}


@settings(max_examples=300)
@given(_case())
def test_invariants(case: tuple[DomainRequest, Inventory, dict[str, Inventory]]) -> None:
    request, host, peers = case
    result = plan(request, host, peers)

    # RAM is never lost or invented.
    assert result.lowmem_end + (result.highmem_end - FOUR_GIB) == request.memory_mib * MIB
    assert result.lowmem_end <= FOUR_GIB <= result.highmem_end

    # e820 entries are sorted and never overlap; RAM entries are exactly the guest's RAM.
    entries = [entry.range for entry in result.e820]
    assert all(a.end <= b.start for a, b in zip(entries, entries[1:]))
    assert RangeSet(e.range for e in result.e820 if e.type == "ram") == result.ram

    # Every region is avoided, conflict-free, warned or failed, and consistently so.
    for region in result.regions:
        assert region.action in ("avoided", "none", "warned", "failed")
        assert bool(region.conflict) == (region.action in ("warned", "failed"))
        assert (region.action == "failed") == (bool(region.conflict) and region.policy is Policy.STRICT)
        if region.action == "avoided":
            assert not result.ram.overlaps(region.range)
    assert (result.status == "error") == any(r.action == "failed" for r in result.regions)
    assert (result.error is None) == (result.status == "ready")

    # Merging covers exactly what was asked for and keeps every source.
    asked = requested_regions(request, host, peers)
    assert result.reserved == RangeSet(r.range for r in asked)
    for wanted in asked:
        holder = [p for p in result.regions if p.range.contains(wanted.range)]
        assert len(holder) == 1 and set(wanted.sources) <= set(holder[0].sources)
    ranges = [r.range for r in result.regions]
    assert all(a.end <= b.start for a, b in zip(ranges, ranges[1:]))
