"""Bridges' secondary bus numbers from a sysfs tree, to resolve DMAR scope paths.

A DMAR device scope names a device by the path of ``(device, function)`` hops from a
start bus; which bus lies behind each bridge is only known on the live machine, in
byte 0x19 (Secondary Bus Number) of the bridge's configuration space (PCI-to-PCI
bridge header, type 1; Xen reads the same byte, ``PCI_SECONDARY_BUS``, in
``acpi_parse_dev_scope``).  Linux exposes that space as
``/sys/bus/pci/devices/SSSS:BB:DD.F/config``.

The root is a parameter so tests (and ``rmrrd inventory --sysfs-root``) can point at
a fake tree.  Reading is done once, up front, into a dictionary: the DMAR parser then
gets a pure lookup function and never touches files itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rmrrd.core.dmar import BusLookup
from rmrrd.errors import InputError
from rmrrd.core.pci import Bdf

log = logging.getLogger(__name__)

SECONDARY_BUS_OFFSET = 0x19
_HEADER_TYPE_OFFSET = 0x0E
_BRIDGE_HEADER = 0x01  # header type 1, low 7 bits; bit 7 is "multi-function"


def read_secondary_buses(root: Path) -> dict[Bdf, int]:
    """Every PCI-to-PCI bridge under ``root`` and its secondary bus number.

    Devices whose config space is too short or unreadable, or whose header type is
    not a bridge's, are left out (a lookup for them then gives None, and the scope
    stays unresolved); a directory name that is not a BDF is ignored with a log line.
    """
    buses: dict[Bdf, int] = {}
    devices = root / "sys" / "bus" / "pci" / "devices"
    if not devices.is_dir():
        return buses
    for entry in sorted(devices.iterdir()):
        try:
            bdf = Bdf.parse(entry.name)
        except InputError:
            log.info("sysfs %s: not a PCI address, skipped", entry)
            continue
        try:
            config = (entry / "config").read_bytes()[:SECONDARY_BUS_OFFSET + 1]
        except OSError as exc:
            log.info("device %s: cannot read config space: %s", bdf, exc)
            continue
        if len(config) > SECONDARY_BUS_OFFSET and config[_HEADER_TYPE_OFFSET] & 0x7F == _BRIDGE_HEADER:
            buses[bdf] = config[SECONDARY_BUS_OFFSET]
    return buses


def sysfs_bus_lookup(root: Path) -> BusLookup:
    """A ``(segment, bus, device, function) -> secondary bus`` lookup over ``root``."""
    buses = read_secondary_buses(root)

    def lookup(segment: int, bus: int, device: int, function: int) -> int | None:
        return buses.get(Bdf(segment, bus, device, function))

    return lookup
