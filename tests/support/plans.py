"""Plans built the way the daemon builds them, from the inventories in ``etc/inventories``.

The seed scenario's domain 1 on node-a (low RAM ends at 0xa0000000, D2's region
0xa0000000-0xa37fffff opens the MMIO hole, D1's 0xe0000-0xeffff sits in the BIOS
area and node-b's 0x40000000-0x40003fff in RAM), and a bare guest with only the
ranges it reserves.
"""

from __future__ import annotations

from rmrrd.core.inventory import Inventory
from rmrrd.core.inventory_yaml import load_inventory_file
from rmrrd.core.planner import Plan, parse_domain_request, plan

from support import D1, D2, INVENTORIES


def seed_plan(pci: str = D2) -> Plan:
    """Domain 1 of the seed scenario on node-a, as the daemon would plan it."""
    peers = {"node-b": load_inventory_file(INVENTORIES / "node-b.yaml")}
    request = parse_domain_request("4096", "1024", None, None, [pci], [D1], ["node-b"])
    return plan(request, load_inventory_file(INVENTORIES / "node-a.yaml"), peers)


def reserve_plan(reserve: list[str]) -> Plan:
    """A 4 GiB guest with a 1 GiB hole and only the given ``reserve`` ranges."""
    request = parse_domain_request("4096", "1024", None, None, reserve=reserve)
    return plan(request, Inventory("here", ()), {})
