"""The planner's invariants, over random hosts and requests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmrrd.core.guest_layout import DYNAMIC_AREA, FOUR_GIB, MIB, Bios, firmware
from rmrrd.core.inventory import HostRegion, Inventory
from rmrrd.core.pci import Bdf
from rmrrd.core.planner import DomainRequest, plan, requested_regions
from rmrrd.core.ranges import PAGE_SIZE, Range, RangeSet
from rmrrd.core.xlcfg import DeviceSpec, Policy, RdmConfig, Strategy

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
        memory_mib=draw(st.integers(18, 8192)),
        mmio_hole_mib=draw(st.integers(256, 3840)),
        rdm=RdmConfig(draw(st.sampled_from([None, Strategy.HOST])), draw(_policies)),
        mem_boundary_mib=draw(st.integers(0, 4096)),
        pci=tuple(DeviceSpec(bdf, draw(_policies)) for bdf in draw(st.lists(st.sampled_from(_DEVICES),
                                                                           max_size=2, unique=True))),
        hotplug=tuple(DeviceSpec(bdf) for bdf in draw(st.lists(st.sampled_from(_DEVICES), max_size=1))),
        migrate=("there",) if draw(st.booleans()) else (),
        reserve=tuple(r.range for r in draw(st.lists(_region(), max_size=2))),
        videoram_mib=draw(st.sampled_from([0, 0, 8, 16])),
        hap=draw(st.booleans()),
        firmware=firmware(draw(st.sampled_from(list(Bios))), draw(st.sampled_from([64, 128, 256]))),
        device_policy=draw(_policies),
    )
    return request, host, {"there": peer}


@settings(max_examples=300)
@given(_case())
def test_invariants(case: tuple[DomainRequest, Inventory, dict[str, Inventory]]) -> None:
    request, host, peers = case
    result = plan(request, host, peers)

    # RAM is never lost or invented: guest RAM is memory less video RAM.
    assert result.lowmem_end + (result.highmem_end - FOUR_GIB) == (request.memory_mib - request.videoram_mib) * MIB
    assert result.lowmem_end <= FOUR_GIB <= result.highmem_end
    # A lowered lowmem_end is 2 MiB aligned with HAP (libxl rounds it down).
    if request.hap and any(region.action == "avoided" for region in result.regions):
        assert result.lowmem_end % (2 * MIB) == 0

    # e820 entries are sorted and never overlap; RAM entries are exactly the guest's RAM.
    entries = [entry.range for entry in result.e820]
    assert all(a.end <= b.start for a, b in zip(entries, entries[1:]))
    assert RangeSet(e.range for e in result.e820 if e.type == "ram") == result.ram

    # Every region is avoided, conflict-free, warned or failed, and consistently so.
    # libxl's RAM starts at 0: a region there is not given to hvmloader.  Nothing
    # given to it lies in its dynamic area; a region Xen would give it there fails.
    libxl_ram = result.ram | RangeSet([Range(0, 0x100000)])
    for region in result.regions:
        assert region.action in ("avoided", "none", "warned", "failed")
        assert bool(region.conflict) == (region.action in ("warned", "failed"))
        in_dynamic_area = region.range.overlaps(DYNAMIC_AREA) and not libxl_ram.overlaps(region.range)
        assert region.in_e820 == (not libxl_ram.overlaps(region.range) and not in_dynamic_area)
        assert (region.action == "failed") == (
            (bool(region.conflict) and region.policy is Policy.STRICT)
            or (in_dynamic_area and region.policy is not None))
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
