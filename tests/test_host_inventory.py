"""host.sources: tables from an ACPI directory, YAML files, missing tables, merging."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rmrrd.errors import InputError
from rmrrd.edges.host_inventory import build_host_inventory
from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import Range
from support.firmware import table
from support.sysfs import make_device

pytestmark = pytest.mark.unit


def test_missing_tables_are_warnings(tmp_path: Path) -> None:
    inv = build_host_inventory("h", ["dmar", "ivrs"], sysfs_root=tmp_path, acpi_dir=tmp_path)
    assert inv.regions == () and len(inv.warnings) == 2 and "no DMAR table" in inv.warnings[0]


@pytest.mark.firmware
def test_dmar_with_sysfs_and_yaml_merge(tmp_path: Path) -> None:
    shutil.copy(table("linuxhw_DEPO-Super-Server-Supermicro-board_F84E17B9619B_DMAR.bin"), tmp_path / "DMAR")
    make_device(tmp_path, "0000:00:02.0", bridge=True, secondary=1)
    extra = tmp_path / "extra.yaml"
    extra.write_text("host: h\nregions:\n  - range: 0x7ba6d000-0x7ba7cfff\n    devices: [00:1f.0, 00:14.0]\n"
                     "  - range: 0xe0000-0xeffff\n    devices: [00:14.0]\n")
    inv = build_host_inventory("h", ["dmar", "ivrs", str(extra)], sysfs_root=tmp_path, acpi_dir=tmp_path)
    assert [region.range for region in inv.regions] == [
        Range(0x7BA6D000, 0x7BA7D000), Range(0x723F8000, 0x7A438000), Range(0xE0000, 0xF0000)]
    assert inv.regions[0].devices == (Bdf(0, 0, 0x14, 0), Bdf(0, 0, 0x1A, 0), Bdf(0, 0, 0x1D, 0), Bdf(0, 0, 0x1F, 0))
    assert inv.regions[1].devices == (Bdf(0, 1, 0, 0),)
    assert inv.warnings == (f"{tmp_path / 'IVRS'}: no IVRS table (not a host with that IOMMU?): source 'ivrs' skipped",)


def test_broken_table_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "IVRS").write_bytes(b"IVRS" + bytes(10))
    with pytest.raises(InputError, match=r"IVRS: IVRS at offset 0xe: truncated"):
        build_host_inventory("h", ["ivrs"], acpi_dir=tmp_path)


def test_missing_yaml_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the inventory"):
        build_host_inventory("h", [str(tmp_path / "absent.yaml")], acpi_dir=tmp_path)


DELL_DMAR = "linuxhw_Dell-Latitude-5511_A37FB9368F2A_DMAR.bin"
DELL_RMRRS = [Range(0x782CD000, 0x78517000), Range(0x7C000000, 0x7E800000), Range(0x7667E000, 0x766FE000)]


@pytest.mark.firmware
def test_in_a_xen_dom0_the_dmar_is_read_under_the_name_xen_gives_it(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    # Xen renames the DMAR of the IOMMU it drives to RMAD (acpi_dmar_zap): the same
    # bytes reordered, so the checksum holds.  It is the table whose RMRRs Xen enforces,
    # so a DMAR beside it (a table Xen did not take) is not read.
    (tmp_path / "RMAD").write_bytes(b"RMAD" + table(DELL_DMAR).read_bytes()[4:])
    (tmp_path / "DMAR").write_bytes(b"garbage")
    caplog.set_level("INFO", logger="rmrrd.edges.host_inventory")
    inv = build_host_inventory("h", ["dmar"], sysfs_root=tmp_path, acpi_dir=tmp_path)
    assert [region.range for region in inv.regions] == DELL_RMRRS
    assert inv.warnings == ()
    assert f"host h: {tmp_path / 'RMAD'}: 3 reserved regions" in caplog.messages
    (tmp_path / "RMAD").unlink()
    with pytest.raises(InputError, match=r"/DMAR: DMAR at offset 0x7: truncated"):
        build_host_inventory("h", ["dmar"], sysfs_root=tmp_path, acpi_dir=tmp_path)


@pytest.mark.firmware
def test_a_table_named_neither_dmar_nor_rmad_is_refused(tmp_path: Path) -> None:
    (tmp_path / "DMAR").write_bytes(b"XMAR" + table(DELL_DMAR).read_bytes()[4:])
    with pytest.raises(InputError, match=r"signature is 'XMAR', expected 'DMAR' or 'RMAD'"):
        build_host_inventory("h", ["dmar"], sysfs_root=tmp_path, acpi_dir=tmp_path)
