"""A host's reserved regions and the devices each belongs to.

Every source (the DMAR table, the IVRS table, a YAML inventory file, a peer's
``/inventory`` endpoint) produces the same :class:`Inventory`, so the planner and the
checks never care where a region was declared.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import Range


class UnresolvedDevice(NamedTuple):
    """A DMAR device scope whose path through PCI bridges could not be resolved.

    Resolving needs each bridge's secondary bus number, read from sysfs; on a machine
    that is not the table's host (or without sysfs) the device is named by its scope
    path instead: ``SSSS:BB:DD.F/DD.F...`` from the start bus, one hop per bridge.
    """

    segment: int
    start_bus: int
    path: tuple[tuple[int, int], ...]

    def __str__(self) -> str:
        hops = "/".join(f"{dev:02x}.{fn:x}" for dev, fn in self.path)
        return f"{self.segment:04x}:{self.start_bus:02x}:{hops}"


Device = Bdf | UnresolvedDevice


class HostRegion(NamedTuple):
    """One reserved range on a host and the devices that use it.

    ``all_devices`` is set for IVMD type 0x20 entries, which apply to every device.
    A region with several devices is a shared RMRR: assigning any of them to a guest
    needs the whole range, and no two guests may hold devices that share it.
    """

    range: Range
    devices: tuple[Device, ...]
    all_devices: bool = False

    def belongs_to(self, device: Bdf) -> bool:
        return self.all_devices or device in self.devices

    @property
    def is_shared(self) -> bool:
        """A shared RMRR: its device scope lists more than one device.

        Xen's VT-d refuses to assign a device with such a region unless it is relaxed
        (``intel_iommu_assign_device`` in ``xen/drivers/passthrough/vtd/iommu.c``).  An
        IVMD for all devices (AMD) is not counted: AMD-Vi has no such refusal.
        """
        return len(self.devices) > 1


HOST_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
"""A host name or alias: what a toolstack request can carry as one word (no ``:``, so
an IPv6 literal is not one)."""


class Inventory(NamedTuple):
    """Everything rmrrd knows of one host's reserved memory.

    ``aliases`` are the other names the host goes by (the name ``xl migrate`` is given,
    a fully qualified name, an address), so a migration target can be named as the
    toolstack names it.
    """

    host: str
    regions: tuple[HostRegion, ...]
    warnings: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def regions_for(self, device: Bdf) -> tuple[HostRegion, ...]:
        """The regions a guest given ``device`` must have identity-mapped."""
        return tuple(region for region in self.regions if region.belongs_to(device))


def find_host(hosts: Mapping[str, Inventory], name: str) -> tuple[str, Inventory] | None:
    """The host ``name`` stands for among ``hosts`` (keyed by host name): itself, or the
    host that lists it among its aliases; ``None`` when none does.

    Loaders keep aliases unique (:func:`rmrrd.edges.peers.load_peers`), so at most one host
    matches.
    """
    inventory = hosts.get(name)
    if inventory is not None:
        return name, inventory
    return next(((host, inv) for host, inv in hosts.items() if name in inv.aliases), None)


def known_hosts_text(hosts: Mapping[str, Inventory]) -> str:
    """The known host names, each with its aliases, for an error message."""
    return ", ".join(f"{host} ({', '.join(inv.aliases)})" if inv.aliases else host
                     for host, inv in sorted(hosts.items())) or "none"
