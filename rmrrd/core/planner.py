"""The layout planner: the domain setup, the design thread's STEP-1, as one pure function.

``plan(request, host, peers)`` decides, for one guest on one host, which ranges to
reserve, where low RAM ends, what each region conflicts with and what was done about
it, and the e820 hvmloader would give the guest.  No I/O: the daemon and
``rmrrd plan`` read inventories and xenstore, call this, and write ``to_dict()``.

Where Xen 4.17 handles a case, the answer is Xen's: libxl's
``libxl__domain_device_construct_rdm`` (``tools/libs/light/libxl_dm.c``), hvmloader's
``e820.c`` and the VT-d assignment (``xen/drivers/passthrough/vtd/iommu.c``); see
``docs/planner.md`` for each rule's source and for rmrrd's deliberate extensions:

1. Guest RAM is ``memory - videoram``; low RAM ends at ``min(RAM, 4 GiB - mmio_hole)``,
   the rest goes above 4 GiB.
2. A region that overlaps low RAM and starts *above* ``rdm_mem_boundary`` (libxl:
   ``rdm_start > rdm_mem_boundary``) is avoided: low RAM ends at the region's start,
   rounded down to 2 MiB with HAP, and the RAM moves above 4 GiB.  Lowering only
   shrinks low RAM, so "repeat until stable" ends at the lowest such end, found in
   one pass.  Low RAM never ends below 2 MiB (hvmloader's floor), so a region below
   that is never avoided.
3. Whatever still overlaps RAM (libxl's low RAM starts at 0: the legacy window below
   1 MiB counts), a fixed guest area, or is an assigned device's shared RMRR, is a
   conflict: ``failed`` under a strict policy (the answer is then ``status=error``),
   ``warned`` otherwise.  A region overlapping RAM is not given to hvmloader.
4. A region that would enter the e820 inside hvmloader's dynamic reserved area fails
   whatever the policy when Xen would hand it to hvmloader (an assigned device's or a
   ``strategy=host`` region); a region reserved only by rmrrd is left out, warned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol, TypeVar

from rmrrd.errors import InputError
from rmrrd.core.guest_layout import (
    DEFAULT_FIRMWARE,
    DYNAMIC_AREA,
    FOUR_GIB,
    HIGH_RAM_START,
    LOWMEM_FLOOR,
    MAX_PHYSICAL_ADDRESS,
    MIB,
    Bios,
    Firmware,
    check_mmio_hole,
    default_lowmem_end,
    firmware,
)
from rmrrd.core.inventory import Device, HostRegion, Inventory, find_host, known_hosts_text
from rmrrd.core.ranges import Range, RangeSet, parse_range
from rmrrd.core.regions import ReservedRegion, Source, merge_regions
from rmrrd.core.xlcfg import (
    DEFAULT_DEVICE_POLICY,
    DeviceSpec,
    Policy,
    RdmConfig,
    Strategy,
    parse_device_spec,
    parse_rdm,
)

_T = TypeVar("_T")
Action = Literal["avoided", "none", "warned", "failed"]
E820Type = Literal["ram", "reserved"]
GuestType = Literal["hvm", "pv", "pvh"]
HAP_ALIGN = 2 * MIB
"""libxl rounds a lowered ``lowmem_end`` down to this for HAP guests (large pages)."""
SHARED_RMRR = "shared-rmrr"
"""The conflict kind of an assigned device's region whose device scope lists others."""


class RequestDefaults(Protocol):
    """What a domain gets for keys it leaves out (``defaults.*`` of the config file)."""

    @property
    def rdm(self) -> str: ...
    @property
    def rdm_mem_boundary(self) -> int: ...
    @property
    def mmio_hole(self) -> int: ...
    @property
    def seabios_size(self) -> int: ...


class XlDefaults(NamedTuple):
    """Xen's own defaults (docs/configuration.md): used when no configuration says otherwise."""

    rdm: str = "policy=relaxed"
    rdm_mem_boundary: int = 2048
    mmio_hole: int = 256
    seabios_size: int = 128
    """KiB: the SeaBIOS image upstream Xen builds (``0x100000 - 128 KiB = 0xE0000``)."""


XL_DEFAULTS = XlDefaults()


class DomainRequest(NamedTuple):
    """One guest's setup request (the ``/libxl/<domid>/rdm/`` keys), parsed.

    Sizes are MiB as xl.cfg writes them.  :meth:`validated` checks the sizes and raises
    :class:`InputError` naming the field: :func:`parse_domain_request` returns requests
    validated, :func:`plan` validates what it is given, and so does
    :func:`rmrrd.core.libxl_domain.libxl_plan` for the PV and PVH domains it plans
    without :func:`plan`.  ``device_policy`` is the policy of a
    ``pci/`` device whose spec names none: the ``policy`` the request's own ``rdm=``
    names (xl's ``parse_config_data`` copies it into every ``pci=`` device), else
    ``strict`` (libxl's ``libxl__device_pci_setdefault``); :func:`parse_domain_request`
    sets it.
    """

    memory_mib: int
    mmio_hole_mib: int = XL_DEFAULTS.mmio_hole
    rdm: RdmConfig = RdmConfig()
    mem_boundary_mib: int = XL_DEFAULTS.rdm_mem_boundary
    pci: tuple[DeviceSpec, ...] = ()
    hotplug: tuple[DeviceSpec, ...] = ()
    migrate: tuple[str, ...] = ()
    reserve: tuple[Range, ...] = ()
    videoram_mib: int = 0
    hap: bool = True
    firmware: Firmware = DEFAULT_FIRMWARE
    device_policy: Policy = DEFAULT_DEVICE_POLICY

    def validated(self) -> DomainRequest:
        """This request, if its sizes are ones libxl and hvmloader accept; else InputError."""
        check_mmio_hole(self.mmio_hole_mib)
        if self.videoram_mib < 0:
            raise InputError(f"videoram {self.videoram_mib} MiB is negative")
        if self.ram < LOWMEM_FLOOR:
            less = f" less videoram {self.videoram_mib} MiB" if self.videoram_mib else ""
            raise InputError(f"memory {self.memory_mib} MiB{less} is below hvmloader's minimum of 2 MiB")
        if FOUR_GIB + self.ram > MAX_PHYSICAL_ADDRESS:
            raise InputError(f"memory {self.memory_mib} MiB does not fit in a 52-bit physical address space")
        if self.mem_boundary_mib < 0:
            raise InputError(f"mem_boundary {self.mem_boundary_mib} MiB is negative")
        for range_ in self.reserve:
            if not range_.is_page_aligned():
                raise InputError(f"reserve range {range_} is not page granular")
        return self

    @property
    def ram(self) -> int:
        """Guest RAM in bytes: ``memory - videoram`` (libxl's ``libxl__build_hvm``)."""
        return (self.memory_mib - self.videoram_mib) * MIB

    def policy_of(self, spec: DeviceSpec) -> Policy:
        """An assigned device's policy: its own ``rdm_policy``, else :attr:`device_policy`."""
        return spec.policy or self.device_policy


class PlannedRegion(NamedTuple):
    """A merged reserved region and what the layout did about it."""

    range: Range
    sources: tuple[Source, ...]
    devices: tuple[Device, ...]
    policy: Policy | None
    conflict: tuple[str, ...]
    """What it still overlaps (``ram``, ``vga``, ``bios``, ...), empty when nothing."""
    action: Action
    in_e820: bool
    """Given to hvmloader, so a ``reserved`` e820 entry: clear of RAM (libxl marks a
    region in RAM invalid) and, unless it fails the setup, of hvmloader's dynamic area."""

    @property
    def source_text(self) -> str:
        return " ".join(str(source) for source in self.sources)

    @property
    def conflict_text(self) -> str:
        return " ".join(self.conflict) or "none"


class E820Entry(NamedTuple):
    range: Range
    type: E820Type

    def __str__(self) -> str:
        return f"{self.range} {self.type}"


class Plan(NamedTuple):
    """The answer to one domain's setup request.

    ``firmware`` and ``device_policy`` are the request's, kept so the toolstack checks
    judge a device against the same fixed areas and with the same default policy.
    ``guest`` and ``passthrough`` describe a domain rmrrd learned from libxl: a PV
    guest has no layout (its devices' regions are mapped 1:1 in the IOMMU, never over
    its RAM: ``set_identity_p2m_entry``), and a domain created without passthrough
    takes no device at all (:func:`learned_plan`).
    """

    status: Literal["ready", "error"]
    error: str | None
    lowmem_end: int
    highmem_end: int
    regions: tuple[PlannedRegion, ...]
    e820: tuple[E820Entry, ...]
    firmware: Firmware = DEFAULT_FIRMWARE
    device_policy: Policy = DEFAULT_DEVICE_POLICY
    guest: GuestType = "hvm"
    passthrough: bool = True

    @property
    def ram(self) -> RangeSet:
        """The guest's RAM under this layout, as hvmloader reports it."""
        return self.firmware.guest_ram(self.lowmem_end, self.highmem_end)

    @property
    def reserved(self) -> RangeSet:
        """Every range the plan reserved, whatever its conflict."""
        return RangeSet(region.range for region in self.regions)

    def conflict_kinds(self, rng: Range) -> tuple[str, ...]:
        """What ``rng`` overlaps in this guest: ``ram`` and the fixed areas' kinds."""
        return self.firmware.conflict_kinds(rng, self.ram)

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

    Policies are libxl's: a device's region has the device's policy; a
    ``strategy=host`` region has the domain's, unless an assigned device has a region
    starting at the same address ("the per-device policy always override the global
    policy", matched by start as libxl does), when it takes that device's (strict if
    any such device is).  Regions for ``hotplug``, ``migrate`` and ``reserve`` have
    none.  Raises :class:`InputError` for a ``migrate`` host that is not a known peer.
    A device with no region on this host asks for nothing: that is the common case.
    """
    regions: list[ReservedRegion] = []
    device_policy: dict[int, Policy] = {}
    for spec in request.pci:
        policy = request.policy_of(spec)
        for hr in host.regions_for(spec.bdf):
            regions.append(ReservedRegion(hr.range, (Source.of("pci", str(spec.bdf)),), hr.devices, policy))
            if device_policy.get(hr.range.start) is not Policy.STRICT:
                device_policy[hr.range.start] = policy
    for spec in request.hotplug:
        regions += [ReservedRegion(hr.range, (Source.of("hotplug", str(spec.bdf)),), hr.devices)
                    for hr in host.regions_for(spec.bdf)]
    if request.rdm.strategy is Strategy.HOST:
        host_source, domain_policy = (Source.of("host"),), request.rdm.domain_policy
        regions += [ReservedRegion(hr.range, host_source, hr.devices,
                                   device_policy.get(hr.range.start, domain_policy)) for hr in host.regions]
    for name in request.migrate:
        found = find_host(peers, name)
        if found is None:
            raise InputError(f"migrate host {name!r} is not a known peer (known: {known_hosts_text(peers)})")
        regions += [ReservedRegion(hr.range, (Source.of("migrate", found[0]),), hr.devices)
                    for hr in found[1].regions]
    regions += [ReservedRegion(range_, (Source.of("reserve"),)) for range_ in request.reserve]
    return regions


def shared_device_regions(request: DomainRequest, host: Inventory) -> list[HostRegion]:
    """The assigned devices' regions whose device scope lists other devices (shared RMRRs).

    Xen's VT-d refuses to assign such a device unless it is relaxed
    (``intel_iommu_assign_device``: ``rmrr->scope.devices_cnt > 1``).
    """
    return [hr for spec in request.pci for hr in host.regions_for(spec.bdf) if hr.is_shared]


def lowered_lowmem_end(start: int, hap: bool) -> int:
    """Where libxl ends low RAM to avoid a region starting at ``start``.

    With HAP it rounds down to 2 MiB "to allow use of large page mappings"
    (``libxl__domain_device_construct_rdm``: ``rdm_start > MB(2)``, then
    ``rdm_start &= ~(MB(2) - 1)``).
    """
    return start & ~(HAP_ALIGN - 1) if hap and start > HAP_ALIGN else start


def plan(request: DomainRequest, host: Inventory, peers: Mapping[str, Inventory]) -> Plan:
    """Lay out one guest around its reserved regions; pure.

    Raises :class:`InputError` only for a request :meth:`DomainRequest.validated`
    refuses or that names an unknown peer; every conflict is reported in the plan instead.
    """
    request.validated()
    regions = merge_regions(requested_regions(request, host, peers))
    boundary = request.mem_boundary_mib * MIB
    initial_lowmem = default_lowmem_end(request.ram, request.mmio_hole_mib * MIB)
    # Regions libxl would move low RAM for: above the boundary, inside low RAM.
    movable = {id(region) for region in regions
               if boundary < region.range.start < initial_lowmem and region.range.start >= LOWMEM_FLOOR}
    lowmem_end = min((lowered_lowmem_end(region.range.start, request.hap)
                      for region in regions if id(region) in movable), default=initial_lowmem)
    highmem_end = FOUR_GIB + (request.ram - lowmem_end)
    layout = _Layout(request.firmware, lowmem_end, highmem_end, boundary, shared_device_regions(request, host))

    planned = tuple(layout.classify(region, id(region) in movable) for region in regions)
    errors = [layout.why_failed(region) for region in planned if region.action == "failed"]
    return Plan(
        status="error" if errors else "ready",
        error="; ".join(errors) if errors else None,
        lowmem_end=lowmem_end,
        highmem_end=highmem_end,
        regions=planned,
        e820=_e820(layout.ram, request.firmware, planned),
        firmware=request.firmware,
        device_policy=request.device_policy,
    )


def learned_plan(guest: GuestType, request: DomainRequest, passthrough: bool, host: Inventory,
                 peers: Mapping[str, Inventory]) -> Plan:
    """The layout libxl gave a domain it created, for the checks.

    An HVM guest's is :func:`plan`'s (libxl's ``libxl__domain_device_construct_rdm``
    and hvmloader's rules, which it follows).  PV and PVH guests have none: PV
    memory is not where the devices' regions are mapped, and a PVH guest has no
    passthrough in Xen 4.17 (``libxl__arch_passthrough_mode_setdefault``).
    """
    if guest == "hvm":
        return plan(request, host, peers)._replace(passthrough=passthrough)
    return Plan("ready", None, 0, 0, (), (), request.firmware, request.device_policy, guest, passthrough)


class _Layout:
    """One guest's final layout, to classify its regions against."""

    def __init__(self, firmware: Firmware, lowmem_end: int, highmem_end: int, boundary: int,
                 shared: Sequence[HostRegion]) -> None:
        self.firmware = firmware
        self.ram = firmware.guest_ram(lowmem_end, highmem_end)
        self.lowmem_end, self.highmem_end = lowmem_end, highmem_end
        self.boundary = boundary
        self.shared = shared

    def in_libxl_ram(self, rng: Range) -> bool:
        """Whether ``rng`` overlaps libxl's RAM, which keeps it from hvmloader: low RAM
        from 0 (the legacy window included), then RAM above 4 GiB."""
        # Plain comparisons: this runs once per region, tens of thousands with strategy=host.
        high = self.highmem_end > FOUR_GIB and rng.end > FOUR_GIB and rng.start < self.highmem_end
        return rng.start < self.lowmem_end or high

    def in_dynamic_area(self, rng: Range) -> bool:
        """Whether Xen would hand ``rng`` to hvmloader inside its dynamic area (clear of RAM)."""
        return rng.start < DYNAMIC_AREA.end and DYNAMIC_AREA.start < rng.end and not self.in_libxl_ram(rng)

    def classify(self, region: ReservedRegion, moved: bool) -> PlannedRegion:
        rng = region.range
        kinds = self.firmware.conflict_kinds(rng, self.ram)
        if self.shared and any(hr.range.overlaps(rng) for hr in self.shared):
            kinds += (SHARED_RMRR,)
        in_ram = self.in_libxl_ram(rng)
        in_dynamic_area = not in_ram and self.in_dynamic_area(rng)
        action: Action
        if in_dynamic_area and region.policy is not None:
            action = "failed"  # hvmloader's BUG(), whatever the policy
        elif kinds:
            action = "failed" if region.policy is Policy.STRICT else "warned"
        else:
            action = "avoided" if moved else "none"
        return PlannedRegion(rng, region.sources, region.devices, region.policy, kinds, action,
                             in_e820=not in_ram and not in_dynamic_area)

    def why_failed(self, region: PlannedRegion) -> str:
        """Why a region stops the build, naming the range, its sources and devices."""
        subject = f"region {region.range} ({region.source_text})"
        if self.in_dynamic_area(region.range):
            return (f"{subject} lies in hvmloader's dynamic reserved area {DYNAMIC_AREA}, where hvmloader "
                    f"stops with BUG() whatever the policy")
        if SHARED_RMRR in region.conflict:
            devices = " ".join(str(device) for device in region.devices)
            return (f"{subject} is a shared RMRR (device scope: {devices}): Xen's VT-d refuses to assign "
                    f"its device under rdm_policy=strict; rdm_policy=relaxed assigns it at a risk")
        if region.range.start >= FOUR_GIB:
            why = "RAM above 4 GiB is never moved"
        elif region.range.start < HIGH_RAM_START:
            why = "libxl counts the legacy area below 1 MiB as low RAM, which is never moved there"
        elif "ram" in region.conflict and region.range.start <= self.boundary:
            why = f"it starts at or below rdm_mem_boundary {self.boundary:#x}"
        else:
            why = "a fixed guest area cannot move"
        return f"{subject} overlaps guest {region.conflict_text} under rdm_policy=strict: {why}"


def _e820(ram: RangeSet, firmware: Firmware, regions: Iterable[PlannedRegion]) -> tuple[E820Entry, ...]:
    """hvmloader's map: RAM, the firmware's reserved areas, and each region given to it.

    A region left in RAM is not reported (libxl marks it invalid and keeps it from
    hvmloader): the guest keeps that RAM.  Reserved ranges that touch are coalesced,
    so entries are sorted and never overlap.
    """
    listed = RangeSet(region.range for region in regions if region.in_e820)
    entries = [E820Entry(r, "ram") for r in ram] + [E820Entry(r, "reserved")
                                                    for r in firmware.e820_reserved | listed]
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


def _hap(text: str) -> bool:
    if text not in ("0", "1"):
        raise InputError(f"hap: {text!r} is not 0 or 1")
    return text == "1"


def _bios(text: str) -> Bios:
    try:
        return Bios(text)
    except ValueError:
        raise InputError(f"bios: {text!r} is not {', '.join(b.value for b in Bios)}") from None


def _named(key: str, text: str, parse: Callable[[str], _T]) -> _T:
    """Run a parser, prefixing its error with the xenstore key it came from."""
    try:
        return parse(text)
    except InputError as exc:
        raise InputError(f"{key}: {exc}") from None


def parse_domain_request(memory: str, mmio_hole: str | None, config: str | None,
                         mem_boundary: str | None, pci: Entries = (), hotplug: Entries = (),
                         migrate: Entries = (), reserve: Entries = (),
                         defaults: RequestDefaults = XL_DEFAULTS, *, videoram: str | None = None,
                         hap: str | None = None, bios: str | None = None) -> DomainRequest:
    """Build a request from the raw strings under ``/libxl/<domid>/rdm/`` (docs/xenstore-schema.md).

    Missing optional keys (``None``) take ``defaults`` (``videoram`` 0, ``hap`` 1,
    ``bios`` seabios at ``defaults.seabios_size``).  A ``pci/`` device without its own
    ``rdm_policy`` takes the ``policy`` the request's ``config`` names, as xl does;
    ``defaults.rdm`` does not hand its policy to devices (it stands for the domain's
    policy only).  Raises :class:`InputError` whose message starts with the key at
    fault (``mmio_hole``, ``pci/2``, ``hap``, ...).
    """
    def sized(key: str, text: str | None, default: int) -> int:
        return default if text is None else _mib(key, text)

    memory_mib = _mib("memory", memory)
    hole_mib = sized("mmio_hole", mmio_hole, defaults.mmio_hole)
    boundary_mib = sized("mem_boundary", mem_boundary, defaults.rdm_mem_boundary)
    rdm = _named("config", config if config is not None else defaults.rdm, parse_rdm)
    named_policy = rdm.policy if config is not None else None
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
        videoram_mib=sized("videoram", videoram, 0),
        hap=True if hap is None else _hap(hap),
        firmware=firmware(Bios.SEABIOS if bios is None else _bios(bios), defaults.seabios_size),
        device_policy=named_policy or DEFAULT_DEVICE_POLICY,
    ).validated()
