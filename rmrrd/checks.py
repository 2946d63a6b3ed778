"""The toolstack's checks (the design thread's STEP-2, STEP-4, STEP-5), pure.

Given a domain's :class:`~rmrrd.planner.Plan` (its layout as built) and inventories,
each check says whether a device may be assigned or hot-plugged, or the guest moved:

* a device region that overlaps guest RAM or a fixed guest area is ``fail`` under
  ``strict`` (a device's default, as in xl) and ``warn`` under ``relaxed``;
* a region shared with a device assigned to another domain is ``fail`` whatever the
  policy (two guests would own one identity-mapped range);
* a region reserved at setup and clear of RAM is ``ok``;
* a region *not* reserved at setup but clear of RAM and fixed areas is ``warn``
  (kind ``unreserved``) whatever the policy: it lies in the MMIO hole or above RAM,
  where hvmloader may already have placed a BAR or an OpRegion that rmrrd cannot see.
  It is not ``fail``: no conflict is known, and refusing would make every device
  without a setup-time reservation unusable;
* ``migrate`` checks the target host's regions against the current layout; with no
  device named, every region of the target is checked and nothing is worse than
  ``warn`` (the guest may never use those devices).  Assignments on the target are
  not known here, so the shared-region rule applies to ``assign``/``hotplug`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from rmrrd.errors import InputError
from rmrrd.guest_layout import conflict_kinds
from rmrrd.inventory import Device, HostRegion, Inventory, find_host, known_hosts_text
from rmrrd.pci import Bdf
from rmrrd.planner import Plan
from rmrrd.ranges import Range, RangeSet
from rmrrd.xlcfg import DeviceSpec, Policy

VerdictName = Literal["ok", "warn", "fail"]
_SEVERITY: dict[VerdictName, int] = {"ok": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True, slots=True)
class Conflict:
    """One problem found: ``START-END KIND [DEVICE]`` in ``result/<id>/conflict/<n>``."""

    range: Range
    kind: str
    device: Device | None
    severity: VerdictName

    def __str__(self) -> str:
        return f"{self.range} {self.kind}" + (f" {self.device}" if self.device is not None else "")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A check's answer: ``verdict``, a one-line ``reason``, every conflict found."""

    verdict: VerdictName
    reason: str
    conflicts: tuple[Conflict, ...] = ()

    def count(self, severity: VerdictName) -> int:
        return sum(1 for conflict in self.conflicts if conflict.severity == severity)


def _layout_conflicts(rng: Range, device: Device | None, policy: Policy, ram: RangeSet,
                      reserved: RangeSet) -> list[Conflict]:
    """What one device region meets in a guest with ``ram`` and ``reserved`` regions."""
    kinds = conflict_kinds(rng, ram)
    if kinds:
        severity: VerdictName = "fail" if policy is Policy.STRICT else "warn"
        return [Conflict(rng, kind, device, severity) for kind in kinds]
    if RangeSet([rng]) - reserved:
        return [Conflict(rng, "unreserved", device, "warn")]
    return []


def _shared_conflicts(region: HostRegion, assigned_elsewhere: Mapping[Bdf, int]) -> list[Conflict]:
    """Other domains' devices that use ``region`` (the device itself too, if taken)."""
    return [Conflict(region.range, "shared", other, "fail")
            for other in sorted(assigned_elsewhere) if region.belongs_to(other)]


def _verdict(subject: str, conflicts: list[Conflict], clear: str,
             assigned_elsewhere: Mapping[Bdf, int] | None = None) -> Verdict:
    if not conflicts:
        return Verdict("ok", f"{subject}: {clear}")
    worst = max(conflicts, key=lambda conflict: _SEVERITY[conflict.severity])
    return Verdict(worst.severity, f"{subject}: {_advice(worst, assigned_elsewhere)}", tuple(conflicts))


def _advice(conflict: Conflict, assigned_elsewhere: Mapping[Bdf, int] | None) -> str:
    """One line saying what is wrong and what the operator can do about it."""
    if conflict.kind == "shared":
        owner = (assigned_elsewhere or {}).get(conflict.device) if isinstance(conflict.device, Bdf) else None
        return (f"region {conflict.range} is shared with {conflict.device}, assigned to domain {owner}; "
                f"detach it there first")
    if conflict.kind == "unreserved":
        return (f"region {conflict.range} was not reserved at setup and may collide with guest MMIO; "
                f"list the device under hotplug/ or migrate/ when creating the domain")
    if conflict.severity == "fail":
        return (f"region {conflict.range} overlaps guest {conflict.kind}; rdm_policy=relaxed accepts "
                f"the risk, otherwise this guest cannot use the device")
    return f"region {conflict.range} overlaps guest {conflict.kind}; the device may misbehave if it uses it"


def _check_device(what: str, plan: Plan, host: Inventory, device: DeviceSpec,
                  assigned_elsewhere: Mapping[Bdf, int]) -> Verdict:
    ram, reserved = plan.ram, plan.reserved
    regions = host.regions_for(device.bdf)
    conflicts: list[Conflict] = []
    for region in regions:
        conflicts += _shared_conflicts(region, assigned_elsewhere)
        conflicts += _layout_conflicts(region.range, device.bdf, device.policy, ram, reserved)
    clear = "its regions are reserved and clear of guest RAM" if regions else "it has no reserved regions"
    return _verdict(f"{what} {device.bdf}", conflicts, clear, assigned_elsewhere)


def check_assign(plan: Plan, host: Inventory, device: DeviceSpec,
                 assigned_elsewhere: Mapping[Bdf, int]) -> Verdict:
    """Static assignment of ``device`` to the domain laid out by ``plan`` (STEP-2).

    ``assigned_elsewhere`` maps devices assigned to *other* domains to their domid.
    """
    return _check_device("assign", plan, host, device, assigned_elsewhere)


def check_hotplug(plan: Plan, host: Inventory, device: DeviceSpec,
                  assigned_elsewhere: Mapping[Bdf, int]) -> Verdict:
    """Hot-plug of ``device`` into the running domain (STEP-4); same rules as assign."""
    return _check_device("hotplug", plan, host, device, assigned_elsewhere)


def check_migrate(plan: Plan, peers: Mapping[str, Inventory], target: str,
                  devices: Sequence[DeviceSpec] = ()) -> Verdict:
    """Moving the guest to ``target`` and assigning ``devices`` there (STEP-5).

    ``target`` is a peer's host name or one of its aliases.  Raises :class:`InputError` when ``target`` is not a known peer.
    """
    found = find_host(peers, target)
    if found is None:
        raise InputError(f"migrate target {target!r} is not a known peer (known: {known_hosts_text(peers)})")
    inventory = found[1]
    ram, reserved = plan.ram, plan.reserved
    conflicts: list[Conflict] = []
    if devices:
        for spec in devices:
            for region in inventory.regions_for(spec.bdf):
                conflicts += _layout_conflicts(region.range, spec.bdf, spec.policy, ram, reserved)
    else:
        for region in inventory.regions:
            device = region.devices[0] if region.devices else None
            conflicts += _layout_conflicts(region.range, device, Policy.RELAXED, ram, reserved)
    host = found[0] if found[0] == target else f"{found[0]} (as {target})"
    return _verdict(f"migrate to {host}", conflicts, "its regions are clear of the guest's RAM")


def rank_migration_targets(plan: Plan, peers: Mapping[str, Inventory]) -> list[tuple[str, Verdict]]:
    """Every peer with its all-devices migrate verdict, best first.

    Ordered by fewest ``fail`` then fewest ``warn`` conflicts, then by name, so the
    first entry is where the guest is least likely to meet a region it cannot avoid.
    """
    verdicts = [(name, check_migrate(plan, peers, name)) for name in peers]
    return sorted(verdicts, key=lambda item: (item[1].count("fail"), item[1].count("warn"), item[0]))

