"""The fixed parts of an HVM guest's physical address space, as Xen lays it out.

A reserved region that lands on one of these cannot be moved out of the way: the
guest's firmware or legacy devices live there.  Every constant comes from Xen's
sources (``xen-project/xen``), cited beside it:

* ``tools/firmware/hvmloader/e820.c``, ``build_e820_table``: RAM from 0 to
  ``0xA0000``; "0xA0000-0xC0000: VGA memory-mapped I/O"; "0xC0000-0xE0000: 16-bit
  devices, expansion ROMs (inc. vgabios)"; the BIOS image reserved up to 1 MiB; RAM
  again from ``0x100000`` to ``low_mem_pgend``; ``RESERVED_MEMBASE`` to 4 GiB reserved
  "for special pages ... LAPIC, IOAPIC, default SVGA framebuffer"; RAM from 4 GiB to
  ``high_mem_pgend``.  It also ``BUG_ON``s when low RAM ends below 2 MiB.
* ``tools/firmware/hvmloader/config.h``: ``VGABIOS_PHYSICAL_ADDRESS 0x000C0000``,
  ``RESERVED_MEMBASE 0xFC000000`` (ACPI info, dynamic reserved memory, the
  ``GUEST_RESERVED`` window at ``0xFE700000``, IOAPIC ``0xfec00000``, LAPIC
  ``0xfee00000``).  The BIOS image ends at 1 MiB; a 128 KiB SeaBIOS or ROMBIOS
  (``ROMBIOS_PHYSICAL_ADDRESS 0x000E0000``) starts at ``0xE0000``.
* ``xen/include/public/hvm/e820.h``: ``HVM_BELOW_4G_MMIO_START 0xF0000000`` and
  ``HVM_BELOW_4G_MMIO_LENGTH`` (256 MiB); ``tools/xl/xl_parse.c`` refuses an
  ``mmio_hole`` smaller than the length or larger than the start, i.e. outside
  256..3840 MiB, and libxl's default hole is that length.
"""

from __future__ import annotations

from dataclasses import dataclass

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
"""Start of low RAM above the legacy area (``HVMLOADER_PHYSICAL_ADDRESS``)."""


@dataclass(frozen=True, slots=True)
class FixedArea:
    """A part of the guest's map that is neither RAM nor movable.

    ``in_e820`` tells whether hvmloader reports it as a reserved e820 entry (the BIOS
    and the special pages) or leaves it out (the VGA window and option ROMs, which
    "OSes will not use as RAM" by convention).
    """

    kind: str
    range: Range
    in_e820: bool


FIXED_AREAS: tuple[FixedArea, ...] = (
    FixedArea("vga", Range(0xA0000, 0xC0000), in_e820=False),
    FixedArea("rom", Range(0xC0000, 0xE0000), in_e820=False),
    FixedArea("bios", Range(0xE0000, 0x100000), in_e820=True),
    FixedArea("firmware", Range(0xFC000000, FOUR_GIB), in_e820=True),
)
"""In address order; the kinds are what ``region/<n>/conflict`` reports."""

E820_FIXED_RESERVED = RangeSet(area.range for area in FIXED_AREAS if area.in_e820)


def check_mmio_hole(mib: int, name: str = "mmio_hole") -> int:
    """Refuse an MMIO hole xl would refuse (``tools/xl/xl_parse.c``); return it in bytes."""
    if not MMIO_HOLE_MIN_MIB <= mib <= MMIO_HOLE_MAX_MIB:
        raise InputError(f"{name} {mib} MiB is outside xl's limits {MMIO_HOLE_MIN_MIB}-{MMIO_HOLE_MAX_MIB} MiB")
    return mib * MIB


def default_lowmem_end(memory: int, mmio_hole: int) -> int:
    """Where low RAM ends before any region is avoided: ``min(memory, 4 GiB - hole)``."""
    return min(memory, FOUR_GIB - mmio_hole)


def guest_ram(lowmem_end: int, highmem_end: int) -> RangeSet:
    """The guest RAM hvmloader reports for a layout (``build_e820_table``).

    The legacy window ``0xA0000-0xFFFFF`` is not RAM here even though its pages are
    below ``lowmem_end``: it belongs to the fixed areas, which name a conflict there
    more usefully (``bios`` rather than ``ram``).
    """
    ranges = [Range(0, LEGACY_RAM_END), Range(HIGH_RAM_START, lowmem_end)]
    if highmem_end > FOUR_GIB:
        ranges.append(Range(FOUR_GIB, highmem_end))
    return RangeSet(ranges)


def conflict_kinds(rng: Range, ram: RangeSet) -> tuple[str, ...]:
    """What ``rng`` overlaps in a guest with RAM ``ram``: ``ram`` and fixed-area kinds.

    In address order, each kind once; empty when the range is clear (in the MMIO hole
    or above the highest RAM).
    """
    # At most three RAM ranges and four areas: plain comparisons beat any index here,
    # and this runs once per region (tens of thousands with strategy=host).
    start, end = rng.start, rng.end
    hits = [(max(part.start, start), "ram") for part in ram if part.start < end and start < part.end]
    hits += [(max(area.range.start, start), area.kind) for area in FIXED_AREAS
             if area.range.start < end and start < area.range.end]
    if len(hits) < 2:
        return tuple(kind for _, kind in hits)
    kinds: list[str] = []
    for _, kind in sorted(hits):
        if kind not in kinds:
            kinds.append(kind)
    return tuple(kinds)
