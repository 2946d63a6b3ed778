"""The ACPI IVRS table (AMD-Vi): IVMD memory definitions, AMD's RMRRs.

:func:`parse_ivrs` decodes the table (pure, bytes in); :func:`ivrs_inventory` turns
its IVMD entries into an :class:`~rmrrd.core.inventory.Inventory`.

Layout (AMD I/O Virtualization Technology specification, "IVRS"; the same offsets as
Xen's ``xen/drivers/passthrough/amd/iommu_acpi.c`` and Linux's ``struct ivmd_header``
in ``drivers/iommu/amd/init.c``): after the ACPI header, u32 IVinfo and 8 reserved
bytes; then blocks, each ``u8 type, u8 flags, u16 length``.  IVHD blocks (0x10, 0x11,
0x40) and unknown types are skipped by their length.  An IVMD block (32 bytes):
u16 device id, u16 auxiliary data, u16 PCI segment (reserved in older revisions,
hence 0 there: Linux reads it as ``pci_seg``), 6 reserved bytes, u64 start, u64
length in bytes.  Type 0x20 applies to every device, 0x21 to the device id, 0x22 to
the device ids from the device id to the auxiliary data (Xen's ``last_dev_id``).

IVMD flags: bit 0 unity mapping, bit 1 read, bit 2 write, bit 3 exclusion range.
Xen (``parse_ivmd_block``) turns ``[start, start + length)`` into whole pages with
``start & PAGE_MASK`` and ``(start + length - 1) & PAGE_MASK``, i.e. it widens; rmrrd
does the same, with a warning, which covers the real one-byte IVMDs in the fixtures.
Entries Xen rejects are skipped with a warning: neither unity nor exclusion flag
set ("Invalid Flag Field"), a device range whose last id is below its first.  A zero
length describes no memory and is skipped with a warning too.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from rmrrd.core.acpi import HEADER_SIZE, AcpiHeader, Subtable, TableError, parse_header, require_length, walk_subtables
from rmrrd.core.dmar import widen_to_pages
from rmrrd.core.inventory import Device, HostRegion, Inventory
from rmrrd.core.pci import Bdf

SIGNATURE = "IVRS"
IVMD_ALL = 0x20
IVMD_ONE = 0x21
IVMD_RANGE = 0x22
IVMD_TYPES = frozenset({IVMD_ALL, IVMD_ONE, IVMD_RANGE})

FLAG_UNITY = 0x1
FLAG_READ = 0x2
FLAG_WRITE = 0x4
FLAG_EXCLUSION = 0x8

_FIXED = struct.Struct("<I8x")
_SUBTABLE = struct.Struct("<BBH")
_IVMD = struct.Struct("<xBxxHHH6xQQ")
_ADDRESS_LIMIT = 1 << 64


def devid_to_bdf(segment: int, devid: int) -> Bdf:
    """An AMD device id is the PCI requester id: bus in the high byte, then devfn."""
    return Bdf(segment, devid >> 8, (devid >> 3) & 0x1F, devid & 0x7)


class Ivmd(NamedTuple):
    """One IVMD block as the table has it (``mem_length`` in bytes, not a limit)."""

    offset: int
    type: int
    flags: int
    length: int
    devid: int
    aux: int
    segment: int
    start: int
    mem_length: int

    @property
    def bdf(self) -> Bdf:
        return devid_to_bdf(self.segment, self.devid)

    def devices(self) -> tuple[Device, ...]:
        """The devices of a 0x21 or 0x22 entry (none for 0x20: it means all)."""
        if self.type == IVMD_ONE:
            return (self.bdf,)
        if self.type == IVMD_RANGE:
            return tuple(devid_to_bdf(self.segment, devid) for devid in range(self.devid, self.aux + 1))
        return ()


class IvrsTable(NamedTuple):
    """A decoded IVRS table: header, IVinfo, every block's place, the IVMDs."""

    header: AcpiHeader
    ivinfo: int
    subtables: tuple[Subtable, ...]
    ivmds: tuple[Ivmd, ...]


def parse_ivrs(data: bytes, *, verify_checksum: bool = True) -> IvrsTable:
    """Decode an IVRS table.

    Raises :class:`TableError` (naming the offset) for a bad header or checksum, a
    block whose length is zero, shorter than its header or runs past the end, or an
    IVMD shorter than its 32 bytes.
    """
    header, table = parse_header(data, SIGNATURE, verify_checksum=verify_checksum)
    if len(table) < HEADER_SIZE + _FIXED.size:
        raise TableError(SIGNATURE, len(table), f"truncated: {len(table)} bytes, the IVRS fixed part needs "
                         f"{HEADER_SIZE + _FIXED.size}")
    (ivinfo,) = _FIXED.unpack_from(table, HEADER_SIZE)
    subtables = tuple(walk_subtables(table, HEADER_SIZE + _FIXED.size, SIGNATURE, _SUBTABLE))
    ivmds = []
    for sub in subtables:
        if sub.type in IVMD_TYPES:
            require_length(SIGNATURE, sub, _IVMD.size, f"IVMD type {sub.type:#x}")
            flags, devid, aux, segment, start, mem_length = _IVMD.unpack_from(table, sub.offset)
            ivmds.append(Ivmd(sub.offset, sub.type, flags, sub.length, devid, aux, segment, start, mem_length))
    return IvrsTable(header, ivinfo, subtables, tuple(ivmds))


def _ivmd_region(ivmd: Ivmd, warnings: list[str]) -> HostRegion | None:
    """The region an IVMD contributes, or None (with a warning) when Xen would not use it."""
    shown = f"IVMD type {ivmd.type:#x} [{ivmd.start:#x}, length {ivmd.mem_length:#x}] at offset {ivmd.offset:#x}"
    if not ivmd.flags & (FLAG_UNITY | FLAG_EXCLUSION):
        warnings.append(f"{shown}: flags {ivmd.flags:#x} ask for neither unity mapping nor exclusion: ignored, "
                        "as Xen does")
        return None
    if ivmd.mem_length == 0:
        warnings.append(f"{shown}: length 0 (firmware bug): ignored")
        return None
    if ivmd.start + ivmd.mem_length > _ADDRESS_LIMIT:
        warnings.append(f"{shown}: runs past the 64-bit address space (firmware bug): ignored")
        return None
    if ivmd.type == IVMD_RANGE and ivmd.aux < ivmd.devid:
        warnings.append(f"{shown}: device range ends ({ivmd.aux:#x}) below its start ({ivmd.devid:#x}): ignored, "
                        "as Xen does")
        return None
    rng = widen_to_pages(ivmd.start, ivmd.start + ivmd.mem_length - 1)
    if (rng.start, rng.end) != (ivmd.start, ivmd.start + ivmd.mem_length):
        warnings.append(f"{shown}: not page granular (firmware bug): widened to {rng}")
    if ivmd.type == IVMD_ALL:
        return HostRegion(rng, (), all_devices=True)
    return HostRegion(rng, ivmd.devices())


def ivrs_inventory(table: IvrsTable, host: str) -> Inventory:
    """The host's regions from its IVMD entries, with a warning per firmware quirk."""
    warnings: list[str] = []
    regions = []
    for ivmd in table.ivmds:
        region = _ivmd_region(ivmd, warnings)
        if region is not None:
            regions.append(region)
    return Inventory(host, tuple(regions), tuple(warnings))
