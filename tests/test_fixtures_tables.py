"""Every real firmware table parses, to every value its corpus's expected.json gives.

The corpus is the repository's (``tests/data/firmware``) plus, when
``RMRRD_EXTRA_FIRMWARE`` names one, an extra directory of tables (``support.firmware``).
"""

from __future__ import annotations

from typing import Any

import pytest

from rmrrd.cli.inventory import dmar_to_json, ivrs_to_json
from rmrrd.core.dmar import DmarTable, dmar_inventory, parse_dmar
from rmrrd.core.inventory import UnresolvedDevice
from rmrrd.core.ivrs import IvrsTable, ivrs_inventory, parse_ivrs
from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import Range
from support.firmware import CORPUS, EXTRA, NAMES, OWN, assert_matches_expected, is_dmar, table

pytestmark = [pytest.mark.unit, pytest.mark.firmware]


def _decode(name: str) -> dict[str, Any]:
    data = table(name).read_bytes()
    return dmar_to_json(parse_dmar(data)) if is_dmar(name) else ivrs_to_json(parse_ivrs(data))


def test_the_repository_carries_its_corpus() -> None:
    # 19 licensed tables, 12 with expected values: a clone alone tests the parsers on them.
    assert len(OWN.tables) == 19 and len(OWN.expected) == 12
    assert set(OWN.expected) <= set(OWN.tables) and set(CORPUS.expected) <= set(CORPUS.tables)


@pytest.mark.skipif(EXTRA is None, reason="no extra corpus (RMRRD_EXTRA_FIRMWARE unset)")
def test_extra_corpus_agrees_with_the_repositorys_copies() -> None:
    assert EXTRA is not None
    common = set(OWN.tables) & set(EXTRA.tables)
    for name in common:
        assert OWN.tables[name].read_bytes() == EXTRA.tables[name].read_bytes(), name
    for name in set(OWN.expected) & set(EXTRA.expected):
        assert OWN.expected[name] == EXTRA.expected[name], name
    for name in set(OWN.counts) & set(EXTRA.counts):
        assert OWN.counts[name] == EXTRA.counts[name], name


@pytest.mark.parametrize("name", NAMES)
def test_every_table_parses_and_walks_to_its_end(name: str) -> None:
    data = table(name).read_bytes()
    parsed: DmarTable | IvrsTable
    if is_dmar(name):
        parsed = dmar = parse_dmar(data)
        inventory = dmar_inventory(dmar, "h")
    else:
        parsed = ivrs = parse_ivrs(data)
        inventory = ivrs_inventory(ivrs, "h")
    last = parsed.subtables[-1] if parsed.subtables else None
    assert last is None or last.offset + last.length == len(data) == parsed.header.length
    assert parsed.header.checksum_ok
    assert all(region.range.is_page_aligned() for region in inventory.regions)


@pytest.mark.parametrize("name", sorted(CORPUS.expected))
def test_values_match_expected(name: str) -> None:
    assert_matches_expected(_decode(name), CORPUS.expected[name])


def test_comparison_catches_a_wrong_value() -> None:
    # The comparison must fail on one wrong nested value, else the test above proves nothing.
    name = "linuxhw_DEPO-Super-Server-Supermicro-board_F84E17B9619B_DMAR.bin"
    got = _decode(name)
    got["rmrrs"][1]["scopes"][0]["path"][1][0] += 1
    with pytest.raises(AssertionError):
        assert_matches_expected(got, OWN.expected[name])
    ivrs = "linuxhw_ASUS-Zenbook-S16-UM5606WA_4AF98851C2C6_IVRS.bin"
    got = _decode(ivrs)
    got["ivmds"][1]["bdf"] = "c4:00.6"
    with pytest.raises(AssertionError):
        assert_matches_expected(got, OWN.expected[ivrs])


def test_readme_lists_every_table() -> None:
    assert set(OWN.counts) == set(OWN.tables)
    if EXTRA is not None and EXTRA.counts:
        assert set(EXTRA.counts) == set(EXTRA.tables)


@pytest.mark.parametrize("name", sorted(CORPUS.counts))
def test_rmrr_and_ivmd_counts_match_the_readme(name: str) -> None:
    # The only independent value for the tables without an expected.json entry.
    signature, count = CORPUS.counts[name]
    got = _decode(name)
    assert got["signature"] == signature
    assert len(got["rmrrs" if signature == "DMAR" else "ivmds"]) == count


def _inventory(name: str) -> Any:
    data = table(name).read_bytes()
    return dmar_inventory(parse_dmar(data), "h") if is_dmar(name) else ivrs_inventory(parse_ivrs(data), "h")


def test_shared_rmrr_is_one_region_with_every_device() -> None:
    inv = _inventory("linuxhw_DEPO-Super-Server-Supermicro-board_F84E17B9619B_DMAR.bin")
    usb = inv.regions_for(Bdf(0, 0, 0x14, 0))
    assert len(usb) == 1 and usb[0].devices == (Bdf(0, 0, 0x14, 0), Bdf(0, 0, 0x1A, 0), Bdf(0, 0, 0x1D, 0))


def test_scope_through_bridge_is_unresolved_without_sysfs() -> None:
    inv = _inventory("linuxhw_DEPO-Super-Server-Supermicro-board_F84E17B9619B_DMAR.bin")
    gpu_region = next(region for region in inv.regions if region.range == Range(0x723F8000, 0x7A438000))
    assert gpu_region.devices == (UnresolvedDevice(0, 0, ((2, 0), (0, 0))),)
    assert any("unresolved" in warning and "0000:00:02.0/00.0" in warning for warning in inv.warnings)


def test_page_zero_rmrr_is_kept() -> None:
    inv = _inventory("linuxhw_HP-EliteBook-8440p_B28DF3C33D6B_DMAR.bin")
    assert inv.regions[0].range == Range(0, 0x1000)
    assert inv.warnings == ()


def test_base_and_limit_zero_is_skipped_with_warning() -> None:
    dmar = parse_dmar(table("linuxhw_HP-Compaq-6730b_795F37601A0A_DMAR.bin").read_bytes())
    assert any(rmrr.base == 0 and rmrr.limit == 0 for rmrr in dmar.rmrrs)
    inv = dmar_inventory(dmar, "h")
    assert len(inv.regions) == len(dmar.rmrrs) - 1
    assert all(region.range.start != 0 for region in inv.regions)
    assert any("base and limit are both 0" in warning for warning in inv.warnings)


def test_adjacent_rmrrs_stay_separate_and_do_not_warn_as_overlapping() -> None:
    inv = _inventory("linuxhw_HP-Compaq-dc7800-SFF_80DC1538C4FA_DMAR.bin")
    ranges = sorted(region.range for region in inv.regions)
    assert any(a.end == b.start for a, b in zip(ranges, ranges[1:]))
    assert not any("overlaps" in warning for warning in inv.warnings)


def test_one_byte_ivmd_device_range_is_widened_to_a_page() -> None:
    name = "linuxhw_MECHREVO-WUJIE14XA_9249A3556422_IVRS.bin"
    ivrs = parse_ivrs(table(name).read_bytes())
    assert {(ivmd.type, ivmd.mem_length) for ivmd in ivrs.ivmds} == {(0x22, 1)}
    inv = ivrs_inventory(ivrs, "h")
    for ivmd, region in zip(ivrs.ivmds, inv.regions):
        assert region.range == Range(ivmd.start, ivmd.start + 0x1000)
        assert region.devices[0] == Bdf(0, 0, 0, 0) and region.devices[-1] == Bdf(0, ivmd.aux >> 8, 0x1F, 7)
        assert len(region.devices) == ivmd.aux - ivmd.devid + 1
    assert len([w for w in inv.warnings if "widened" in w]) == len(ivrs.ivmds)


def test_undefined_ivrs_subtable_is_skipped() -> None:
    thinkpad = parse_ivrs(table("linuxhw_Lenovo-ThinkPad-T14-Gen3-AMD_696E48381F84_IVRS.bin").read_bytes())
    assert 0x51 in {sub.type for sub in thinkpad.subtables} and len(thinkpad.ivmds) == 1


def test_andd_and_satc_subtables_are_skipped() -> None:
    # Only unlicensed tables have these, so this runs with an extra corpus that has
    # them; tests/test_dmar_synthetic.py covers the same by construction.
    book = parse_dmar(table("lsurf_surface_book_2_DMAR.bin").read_bytes())
    assert [sub.type for sub in book.subtables].count(4) == 5 and len(book.rmrrs) == 2
    laptop6 = parse_dmar(table("lsurf_surface_laptop_6_DMAR.bin").read_bytes())
    assert {5, 6} <= {sub.type for sub in laptop6.subtables} and laptop6.rmrrs == ()
