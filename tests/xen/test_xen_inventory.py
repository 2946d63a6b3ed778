"""``rmrrd inventory`` on a real dom0's ACPI tables.

Two machines: QEMU's VT-d alone (Xen drives it and dom0 sees its DMAR renamed RMAD),
and the same plus a laptop's firmware DMAR given to the machine's firmware with
``-acpitable`` (Xen takes QEMU's, which comes first; dom0 sees the laptop's as DMAR).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from xen.conftest import FIRMWARE_DMAR
from xen.testbed import Dom0

TABLES = "/sys/firmware/acpi/tables"


def inventory_in_dom0(dom0: Dom0, table: str) -> dict[str, Any]:
    result = dom0.rmrrd("inventory", "--dmar", f"{TABLES}/{table}", "--json", "--host", "h")
    inventory: dict[str, Any] = json.loads(result.stdout)
    return inventory


def test_qemus_dmar_is_rmad_in_dom0_and_rmrrd_reads_it(dom0: Dom0) -> None:
    assert "I/O virtualisation enabled" in dom0.run("xl dmesg").text  # Xen owns VT-d
    tables = dom0.run(["ls", TABLES]).text.split()
    assert "RMAD" in tables and "DMAR" not in tables
    inventory = inventory_in_dom0(dom0, "RMAD")
    assert inventory["table"]["signature"] == "RMAD" and inventory["table"]["checksum_ok"]
    assert inventory["table"]["oem_id"].strip() == "BOCHS"
    assert [drhd["reg"] for drhd in inventory["table"]["drhds"]] == ["0xfed90000"]  # QEMU's intel-iommu
    assert inventory["regions"] == [] and inventory["warnings"] == []  # QEMU declares no RMRR


def test_a_firmware_dmar_reads_in_dom0_as_on_the_host(ox_dom0: Dom0) -> None:
    original = FIRMWARE_DMAR.read_bytes()
    assert ox_dom0.run(["cat", f"{TABLES}/DMAR"]).stdout == original  # byte for byte, not renamed
    assert "RMAD" in ox_dom0.run(["ls", TABLES]).text.split()  # QEMU's, the one Xen took
    in_dom0 = inventory_in_dom0(ox_dom0, "DMAR")
    on_host = json.loads(subprocess.run(
        [sys.executable, "-m", "rmrrd", "inventory", "--dmar", str(FIRMWARE_DMAR), "--json", "--host", "h"],
        capture_output=True, check=True, timeout=60).stdout)
    assert in_dom0 == on_host
    assert [region["range"] for region in in_dom0["regions"]] == [
        "0x782cd000-0x78516fff", "0x7c000000-0x7e7fffff", "0x7667e000-0x766fdfff"]
