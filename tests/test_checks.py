"""The toolstack checks beyond the seed scenario's rows: shared regions, unreserved regions, ranking."""

from __future__ import annotations

import pytest

from rmrrd.core.checks import check_assign, check_hotplug, check_migrate, rank_migration_targets
from rmrrd.errors import InputError
from rmrrd.core.inventory import HostRegion, Inventory, find_host
from rmrrd.core.pci import Bdf
from rmrrd.core.planner import DomainRequest, Plan, learned_plan, plan
from rmrrd.core.ranges import parse_range
from rmrrd.core.xlcfg import DeviceSpec, Policy

pytestmark = pytest.mark.unit

NIC, NIC2, HBA = Bdf.parse("00:03.0"), Bdf.parse("00:03.1"), Bdf.parse("00:04.0")
HOST = Inventory("h", (
    HostRegion(parse_range("0xd0000000-0xd0ffffff"), (NIC, NIC2)),   # shared, in the MMIO hole
    HostRegion(parse_range("0xe8000000-0xe8000fff"), (HBA,)),        # in the hole, not reserved
))
PEERS = {
    "clean": Inventory("clean", (HostRegion(parse_range("0xe0000000-0xe0000fff"), (HBA,)),)),
    "bad": Inventory("bad", (HostRegion(parse_range("0x1000000-0x1000fff"), (HBA,)),
                             HostRegion(parse_range("0xfee00000-0xfee00fff"), (NIC,)))),
}


@pytest.fixture
def layout() -> Plan:
    return plan(DomainRequest(memory_mib=2048, pci=(DeviceSpec(NIC),)), HOST, PEERS)


def test_region_shared_with_another_domains_device_fails_even_relaxed(layout: Plan) -> None:
    verdict = check_assign(layout, HOST, DeviceSpec(NIC, Policy.RELAXED), {NIC2: 5})
    assert verdict.verdict == "fail"
    assert [str(c) for c in verdict.conflicts] == ["0xd0000000-0xd0ffffff shared 0000:00:03.1"]
    assert "domain 5" in verdict.reason


def test_unreserved_region_warns_whatever_the_policy(layout: Plan) -> None:
    for policy in Policy:
        verdict = check_hotplug(layout, HOST, DeviceSpec(HBA, policy), {})
        assert verdict.verdict == "warn"
        assert [str(c) for c in verdict.conflicts] == ["0xe8000000-0xe8000fff unreserved 0000:00:04.0"]


def test_device_without_regions_is_ok(layout: Plan) -> None:
    verdict = check_assign(layout, HOST, DeviceSpec(Bdf.parse("00:1f.3")), {NIC2: 5})
    assert (verdict.verdict, verdict.conflicts) == ("ok", ())


def test_migrate_to_unknown_host_is_input_error(layout: Plan) -> None:
    with pytest.raises(InputError, match="migrate target 'nowhere'"):
        check_migrate(layout, PEERS, "nowhere")


def test_migrate_without_devices_only_warns(layout: Plan) -> None:
    verdict = check_migrate(layout, PEERS, "bad")
    assert verdict.verdict == "warn"
    assert [str(c) for c in verdict.conflicts] == ["0x1000000-0x1000fff ram 0000:00:04.0",
                                                   "0xfee00000-0xfee00fff firmware 0000:00:03.0"]
    assert check_migrate(layout, PEERS, "bad", [DeviceSpec(HBA)]).verdict == "fail"


def test_ranking_puts_fewest_conflicts_first(layout: Plan) -> None:
    ranked = rank_migration_targets(layout, PEERS)
    assert [name for name, _ in ranked] == ["clean", "bad"]
    assert [v.count_of("warn") for _, v in ranked] == [1, 2]   # "clean" is unreserved only


def test_migrate_target_may_be_an_alias() -> None:
    """xl migrate and libvirt name the destination as they like: any alias finds the peer."""

    peer = Inventory("node-b", (HostRegion(parse_range("0x1000-0x1fff"), ()),), aliases=("node-b.example", "10.0.0.2"))
    peers = {"node-b": peer}
    assert find_host(peers, "10.0.0.2") == ("node-b", peer)
    assert find_host(peers, "node-c") is None
    plan_ = plan(DomainRequest(memory_mib=1024), Inventory("node-a", ()), {})
    by_alias = check_migrate(plan_, peers, "node-b.example")
    assert by_alias.reason.startswith("migrate to node-b (as node-b.example): ")
    assert by_alias.verdict == check_migrate(plan_, peers, "node-b").verdict
    with pytest.raises(InputError, match=r"known: node-b \(node-b.example, 10.0.0.2\)"):
        check_migrate(plan_, peers, "node-c")


def test_a_learned_pv_guest_meets_no_layout_but_shared_rmrrs_still_count() -> None:
    # A PV guest's device regions are mapped 1:1 in the IOMMU (set_identity_p2m_entry),
    # never over its memory: only the device scopes and other domains' devices matter.
    pv = learned_plan("pv", DomainRequest(128), True, HOST, {})
    assert (pv.guest, pv.lowmem_end, pv.regions) == ("pv", 0, ())
    assert check_hotplug(pv, HOST, DeviceSpec(HBA), {}).verdict == "ok"
    assert check_hotplug(pv, HOST, DeviceSpec(NIC), {NIC2: 5}).verdict == "fail"


def test_a_domain_created_without_passthrough_takes_no_device() -> None:
    closed = learned_plan("hvm", DomainRequest(1024), False, HOST, {})
    for check in (check_assign, check_hotplug):
        verdict = check(closed, HOST, DeviceSpec(Bdf.parse("00:1f.3"), Policy.RELAXED), {})
        assert verdict.verdict == "fail" and "created without passthrough" in verdict.reason
    assert check_migrate(closed, PEERS, "clean", [DeviceSpec(HBA)]).verdict == "fail"
    assert learned_plan("hvm", DomainRequest(1024), True, HOST, {}) == plan(DomainRequest(1024), HOST, {})
