"""Every real firmware table in ../shared/fixtures parses, to every value in expected.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rmrrd.cli.inventory import dmar_to_json, ivrs_to_json
from rmrrd.core.dmar import DmarTable, dmar_inventory, parse_dmar
from rmrrd.core.inventory import UnresolvedDevice
from rmrrd.core.ivrs import IvrsTable, ivrs_inventory, parse_ivrs
from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import Range

FIXTURES = Path(__file__).parents[1] / ".." / "shared" / "fixtures"
TABLES = FIXTURES / "tables"
EXPECTED: dict[str, dict[str, Any]] = json.loads((FIXTURES / "expected.json").read_text())
BINARIES = sorted(path.name for path in TABLES.iterdir() if not path.name.endswith(".dsl"))


def _decode(name: str) -> dict[str, Any]:
    data = (TABLES / name).read_bytes()
    return dmar_to_json(parse_dmar(data)) if "DMAR" in name else ivrs_to_json(parse_ivrs(data))


def test_fixtures_are_present() -> None:
    assert len(BINARIES) == 27 and set(EXPECTED) <= set(BINARIES)


@pytest.mark.parametrize("name", BINARIES)
def test_every_table_parses_and_walks_to_its_end(name: str) -> None:
    data = (TABLES / name).read_bytes()
    table: DmarTable | IvrsTable
    if "DMAR" in name:
        table = dmar = parse_dmar(data)
        inventory = dmar_inventory(dmar, "h")
    else:
        table = ivrs = parse_ivrs(data)
        inventory = ivrs_inventory(ivrs, "h")
    last = table.subtables[-1] if table.subtables else None
    assert last is None or last.offset + last.length == len(data) == table.header.length
    assert table.header.checksum_ok
    assert all(region.range.is_page_aligned() for region in inventory.regions)


def assert_matches_expected(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Compare every value ``want`` (an ``expected.json`` entry) gives, key by key.

    Driven by ``want``'s own keys, so a value added to expected.json is compared too;
    a key missing from ``got`` fails (KeyError), it is never skipped.  RMRRs and IVMDs
    are compared element by element on the expected element's keys (``got`` adds
    decoded fields such as ``devices``); the IVMD BDF is compared as a device, since
    expected.json writes it without the segment.
    """
    assert want, "empty expected entry"
    for key, value in want.items():
        if key in ("rmrrs", "ivmds"):
            assert len(got[key]) == len(value), key
            for index, (have, expect) in enumerate(zip(got[key], value)):
                for field, wanted in expect.items():
                    if field == "bdf":
                        assert Bdf.parse(have[field]) == Bdf.parse(wanted), (key, index, field)
                    else:
                        assert have[field] == wanted, (key, index, field)
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_values_match_expected(name: str) -> None:
    assert_matches_expected(_decode(name), EXPECTED[name])


def test_comparison_catches_a_wrong_value() -> None:
    # The comparison must fail on one wrong nested value, else the test above proves nothing.
    name = "linuxhw_DEPO-Super-Server-Supermicro-board_F84E17B9619B_DMAR.bin"
    got = _decode(name)
    got["rmrrs"][1]["scopes"][0]["path"][1][0] += 1
    with pytest.raises(AssertionError):
        assert_matches_expected(got, EXPECTED[name])
    ivrs = "linuxhw_ASUS-Zenbook-S16-UM5606WA_4AF98851C2C6_IVRS.bin"
    got = _decode(ivrs)
    got["ivmds"][1]["bdf"] = "c4:00.6"
    with pytest.raises(AssertionError):
        assert_matches_expected(got, EXPECTED[ivrs])


_README_ROW = re.compile(r"^\| `([^`]+)` \| (DMAR|IVRS) \| (\d+) (RMRR|IVMD) \|", re.MULTILINE)
_README_COUNTS = {m[1]: (m[2], int(m[3])) for m in _README_ROW.finditer((FIXTURES / "README.md").read_text())}


def test_readme_lists_every_table() -> None:
    assert set(_README_COUNTS) == set(BINARIES)


@pytest.mark.parametrize("name", BINARIES)
def test_rmrr_and_ivmd_counts_match_the_readme(name: str) -> None:
    # The only independent value for the tables whose expected values are kept elsewhere.
    signature, count = _README_COUNTS[name]
    got = _decode(name)
    assert got["signature"] == signature
    assert len(got["rmrrs" if signature == "DMAR" else "ivmds"]) == count


def _inventory(name: str) -> Any:
    data = (TABLES / name).read_bytes()
    return dmar_inventory(parse_dmar(data), "h") if "DMAR" in name else ivrs_inventory(parse_ivrs(data), "h")


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
    table = parse_dmar((TABLES / "linuxhw_HP-Compaq-6730b_795F37601A0A_DMAR.bin").read_bytes())
    assert any(rmrr.base == 0 and rmrr.limit == 0 for rmrr in table.rmrrs)
    inv = dmar_inventory(table, "h")
    assert len(inv.regions) == len(table.rmrrs) - 1
    assert all(region.range.start != 0 for region in inv.regions)
    assert any("base and limit are both 0" in warning for warning in inv.warnings)


def test_adjacent_rmrrs_stay_separate_and_do_not_warn_as_overlapping() -> None:
    inv = _inventory("linuxhw_HP-Compaq-dc7800-SFF_80DC1538C4FA_DMAR.bin")
    ranges = sorted(region.range for region in inv.regions)
    assert any(a.end == b.start for a, b in zip(ranges, ranges[1:]))
    assert not any("overlaps" in warning for warning in inv.warnings)


def test_one_byte_ivmd_device_range_is_widened_to_a_page() -> None:
    name = "linuxhw_MECHREVO-WUJIE14XA_9249A3556422_IVRS.bin"
    table = parse_ivrs((TABLES / name).read_bytes())
    assert {(ivmd.type, ivmd.mem_length) for ivmd in table.ivmds} == {(0x22, 1)}
    inv = ivrs_inventory(table, "h")
    for ivmd, region in zip(table.ivmds, inv.regions):
        assert region.range == Range(ivmd.start, ivmd.start + 0x1000)
        assert region.devices[0] == Bdf(0, 0, 0, 0) and region.devices[-1] == Bdf(0, ivmd.aux >> 8, 0x1F, 7)
        assert len(region.devices) == ivmd.aux - ivmd.devid + 1
    assert len([w for w in inv.warnings if "widened" in w]) == len(table.ivmds)


def test_andd_satc_and_unknown_subtables_are_skipped() -> None:
    book = parse_dmar((TABLES / "lsurf_surface_book_2_DMAR.bin").read_bytes())
    assert [sub.type for sub in book.subtables].count(4) == 5 and len(book.rmrrs) == 2
    laptop6 = parse_dmar((TABLES / "lsurf_surface_laptop_6_DMAR.bin").read_bytes())
    assert {5, 6} <= {sub.type for sub in laptop6.subtables} and laptop6.rmrrs == ()
    thinkpad = parse_ivrs((TABLES / "linuxhw_Lenovo-ThinkPad-T14-Gen3-AMD_696E48381F84_IVRS.bin").read_bytes())
    assert 0x51 in {sub.type for sub in thinkpad.subtables} and len(thinkpad.ivmds) == 1
