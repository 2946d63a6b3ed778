"""Secondary bus numbers from a fake sysfs tree resolve DMAR scopes through bridges."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmrrd.core.dmar import dmar_inventory, parse_dmar
from rmrrd.core.pci import Bdf
from rmrrd.edges.sysfs_pci import read_secondary_buses, sysfs_bus_lookup
from support.firmware import table
from support.sysfs import make_device

pytestmark = pytest.mark.unit

def test_bridges_only_and_odd_entries_ignored(tmp_path: Path) -> None:
    make_device(tmp_path, "0000:00:1c.4", bridge=True, secondary=3)
    make_device(tmp_path, "0000:00:1d.0", bridge=False, secondary=9)
    (tmp_path / "sys" / "bus" / "pci" / "devices" / "not-a-bdf").mkdir()
    short = tmp_path / "sys" / "bus" / "pci" / "devices" / "0000:00:1e.0"
    short.mkdir()
    (short / "config").write_bytes(b"\x00" * 8)
    assert read_secondary_buses(tmp_path) == {Bdf(0, 0, 0x1C, 4): 3}
    lookup = sysfs_bus_lookup(tmp_path)
    assert lookup(0, 0, 0x1C, 4) == 3 and lookup(0, 0, 0x1D, 0) is None


def test_missing_tree_gives_empty_lookup(tmp_path: Path) -> None:
    assert read_secondary_buses(tmp_path) == {}


@pytest.mark.firmware
def test_real_table_resolved_through_fake_tree(tmp_path: Path) -> None:
    for name, bus in (("0000:00:1c.4", 3), ("0000:00:01.0", 4), ("0000:00:09.0", 5), ("0000:00:03.0", 6)):
        make_device(tmp_path, name, bridge=True, secondary=bus)
    data = table("linuxhw_HP-ProLiant-DL360-G7_60DCEE46526A_DMAR.bin").read_bytes()
    inv = dmar_inventory(parse_dmar(data, sysfs_bus_lookup(tmp_path)), "h")
    assert inv.warnings == ()
    shared = inv.regions_for(Bdf(0, 3, 0, 2))
    assert len(shared) == 2
    assert shared[1].devices == (Bdf(0, 4, 0, 0), Bdf(0, 3, 0, 0), Bdf(0, 3, 0, 2), Bdf(0, 5, 0, 0),
                                 Bdf(0, 5, 0, 1), Bdf(0, 6, 0, 0), Bdf(0, 6, 0, 1))
