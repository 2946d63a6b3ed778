"""Xen 4.17's own rules, one table row each: what ``rmrrd plan`` must predict.

Every row names the Xen source file and function whose behaviour it pins (read in
``xen-project/xen`` at RELEASE-4.17.7), the request as the toolstack writes it, and
the answer Xen's toolstack and hvmloader give: ``lowmem_end``, ``highmem_end``, the
e820 and whether the domain is built (``ready``) or not (``error``).  Rows marked as
rmrrd's own extensions pin where rmrrd deliberately goes beyond Xen (docs/planner.md,
"Where rmrrd differs from Xen"); they name the Xen code whose failure they prevent.

The toolstack checks (assign, hotplug, migrate) follow in a second table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from rmrrd.core.checks import check_assign, check_hotplug, check_migrate
from rmrrd.core.inventory import HostRegion, Inventory
from rmrrd.core.pci import Bdf
from rmrrd.core.planner import XL_DEFAULTS, Plan, parse_domain_request, plan
from rmrrd.core.ranges import parse_range
from rmrrd.core.xlcfg import parse_device_spec

# One host region per device; a case picks the ones its host has.
REGIONS = {
    "usb": ("0xe0000-0xeffff", ["00:14.0"]),              # a USB controller's legacy buffer
    "rom": ("0xc8000-0xc8fff", ["00:1e.0"]),              # in the expansion ROM window
    "floor": ("0x180000-0x180fff", ["00:1b.1"]),          # 1.5 MiB: above 1 MiB, below hvmloader's floor
    "low": ("0x9000000-0x9000fff", ["00:1b.0"]),          # 144 MiB: below any boundary used here
    "nic": ("0x20100000-0x20100fff", ["00:19.0"]),        # 513 MiB: not 2 MiB aligned
    "gpu": ("0xa0000000-0xa37fffff", ["00:02.0"]),        # IGD stolen memory
    "pair": ("0xd0000000-0xd0003fff", ["00:1a.0", "00:1d.0"]),  # a shared RMRR
    "dyn": ("0xfd000000-0xfd000fff", ["00:1f.6"]),        # in hvmloader's dynamic area
    "high": ("0x180000000-0x180000fff", ["00:1c.0"]),     # above 4 GiB
}

# e820 entries every default (SeaBIOS 128 KiB) guest has.
LOW_RAM = "0x0-0x9ffff ram"
BIOS = "0xe0000-0xfffff reserved"
FIRMWARE = "0xfc000000-0xffffffff reserved"


def _host(*names: str) -> Inventory:
    return Inventory("h", tuple(HostRegion(parse_range(REGIONS[name][0]), tuple(Bdf.parse(d) for d in REGIONS[name][1]))
                                for name in names))


@dataclass(frozen=True)
class Case:
    name: str
    xen: str
    """The Xen source file and function whose behaviour the row pins."""
    host: tuple[str, ...]
    status: str
    lowmem_end: int
    highmem_end: int
    e820: list[str]
    memory: str = "1024"
    keys: dict[str, str] = field(default_factory=dict)
    """Optional scalar keys: mmio_hole, config, mem_boundary, videoram, hap, bios."""
    pci: tuple[str, ...] = ()
    hotplug: tuple[str, ...] = ()
    seabios_size: int = 128
    region: tuple[str, str] | None = None
    """(conflict, action) of the row's one reserved region, when it has one."""


def _plan(case: Case) -> Plan:
    keys = case.keys
    request = parse_domain_request(
        case.memory, keys.get("mmio_hole"), keys.get("config"), keys.get("mem_boundary"),
        pci=list(case.pci), hotplug=list(case.hotplug), defaults=XL_DEFAULTS._replace(seabios_size=case.seabios_size),
        videoram=keys.get("videoram"), hap=keys.get("hap"), bios=keys.get("bios"))
    return plan(request, _host(*case.host), {})


GIB = 1 << 30
DEFAULT_1G = [LOW_RAM, BIOS, "0x100000-0x3fffffff ram", FIRMWARE]

CASES = [
    # --- The layout: guest RAM, the MMIO hole ---------------------------------------
    Case("guest RAM is memory less videoram (8 MiB for xl's default cirrus card)",
         "tools/libs/light/libxl_dom.c libxl__build_hvm (mem_size = max_memkb - video_memkb)",
         (), "ready", 0x40000000, 4 * GIB, DEFAULT_1G, memory="1032", keys={"videoram": "8"}),
    Case("the default MMIO hole is 256 MiB, the rest of RAM goes above 4 GiB",
         "tools/libs/light/libxl_dom.c libxl__build_hvm (HVM_BELOW_4G_MMIO_LENGTH)",
         (), "ready", 0xF0000000, 0x210000000,
         [LOW_RAM, BIOS, "0x100000-0xefffffff ram", FIRMWARE, "0x100000000-0x20fffffff ram"], memory="8192"),
    Case("mmio_hole lowers the end of low RAM",
         "tools/libs/light/libxl_dom.c libxl__build_hvm (dom->mmio_size = mmio_hole_memkb << 10)",
         (), "ready", 0xC0000000, 0x140000000,
         [LOW_RAM, BIOS, "0x100000-0xbfffffff ram", FIRMWARE, "0x100000000-0x13fffffff ram"],
         memory="4096", keys={"mmio_hole": "1024"}),
    # --- Avoiding a region above rdm_mem_boundary -----------------------------------
    Case("a region above the boundary moves lowmem_end down, rounded to 2 MiB with HAP",
         "tools/libs/light/libxl_dm.c libxl__domain_device_construct_rdm (rdm_start &= ~(MB(2) - 1))",
         ("nic",), "ready", 0x20000000, 0x120000000,
         [LOW_RAM, BIOS, "0x100000-0x1fffffff ram", "0x20100000-0x20100fff reserved", FIRMWARE,
          "0x100000000-0x11fffffff ram"],
         keys={"mem_boundary": "256"}, pci=("00:19.0",), region=("none", "avoided")),
    Case("without HAP lowmem_end is the region's start",
         "tools/libs/light/libxl_dm.c libxl__domain_device_construct_rdm (libxl_defbool_val(c_info.hap))",
         ("nic",), "ready", 0x20100000, 0x11ff00000,
         [LOW_RAM, BIOS, "0x100000-0x200fffff ram", "0x20100000-0x20100fff reserved", FIRMWARE,
          "0x100000000-0x11fefffff ram"],
         keys={"mem_boundary": "256", "hap": "0"}, pci=("00:19.0",), region=("none", "avoided")),
    Case("a region starting exactly on the boundary is not moved (rdm_start > rdm_mem_boundary)",
         "tools/libs/light/libxl_dm.c libxl__domain_device_construct_rdm",
         ("gpu",), "error", 0xF0000000, 0x110000000,
         [LOW_RAM, BIOS, "0x100000-0xefffffff ram", FIRMWARE, "0x100000000-0x10fffffff ram"],
         memory="4096", keys={"mem_boundary": "2560"}, pci=("00:02.0",), region=("ram", "failed")),
    # --- Conflicts that stay: strict fails, relaxed warns and leaves RAM ------------
    Case("strict (a device's default): a region below the boundary in RAM stops the build",
         "tools/libs/light/libxl_dm.c libxl__domain_device_construct_rdm (\"RDM conflict\")",
         ("low",), "error", 0x40000000, 4 * GIB, DEFAULT_1G, pci=("00:1b.0",), region=("ram", "failed")),
    Case("relaxed: the region is marked invalid, not given to hvmloader; the guest keeps the RAM",
         "tools/libs/light/libxl_x86.c domain_construct_memmap (skips LIBXL_RDM_RESERVE_POLICY_INVALID)",
         ("low",), "ready", 0x40000000, 4 * GIB, DEFAULT_1G,
         pci=("00:1b.0,rdm_policy=relaxed",), region=("ram", "warned")),
    Case("the legacy window is low RAM to libxl: strict fails",
         "tools/libs/light/libxl_dm.c libxl__domain_device_construct_rdm (overlaps_rdm(0, lowmem_end))",
         ("usb",), "error", 0x40000000, 4 * GIB, DEFAULT_1G, pci=("00:14.0",), region=("bios", "failed")),
    Case("the legacy window is low RAM to libxl: relaxed leaves it out of the e820",
         "tools/libs/light/libxl_x86.c domain_construct_memmap",
         ("rom",), "ready", 0x40000000, 4 * GIB, DEFAULT_1G,
         pci=("00:1e.0,rdm_policy=relaxed",), region=("rom", "warned")),
    Case("RAM above 4 GiB is never moved for a region (\"we don't solve highmem conflict\")",
         "tools/libs/light/libxl_dm.c libxl__domain_device_construct_rdm",
         ("high",), "error", 0xF0000000, 0x210000000,
         [LOW_RAM, BIOS, "0x100000-0xefffffff ram", FIRMWARE, "0x100000000-0x20fffffff ram"],
         memory="8192", pci=("00:1c.0",), region=("ram", "failed")),
    Case("a region above all guest RAM is a reserved entry",
         "tools/firmware/hvmloader/e820.c build_e820_table (copies the toolstack's map)",
         ("high",), "ready", 0x40000000, 4 * GIB, [*DEFAULT_1G, "0x180000000-0x180000fff reserved"],
         pci=("00:1c.0",), region=("none", "none")),
    # --- hvmloader's dynamic area ---------------------------------------------------
    Case("a region Xen gives hvmloader inside its dynamic area stops it, even relaxed",
         "tools/firmware/hvmloader/e820.c memory_map_setup (BUG())",
         ("dyn",), "error", 0x40000000, 4 * GIB, DEFAULT_1G,
         pci=("00:1f.6,rdm_policy=relaxed",), region=("firmware", "failed")),
    Case("rmrrd extension: a hotplug region there is left out of the e820 with a warning",
         "tools/firmware/hvmloader/e820.c memory_map_setup (the BUG() rmrrd keeps away)",
         ("dyn",), "ready", 0x40000000, 4 * GIB, DEFAULT_1G, hotplug=("00:1f.6",), region=("firmware", "warned")),
    # --- Shared RMRRs (VT-d) --------------------------------------------------------
    Case("a strict device whose RMRR scope lists another device is refused (\"disallowed\")",
         "xen/drivers/passthrough/vtd/iommu.c intel_iommu_assign_device (-EPERM)",
         ("pair",), "error", 0x80000000, 4 * GIB,
         [LOW_RAM, BIOS, "0x100000-0x7fffffff ram", "0xd0000000-0xd0003fff reserved", FIRMWARE],
         memory="2048", pci=("00:1a.0",), region=("shared-rmrr", "failed")),
    Case("a relaxed device with a shared RMRR is assigned (\"risky\")",
         "xen/drivers/passthrough/vtd/iommu.c intel_iommu_assign_device",
         ("pair",), "ready", 0x80000000, 4 * GIB,
         [LOW_RAM, BIOS, "0x100000-0x7fffffff ram", "0xd0000000-0xd0003fff reserved", FIRMWARE],
         memory="2048", pci=("00:1a.0,rdm_policy=relaxed",), region=("shared-rmrr", "warned")),
    Case("two devices on one region: strict if either is (the strict one is refused)",
         "xen/drivers/passthrough/vtd/iommu.c intel_iommu_assign_device",
         ("pair",), "error", 0x80000000, 4 * GIB,
         [LOW_RAM, BIOS, "0x100000-0x7fffffff ram", "0xd0000000-0xd0003fff reserved", FIRMWARE],
         memory="2048", pci=("00:1a.0,rdm_policy=relaxed", "00:1d.0,rdm_policy=strict"),
         region=("shared-rmrr", "failed")),
    # --- Policy resolution ----------------------------------------------------------
    Case("a device without rdm_policy takes the policy the request's rdm= names",
         "tools/xl/xl_parse.c parse_config_data (pci->rdm_policy = b_info->u.hvm.rdm.policy)",
         ("low",), "ready", 0x40000000, 4 * GIB, DEFAULT_1G,
         keys={"config": "policy=relaxed"}, pci=("00:1b.0",), region=("ram", "warned")),
    Case("a device without rdm_policy under an rdm= naming none is strict",
         "tools/libs/light/libxl_pci.c libxl__device_pci_setdefault",
         ("low",), "error", 0x40000000, 4 * GIB, DEFAULT_1G,
         keys={"config": "strategy=host"}, pci=("00:1b.0",), region=("ram", "failed")),
    Case("a device's relaxed policy overrides a strict rdm= for its region",
         "tools/libs/light/libxl_dm.c libxl__domain_device_construct_rdm (per-device policy overrides)",
         ("low",), "ready", 0x40000000, 4 * GIB, DEFAULT_1G,
         keys={"config": "strategy=host,policy=strict"}, pci=("00:1b.0,rdm_policy=relaxed",),
         region=("ram", "warned")),
    Case("a device's strict policy overrides a relaxed rdm= for its region",
         "tools/libs/light/libxl_dm.c libxl__domain_device_construct_rdm",
         ("low",), "error", 0x40000000, 4 * GIB, DEFAULT_1G,
         keys={"config": "strategy=host,policy=relaxed"}, pci=("00:1b.0,rdm_policy=strict",),
         region=("ram", "failed")),
    Case("strategy=host regions of no assigned device take the domain policy, relaxed by default",
         "tools/libs/light/libxl_create.c libxl__rdm_setdefault",
         ("low",), "ready", 0x40000000, 4 * GIB, DEFAULT_1G, keys={"config": "strategy=host"},
         region=("ram", "warned")),
    Case("strategy=host with policy=strict fails on an unavoidable host region",
         "tools/libs/light/libxl_dm.c libxl__domain_device_construct_rdm (host entries get rdm.policy)",
         ("low",), "error", 0x40000000, 4 * GIB, DEFAULT_1G, keys={"config": "strategy=host,policy=strict"},
         region=("ram", "failed")),
    Case("without strategy=host, a region of no assigned device is not reserved",
         "tools/libs/light/libxl_dm.c libxl__domain_device_construct_rdm (STRATEGY_IGNORE)",
         ("low",), "ready", 0x40000000, 4 * GIB, DEFAULT_1G),
    # --- The firmware's BIOS area ---------------------------------------------------
    Case("SeaBIOS: the area is 0x100000 - image size (Debian's 256 KiB image: 0xc0000)",
         "tools/firmware/hvmloader/seabios.c seabios_load, seabios_setup_e820",
         (), "ready", 0x40000000, 4 * GIB, [LOW_RAM, "0xc0000-0xfffff reserved", "0x100000-0x3fffffff ram", FIRMWARE],
         seabios_size=256),
    Case("ROMBIOS: 0xe0000 up (its image is at 0xf0000), and 0x9e000-0x9ffff",
         "tools/firmware/hvmloader/rombios.c rombios_setup_e820 (build_e820_table(E820, 0x9E000, 0xE0000))",
         (), "ready", 0x40000000, 4 * GIB,
         ["0x0-0x9dfff ram", "0x9e000-0x9ffff reserved", BIOS, "0x100000-0x3fffffff ram", FIRMWARE],
         keys={"bios": "rombios"}),
    Case("OVMF: 0xf0000 up (the reset vector's copy)",
         "tools/firmware/hvmloader/ovmf.c ovmf_setup_e820 (LOWCHUNK_BEGIN)",
         (), "ready", 0x40000000, 4 * GIB, [LOW_RAM, "0xf0000-0xfffff reserved", "0x100000-0x3fffffff ram", FIRMWARE],
         keys={"bios": "ovmf"}),
    # --- rmrrd's floor --------------------------------------------------------------
    Case("rmrrd extension: low RAM is never cut below 2 MiB to avoid a region",
         "tools/firmware/hvmloader/e820.c build_e820_table (BUG_ON(low_mem_end < MB(2)), which libxl would reach)",
         ("floor",), "ready", 0x40000000, 4 * GIB, DEFAULT_1G,
         keys={"mem_boundary": "0"}, pci=("00:1b.1,rdm_policy=relaxed",), region=("ram", "warned")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_xen_rule(case: Case) -> None:
    result = _plan(case)
    assert (result.status, result.lowmem_end, result.highmem_end) == (case.status, case.lowmem_end,
                                                                       case.highmem_end), case.xen
    assert [str(entry) for entry in result.e820] == case.e820, case.xen
    if case.region is not None:
        [region] = result.regions
        assert (region.conflict_text, region.action) == case.region, case.xen
    assert (result.error is None) == (case.status == "ready")


# --- The toolstack checks -------------------------------------------------------------


@dataclass(frozen=True)
class CheckCase:
    name: str
    xen: str
    op: str
    device: str
    verdict: str
    conflicts: list[str]
    host: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    memory: str = "2048"


CHECKS = [
    CheckCase("assign a strict device with a shared RMRR: refused",
              "xen/drivers/passthrough/vtd/iommu.c intel_iommu_assign_device (\"disallowed\")",
              "assign", "00:1a.0", "fail", ["0xd0000000-0xd0003fff shared-rmrr 0000:00:1d.0",
                                            "0xd0000000-0xd0003fff unreserved 0000:00:1a.0"], host=("pair",)),
    CheckCase("hotplug a relaxed device with a shared RMRR: a warning",
              "xen/drivers/passthrough/vtd/iommu.c intel_iommu_assign_device (\"risky\")",
              "hotplug", "00:1a.0,rdm_policy=relaxed", "warn",
              ["0xd0000000-0xd0003fff shared-rmrr 0000:00:1d.0", "0xd0000000-0xd0003fff unreserved 0000:00:1a.0"],
              host=("pair",)),
    CheckCase("hotplug a device without rdm_policy over guest RAM: strict, refused",
              "xen/arch/x86/mm/p2m.c p2m_add_identity_entry (-EBUSY); tools/xl/xl_pci.c pciattach",
              "hotplug", "00:1b.0", "fail", ["0x9000000-0x9000fff ram 0000:00:1b.0"], host=("low",)),
    CheckCase("hotplug a relaxed device over guest RAM: mapped anyway, a warning",
              "xen/arch/x86/mm/p2m.c p2m_add_identity_entry (XEN_DOMCTL_DEV_RDM_RELAXED)",
              "hotplug", "00:1b.0,rdm_policy=relaxed", "warn", ["0x9000000-0x9000fff ram 0000:00:1b.0"],
              host=("low",)),
    CheckCase("assign a relaxed device in hvmloader's dynamic area: refused whatever the policy",
              "tools/firmware/hvmloader/e820.c memory_map_setup (BUG())",
              "assign", "00:1f.6,rdm_policy=relaxed", "fail", ["0xfd000000-0xfd000fff firmware 0000:00:1f.6"],
              host=("dyn",)),
    CheckCase("migrate with a device whose RMRR is shared on the target: the target's scope counts",
              "xen/drivers/passthrough/vtd/iommu.c intel_iommu_assign_device (on the target)",
              "migrate", "00:1a.0", "fail", ["0xd0000000-0xd0003fff shared-rmrr 0000:00:1d.0",
                                             "0xd0000000-0xd0003fff unreserved 0000:00:1a.0"],
              target=("pair",)),
]


@pytest.mark.parametrize("case", CHECKS, ids=[case.name for case in CHECKS])
def test_xen_check_rule(case: CheckCase) -> None:
    layout = plan(parse_domain_request(case.memory, None, None, None), _host(), {})
    device = parse_device_spec(case.device)
    if case.op == "migrate":
        verdict = check_migrate(layout, {"t": _host(*case.target)}, "t", [device])
    else:
        check = check_assign if case.op == "assign" else check_hotplug
        verdict = check(layout, _host(*case.host), device, {})
    assert verdict.verdict == case.verdict, case.xen
    assert [str(conflict) for conflict in verdict.conflicts] == case.conflicts, case.xen


def test_migrate_uses_the_target_scope_not_this_hosts() -> None:
    # Here 00:1a.0's region is its own; on the target it is shared.
    here = Inventory("h", (HostRegion(parse_range("0xd0000000-0xd0003fff"), (Bdf.parse("00:1a.0"),)),))
    layout = plan(parse_domain_request("2048", None, None, None, hotplug=["00:1a.0"]), here, {})
    assert check_assign(layout, here, parse_device_spec("00:1a.0"), {}).verdict == "ok"
    verdict = check_migrate(layout, {"t": _host("pair")}, "t", [parse_device_spec("00:1a.0")])
    assert [str(c) for c in verdict.conflicts] == ["0xd0000000-0xd0003fff shared-rmrr 0000:00:1d.0"]


def test_assign_takes_the_domains_device_policy_hotplug_is_strict() -> None:
    # tools/xl/xl_parse.c parse_config_data hands rdm='s policy to pci= devices at
    # creation; tools/xl/xl_pci.c pciattach starts from an empty device, which
    # libxl__device_pci_setdefault makes strict.
    host = _host("low")
    layout = plan(parse_domain_request("1024", None, "policy=relaxed", None), host, {})
    device = parse_device_spec("00:1b.0")
    assert check_assign(layout, host, device, {}).verdict == "warn"
    assert check_hotplug(layout, host, device, {}).verdict == "fail"
    assert check_migrate(layout, {"t": host}, "t", [device]).verdict == "warn"
