"""Reserved regions: a range, why it is reserved, for which devices, under which policy.

A guest's regions come from several places at once (its assigned devices, devices it
may hot-plug, hosts it may migrate to, extra ranges, every host region with
``strategy=host``).  The same range often arrives twice (a device's RMRR is also a
host region) and ranges overlap (a shared RMRR seen from two inventories).  Merging
such regions must never lose *why* a range is there: the toolstack shows every
source, and the checks need every device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from rmrrd.core.inventory import Device
from rmrrd.core.ranges import Range
from rmrrd.core.xlcfg import Policy

SOURCE_KINDS = ("pci", "hotplug", "host", "migrate", "reserve")
"""The source kinds of a domain's regions (docs/xenstore-schema.md), in the order a merged ``source`` lists them."""


class Source(NamedTuple):
    """Why a region is reserved: ``pci BDF``, ``hotplug BDF``, ``host``, ``migrate HOST``, ``reserve``."""

    rank: int
    subject: str

    @classmethod
    def of(cls, kind: str, subject: str = "") -> Source:
        return cls(SOURCE_KINDS.index(kind), subject)

    @property
    def kind(self) -> str:
        return SOURCE_KINDS[self.rank]

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}" if self.subject else self.kind


class ReservedRegion(NamedTuple):
    """One range to keep out of guest RAM, and everything that asked for it.

    ``policy`` is the policy that governs a conflict on this region: ``strict`` if any
    governing source is strict ("strict is always preferred", xl.cfg(5)), ``relaxed``
    if governed only by relaxed sources, and ``None`` when no source governs it
    (regions reserved only for ``hotplug``, ``migrate`` or ``reserve`` only warn at
    setup; they are checked for real when a device arrives).
    """

    range: Range
    sources: tuple[Source, ...]
    devices: tuple[Device, ...] = ()
    policy: Policy | None = None

    @property
    def source_text(self) -> str:
        """The xenstore ``source`` value: every source, space separated."""
        return " ".join(str(source) for source in self.sources)


def combine_policies(policies: Iterable[Policy | None]) -> Policy | None:
    """Strict wins over relaxed, relaxed over ungoverned."""
    found = {policy for policy in policies if policy is not None}
    if Policy.STRICT in found:
        return Policy.STRICT
    return Policy.RELAXED if found else None


def merge_regions(regions: Iterable[ReservedRegion]) -> list[ReservedRegion]:
    """Merge identical and overlapping regions, keeping every source and device.

    Regions that merely touch stay apart: each is still one firmware region with its
    own devices, and the design merges only "identical or overlapping" ones.  The
    result is sorted by address; a sort and one sweep, ``O(n log n)``.
    """
    ordered = sorted(regions, key=lambda region: region.range)  # by start, then end
    merged: list[ReservedRegion] = []
    group: list[ReservedRegion] = []
    end = 0
    for region in ordered:
        if group and region.range.start >= end:
            merged.append(_merge_group(group, end))
            group = []
        end = max(end, region.range.end) if group else region.range.end
        group.append(region)
    if group:
        merged.append(_merge_group(group, end))
    return merged


def _merge_group(group: list[ReservedRegion], end: int) -> ReservedRegion:
    if len(group) == 1:
        return group[0]
    sources = sorted({source for region in group for source in region.sources})
    devices = sorted({device for region in group for device in region.devices}, key=str)
    return ReservedRegion(Range(group[0].range.start, end), tuple(sources), tuple(devices),
                          combine_policies(region.policy for region in group))
