"""The ACPI DMAR table (Intel VT-d): remapping hardware units and RMRRs.

:func:`parse_dmar` decodes the table (pure, bytes in); :func:`dmar_inventory` turns
its RMRRs into an :class:`~rmrrd.core.inventory.Inventory`, one region per RMRR with every
device of its scope (a shared RMRR stays one region with several devices).

Layout (Intel VT-d specification, chapter 8; the same offsets as Xen's
``acpi_parse_dmar`` in ``xen/drivers/passthrough/vtd/dmar.c``): after the ACPI header,
u8 host address width minus one, u8 flags, 10 reserved bytes; then remapping
structures, each ``u16 type, u16 length``.  Type 0 DRHD: u8 flags, u8 reserved,
u16 segment, u64 register base, device scopes from byte 16.  Type 1 RMRR: u16
reserved, u16 segment, u64 base, u64 limit (inclusive), device scopes from byte 24.
Other types (2 ATSR, 3 RHSA, 4 ANDD, 5 SATC, and any future one) are skipped by their
length, as Xen does.  A device scope: u8 type, u8 length, u16 reserved, u8 enumeration
id, u8 start bus, then ``(device, function)`` byte pairs, one per PCI hop.

Firmware quirks, decided after Xen's ``acpi_parse_one_rmrr`` (xen/drivers/passthrough/
vtd/dmar.c) and what it reports to the toolstack in
``intel_iommu_get_reserved_device_memory`` (``PFN_DOWN(base)`` to ``PFN_UP(limit)``):

* base or limit+1 not page aligned: widened to whole pages, with a warning (firmware does get this wrong);
* base 0 and limit 0: Xen keeps it, but hands the toolstack ``PFN_UP(0) - PFN_DOWN(0)``
  = 0 pages, so no guest ever reserves anything for it; rmrrd skips it with a warning;
* limit below base: Xen ignores the RMRR ("is incorrect"); skipped with a warning;
* no endpoint or bridge in the scope: Xen frees it (``devices_cnt == 0``); skipped
  with a warning;
* overlapping RMRRs: Xen refuses the whole table (``-EEXIST``); rmrrd keeps both and
  warns, since the planner merges overlaps without losing any device.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from rmrrd.core.acpi import HEADER_SIZE, AcpiHeader, Subtable, TableError, parse_header, require_length, walk_subtables
from rmrrd.core.inventory import Device, HostRegion, Inventory, UnresolvedDevice
from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import PAGE_SIZE, Range

SIGNATURE = "DMAR"
XEN_SIGNATURE = "RMAD"
"""The DMAR's signature once Xen owns the IOMMU: Xen rewrites it in place so that dom0
leaves VT-d alone (``acpi_dmar_zap`` in xen/drivers/passthrough/vtd/dmar.c), the same
four bytes reordered, so the checksum still holds.  dom0 sees the table as
``/sys/firmware/acpi/tables/RMAD``."""
TYPE_DRHD = 0
TYPE_RMRR = 1

SCOPE_ENDPOINT = 1
SCOPE_BRIDGE = 2
SCOPE_IOAPIC = 3
SCOPE_HPET = 4
SCOPE_ACPI_NAMESPACE = 5
_SCOPE_NAMES = {SCOPE_ENDPOINT: "ep", SCOPE_BRIDGE: "bridge", SCOPE_IOAPIC: "ioapic", SCOPE_HPET: "hpet",
                SCOPE_ACPI_NAMESPACE: "andd"}
# Scope types whose enumeration id means something (IOAPIC id, HPET number, ANDD
# device number); for PCI endpoints and bridges it is reserved.
_ENUMERATED = frozenset({SCOPE_IOAPIC, SCOPE_HPET, SCOPE_ACPI_NAMESPACE})

_FIXED = struct.Struct("<BB10x")
_SUBTABLE = struct.Struct("<HH")
_DRHD = struct.Struct("<4xBxHQ")
_RMRR = struct.Struct("<4x2xHQQ")
_SCOPE = struct.Struct("<BBxxBB")
_DRHD_SCOPES = _DRHD.size
_RMRR_SCOPES = _RMRR.size

BusLookup = Callable[[int, int, int, int], int | None]
"""``(segment, bus, device, function) -> secondary bus`` of a bridge, or None if unknown."""


class DeviceScope(NamedTuple):
    """One device scope entry: its type, enumeration id, start bus and PCI path."""

    type: int
    enum_id: int
    start_bus: int
    path: tuple[tuple[int, int], ...]

    @property
    def kind(self) -> str:
        return _SCOPE_NAMES.get(self.type, f"type{self.type:#x}")

    def __str__(self) -> str:
        """``ep 00:14.0``, ``ioapic 00:1e.7 (enum_id 2)``; more hops as ``/dd.f``."""
        hops = "/".join(f"{dev:02x}.{fn:x}" for dev, fn in self.path)
        enum = f" (enum_id {self.enum_id})" if self.type in _ENUMERATED else ""
        return f"{self.kind} {self.start_bus:02x}:{hops}{enum}"

    def resolve(self, segment: int, bus_lookup: BusLookup | None) -> Device:
        """The device this scope names: a BDF once every bridge hop is known.

        As Xen's ``acpi_parse_dev_scope``: start at ``start_bus``; each hop but the
        last is a bridge whose secondary bus is where the next hop lives.
        """
        bus = self.start_bus
        for dev, fn in self.path[:-1]:
            secondary = bus_lookup(segment, bus, dev, fn) if bus_lookup is not None else None
            if secondary is None:
                return UnresolvedDevice(segment, self.start_bus, self.path)
            bus = secondary
        dev, fn = self.path[-1]
        return Bdf(segment, bus, dev, fn)


class Drhd(NamedTuple):
    """A DMA remapping hardware unit (type 0)."""

    offset: int
    length: int
    flags: int
    segment: int
    register_base: int
    scopes: tuple[DeviceScope, ...]


class Rmrr(NamedTuple):
    """A reserved memory region reporting structure (type 1), as the table has it.

    ``base`` and ``limit`` are raw (``limit`` inclusive); ``devices`` are the scopes
    resolved at parse time, in scope order (endpoint and bridge scopes only).
    """

    offset: int
    length: int
    segment: int
    base: int
    limit: int
    scopes: tuple[DeviceScope, ...]
    devices: tuple[Device, ...]


class DmarTable(NamedTuple):
    """A decoded DMAR table. ``host_address_width`` is the real width (field + 1)."""

    header: AcpiHeader
    host_address_width: int
    flags: int
    subtables: tuple[Subtable, ...]
    drhds: tuple[Drhd, ...]
    rmrrs: tuple[Rmrr, ...]


def _parse_scopes(table: bytes, start: int, end: int) -> tuple[DeviceScope, ...]:
    scopes = []
    offset = start
    while offset < end:
        if offset + _SCOPE.size > end:
            raise TableError(SIGNATURE, offset, f"truncated device scope: {end - offset} bytes left, need 6")
        kind, length, enum_id, start_bus = _SCOPE.unpack_from(table, offset)
        # Header plus at least one hop, and whole (device, function) pairs.
        if length < _SCOPE.size + 2 or (length - _SCOPE.size) % 2:
            raise TableError(SIGNATURE, offset, f"device scope length {length} is not 6 + 2 per PCI hop")
        if offset + length > end:
            raise TableError(SIGNATURE, offset, f"device scope of length {length} runs past its structure")
        raw = table[offset + _SCOPE.size:offset + length]
        path = tuple(zip(raw[0::2], raw[1::2]))
        for dev, fn in path:
            if dev > 0x1F or fn > 7:
                raise TableError(SIGNATURE, offset, f"device scope path {dev:#x}.{fn:#x}: device above 0x1f "
                                 "or function above 7")
        scopes.append(DeviceScope(kind, enum_id, start_bus, path))
        offset += length
    return tuple(scopes)


def _parse_rmrr(table: bytes, sub: Subtable, bus_lookup: BusLookup | None) -> Rmrr:
    require_length(SIGNATURE, sub, _RMRR_SCOPES, "RMRR")
    segment, base, limit = _RMRR.unpack_from(table, sub.offset)
    scopes = _parse_scopes(table, sub.offset + _RMRR_SCOPES, sub.offset + sub.length)
    devices: list[Device] = []
    for scope in scopes:
        if scope.type not in (SCOPE_ENDPOINT, SCOPE_BRIDGE):
            continue
        device = scope.resolve(segment, bus_lookup)
        if device not in devices:
            devices.append(device)
    return Rmrr(sub.offset, sub.length, segment, base, limit, scopes, tuple(devices))


def parse_dmar(data: bytes, bus_lookup: BusLookup | None = None, *, verify_checksum: bool = True) -> DmarTable:
    """Decode a DMAR table (signature ``DMAR``, or ``RMAD`` as Xen leaves it); scope
    paths through bridges are resolved with ``bus_lookup``.

    Raises :class:`TableError` (naming the offset) for a bad header, checksum, or any
    structure or device scope whose length is zero, too short or runs past the end.
    """
    header, table = parse_header(data, SIGNATURE, verify_checksum=verify_checksum, aliases=(XEN_SIGNATURE,))
    if len(table) < HEADER_SIZE + _FIXED.size:
        raise TableError(SIGNATURE, len(table), f"truncated: {len(table)} bytes, the DMAR fixed part needs "
                         f"{HEADER_SIZE + _FIXED.size}")
    width, flags = _FIXED.unpack_from(table, HEADER_SIZE)
    subtables = tuple(walk_subtables(table, HEADER_SIZE + _FIXED.size, SIGNATURE, _SUBTABLE))
    drhds = []
    rmrrs = []
    for sub in subtables:
        if sub.type == TYPE_DRHD:
            require_length(SIGNATURE, sub, _DRHD_SCOPES, "DRHD")
            unit_flags, segment, register_base = _DRHD.unpack_from(table, sub.offset)
            scopes = _parse_scopes(table, sub.offset + _DRHD_SCOPES, sub.offset + sub.length)
            drhds.append(Drhd(sub.offset, sub.length, unit_flags, segment, register_base, scopes))
        elif sub.type == TYPE_RMRR:
            rmrrs.append(_parse_rmrr(table, sub, bus_lookup))
    return DmarTable(header, width + 1, flags, subtables, tuple(drhds), tuple(rmrrs))


def widen_to_pages(base: int, last: int) -> Range:
    """The smallest page-granular range holding ``[base, last]`` (both inclusive)."""
    start = base - base % PAGE_SIZE
    end = -(-(last + 1) // PAGE_SIZE) * PAGE_SIZE
    return Range(start, end)


def _rmrr_region(rmrr: Rmrr, warnings: list[str]) -> HostRegion | None:
    """The region an RMRR contributes, or None (with a warning) when Xen would not use it."""
    shown = f"RMRR [{rmrr.base:#x}-{rmrr.limit:#x}] at offset {rmrr.offset:#x}"
    if rmrr.base == 0 and rmrr.limit == 0:
        warnings.append(f"{shown}: base and limit are both 0 (firmware bug): ignored, Xen reserves 0 pages for it")
        return None
    if rmrr.limit < rmrr.base:
        warnings.append(f"{shown}: limit below base (firmware bug): ignored, as Xen does")
        return None
    if not rmrr.devices:
        warnings.append(f"{shown}: no PCI endpoint or bridge in its scope: ignored, as Xen does")
        return None
    rng = widen_to_pages(rmrr.base, rmrr.limit)
    if (rng.start, rng.last) != (rmrr.base, rmrr.limit):
        warnings.append(f"{shown}: not page granular (firmware bug): widened to {rng}")
    return HostRegion(rng, rmrr.devices)


def dmar_inventory(table: DmarTable, host: str) -> Inventory:
    """The host's regions from its RMRRs, with a warning per firmware quirk found.

    Devices that could not be resolved are :class:`UnresolvedDevice` and get a warning
    too, so the inventory says it is incomplete.
    """
    warnings: list[str] = []
    regions: list[HostRegion] = []
    for rmrr in table.rmrrs:
        region = _rmrr_region(rmrr, warnings)
        if region is None:
            continue
        for other in regions:
            if other.range.overlaps(region.range):
                warnings.append(f"RMRR {region.range} at offset {rmrr.offset:#x} overlaps RMRR {other.range} "
                                "(Xen refuses such a table): both kept")
        unresolved = [str(device) for device in region.devices if isinstance(device, UnresolvedDevice)]
        if unresolved:
            warnings.append(f"RMRR {region.range}: unresolved (no secondary bus number for a bridge on the path): "
                            f"{' '.join(unresolved)}")
        regions.append(region)
    return Inventory(host, tuple(regions), tuple(warnings))
