"""The toolstack's checks (the design thread's STEP-2, STEP-4, STEP-5), pure.

Given a domain's :class:`~rmrrd.core.planner.Plan` (its layout as built) and inventories,
each check says whether a device may be assigned or hot-plugged, or the guest moved:

* a device region that overlaps guest RAM or a fixed guest area is ``fail`` under
  ``strict`` and ``warn`` under ``relaxed`` (Xen: ``p2m_add_identity_entry`` refuses
  to map over a guest page with ``-EBUSY`` unless relaxed).  A device without its own
  ``rdm_policy`` is strict when hot-plugged (xl ``pci-attach`` gives it none, and
  ``libxl__device_pci_setdefault`` makes it strict); assigned or moved with the guest
  it has the domain's device policy (:attr:`Plan.device_policy`, as at setup).  For
  ``assign``, a region in hvmloader's dynamic area is ``fail`` whatever the policy:
  hvmloader would stop with ``BUG()``;
* a region whose device scope lists other devices (a shared RMRR) is ``fail`` under
  ``strict`` and ``warn`` under ``relaxed``, as Xen's VT-d assignment
  (``intel_iommu_assign_device``: "disallowed" / "risky"); for ``migrate``, the
  target host's scopes count;
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
  not known here, so the rule on other domains' devices applies to
  ``assign``/``hotplug`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, NamedTuple

from rmrrd.errors import InputError
from rmrrd.core.guest_layout import DYNAMIC_AREA
from rmrrd.core.inventory import Device, HostRegion, Inventory, find_host, known_hosts_text
from rmrrd.core.pci import Bdf
from rmrrd.core.planner import SHARED_RMRR, Plan
from rmrrd.core.ranges import Range, RangeSet
from rmrrd.core.xlcfg import DEFAULT_DEVICE_POLICY, DeviceSpec, Policy

VerdictName = Literal["ok", "warn", "fail"]
_SEVERITY: dict[VerdictName, int] = {"ok": 0, "warn": 1, "fail": 2}


class Conflict(NamedTuple):
    """One problem found: ``START-END KIND [DEVICE]`` in ``result/<id>/conflict/<n>``."""

    range: Range
    kind: str
    device: Device | None
    severity: VerdictName

    def __str__(self) -> str:
        return f"{self.range} {self.kind}" + (f" {self.device}" if self.device is not None else "")


class Verdict(NamedTuple):
    """A check's answer: ``verdict``, a one-line ``reason``, every conflict found."""

    verdict: VerdictName
    reason: str
    conflicts: tuple[Conflict, ...] = ()

    def count_of(self, severity: VerdictName) -> int:
        """How many conflicts are of ``severity`` (not ``count``: a Verdict is a tuple)."""
        return sum(1 for conflict in self.conflicts if conflict.severity == severity)


def _severity(policy: Policy) -> VerdictName:
    return "fail" if policy is Policy.STRICT else "warn"


def _layout_conflicts(plan: Plan, rng: Range, device: Device | None, policy: Policy,
                      reserved: RangeSet, static: bool = False) -> list[Conflict]:
    """What one device region meets in the guest laid out by ``plan``.

    ``static``: the device is assigned as the domain is built, so a region in
    hvmloader's dynamic area would stop hvmloader whatever the policy.
    """
    if plan.guest == "pv":
        return []  # identity-mapped in the IOMMU only, never over the guest's memory
    kinds = plan.conflict_kinds(rng)
    if kinds:
        severity = _severity(policy)
        if static and rng.overlaps(DYNAMIC_AREA) and not plan.ram.overlaps(rng):
            severity = "fail"
        return [Conflict(rng, kind, device, severity) for kind in kinds]
    if RangeSet([rng]) - reserved:
        return [Conflict(rng, "unreserved", device, "warn")]
    return []


def _scope_conflicts(region: HostRegion, device: Bdf, policy: Policy,
                     reported: Sequence[Conflict] = ()) -> list[Conflict]:
    """The other devices of a shared RMRR, unless already reported for ``region``."""
    if not region.is_shared:
        return []
    seen = {conflict.device for conflict in reported}
    return [Conflict(region.range, SHARED_RMRR, other, _severity(policy))
            for other in region.devices if other != device and other not in seen]


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
    if conflict.kind == SHARED_RMRR:
        if conflict.severity == "fail":
            return (f"region {conflict.range} is a shared RMRR (also {conflict.device}): Xen's VT-d refuses "
                    f"the device under rdm_policy=strict; rdm_policy=relaxed assigns it at a risk")
        return f"region {conflict.range} is a shared RMRR (also {conflict.device}): assigned at a risk"
    if conflict.severity == "fail" and conflict.range.overlaps(DYNAMIC_AREA):
        return (f"region {conflict.range} lies in hvmloader's dynamic area {DYNAMIC_AREA}, which the guest's "
                f"firmware uses; this guest cannot use the device")
    if conflict.kind == "unreserved":
        return (f"region {conflict.range} was not reserved at setup and may collide with guest MMIO; "
                f"list the device under hotplug/ or migrate/ when creating the domain")
    if conflict.severity == "fail":
        return (f"region {conflict.range} overlaps guest {conflict.kind}; rdm_policy=relaxed accepts "
                f"the risk, otherwise this guest cannot use the device")
    return f"region {conflict.range} overlaps guest {conflict.kind}; the device may misbehave if it uses it"


NO_PASSTHROUGH = ("the domain was created without passthrough (no pci= and no passthrough= in its "
                  "configuration): Xen refuses every device to it (iommu_do_domctl: EOPNOTSUPP); create it with "
                  'passthrough="enabled" to attach devices later')


def _check_device(what: str, plan: Plan, host: Inventory, device: DeviceSpec, policy: Policy,
                  assigned_elsewhere: Mapping[Bdf, int]) -> Verdict:
    if not plan.passthrough:
        return Verdict("fail", f"{what} {device.bdf}: {NO_PASSTHROUGH}")
    reserved = plan.reserved
    regions = host.regions_for(device.bdf)
    conflicts: list[Conflict] = []
    for region in regions:
        taken = _shared_conflicts(region, assigned_elsewhere)
        conflicts += taken + _scope_conflicts(region, device.bdf, policy, taken)
        conflicts += _layout_conflicts(plan, region.range, device.bdf, policy, reserved, static=what == "assign")
    clear = "its regions are reserved and clear of guest RAM" if regions else "it has no reserved regions"
    return _verdict(f"{what} {device.bdf}", conflicts, clear, assigned_elsewhere)


def check_assign(plan: Plan, host: Inventory, device: DeviceSpec,
                 assigned_elsewhere: Mapping[Bdf, int]) -> Verdict:
    """Static assignment of ``device`` to the domain laid out by ``plan`` (STEP-2).

    ``assigned_elsewhere`` maps devices assigned to *other* domains to their domid.
    A device without ``rdm_policy`` has the domain's device policy, as at setup.
    """
    return _check_device("assign", plan, host, device, device.policy or plan.device_policy, assigned_elsewhere)


def check_hotplug(plan: Plan, host: Inventory, device: DeviceSpec,
                  assigned_elsewhere: Mapping[Bdf, int]) -> Verdict:
    """Hot-plug of ``device`` into the running domain (STEP-4); same rules as assign.

    A device without ``rdm_policy`` is strict, as ``xl pci-attach`` makes it.
    """
    return _check_device("hotplug", plan, host, device, device.policy or DEFAULT_DEVICE_POLICY,
                         assigned_elsewhere)


def check_migrate(plan: Plan, peers: Mapping[str, Inventory], target: str,
                  devices: Sequence[DeviceSpec] = ()) -> Verdict:
    """Moving the guest to ``target`` and assigning ``devices`` there (STEP-5).

    The devices' regions and device scopes are the target's.  ``target`` is a peer's
    host name or one of its aliases.  Raises :class:`InputError` when ``target`` is not
    a known peer.
    """
    found = find_host(peers, target)
    if found is None:
        raise InputError(f"migrate target {target!r} is not a known peer (known: {known_hosts_text(peers)})")
    inventory = found[1]
    if devices and not plan.passthrough:
        return Verdict("fail", f"migrate to {target} with {devices[0].bdf}: {NO_PASSTHROUGH}")
    reserved = plan.reserved
    conflicts: list[Conflict] = []
    if devices:
        for spec in devices:
            policy = spec.policy or plan.device_policy
            for region in inventory.regions_for(spec.bdf):
                conflicts += _scope_conflicts(region, spec.bdf, policy)
                conflicts += _layout_conflicts(plan, region.range, spec.bdf, policy, reserved)
    else:
        for region in inventory.regions:
            device = region.devices[0] if region.devices else None
            conflicts += _layout_conflicts(plan, region.range, device, Policy.RELAXED, reserved)
    host = found[0] if found[0] == target else f"{found[0]} (as {target})"
    return _verdict(f"migrate to {host}", conflicts, "its regions are clear of the guest's RAM")


def rank_migration_targets(plan: Plan, peers: Mapping[str, Inventory]) -> list[tuple[str, Verdict]]:
    """Every peer with its all-devices migrate verdict, best first.

    Ordered by fewest ``fail`` then fewest ``warn`` conflicts, then by name, so the
    first entry is where the guest is least likely to meet a region it cannot avoid.
    """
    verdicts = [(name, check_migrate(plan, peers, name)) for name in peers]
    return sorted(verdicts, key=lambda item: (item[1].count_of("fail"), item[1].count_of("warn"), item[0]))



def check_operation(plan: Plan, host: Inventory, peers: Mapping[str, Inventory], op: str,
                    devices: Sequence[DeviceSpec], target: str | None,
                    assigned_elsewhere: Callable[[], Mapping[Bdf, int]]) -> tuple[Verdict, list[str]]:
    """The verdict of one toolstack check and, for ``migrate`` without a target, the
    ranking lines (``HOST VERDICT fail=N warn=N``, best first).

    What the daemon answers for a domain it serves and ``rmrrd check --xl-config``
    for a domain read from a file, so both say the same.  ``op`` is ``assign``,
    ``hotplug`` (one device each) or ``migrate``; ``assigned_elsewhere`` is asked
    only for an assign or a hotplug (the daemon walks every domain for it).  Raises
    :class:`InputError` for an unknown target or no peer to rank.
    """
    if op == "migrate":
        if target is not None:
            return check_migrate(plan, peers, target, devices), []
        ranking = rank_migration_targets(plan, peers)
        if not ranking:
            raise InputError("no peer hosts to rank")
        lines = [f"{name} {verdict.verdict} fail={verdict.count_of('fail')} warn={verdict.count_of('warn')}"
                 for name, verdict in ranking]
        best_host, best = ranking[0]
        return Verdict(best.verdict, f"best target {best_host}: {best.reason}", best.conflicts), lines
    check = check_assign if op == "assign" else check_hotplug
    return check(plan, host, devices[0], assigned_elsewhere()), []
