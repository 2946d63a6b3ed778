"""Every row of the seed scenario, through ``plan`` and the check functions.

Uses the seed inventories shipped in ``etc/inventories`` so that what the demo
prints and what is tested are the same hosts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rmrrd.core.checks import check_assign, check_hotplug, check_migrate
from rmrrd.core.inventory import Inventory
from rmrrd.core.inventory_yaml import load_inventory_file
from rmrrd.core.planner import Plan, parse_domain_request, plan
from rmrrd.core.xlcfg import parse_device_spec

pytestmark = pytest.mark.unit

_ETC = Path(__file__).resolve().parent.parent / "etc" / "inventories"
D1, D2, D3 = "0000:00:14.0", "0000:00:02.0", "0000:03:00.0"


@pytest.fixture(scope="module")
def node_a() -> Inventory:
    return load_inventory_file(_ETC / "node-a.yaml")


@pytest.fixture(scope="module")
def peers() -> dict[str, Inventory]:
    return {"node-b": load_inventory_file(_ETC / "node-b.yaml")}


def _setup(node_a: Inventory, peers: dict[str, Inventory], pci: str = D2,
           mem_boundary: str | None = None) -> Plan:
    request = parse_domain_request("4096", "1024", None, mem_boundary, [pci], [D1], ["node-b"])
    return plan(request, node_a, peers)


def _rows(result: Plan) -> dict[str, tuple[str, str, str]]:
    return {r["range"]: (r["source"], r["conflict"], r["action"]) for r in result.to_dict()["regions"]}


def test_setup(node_a: Inventory, peers: dict[str, Inventory]) -> None:
    answer = _setup(node_a, peers).to_dict()
    assert (answer["status"], answer["error"]) == ("ready", None)
    assert (answer["lowmem_end"], answer["highmem_end"]) == ("0xa0000000", "0x160000000")
    assert _rows(_setup(node_a, peers)) == {
        "0xa0000000-0xa37fffff": (f"pci {D2}", "none", "avoided"),
        "0x40000000-0x40003fff": ("migrate node-b", "ram", "warned"),
        "0xe0000-0xeffff": (f"hotplug {D1}", "bios", "warned"),
    }
    # The avoided region is reserved in the guest's map; the warned ones in RAM are not.
    assert "0xa0000000-0xa37fffff reserved" in answer["e820"]
    assert not any(entry.startswith("0x40000000-") for entry in answer["e820"])


def test_assign_d2_ok(node_a: Inventory, peers: dict[str, Inventory]) -> None:
    verdict = check_assign(_setup(node_a, peers), node_a, parse_device_spec(D2), {})
    assert (verdict.verdict, verdict.conflicts) == ("ok", ())


@pytest.mark.parametrize(("spec", "expected"), [(D1, "fail"), (f"{D1},rdm_policy=relaxed", "warn")])
def test_hotplug_d1(node_a: Inventory, peers: dict[str, Inventory], spec: str, expected: str) -> None:
    verdict = check_hotplug(_setup(node_a, peers), node_a, parse_device_spec(spec), {})
    assert verdict.verdict == expected
    assert [str(c) for c in verdict.conflicts] == [f"0xe0000-0xeffff bios {D1}"]


@pytest.mark.parametrize(("spec", "expected"), [(D3, "fail"), (f"{D3},rdm_policy=relaxed", "warn")])
def test_migrate_to_node_b_with_d3(node_a: Inventory, peers: dict[str, Inventory], spec: str,
                                   expected: str) -> None:
    verdict = check_migrate(_setup(node_a, peers), peers, "node-b", [parse_device_spec(spec)])
    assert verdict.verdict == expected
    assert [str(c) for c in verdict.conflicts] == [f"0x40000000-0x40003fff ram {D3}"]


def test_migrate_without_devices_warns_for_all_target_devices(node_a: Inventory,
                                                               peers: dict[str, Inventory]) -> None:
    verdict = check_migrate(_setup(node_a, peers), peers, "node-b")
    assert verdict.verdict == "warn"
    assert [str(c) for c in verdict.conflicts] == [f"0x40000000-0x40003fff ram {D3}"]


@pytest.mark.parametrize(("pci", "status"), [(D2, "error"), (f"{D2},rdm_policy=relaxed", "ready")])
def test_mem_boundary_4096_d2_not_avoided(node_a: Inventory, peers: dict[str, Inventory], pci: str,
                                          status: str) -> None:
    result = _setup(node_a, peers, pci=pci, mem_boundary="4096")
    assert result.status == status
    assert result.lowmem_end == 0xC0000000
    source, conflict, action = _rows(result)["0xa0000000-0xa37fffff"]
    assert (conflict, action) == ("ram", "failed" if status == "error" else "warned")
    if status == "error":
        assert result.error is not None and D2 in result.error and "0xa0000000-0xa37fffff" in result.error
