"""This host's inventory from the sources named in the config (``host.sources``).

Each source is ``dmar`` or ``ivrs`` (the firmware tables Linux
exposes in ``/sys/firmware/acpi/tables``) or the path of a YAML inventory file.  A
host has a DMAR table or an IVRS table, rarely both, so a missing table is a warning,
not an error: the default ``[dmar, ivrs]`` must work on Intel and AMD hosts alike.
A table that exists but cannot be read or parsed is an error: silently planning
without the host's regions would hide the very conflicts rmrrd exists to find.

This module does the file reading; the parsing stays in the pure modules.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from rmrrd import inputs
from rmrrd.core.dmar import dmar_inventory, parse_dmar
from rmrrd.errors import InputError
from rmrrd.core.inventory import Device, HostRegion, Inventory
from rmrrd.core.inventory_yaml import load_inventory_file
from rmrrd.core.ivrs import ivrs_inventory, parse_ivrs
from rmrrd.core.ranges import Range
from rmrrd.edges.sysfs_pci import sysfs_bus_lookup

if TYPE_CHECKING:
    from rmrrd.edges.config import Config

log = logging.getLogger(__name__)

DEFAULT_ACPI_DIR = Path("/sys/firmware/acpi/tables")
TABLE_SOURCES = {"dmar": "DMAR", "ivrs": "IVRS"}
XEN_TABLE_NAMES = {"DMAR": "RMAD"}
"""The name a table has in a Xen dom0 once Xen drives that IOMMU (``rmrrd.dmar.XEN_SIGNATURE``).
Looked at first: it is the table whose RMRRs Xen enforces."""


def read_table(path: Path) -> bytes:
    """The bytes of a firmware table file; an unreadable one, or one larger than
    :data:`rmrrd.inputs.TABLE`, is an :class:`InputError`."""
    return inputs.read_bytes(path, inputs.TABLE, "firmware table")


def table_inventory(kind: str, data: bytes, host: str, path: Path, sysfs_root: Path | None) -> Inventory:
    """Parse a ``dmar`` or ``ivrs`` table; errors are prefixed with the file name.

    ``sysfs_root`` None means no bus numbers: scope paths through bridges stay
    unresolved (right for a table copied from another machine).
    """
    try:
        if kind == "dmar":
            lookup = sysfs_bus_lookup(sysfs_root) if sysfs_root is not None else None
            return dmar_inventory(parse_dmar(data, lookup), host)
        return ivrs_inventory(parse_ivrs(data), host)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def merge_inventories(host: str, parts: Iterable[Inventory]) -> Inventory:
    """One inventory from several sources: regions with the same range are one region.

    Devices are united (in first-seen order) and an all-devices mark wins; regions
    that merely overlap stay separate, since the planner merges overlaps itself and
    keeps each part's devices.  Warnings are kept in order.
    """
    merged: dict[Range, tuple[list[Device], bool]] = {}
    warnings: list[str] = []
    for part in parts:
        warnings.extend(part.warnings)
        for region in part.regions:
            devices, all_devices = merged.setdefault(region.range, ([], False))
            devices.extend(device for device in region.devices if device not in devices)
            merged[region.range] = (devices, all_devices or region.all_devices)
    regions = tuple(HostRegion(rng, () if everyone else tuple(devices), everyone)
                    for rng, (devices, everyone) in merged.items())
    return Inventory(host, regions, tuple(warnings))


def build_host_inventory(host: str, sources: list[str], sysfs_root: Path = Path("/"),
                         acpi_dir: Path = DEFAULT_ACPI_DIR) -> Inventory:
    """Read every source and merge them into this host's inventory.

    Raises :class:`InputError` for an unreadable or malformed table or YAML file; a
    ``dmar`` or ``ivrs`` table that does not exist is a warning in the result.
    """
    parts: list[Inventory] = []
    for source in sources:
        table = TABLE_SOURCES.get(source)
        if table is None:
            inv = load_inventory_file(source)
            if inv.host != host:
                log.info("host %s: inventory %s describes host %r: its regions are used as this host's",
                         host, source, inv.host)
            parts.append(inv)
            continue
        names = [XEN_TABLE_NAMES[table]] if table in XEN_TABLE_NAMES else []
        path = next((acpi_dir / name for name in [*names, table] if (acpi_dir / name).exists()), None)
        if path is None:
            warning = f"{acpi_dir / table}: no {table} table (not a host with that IOMMU?): source {source!r} skipped"
            parts.append(Inventory(host, (), (warning,)))
            continue
        part = table_inventory(source, read_table(path), host, path, sysfs_root)
        log.info("host %s: %s: %d reserved regions", host, path, len(part.regions))
        parts.append(part)
    inventory = merge_inventories(host, parts)
    # The parsers are pure and only collect warnings; the daemon's log gets them here.
    for warning in inventory.warnings:
        log.warning("host %s: inventory: %s", host, warning)
    return inventory


def load_host(config: Config) -> Inventory:
    """This host's inventory from ``host.sources``.

    Raises InputError naming the configuration file and key first, so an operator
    reading ``--check-config`` or the journal knows which setting led to the file.
    """
    root = config.host.sysfs_root
    try:
        inventory = build_host_inventory(config.host.name, [str(source) for source in config.host.sources],
                                         sysfs_root=root, acpi_dir=root / "sys/firmware/acpi/tables")
        return inventory._replace(aliases=config.host.aliases)
    except InputError as exc:
        raise InputError(f"{config.source or 'built-in defaults'}: host.sources: {exc}") from None
