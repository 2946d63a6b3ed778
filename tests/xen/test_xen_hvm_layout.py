"""Real HVM guests judge ``rmrrd plan``: hvmloader's e820 against the plan of the same xl.cfg.

The machine's RMRRs come from Xen's ``rmrr=`` boot option (``rmrr_host.REGIONS``),
which Xen's VT-d enforces and libxl's ``rdm="strategy=host"`` reserves, so no device
needs passing through.  dom0's DMAR does not show them, so ``rmrrd plan`` reads the same
regions from an inventory file.  Each case is an xl.cfg: the guest is created from it
(real libxl, hvmloader and Debian's SeaBIOS, no kernel) and ``rmrrd plan --xl-config``
reads the very same file.  They must agree on whether the domain is built, on
``lowmem_end`` and ``highmem_end``, on hvmloader's e820 (its table in ``xl dmesg``,
``guest_loglvl=all``), and on which regions libxl let go with "Ignoring RDM conflict".

``rmrrd run`` runs beside them: nothing is written for it, so it learns each guest from
libxl (docs/xenstore-schema.md, "Domains learned from libxl"); its answer, read while
the guest runs, must be hvmloader's layout too.  One guest takes devices with ``xl
pci-attach`` (QEMU's ``xen-pci-passthrough`` in its device model, then Xen's VT-d),
each after ``rmrrd check hotplug`` predicted what Xen would do, and gives back with
``xl pci-detach -f`` the one Xen assigned: rmrrd must learn both.

What the guest's kernel would see is the map SeaBIOS hands it (``INT 15h, E820``), which
SeaBIOS prints before it looks for something to boot: it must keep every planned
reservation out of RAM, and differ from the plan only by SeaBIOS's own pages.  No
kernel is booted: docs/testing.md says why.

The guests are created together, paused once SeaBIOS has printed its map, and then
destroyed: a running HVM guest slows the whole emulated machine, and SeaBIOS, finding
nothing to boot, reboots the guest 60 s later, which xl's default ``on_reboot`` turns
into a new domain of the same name.  A paused guest keeps its layout, and ``xl
pci-attach`` into it is Xen's and QEMU's work, not the guest's.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from rmrrd.core.ranges import Range, RangeSet
from xen.daemon import Rmrrd
from xen.rmrr_host import INVENTORY
from xen.testbed import Dom0, Result

pytestmark = pytest.mark.xen_hvm  # .ci/run's stage of its own (docs/testing.md)

FOUR_GIB = 1 << 32
SEABIOS_KIB = "256"
"""Debian's ``bios-256k.bin``, which its hvmloader loads at ``0xC0000``."""
STRATEGY_HOST = 'rdm = "strategy=host"'
"""The only ``rdm=`` a stock xl 4.17 keeps (one naming a ``policy`` is dropped)."""
SHARED_DEVICE = "00:1f.2"
"""The SATA controller, one of the two devices of the shared RMRR: made assignable
(``rmrr_host.ASSIGNABLE``), so that Xen itself gets to refuse its assignment."""


@dataclass(frozen=True)
class Case:
    """One guest: its xl.cfg lines, and what the case is there to show on Xen's side
    (``lowmem_end``, ``highmem_end``; None when ``xl create`` must fail); the devices
    given to ``xl pci-attach`` once it runs, in turn."""

    name: str
    memory_mib: int
    config: tuple[str, ...]
    layout: tuple[int, int] | None
    hotplug: tuple[str, ...] = ()


CASES = (
    # The region at 65 MiB is above the boundary: low RAM ends at 64 MiB and the rest goes
    # above 4 GiB.  The one at 16 MiB is below it: libxl ignores the conflict (relaxed)
    # and keeps the RAM.  The shared one at 0x7e000000 is above the guest's RAM.  stdvga
    # with 32 MiB of video RAM leaves 128 MiB of the 160 to the guest: 64 above 4 GiB.
    Case("moved", 160, (STRATEGY_HOST, "rdm_mem_boundary = 32", 'vga = "stdvga"', "videoram = 32"),
         (0x4000000, 0x104000000)),
    # The largest hole xl takes: low RAM ends at 256 MiB, two conflicts ignored below it.
    Case("hole", 288, (STRATEGY_HOST, "mmio_hole = 3840"), (0x10000000, 0x102000000)),
    # No region known to libxl at creation (no device, no rdm=), so none reserved.  Then
    # the devices of the two regions in its RAM, attached: the strict one refused, the
    # relaxed one taken at a risk, and the layout stays as built (had it been there at
    # creation, the region above rdm_mem_boundary would have ended low RAM at 64 MiB).
    # One try per device: libxl leaves QEMU's device behind when Xen refuses it.
    Case("attach", 128, ('passthrough = "enabled"', "rdm_mem_boundary = 32"), (0x8000000, FOUR_GIB),
         ("00:1f.3", "00:1f.0,rdm_policy=relaxed")),
    # A strict device whose region is in low RAM: libxl refuses to build the domain.
    Case("strict", 128, ('pci = ["00:1f.3,rdm_policy=strict"]',), None),
    # The same through xl's bug: it drops an rdm= that names a policy, so the device is
    # strict (libxl's default), not relaxed as xl.cfg(5) says.  rmrrd plan --xl-config
    # must predict the refusal.
    Case("dropped", 128, ('rdm = "policy=relaxed"', 'pci = ["00:1f.3"]'), None),
    # A strict device of a shared RMRR: libxl builds the domain (the region is clear of
    # RAM), then Xen's VT-d refuses to assign the device.
    Case("shared", 128, (STRATEGY_HOST, f'pci = ["{SHARED_DEVICE},rdm_policy=strict"]'), None),
)


@dataclass(frozen=True)
class Entry:
    """One e820 entry."""

    range: Range
    type: str

    def __str__(self) -> str:
        """As ``rmrrd plan`` prints it."""
        return f"{self.range} {self.type}"


@dataclass(frozen=True)
class Attached:
    """One device hot-plugged into a built guest: rmrrd's prediction, then ``xl
    pci-attach`` and ``xl pci-list`` after it."""

    device: str
    check: Result
    attach: Result
    listed: str


@dataclass(frozen=True)
class Built:
    """What Xen did with one case: ``xl create``'s result, the guest's lines of ``xl
    dmesg`` (hvmloader's, then SeaBIOS's) without their prefix, and Xen's own lines
    about the guest; rmrrd's learned answer and the hot-plugs, while it ran."""

    create: Result
    firmware: list[str]
    xen: list[str]
    domid: str = ""
    """The guest's domain id once SeaBIOS was done: ``xl create``'s, unless xl re-created it."""
    learned: dict[str, str] = field(default_factory=dict)
    attached: tuple[Attached, ...] = ()
    relearned: dict[str, str] = field(default_factory=dict)
    """rmrrd's answer once it learned the devices attached (empty when none was)."""
    detached: tuple[Result, ...] = ()
    """``xl pci-detach -f`` of each device attached, once ``relearned`` was read."""
    unplugged: dict[str, str] = field(default_factory=dict)
    """rmrrd's answer once it learned the devices detached (empty when none was)."""

    def shown(self) -> str:
        return "\n".join(self.firmware)


@dataclass(frozen=True)
class Planned:
    """What ``rmrrd plan --xl-config`` said of one case."""

    result: Result
    answer: dict[str, Any]

    def e820(self) -> list[Entry]:
        entries = []
        for text in self.answer["e820"]:
            span, kind = text.split()
            first, last = span.split("-")
            entries.append(Entry(Range.inclusive(int(first, 16), int(last, 16)), kind))
        return entries

    def starts(self, action: str) -> set[int]:
        """Where the regions the plan gives ``action`` (``warned``, ``failed``) start."""
        return {int(region["range"].split("-")[0], 16) for region in self.answer["regions"]
                if region["action"] == action}


DMESG_LINE = re.compile(r"^\(d(\d+)\) (?:\[[ .0-9]*\] )?(.*)$")
HVMLOADER_ENTRY = re.compile(r"^ \[\d+\]: ([0-9a-f]{8}):([0-9a-f]{8}) - ([0-9a-f]{8}):([0-9a-f]{8}): (\w+)$")
SEABIOS_ENTRY = re.compile(r"^ *\d+: ([0-9a-f]{16}) - ([0-9a-f]{16}) = \d+ (\w+)$")
SEABIOS_DONE = "enter handle_19:"
"""SeaBIOS's boot step (``handle_19`` in src/boot.c), which comes after it printed its map."""


def hvmloader_e820(lines: list[str]) -> list[Entry]:
    """hvmloader's table (``dump_e820_table`` in tools/firmware/hvmloader/e820.c) in
    ``rmrrd plan``'s form: the NVS part of the firmware area counted as reserved, and
    touching entries of one type coalesced (docs/planner.md, "The e820")."""
    entries: list[Entry] = []
    for line in lines[lines.index("E820 table:") + 1:]:
        if line.startswith((" HOLE", " OVERLAP")):
            continue
        match = HVMLOADER_ENTRY.match(line)
        if match is None:
            break
        span = Range(int(match[1] + match[2], 16), int(match[3] + match[4], 16))
        kind = {"RAM": "ram", "RESERVED": "reserved", "NVS": "reserved"}[match[5]]
        if entries and entries[-1].type == kind and entries[-1].range.end == span.start:
            span = Range(entries.pop().range.start, span.end)
        entries.append(Entry(span, kind))
    return entries


def seabios_ram(lines: list[str]) -> RangeSet:
    """The RAM of the map SeaBIOS gives the operating system (``dump_map`` in its src/e820map.c)."""
    header = next(n for n, line in enumerate(lines) if line.startswith("e820 map has "))
    ram = []
    for line in lines[header + 1:]:
        match = SEABIOS_ENTRY.match(line)
        if match is None:
            break
        if match[3] == "RAM":
            ram.append(Range(int(match[1], 16), int(match[2], 16)))
    return RangeSet(ram)


def ram_ends(e820: list[Entry]) -> tuple[int, int]:
    """``lowmem_end`` and ``highmem_end`` as hvmloader's table shows them: the end of
    the RAM from 1 MiB, and of the RAM from 4 GiB (4 GiB when there is none)."""
    ram = [entry.range for entry in e820 if entry.type == "ram"]
    low = next(span.end for span in ram if span.start == 0x100000)
    high = next((span.end for span in ram if span.start == FOUR_GIB), FOUR_GIB)
    return low, high


def libxl_conflicts(create: Result, *, ignored: bool) -> set[int]:
    """The addresses of libxl's ``Ignoring RDM conflict at ADDR`` (relaxed) or ``RDM
    conflict at ADDR`` (strict) messages (``libxl__domain_device_construct_rdm``)."""
    pattern = re.compile(rf"{'Ignoring RDM' if ignored else ': RDM'} conflict at (0x[0-9a-f]+)")
    return {int(found, 16) for found in pattern.findall(create.stderr.decode(errors="replace"))}


SHARED_REFUSAL = re.compile(r"It's disallowed to assign \S+ with shared RMRR at ([0-9a-f]+)")
"""Xen's VT-d refusing a strict device of a shared RMRR (``intel_iommu_assign_device``)."""


def xen_refusals(built: Built) -> set[int]:
    """Where the regions start that Xen refused the domain for: libxl's strict
    conflicts, and the shared RMRRs Xen's VT-d would not assign a device with."""
    shared = {int(found, 16) for line in built.xen for found in SHARED_REFUSAL.findall(line)}
    return libxl_conflicts(built.create, ignored=False) | shared


def xen_lines(dom0: Dom0, domid: str, output: str | None = None) -> list[str]:
    """The lines of ``xl dmesg`` (``output``, else read now) that name domain ``domid``."""
    if output is None:
        output = dom0.run(["xl", "dmesg"]).text
    name = re.compile(rf"\bd{domid}\b")
    return [line for line in output.splitlines() if name.search(line)]


def learned_answer(rmrrd: Rmrrd, domid: str) -> dict[str, str]:
    """rmrrd's answer for a guest ``xl create`` made, once learned with the
    configuration libxl saved at the end of ``xl create``."""
    rmrrd.wait_for_log(f"domain {domid}: learned from libxl (hvm, its saved configuration read)")
    return rmrrd.dom0.xs_ls(f"/local/domain/{domid}/rmrr")


def hot_plug(dom0: Dom0, domid: str, device: str) -> Attached:
    """``rmrrd check hotplug`` for ``device``, then ``xl pci-attach`` of it."""
    check = dom0.rmrrd("check", "hotplug", "--domid", domid, "--device", device, check=False)
    attach = dom0.run(["xl", "pci-attach", domid, device], timeout=120, check=False)
    return Attached(device, check, attach, dom0.run(["xl", "pci-list", domid]).text)


def next_answer(dom0: Dom0, domid: str, answer: dict[str, str]) -> dict[str, str]:
    """rmrrd's answer for the guest once its generation is no longer ``answer``'s."""
    dom0.wait_until(f'[ "$(xenstore-read /local/domain/{domid}/rmrr/generation)" != '
                    f'"{answer.get("generation")}" ]', 30)
    return dom0.xs_ls(f"/local/domain/{domid}/rmrr")


def hot_unplug(dom0: Dom0, domid: str, attached: tuple[Attached, ...]) -> tuple[Result, ...]:
    """``xl pci-detach -f`` of each device attached.  Forced: the paused guest cannot
    answer QEMU's unplug request, so libxl gives up waiting for the device model after
    10 s, and only ``-f`` then goes on to take the device away (``pci_remove_timeout``)."""
    return tuple(dom0.run(["xl", "pci-detach", "-f", domid, each.device.split(",")[0]], timeout=120, check=False)
                 for each in attached if each.attach.ok)


def create_and_read(dom0: Dom0, rmrrd: Rmrrd, case: Case) -> Built:
    """``xl create`` the case; once SeaBIOS printed its map (or after 300 s), the guest
    paused, rmrrd's learned answer, the case's hot-plugs and then their detaching, and
    the guest's lines of ``xl dmesg``; the guest destroyed."""
    create = dom0.run(["testbed-guest-create", case.name, "hvm-firmware", str(case.memory_mib), "running",
                       *case.config], timeout=240, check=False)
    if not create.ok:
        # libxl names the domain it gave up on ("Domain 3:cannot (re-)build domain").
        found = re.search(r"Domain (\d+):", create.stderr.decode(errors="replace"))
        return Built(create, [], xen_lines(dom0, found[1]) if found else [])
    # Polled every 2 s, not testbed-wait's 0.2: each poll is three processes, which cost
    # the PV dom0 as much as the device models of the guests being waited for.  Polled
    # by name: a guest whose firmware faults under the emulation (seen once in
    # hvmloader, a triple fault, which Xen makes a reboot) is created again by xl from
    # the same file, with a new domid, and it is that domain which then runs.  Paused at
    # once: SeaBIOS reboots a guest with nothing to boot 60 s after its map ("No bootable
    # device.  Retrying in 60 seconds."), and xl re-creates it under the same name.  In
    # one CI run the guest was between the two domains when the test destroyed it.
    dom0.run(["timeout", "300", "sh", "-c", f'until d=$(xl domid {case.name}) && xl dmesg | grep "^(d$d) " | '
              f"grep -qF '{SEABIOS_DONE}'; do sleep 2; done; xl pause \"$d\""], timeout=310, check=False)
    current = dom0.run(["xl", "domid", case.name], check=False)
    domid = current.text.strip() if current.ok else create.text.strip()
    if domid != create.text.strip():
        print(f"{case.name}: d{create.text.strip()} rebooted; its layout is read from d{domid}")
    plugged: dict[str, str] = {}
    detached: tuple[Result, ...] = ()
    unplugged: dict[str, str] = {}
    try:
        learned = learned_answer(rmrrd, domid)
        attached = tuple(hot_plug(dom0, domid, device) for device in case.hotplug)
        if any(each.attach.ok for each in attached):
            # libxl's new backend dev-N: learned again (a new generation), and again
            # once the devices are detached (libxl removes the backend).
            plugged = next_answer(dom0, domid, learned)
            detached = hot_unplug(dom0, domid, attached)
            unplugged = next_answer(dom0, domid, plugged)
    finally:
        output = dom0.run(["xl", "dmesg"]).text
        dom0.run(["xl", "destroy", case.name])
    lines = [match[2] for match in map(DMESG_LINE.match, output.splitlines())
             if match is not None and match[1] == domid]
    return Built(create, lines, xen_lines(dom0, domid, output), domid, learned, attached, plugged, detached,
                 unplugged)


def plan(dom0: Dom0, name: str) -> Planned:
    """``rmrrd plan`` on the file the guest was created from (``testbed-guest-create``)."""
    result = dom0.rmrrd("plan", "--inventory", INVENTORY, "--xl-config", f"/etc/testbed/guests/{name}.cfg",
                        "--seabios-size", SEABIOS_KIB, "--json", check=False)
    assert result.rc in (0, 1), result.describe()
    return Planned(result, json.loads(result.text))


@pytest.fixture(scope="module")
def outcomes(hvm_rmrr_dom0: Dom0, hvm_rmrrd: Rmrrd) -> Iterator[dict[str, tuple[Built, Planned]]]:
    """Every case created at once (``rmrrd run`` watching), then planned from the file
    each was created from."""
    dom0 = hvm_rmrr_dom0
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(CASES)) as executor:
        builds = {case.name: executor.submit(create_and_read, dom0, hvm_rmrrd, case) for case in CASES}
        built = {name: future.result() for name, future in builds.items()}
    yield {name: (built[name], plan(dom0, name)) for name in built}


def outcome(outcomes: dict[str, tuple[Built, Planned]], case: Case) -> tuple[Built, Planned]:
    built, planned = outcomes[case.name]
    if case.layout is not None:
        assert built.create.ok, built.create.describe()
        assert SEABIOS_DONE in built.firmware, f"the guest's firmware did not get so far:\n{built.shown()}"
    return built, planned


BUILT = [case for case in CASES if case.layout is not None]


@pytest.mark.parametrize("case", BUILT, ids=[case.name for case in BUILT])
def test_rmrrd_plan_gives_the_layout_xen_built(case: Case, outcomes: dict[str, tuple[Built, Planned]]) -> None:
    built, planned = outcome(outcomes, case)
    e820 = hvmloader_e820(built.firmware)
    assert ram_ends(e820) == case.layout, built.shown()  # the case shows what it is there for
    answer = planned.answer
    assert (answer["status"], planned.result.rc) == ("ready", 0), planned.result.describe()
    assert (int(answer["lowmem_end"], 16), int(answer["highmem_end"], 16)) == case.layout
    assert [str(entry) for entry in planned.e820()] == [str(entry) for entry in e820], built.shown()
    ignored = libxl_conflicts(built.create, ignored=True)
    if STRATEGY_HOST in case.config:
        assert ignored, built.create.describe()  # each case with host reservations has a conflict libxl lets go
    assert planned.starts("warned") == ignored, (planned.result.describe(), built.create.describe())


@pytest.mark.parametrize("case", BUILT, ids=[case.name for case in BUILT])
def test_seabios_hands_the_os_the_planned_ram(case: Case, outcomes: dict[str, tuple[Built, Planned]]) -> None:
    """SeaBIOS's map keeps every planned reservation out of RAM; it takes for itself
    only the top 1 KiB below 640 KiB (its EBDA) and the last page of low RAM (the Xen
    hypercall page, ``xen_hypercall_setup`` in its src/fw/xen.c)."""
    built, planned = outcome(outcomes, case)
    planned_ram = RangeSet(entry.range for entry in planned.e820() if entry.type == "ram")
    lowmem_end = int(planned.answer["lowmem_end"], 16)
    seabios_own = RangeSet([Range(0x9FC00, 0xA0000), Range(lowmem_end - 0x1000, lowmem_end)])
    assert seabios_ram(built.firmware) == planned_ram.difference(seabios_own), built.shown()


REFUSED = [case for case in CASES if case.layout is None]


@pytest.mark.parametrize("case", REFUSED, ids=[case.name for case in REFUSED])
def test_xen_and_the_plan_refuse_a_strict_conflict(case: Case,
                                                        outcomes: dict[str, tuple[Built, Planned]]) -> None:
    built, planned = outcome(outcomes, case)
    assert not built.create.ok, f"xl create should have failed:\n{built.create.describe()}"
    refused = xen_refusals(built)
    assert refused, built.create.describe() + "\n" + "\n".join(built.xen[-30:])
    assert (planned.answer["status"], planned.result.rc) == ("error", 1), planned.result.describe()
    assert planned.starts("failed") == refused, (planned.result.describe(), built.create.describe())
    ignored = libxl_conflicts(built.create, ignored=True)
    assert planned.starts("warned") == ignored, (planned.result.describe(), built.create.describe())


def numbered(answer: dict[str, str], key: str) -> list[str]:
    """The values of an answer's list ``key/0``, ``key/1``... in order."""
    items = [(int(name.split("/")[1]), value) for name, value in answer.items()
             if name.startswith(f"{key}/") and name.count("/") == 1]
    return [value for _, value in sorted(items)]


@pytest.mark.parametrize("case", BUILT, ids=[case.name for case in BUILT])
def test_rmrrd_learns_the_layout_xen_built(case: Case, outcomes: dict[str, tuple[Built, Planned]]) -> None:
    """Plain ``xl create``, nothing written for rmrrd: what it learned from libxl is
    hvmloader's layout, and stays so once a device is attached."""
    built, _ = outcome(outcomes, case)
    e820 = [str(entry) for entry in hvmloader_e820(built.firmware)]
    for answer in (built.learned, built.relearned) if built.relearned else (built.learned,):
        assert (answer.get("origin"), answer.get("type"), answer.get("status")) == ("learned", "hvm", "ready"), \
            answer
        assert (int(answer["lowmem_end"], 16), int(answer["highmem_end"], 16)) == case.layout
        assert numbered(answer, "e820") == e820, built.shown()
    assert bool(built.relearned) == any(each.attach.ok for each in built.attached)


ATTACH = next(case for case in CASES if case.hotplug)
IDENTITY_REFUSED = "[VT-D]d{domid}: cannot map reserved region [{start:x},{end:x}]: -16"
"""Xen's VT-d refusing a strict device whose region the guest's RAM holds (``rmrr_identity_mapping``
in xen/drivers/passthrough/vtd/iommu.c, after ``set_identity_p2m_entry`` said EBUSY)."""
IDENTITY_KEPT = "Cannot setup identity map d{domid}:{gfn:x}, gfn already mapped"
"""``set_identity_p2m_entry`` (xen/arch/x86/mm/p2m.c) leaving guest RAM where a relaxed
device's region is: the device is assigned."""


def test_xl_pci_attach_to_a_learned_hvm_guest_is_what_rmrrd_check_said(
        outcomes: dict[str, tuple[Built, Planned]]) -> None:
    built, _ = outcome(outcomes, ATTACH)
    domid = built.domid
    strict, relaxed = built.attached
    xen = "\n".join(built.xen)
    # 00:1f.3, strict by default as xl pci-attach makes it: its region is guest RAM.
    assert strict.check.rc == 1, strict.check.describe()
    assert "conflict 0x1000000-0x1003fff ram 0000:00:1f.3" in strict.check.text, strict.check.describe()
    assert not strict.attach.ok, strict.attach.describe()
    assert "xc_assign_device failed: Device or resource busy" in strict.attach.stderr.decode(), strict.attach.describe()
    assert IDENTITY_REFUSED.format(domid=domid, start=0x1000000, end=0x1003FFF) in xen, xen
    assert "0000:00:1f.3" not in strict.listed
    # 00:1f.0, relaxed: its region is guest RAM too, and Xen assigns it at a risk.
    assert relaxed.check.rc == 3, relaxed.check.describe()  # warn
    assert "conflict 0x4100000-0x4100fff ram 0000:00:1f.0" in relaxed.check.text, relaxed.check.describe()
    assert relaxed.attach.ok, relaxed.attach.describe()
    assert "0000:00:1f.0" in relaxed.listed, relaxed.listed
    assert IDENTITY_KEPT.format(domid=domid, gfn=0x4100) in xen, xen


def test_xl_pci_detach_from_a_learned_hvm_guest_is_learned(outcomes: dict[str, tuple[Built, Planned]]) -> None:
    """The device attached above, detached by xl: libxl removes the guest's PCI backend,
    and rmrrd learns that the guest holds no device again (the generation it had before
    any attach: the same domain, learned the same way), with its layout as built."""
    built, _ = outcome(outcomes, ATTACH)
    assert len(built.detached) == 1, built.detached
    detach = built.detached[0]
    assert detach.ok, detach.describe()
    assert "timed out waiting for DM to remove pci-pt-00_1f.0" in detach.stderr.decode(), detach.describe()
    assert built.unplugged.get("generation") == built.learned["generation"], (built.learned, built.unplugged)
    assert built.relearned["generation"] != built.learned["generation"]
    assert numbered(built.unplugged, "e820") == numbered(built.learned, "e820")
