"""IVRS cases no fixture has: IVMD 0x20, a PCI segment, flags and ranges Xen rejects."""

from __future__ import annotations

import struct

import pytest

from rmrrd.core.acpi import TableError
from rmrrd.core.ivrs import ivrs_inventory, parse_ivrs
from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import Range
from support.acpi_tables import fix_checksum, ivmd, ivrs

pytestmark = pytest.mark.unit

IVHD = struct.pack("<BBH", 0x10, 0xB0, 24) + bytes(20)


def test_ivmd_all_devices() -> None:
    table = parse_ivrs(ivrs([IVHD, ivmd(0x20, 0x7, 0, 0, 0x80000000, 0x10000)]))
    inv = ivrs_inventory(table, "h")
    assert inv.regions[0].all_devices and inv.regions[0].range == Range(0x80000000, 0x80010000)
    assert inv.regions_for(Bdf(0, 0x42, 3, 1)) == inv.regions


def test_ivmd_one_device_with_segment_and_range() -> None:
    table = parse_ivrs(ivrs([ivmd(0x21, 0x8, 0x0310, 0, 0x1000, 0x2000, segment=2),
                             ivmd(0x22, 0x8, 0x0008, 0x000A, 0x5000, 0x1000)]))
    one, span = ivrs_inventory(table, "h").regions
    assert one.devices == (Bdf(2, 3, 2, 0),) and one.range == Range(0x1000, 0x3000)
    assert span.devices == (Bdf(0, 0, 1, 0), Bdf(0, 0, 1, 1), Bdf(0, 0, 1, 2))


@pytest.mark.parametrize(("block", "fragment"), [
    (ivmd(0x21, 0x6, 0x10, 0, 0x1000, 0x1000), "neither unity mapping nor exclusion"),
    (ivmd(0x21, 0x1, 0x10, 0, 0x1000, 0), "length 0"),
    (ivmd(0x22, 0x1, 0x10, 0x08, 0x1000, 0x1000), "ends (0x8) below its start (0x10)"),
    (ivmd(0x21, 0x1, 0x10, 0, 0xFFFFFFFFFFFFF000, 0x2000), "past the 64-bit address space"),
])
def test_ivmd_rejected_by_xen_is_skipped_with_warning(block: bytes, fragment: str) -> None:
    inv = ivrs_inventory(parse_ivrs(ivrs([block])), "h")
    assert inv.regions == () and fragment in inv.warnings[0]


def test_short_ivmd_is_table_error() -> None:
    short = struct.pack("<BBH", 0x21, 0x8, 16) + bytes(12)
    with pytest.raises(TableError, match=r"IVRS at offset 0x30: IVMD type 0x21 length 16"):
        parse_ivrs(ivrs([short]))


def test_zero_length_block_is_table_error() -> None:
    raw = bytearray(ivrs([IVHD]))
    struct.pack_into("<H", raw, 50, 0)
    with pytest.raises(TableError, match="has length 0"):
        parse_ivrs(fix_checksum(raw))
