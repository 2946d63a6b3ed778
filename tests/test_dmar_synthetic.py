"""DMAR cases no fixture has, built from the VT-d layout: segments, quirks, bad lengths."""

from __future__ import annotations

import struct

import pytest

from rmrrd.core.acpi import TableError
from rmrrd.core.dmar import dmar_inventory, parse_dmar
from rmrrd.core.inventory import UnresolvedDevice
from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import Range
from support.acpi_tables import dmar, drhd, fix_checksum, rmrr, scope

pytestmark = pytest.mark.unit

EP = 1


def test_nonzero_segment_and_scope_through_two_bridges() -> None:
    table = dmar([drhd(3, 0xFED90000, [scope(EP, 0, [(2, 0)])]),
                  rmrr(3, 0xE0000, 0xEFFFF, [scope(EP, 0x10, [(1, 0), (0, 0), (4, 1)])])])
    buses = {(3, 0x10, 1, 0): 0x20, (3, 0x20, 0, 0): 0x21}
    parsed = parse_dmar(table, lambda seg, bus, dev, fn: buses.get((seg, bus, dev, fn)))
    assert parsed.drhds[0].segment == 3 and parsed.host_address_width == 39
    assert parsed.rmrrs[0].devices == (Bdf(3, 0x21, 4, 1),)
    inv = dmar_inventory(parsed, "h")
    assert inv.regions[0].range == Range(0xE0000, 0xF0000) and inv.warnings == ()
    # Without the second bridge's bus the device is named by its path.
    half = parse_dmar(table, lambda seg, bus, dev, fn: 0x20 if (bus, dev) == (0x10, 1) else None)
    assert half.rmrrs[0].devices == (UnresolvedDevice(3, 0x10, ((1, 0), (0, 0), (4, 1))),)


def test_unaligned_rmrr_is_widened_with_warning() -> None:
    inv = dmar_inventory(parse_dmar(dmar([rmrr(0, 0x1234, 0x2345, [scope(EP, 0, [(2, 0)])])])), "h")
    assert inv.regions[0].range == Range(0x1000, 0x3000)
    assert inv.warnings and "widened to 0x1000-0x2fff" in inv.warnings[0]


@pytest.mark.parametrize(("base", "limit", "fragment"), [
    (0x3000, 0x1FFF, "limit below base"),
    (0, 0, "both 0"),
])
def test_broken_rmrr_is_skipped_with_warning(base: int, limit: int, fragment: str) -> None:
    inv = dmar_inventory(parse_dmar(dmar([rmrr(0, base, limit, [scope(EP, 0, [(2, 0)])])])), "h")
    assert inv.regions == () and fragment in inv.warnings[0]


def test_rmrr_without_pci_device_is_skipped_and_ioapic_scope_ignored() -> None:
    inv = dmar_inventory(parse_dmar(dmar([rmrr(0, 0x1000, 0x1FFF, [scope(3, 0, [(0x1E, 7)], enum_id=2)])])), "h")
    assert inv.regions == () and "no PCI endpoint" in inv.warnings[0]


def test_overlapping_rmrrs_are_kept_with_a_warning() -> None:
    inv = dmar_inventory(parse_dmar(dmar([rmrr(0, 0x1000, 0x2FFF, [scope(EP, 0, [(2, 0)])]),
                                          rmrr(0, 0x2000, 0x3FFF, [scope(EP, 0, [(3, 0)])])])), "h")
    assert len(inv.regions) == 2 and "overlaps" in inv.warnings[0]


@pytest.mark.parametrize("kind", [4, 5, 6, 0x77])  # ANDD, SATC, SIDP, undefined
def test_other_structures_are_skipped_by_length(kind: int) -> None:
    # 10 bytes: the RMRR after it starts off the 8-byte grid, as in real tables.
    other = struct.pack("<HH", kind, 10) + b"\xff" * 6
    table = parse_dmar(dmar([other, rmrr(0, 0x1000, 0x1FFF, [scope(EP, 0, [(2, 0)])])]))
    assert [(sub.type, sub.offset) for sub in table.subtables] == [(kind, 48), (1, 58)]
    assert table.rmrrs[0].offset == 58


def _edit(table: bytes, offset: int, fmt: str, value: int) -> bytes:
    raw = bytearray(table)
    struct.pack_into(fmt, raw, offset, value)
    return fix_checksum(raw)


GOOD = dmar([rmrr(0, 0x1000, 0x1FFF, [scope(EP, 0, [(2, 0)])])])


@pytest.mark.parametrize(("data", "fragment"), [
    (GOOD[:20], "truncated"),
    (GOOD[:-4], "runs past the end of the data"),
    (_edit(GOOD, 4, "<I", 20), "smaller than the 36-byte header"),
    (_edit(GOOD, 50, "<H", 0), "DMAR at offset 0x30: subtable type 0x1 has length 0"),
    (_edit(GOOD, 50, "<H", 40), "runs past the end of the table"),
    (dmar([struct.pack("<HHxxHQ", 1, 16, 0, 0x1000)]), "DMAR at offset 0x30: RMRR length 16 is below its fixed size 24"),
    (_edit(GOOD, 73, "<B", 7), "DMAR at offset 0x48: device scope length 7"),
    (_edit(GOOD, 78, "<B", 0x20), "device above 0x1f"),
    (GOOD[:9] + bytes([GOOD[9] ^ 1]) + GOOD[10:], "bad checksum"),
    (b"XMAR" + GOOD[4:], "signature is 'XMAR', expected 'DMAR' or 'RMAD'"),
])
def test_malformed_tables_raise_table_error_with_offset(data: bytes, fragment: str) -> None:
    with pytest.raises(TableError) as info:
        parse_dmar(data)
    assert fragment in str(info.value) and str(info.value).startswith("DMAR at offset 0x")


def test_the_dmar_as_xen_renames_it_parses_the_same() -> None:
    # Xen rewrites the signature of the DMAR it drives to RMAD (acpi_dmar_zap in
    # xen/drivers/passthrough/vtd/dmar.c); the bytes are the same, the checksum holds.
    renamed = parse_dmar(b"RMAD" + GOOD[4:])
    assert renamed.header.signature == "RMAD" and renamed.header.checksum_ok
    assert renamed.rmrrs == parse_dmar(GOOD).rmrrs


def test_bad_checksum_can_be_tolerated() -> None:
    bad = GOOD[:9] + bytes([GOOD[9] ^ 1]) + GOOD[10:]
    assert not parse_dmar(bad, verify_checksum=False).header.checksum_ok
