"""Planner rules case by case, and request parsing from xenstore strings."""

from __future__ import annotations

import pytest

from rmrrd.errors import InputError
from rmrrd.core.inventory import HostRegion, Inventory
from rmrrd.core.pci import Bdf
from rmrrd.core.planner import DomainRequest, Plan, parse_domain_request, plan
from rmrrd.core.ranges import parse_range
from rmrrd.core.xlcfg import DeviceSpec, Policy, parse_rdm

pytestmark = pytest.mark.unit

GPU = Bdf.parse("00:02.0")
HOST = Inventory("h", (
    HostRegion(parse_range("0xa0000000-0xa37fffff"), (GPU,)),
    HostRegion(parse_range("0x20000000-0x20000fff"), (Bdf.parse("00:1f.0"),)),
    HostRegion(parse_range("0x180000000-0x180000fff"), (Bdf.parse("00:1d.0"),)),
))


def _by_range(result: Plan) -> dict[str, tuple[str, str, str]]:
    return {str(r.range): (r.source_text, r.conflict_text, r.action) for r in result.regions}


def test_no_regions_gives_the_default_layout() -> None:
    result = plan(DomainRequest(memory_mib=8192), HOST, {})
    assert (result.lowmem_end, result.highmem_end) == (0xF0000000, 0x100000000 + (8192 << 20) - 0xF0000000)
    assert result.regions == () and result.status == "ready"


def test_small_guest_has_no_high_memory() -> None:
    result = plan(DomainRequest(memory_mib=1024, pci=(DeviceSpec(GPU),)), HOST, {})
    assert (result.lowmem_end, result.highmem_end) == (0x40000000, 0x100000000)
    assert _by_range(result)["0xa0000000-0xa37fffff"] == ("pci 0000:00:02.0", "none", "none")
    assert "0xa0000000-0xa37fffff reserved" in result.to_dict()["e820"]


def test_strategy_host_uses_the_domain_policy_and_strict_wins_on_merge() -> None:
    request = DomainRequest(memory_mib=8192, rdm=parse_rdm("strategy=host,policy=relaxed"),
                            pci=(DeviceSpec(Bdf.parse("00:1f.0"), Policy.STRICT),))
    result = plan(request, HOST, {})
    rows = _by_range(result)
    assert rows["0x20000000-0x20000fff"] == ("pci 0000:00:1f.0 host", "ram", "failed")
    assert rows["0x180000000-0x180000fff"] == ("host", "ram", "warned")
    assert rows["0xa0000000-0xa37fffff"] == ("host", "none", "avoided")
    assert result.status == "error" and result.error is not None
    assert "0x20000000-0x20000fff" in result.error and "rdm_mem_boundary" in result.error


def test_region_above_4g_in_high_ram_is_never_moved() -> None:
    request = DomainRequest(memory_mib=8192, rdm=parse_rdm("strategy=host,policy=strict"))
    result = plan(request, HOST, {})
    assert result.error is not None and "RAM above 4 GiB is never moved" in result.error


def test_boundary_is_compared_strictly_as_libxl_does() -> None:
    # libxl: `rdm_start > rdm_mem_boundary`; a region starting exactly on it stays.
    request = DomainRequest(memory_mib=4096, mem_boundary_mib=0xA0000000 >> 20,
                            pci=(DeviceSpec(GPU, Policy.RELAXED),))
    assert _by_range(plan(request, HOST, {}))["0xa0000000-0xa37fffff"][2] == "warned"


def test_overlapping_reserve_and_device_regions_merge() -> None:
    request = DomainRequest(memory_mib=2048, pci=(DeviceSpec(GPU),),
                            reserve=(parse_range("0xa3000000-0xa3ffffff"), parse_range("0xfc000000-0xfc000fff")))
    rows = _by_range(plan(request, HOST, {}))
    assert rows["0xa0000000-0xa3ffffff"] == ("pci 0000:00:02.0 reserve", "none", "none")
    assert rows["0xfc000000-0xfc000fff"] == ("reserve", "firmware", "warned")


def test_region_below_2_mib_is_never_avoided() -> None:
    request = DomainRequest(memory_mib=4096, mem_boundary_mib=0, reserve=(parse_range("0x10000-0x10fff"),))
    result = plan(request, HOST, {})
    assert result.lowmem_end == 0xF0000000
    assert _by_range(result)["0x10000-0x10fff"] == ("reserve", "ram", "warned")


def test_unknown_migrate_host_is_named() -> None:
    with pytest.raises(InputError, match="migrate host 'node-z' is not a known peer"):
        plan(DomainRequest(memory_mib=1024, migrate=("node-z",)), HOST, {})


def test_parse_domain_request_defaults_and_keyed_entries() -> None:
    request = parse_domain_request("4096", None, None, None, {"3": "00:02.0,rdm_policy=relaxed"})
    assert (request.mmio_hole_mib, request.mem_boundary_mib) == (256, 2048)
    assert (request.rdm.strategy, request.rdm.domain_policy) == (None, Policy.RELAXED)
    assert request.pci == (DeviceSpec(GPU, Policy.RELAXED),)


def test_device_policy_follows_the_requests_rdm_policy() -> None:
    # As xl_parse.c: a device without rdm_policy takes the policy the request's rdm=
    # names ("the per-device policy always follows the global policy by default").
    request = parse_domain_request("4096", "1024", "policy=relaxed", "4096", ["00:02.0"])
    assert request.pci == (DeviceSpec(GPU),) and request.device_policy is Policy.RELAXED
    result = plan(request, HOST, {})
    assert result.status == "ready"
    assert _by_range(result)["0xa0000000-0xa37fffff"] == ("pci 0000:00:02.0", "ram", "warned")


def test_configured_default_rdm_does_not_make_devices_relaxed() -> None:
    # defaults.rdm stands for the domain's policy only; the device stays strict as libxl makes it.
    request = parse_domain_request("4096", "1024", None, "4096", ["00:02.0"])
    assert request.device_policy is Policy.STRICT
    assert _by_range(plan(request, HOST, {}))["0xa0000000-0xa37fffff"] == ("pci 0000:00:02.0", "ram", "failed")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"memory": "4G"}, "memory: '4G' is not a size in MiB"),
    ({"memory": "1"}, "memory 1 MiB is below"),
    ({"mmio_hole": "128"}, "mmio_hole 128 MiB is outside xl's limits 256-3840"),
    ({"mmio_hole": "3841"}, "mmio_hole 3841 MiB is outside"),
    ({"mem_boundary": "-1"}, "mem_boundary: '-1' is not a size"),
    ({"config": "policy=lax"}, "config: rdm=: policy='lax'"),
    ({"pci": ["00:02.0", "00:02.0,rdm_polcy=relaxed"]}, "pci/1: .*unknown key 'rdm_polcy'"),
    ({"hotplug": ["zz"]}, "hotplug/0: invalid PCI device 'zz'"),
    ({"reserve": ["0xe0000-0xe0ffe"]}, "reserve/0: .*not page granular"),
    ({"migrate": [" "]}, "migrate/0: empty host name"),
])
def test_parse_domain_request_names_the_bad_key(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"memory": "4096", "mmio_hole": None, "config": None, "mem_boundary": None}
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        parse_domain_request(**args)  # type: ignore[arg-type]
