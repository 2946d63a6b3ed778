"""The fixed parts of an HVM guest's physical address space, as Xen 4.17 lays it out.

A reserved region that lands on one of these cannot be moved out of the way: the
guest's firmware or legacy devices live there.  Every constant comes from Xen's
sources (``xen-project/xen``), cited beside it:

* ``tools/firmware/hvmloader/e820.c``, ``build_e820_table``: RAM from 0 to
  ``lowmem_reserved_base`` (``0xA0000`` unless the firmware asks for less);
  "0xA0000-0xC0000: VGA memory-mapped I/O"; "0xC0000-0xE0000: 16-bit devices,
  expansion ROMs (inc. vgabios)", neither in the e820; the BIOS area from
  ``bios_image_base`` to 1 MiB, reserved; ACPI NVS from ``RESERVED_MEMBASE``
  (``0xFC000000``) over the ACPI tables, then reserved up to 4 GiB "for special pages
  ... LAPIC, IOAPIC, default SVGA framebuffer"; then the toolstack's own map (low RAM
  from ``0x100000``, its reserved regions, RAM from 4 GiB).  It ``BUG_ON``s when low
  RAM ends below 2 MiB, and ``memory_map_setup`` stops with ``BUG()`` when a reserved
  entry of the toolstack overlaps ``RESERVED_MEMORY_DYNAMIC_START``-``_END``.
* ``tools/firmware/hvmloader/config.h``: ``VGABIOS_PHYSICAL_ADDRESS 0x000C0000``,
  ``RESERVED_MEMBASE 0xFC000000``, ``ACPI_MEMORY_DYNAMIC_START 0xFC001000``,
  ``RESERVED_MEMORY_DYNAMIC_START 0xFC100000``, ``RESERVED_MEMORY_DYNAMIC_END
  0xFE000000``, ``GUEST_RESERVED_START 0xFE700000``, ``LAPIC_BASE_ADDRESS
  0xfee00000``; the IOAPIC is at ``0xfec00000`` (``ioapic_base_address`` in
  ``hvmloader.c`` in 4.17; ``IOAPIC_BASE_ADDRESS`` in ``util.h`` from 4.19).
* The BIOS area depends on the firmware (``seabios.c``, ``rombios.c``, ``ovmf.c``):
  see :func:`firmware`.
* ``xen/include/public/hvm/e820.h``: ``HVM_BELOW_4G_MMIO_START 0xF0000000`` and
  ``HVM_BELOW_4G_MMIO_LENGTH`` (256 MiB); ``tools/xl/xl_parse.c`` refuses an
  ``mmio_hole`` smaller than the length or larger than the start, i.e. outside
  256..3840 MiB, and libxl's default hole is that length.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from rmrrd.errors import InputError
from rmrrd.core.ranges import Range, RangeSet

MIB = 1 << 20
FOUR_GIB = 1 << 32

MMIO_HOLE_MIN_MIB = 256
"""``HVM_BELOW_4G_MMIO_LENGTH``: xl refuses a smaller ``mmio_hole`` (and it is the default)."""
MMIO_HOLE_MAX_MIB = 3840
"""``HVM_BELOW_4G_MMIO_START`` in MiB: xl refuses a larger ``mmio_hole``."""

LOWMEM_FLOOR = 2 * MIB
"""hvmloader's ``BUG_ON(low_mem_pgend < 2 MiB)``: low RAM never ends below this."""

MAX_PHYSICAL_ADDRESS = 1 << 52
"""x86-64's widest physical address: a layout reaching past it cannot exist."""

LEGACY_RAM_END = 0xA0000
"""End of the RAM hvmloader reports below 1 MiB (``lowmem_reserved_base`` default)."""
HIGH_RAM_START = 0x100000
"""Start of low RAM above the legacy area (``HVMLOADER_PHYSICAL_ADDRESS``); the BIOS
area ends here, whatever the firmware."""
KIB = 1 << 10
VGA_AREA = Range(0xA0000, 0xC0000)
ROM_AREA_START = 0xC0000
"""``VGABIOS_PHYSICAL_ADDRESS``: expansion ROMs from here up to the BIOS area."""
FIRMWARE_AREA_START = 0xFC000000
"""``RESERVED_MEMBASE``: hvmloader reserves from here to 4 GiB (ACPI NVS first)."""
DYNAMIC_AREA = Range(0xFC100000, 0xFE000000)
"""``RESERVED_MEMORY_DYNAMIC_START``-``_END``: hvmloader's ``memory_map_setup`` stops
with ``BUG()`` when a reserved entry it is given overlaps this."""
SEABIOS_SIZE_MAX_KIB = 256
"""``seabios_setup_e820`` ``BUG_ON``s a SeaBIOS loaded below ``0xC0000``."""
ROMBIOS_LOW_RESERVED = 0x9E000
"""``rombios_setup_e820``: its stack and EBDA, ``0x9E000-0x9FFFF``, are reserved."""


class Bios(enum.Enum):
    """xl.cfg ``bios=``: the firmware hvmloader loads, which decides the BIOS area."""

    SEABIOS = "seabios"
    OVMF = "ovmf"
    ROMBIOS = "rombios"

    def __str__(self) -> str:
        return self.value


class FixedArea(NamedTuple):
    """A part of the guest's map that is neither RAM nor movable.

    ``in_e820`` tells whether hvmloader reports it as a reserved e820 entry (the BIOS
    and the special pages) or leaves it out (the VGA window and option ROMs, which
    "OSes will not use as RAM" by convention).
    """

    kind: str
    range: Range
    in_e820: bool


FIXED_AREA_KINDS = ("vga", "rom", "bios", "firmware")
"""Every kind a fixed area can have, whatever the firmware."""


class Firmware(NamedTuple):
    """What one firmware makes of the guest's first megabyte (hvmloader's ``*_setup_e820``).

    ``low_ram_end`` is where RAM below 640 KiB ends (``build_e820_table``'s
    ``lowmem_reserved_base``: ``0xA0000``, or ``0x9E000`` for ROMBIOS); ``areas`` are the
    fixed areas in address order, their kinds the ``region/<n>/conflict`` values.
    Built by :func:`firmware`.
    """

    bios: Bios
    low_ram_end: int
    areas: tuple[FixedArea, ...]

    @property
    def e820_reserved(self) -> RangeSet:
        """The fixed areas hvmloader lists as reserved."""
        return RangeSet(area.range for area in self.areas if area.in_e820)

    def guest_ram(self, lowmem_end: int, highmem_end: int) -> RangeSet:
        """The guest RAM hvmloader reports for a layout (``build_e820_table``).

        The legacy window below 1 MiB is not RAM here even though libxl counts its
        pages in ``lowmem_end``: it belongs to the fixed areas, which name a conflict
        there more usefully (``bios`` rather than ``ram``).
        """
        ranges = [Range(0, self.low_ram_end), Range(HIGH_RAM_START, lowmem_end)]
        if highmem_end > FOUR_GIB:
            ranges.append(Range(FOUR_GIB, highmem_end))
        return RangeSet(ranges)

    def conflict_kinds(self, rng: Range, ram: RangeSet) -> tuple[str, ...]:
        """What ``rng`` overlaps in a guest with RAM ``ram``: ``ram`` and fixed-area kinds.

        In address order, each kind once; empty when the range is clear (in the MMIO
        hole or above the highest RAM).
        """
        # At most three RAM ranges and five areas: plain comparisons beat any index
        # here, and this runs once per region (tens of thousands with strategy=host).
        start, end = rng.start, rng.end
        hits = [(max(part.start, start), "ram") for part in ram if part.start < end and start < part.end]
        hits += [(max(area.range.start, start), area.kind) for area in self.areas
                 if area.range.start < end and start < area.range.end]
        if len(hits) < 2:
            return tuple(kind for _, kind in hits)
        kinds: list[str] = []
        for _, kind in sorted(hits):
            if kind not in kinds:
                kinds.append(kind)
        return tuple(kinds)


def check_seabios_size(kib: int, name: str = "seabios_size") -> int:
    """Refuse a SeaBIOS size hvmloader cannot load; return it in bytes.

    Page granular (the BIOS area is an e820 entry) and at most 256 KiB
    (``seabios_setup_e820``: ``BUG_ON(bios_address < 0x000c0000)``).
    """
    if not 0 < kib <= SEABIOS_SIZE_MAX_KIB or kib % 4:
        raise InputError(f"{name} {kib} KiB is not a multiple of 4 KiB from 4 to {SEABIOS_SIZE_MAX_KIB} KiB")
    return kib * KIB


def firmware(bios: Bios, seabios_size_kib: int = 128) -> Firmware:
    """The firmware's layout below 1 MiB, as hvmloader sets it up.

    * SeaBIOS (``seabios_load``, ``seabios_setup_e820``): the image ends at 1 MiB, so
      the area starts at ``0x100000 - image size`` (upstream Xen builds 128 KiB:
      ``0xE0000``; Debian ships 256 KiB: ``0xC0000``).
    * ROMBIOS (``rombios_setup_e820``): the image is at ``0xF0000``
      (``ROMBIOS_PHYSICAL_ADDRESS``), but hvmloader reserves from ``0xE0000`` ("PC-specific
      area. We place various tables here"), and ``0x9E000-0x9FFFF`` (stack and EBDA).
    * OVMF (``ovmf_setup_e820``): from ``0xF0000`` (``LOWCHUNK_BEGIN``, the reset vector).

    Raises :class:`InputError` for a SeaBIOS size :func:`check_seabios_size` refuses.
    """
    low_ram_end = LEGACY_RAM_END
    if bios is Bios.SEABIOS:
        bios_base = HIGH_RAM_START - check_seabios_size(seabios_size_kib)
    elif bios is Bios.ROMBIOS:
        bios_base, low_ram_end = 0xE0000, ROMBIOS_LOW_RESERVED
    else:
        bios_base = 0xF0000
    areas = []
    if low_ram_end < LEGACY_RAM_END:
        areas.append(FixedArea("bios", Range(low_ram_end, LEGACY_RAM_END), in_e820=True))
    areas.append(FixedArea("vga", VGA_AREA, in_e820=False))
    if bios_base > ROM_AREA_START:
        areas.append(FixedArea("rom", Range(ROM_AREA_START, bios_base), in_e820=False))
    areas += [FixedArea("bios", Range(bios_base, HIGH_RAM_START), in_e820=True),
              FixedArea("firmware", Range(FIRMWARE_AREA_START, FOUR_GIB), in_e820=True)]
    return Firmware(bios, low_ram_end, tuple(areas))


DEFAULT_FIRMWARE = firmware(Bios.SEABIOS)
"""xl's default firmware for an HVM guest (``bios="seabios"``), at upstream's 128 KiB."""


def check_mmio_hole(mib: int, name: str = "mmio_hole") -> int:
    """Refuse an MMIO hole xl would refuse (``tools/xl/xl_parse.c``); return it in bytes."""
    if not MMIO_HOLE_MIN_MIB <= mib <= MMIO_HOLE_MAX_MIB:
        raise InputError(f"{name} {mib} MiB is outside xl's limits {MMIO_HOLE_MIN_MIB}-{MMIO_HOLE_MAX_MIB} MiB")
    return mib * MIB


def default_lowmem_end(memory: int, mmio_hole: int) -> int:
    """Where low RAM ends before any region is avoided: ``min(memory, 4 GiB - hole)``."""
    return min(memory, FOUR_GIB - mmio_hole)
