"""The layout planner: the domain setup, the design thread's STEP-1, as one pure function.

``plan(request, host, peers)`` decides, for one guest on one host, which ranges to
reserve, where low RAM ends, what each region conflicts with and what was done about
it, and the e820 hvmloader would give the guest.  No I/O: the daemon and
``rmrrd plan`` read inventories and xenstore, call this, and write ``to_dict()``.

The rules follow libxl's ``libxl__domain_device_construct_rdm`` (``tools/libs/light/
libxl_dm.c``), with rmrrd's refinements; see ``docs/planner.md``:

1. Low RAM ends at ``min(memory, 4 GiB - mmio_hole)``, the rest goes above 4 GiB.
2. A region that overlaps low RAM and starts *above* ``rdm_mem_boundary`` (libxl:
   ``rdm_start > rdm_mem_boundary``) is avoided: low RAM ends at the region's start
   and the RAM moves above 4 GiB.  Lowering only shrinks low RAM, so "repeat until
   stable" ends at the lowest such start, found in one pass.  Low RAM never ends
   below 2 MiB (hvmloader's floor), so a region below that is never avoided.
3. Whatever still overlaps RAM or a fixed guest area is a conflict: ``failed`` under
   a strict policy (the answer is then ``status=error``), ``warned`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from rmrrd.errors import InputError
from rmrrd.guest_layout import (
    E820_FIXED_RESERVED,
    FOUR_GIB,
    LOWMEM_FLOOR,
    MAX_PHYSICAL_ADDRESS,
    MIB,
    check_mmio_hole,
    conflict_kinds,
    default_lowmem_end,
    guest_ram,
)
from rmrrd.inventory import Device, Inventory, find_host, known_hosts_text
from rmrrd.ranges import Range, RangeSet, parse_range
from rmrrd.regions import ReservedRegion, Source, merge_regions
from rmrrd.xlcfg import DeviceSpec, Policy, RdmConfig, Strategy, parse_device_spec, parse_rdm

_T = TypeVar("_T")
Action = Literal["avoided", "none", "warned", "failed"]
E820Type = Literal["ram", "reserved"]


class RequestDefaults(Protocol):
    """What a domain gets for keys it leaves out (``defaults.*`` of the config file)."""

    @property
    def rdm(self) -> str: ...
    @property
    def rdm_mem_boundary(self) -> int: ...
    @property
    def mmio_hole(self) -> int: ...


@dataclass(frozen=True, slots=True)
class XlDefaults:
    """Xen's own defaults (docs/configuration.md): used when no configuration says otherwise."""

    rdm: str = "policy=relaxed"
    rdm_mem_boundary: int = 2048
    mmio_hole: int = 256


XL_DEFAULTS = XlDefaults()


@dataclass(frozen=True, slots=True)
class DomainRequest:
    """One guest's setup request (the ``/libxl/<domid>/rdm/`` keys), parsed.

    Sizes are MiB as xl.cfg writes them.  Construction validates the sizes and raises
    :class:`InputError` naming the field.
    """

    memory_mib: int
    mmio_hole_mib: int = XL_DEFAULTS.mmio_hole
    rdm: RdmConfig = RdmConfig()
    mem_boundary_mib: int = XL_DEFAULTS.rdm_mem_boundary
    pci: tuple[DeviceSpec, ...] = ()
    hotplug: tuple[DeviceSpec, ...] = ()
    migrate: tuple[str, ...] = ()
    reserve: tuple[Range, ...] = ()

    def __post_init__(self) -> None:
        check_mmio_hole(self.mmio_hole_mib)
        if self.memory_mib * MIB < LOWMEM_FLOOR:
            raise InputError(f"memory {self.memory_mib} MiB is below hvmloader's minimum of 2 MiB")
        if FOUR_GIB + self.memory_mib * MIB > MAX_PHYSICAL_ADDRESS:
            raise InputError(f"memory {self.memory_mib} MiB does not fit in a 52-bit physical address space")
        if self.mem_boundary_mib < 0:
            raise InputError(f"mem_boundary {self.mem_boundary_mib} MiB is negative")
        for range_ in self.reserve:
            if not range_.is_page_aligned():
                raise InputError(f"reserve range {range_} is not page granular")


@dataclass(frozen=True, slots=True)
class PlannedRegion:
    """A merged reserved region and what the layout did about it."""

    range: Range
    sources: tuple[Source, ...]
    devices: tuple[Device, ...]
    policy: Policy | None
    conflict: tuple[str, ...]
    """What it still overlaps (``ram``, ``vga``, ``bios``, ...), empty when nothing."""
    action: Action

    @property
    def source_text(self) -> str:
        return " ".join(str(source) for source in self.sources)

    @property
    def conflict_text(self) -> str:
        return " ".join(self.conflict) or "none"


@dataclass(frozen=True, slots=True)
class E820Entry:
    range: Range
    type: E820Type

    def __str__(self) -> str:
        return f"{self.range} {self.type}"


@dataclass(frozen=True, slots=True)
class Plan:
    """The answer to one domain's setup request."""

    status: Literal["ready", "error"]
    error: str | None
    lowmem_end: int
    highmem_end: int
    regions: tuple[PlannedRegion, ...]
    e820: tuple[E820Entry, ...]

    @property
    def ram(self) -> RangeSet:
        """The guest's RAM under this layout."""
        return guest_ram(self.lowmem_end, self.highmem_end)

    @property
    def reserved(self) -> RangeSet:
        """Every range the plan reserved, whatever its conflict."""
        return RangeSet(region.range for region in self.regions)

    def to_dict(self) -> dict[str, Any]:
        """The field names and string formats of the xenstore answer and ``plan --json``.

        Flat and string-valued, so the daemon can write it key by key; ``error`` is
        ``None`` (nothing to write) when the status is ``ready``.
        """
        return {
            "status": self.status,
            "error": self.error,
            "lowmem_end": f"{self.lowmem_end:#x}",
            "highmem_end": f"{self.highmem_end:#x}",
            "regions": [
                {"range": str(region.range), "source": region.source_text,
                 "conflict": region.conflict_text, "action": region.action}
                for region in self.regions
            ],
            "e820": [str(entry) for entry in self.e820],
        }


def requested_regions(request: DomainRequest, host: Inventory,
                      peers: Mapping[str, Inventory]) -> list[ReservedRegion]:
    """Every region the request asks for, one per source, before merging.

    Raises :class:`InputError` for a ``migrate`` host that is not a known peer.  A
    device with no region on this host asks for nothing: that is the common case.
    """
    regions: list[ReservedRegion] = []
    for spec in request.pci:
        regions += _device_regions(host, spec, Source.of("pci", str(spec.bdf)), spec.policy)
    for spec in request.hotplug:
        regions += _device_regions(host, spec, Source.of("hotplug", str(spec.bdf)), None)
    if request.rdm.strategy is Strategy.HOST:
        host_source = (Source.of("host"),)
        regions += [ReservedRegion(hr.range, host_source, hr.devices, request.rdm.policy) for hr in host.regions]
    for name in request.migrate:
        found = find_host(peers, name)
        if found is None:
            raise InputError(f"migrate host {name!r} is not a known peer (known: {known_hosts_text(peers)})")
        regions += [ReservedRegion(hr.range, (Source.of("migrate", found[0]),), hr.devices)
                    for hr in found[1].regions]
    regions += [ReservedRegion(range_, (Source.of("reserve"),)) for range_ in request.reserve]
    return regions


def _device_regions(host: Inventory, spec: DeviceSpec, source: Source,
                    policy: Policy | None) -> list[ReservedRegion]:
    return [ReservedRegion(hr.range, (source,), hr.devices, policy) for hr in host.regions_for(spec.bdf)]


def plan(request: DomainRequest, host: Inventory, peers: Mapping[str, Inventory]) -> Plan:
    """Lay out one guest around its reserved regions; pure.

    Raises :class:`InputError` only for a request that names an unknown peer; every
    conflict is reported in the plan instead.
    """
    regions = merge_regions(requested_regions(request, host, peers))
    memory = request.memory_mib * MIB
    boundary = request.mem_boundary_mib * MIB
    initial_lowmem = default_lowmem_end(memory, request.mmio_hole_mib * MIB)
    # Regions libxl would move low RAM for: above the boundary, inside low RAM.
    movable = [region for region in regions
               if boundary < region.range.start < initial_lowmem and region.range.start >= LOWMEM_FLOOR]
    lowmem_end = min((region.range.start for region in movable), default=initial_lowmem)
    highmem_end = FOUR_GIB + (memory - lowmem_end)
    ram = guest_ram(lowmem_end, highmem_end)
    moved = {id(region) for region in movable}

    planned = tuple(_classify(region, ram, id(region) in moved) for region in regions)
    errors = [_error_text(region, boundary) for region in planned if region.action == "failed"]
    return Plan(
        status="error" if errors else "ready",
        error="; ".join(errors) if errors else None,
        lowmem_end=lowmem_end,
        highmem_end=highmem_end,
        regions=planned,
        e820=_e820(ram, planned),
    )


def _classify(region: ReservedRegion, ram: RangeSet, moved: bool) -> PlannedRegion:
    kinds = conflict_kinds(region.range, ram)
    action: Action
    if kinds:
        action = "failed" if region.policy is Policy.STRICT else "warned"
    else:
        action = "avoided" if moved else "none"
    return PlannedRegion(region.range, region.sources, region.devices, region.policy, kinds, action)


def _error_text(region: PlannedRegion, boundary: int) -> str:
    """Why a strict region stops the build, naming the range and its devices."""
    if region.range.start >= FOUR_GIB:
        why = "RAM above 4 GiB is never moved"
    elif "ram" in region.conflict and region.range.start <= boundary:
        why = f"it starts at or below rdm_mem_boundary {boundary:#x}"
    else:
        why = "a fixed guest area cannot move"
    return (f"region {region.range} ({region.source_text}) overlaps guest {region.conflict_text} "
            f"under rdm_policy=strict: {why}")


def _e820(ram: RangeSet, regions: Iterable[PlannedRegion]) -> tuple[E820Entry, ...]:
    """hvmloader's map: RAM, its fixed reserved entries, and each region clear of RAM.

    A region left in RAM with a warning is not reported (as libxl marks it invalid
    and keeps it from hvmloader): the guest keeps that RAM.  Reserved ranges that
    touch are coalesced, so entries are sorted and never overlap.
    """
    outside_ram = RangeSet(region.range for region in regions if "ram" not in region.conflict)
    entries = [E820Entry(r, "ram") for r in ram] + [E820Entry(r, "reserved")
                                                    for r in E820_FIXED_RESERVED | outside_ram]
    return tuple(sorted(entries, key=lambda entry: entry.range.start))


# --- construction from the toolstack's strings ---------------------------------------

Entries = Sequence[str] | Mapping[str, str]
"""A list node's children: a sequence (named ``key/0``, ``key/1``...) or ``{n: value}``."""


def _entries(key: str, values: Entries) -> list[tuple[str, str]]:
    items = values.items() if isinstance(values, Mapping) else enumerate(values)
    return [(f"{key}/{n}", value) for n, value in items]


def _mib(key: str, text: str) -> int:
    if not text.isascii() or not text.isdecimal():
        raise InputError(f"{key}: {text!r} is not a size in MiB (a decimal integer)")
    return int(text)


def _named(key: str, text: str, parse: Callable[[str], _T]) -> _T:
    """Run a parser, prefixing its error with the xenstore key it came from."""
    try:
        return parse(text)
    except InputError as exc:
        raise InputError(f"{key}: {exc}") from None


def parse_domain_request(memory: str, mmio_hole: str | None, config: str | None,
                         mem_boundary: str | None, pci: Entries = (), hotplug: Entries = (),
                         migrate: Entries = (), reserve: Entries = (),
                         defaults: RequestDefaults = XL_DEFAULTS) -> DomainRequest:
    """Build a request from the raw strings under ``/libxl/<domid>/rdm/``.

    Missing optional keys (``None``) take ``defaults``.  Raises :class:`InputError`
    whose message starts with the key at fault (``mmio_hole``, ``pci/2``, ...).
    """
    def sized(key: str, text: str | None, default: int) -> int:
        return default if text is None else _mib(key, text)

    memory_mib = _mib("memory", memory)
    hole_mib = sized("mmio_hole", mmio_hole, defaults.mmio_hole)
    boundary_mib = sized("mem_boundary", mem_boundary, defaults.rdm_mem_boundary)
    rdm = _named("config", config if config is not None else defaults.rdm, parse_rdm)
    hosts = []
    for key, name in _entries("migrate", migrate):
        if not name.strip():
            raise InputError(f"{key}: empty host name")
        hosts.append(name.strip())
    # DomainRequest's own errors start with the field name, which is the key's name.
    return DomainRequest(
        memory_mib=memory_mib, mmio_hole_mib=hole_mib, rdm=rdm, mem_boundary_mib=boundary_mib,
        pci=tuple(_named(k, v, parse_device_spec) for k, v in _entries("pci", pci)),
        hotplug=tuple(_named(k, v, parse_device_spec) for k, v in _entries("hotplug", hotplug)),
        migrate=tuple(hosts),
        reserve=tuple(_named(k, v, parse_range) for k, v in _entries("reserve", reserve)),
    )
