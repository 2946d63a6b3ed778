"""``rmrrd inventory``: print what a DMAR, IVRS or YAML inventory says.

By default a readable table; ``--yaml`` the YAML inventory format (docs/inventory.md) (what an
operator copies to peer hosts); ``--json`` the same field names as ``/inventory``,
and for a firmware table also the decoded table itself under ``table`` (header,
DRHDs, RMRRs with their scopes, IVMDs), so a table's raw values can be checked.
"""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rmrrd.core.acpi import AcpiHeader
from rmrrd.core.dmar import BusLookup, DmarTable, Rmrr, dmar_inventory, parse_dmar
from rmrrd.edges.host_inventory import read_table
from rmrrd.core.inventory import HostRegion, Inventory, UnresolvedDevice
from rmrrd.core.inventory_yaml import dump_inventory_yaml, inventory_to_json, load_inventory_file
from rmrrd.core.ivrs import IvrsTable, ivrs_inventory, parse_ivrs
from rmrrd.cli.exits import EXIT_BROKEN_PIPE, EXIT_USAGE
from rmrrd.errors import InputError
from rmrrd.edges.sysfs_pci import sysfs_bus_lookup

_Table = TypeVar("_Table", DmarTable, IvrsTable)

_MAX_LISTED = 8
"""Longer device lists (an IVMD device range can name 4096) are abridged in the table."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("inventory", help="print a host inventory read from a table or a file",
                                   description="Print the reserved regions a DMAR or IVRS table or a YAML "
                                               "inventory declares.",
                                   exit_statuses={0: "printed",
                                                  EXIT_USAGE: "bad arguments, or a table or file that cannot "
                                                              "be read or parsed",
                                                  EXIT_BROKEN_PIPE: "the reader of the output went away"})
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dmar", metavar="FILE", type=Path, help="an ACPI DMAR table (Intel VT-d)")
    source.add_argument("--ivrs", metavar="FILE", type=Path, help="an ACPI IVRS table (AMD-Vi)")
    source.add_argument("--yaml-file", metavar="FILE", type=Path, help="a YAML inventory (docs/inventory.md)")
    parser.add_argument("--sysfs-root", metavar="DIR", type=Path,
                        help="resolve DMAR scope paths with the bridges under DIR/sys/bus/pci/devices "
                             "(default: leave paths through bridges unresolved)")
    parser.add_argument("--host", metavar="NAME", help="host name for a table's inventory (default: this host)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--yaml", action="store_true", help="print the inventory as YAML, the format --yaml-file reads")
    output.add_argument("--json", action="store_true", help="print the inventory (and the table) as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Read the one source given, print it in the format asked for."""
    # Options that do not apply to the source are refused, not ignored: the operator
    # who gave them expected them to change the result.
    if args.sysfs_root is not None and args.dmar is None:
        raise InputError("--sysfs-root applies to --dmar only: IVRS and YAML inventories name devices by BDF")
    if args.host is not None and args.yaml_file is not None:
        raise InputError("--host applies to a table: a YAML inventory names its host itself")
    host: str = args.host or socket.gethostname()
    table_json: dict[str, Any] | None = None
    if args.yaml_file is not None:
        inv = load_inventory_file(args.yaml_file)
    elif args.dmar is not None:
        lookup = _sysfs_lookup(args.sysfs_root) if args.sysfs_root is not None else None
        dmar = _parse(args.dmar, lambda data: parse_dmar(data, lookup))
        inv, table_json = dmar_inventory(dmar, host), dmar_to_json(dmar)
    else:
        ivrs = _parse(args.ivrs, parse_ivrs)
        inv, table_json = ivrs_inventory(ivrs, host), ivrs_to_json(ivrs)
    if args.yaml:
        print(dump_inventory_yaml(inv), end="")
    elif args.json:
        obj = inventory_to_json(inv)
        if table_json is not None:
            obj["table"] = table_json
        print(json.dumps(obj, indent=2))
    else:
        print(format_inventory(inv), end="")
    return 0


def _sysfs_lookup(root: Path) -> BusLookup:
    """The bridges under an explicitly given root, which must hold a PCI device tree.

    The library treats a missing tree as "no bridges" (a host without sysfs); here the
    operator named the root, so a typo must not quietly leave every scope unresolved.
    """
    devices = root / "sys" / "bus" / "pci" / "devices"
    if not devices.is_dir():
        raise InputError(f"--sysfs-root {root}: no directory {devices}")
    return sysfs_bus_lookup(root)


def _parse(path: Path, parse: Callable[[bytes], _Table]) -> _Table:
    """Read and parse a table file; errors name the file (the table error names the offset)."""
    try:
        return parse(read_table(path))
    except InputError as exc:
        message = str(exc)
        raise InputError(message if message.startswith(f"{path}:") else f"{path}: {message}") from None


def _header_json(header: AcpiHeader) -> dict[str, Any]:
    return {"signature": header.signature, "length": header.length, "revision": header.revision,
            "checksum_ok": header.checksum_ok, "oem_id": header.oem_id, "oem_table_id": header.oem_table_id,
            "oem_revision": header.oem_revision, "creator_id": header.creator_id,
            "creator_revision": header.creator_revision}


def _rmrr_json(rmrr: Rmrr) -> dict[str, Any]:
    return {"offset": rmrr.offset, "length": rmrr.length, "segment": rmrr.segment, "base": hex(rmrr.base),
            "limit": hex(rmrr.limit),
            "scopes": [{"type": scope.type, "enum_id": scope.enum_id, "start_bus": scope.start_bus,
                        "path": [list(hop) for hop in scope.path]} for scope in rmrr.scopes],
            "devices": [str(device) for device in rmrr.devices]}


def dmar_to_json(table: DmarTable) -> dict[str, Any]:
    """The decoded DMAR, field names as in the fixtures' ``expected.json``."""
    return {**_header_json(table.header), "host_address_width": table.host_address_width, "flags": table.flags,
            "subtable_types": [sub.type for sub in table.subtables],
            "subtables": [{"type": sub.type, "offset": sub.offset, "length": sub.length} for sub in table.subtables],
            "drhds": [{"flags": drhd.flags, "reg": hex(drhd.register_base), "segment": drhd.segment,
                       "scopes": [str(scope) for scope in drhd.scopes]} for drhd in table.drhds],
            "rmrrs": [_rmrr_json(rmrr) for rmrr in table.rmrrs]}


def ivrs_to_json(table: IvrsTable) -> dict[str, Any]:
    """The decoded IVRS, field names as in the fixtures' ``expected.json``."""
    return {**_header_json(table.header), "ivinfo": hex(table.ivinfo),
            "subtables": [{"type": hex(sub.type), "offset": sub.offset, "length": sub.length}
                          for sub in table.subtables],
            "ivmds": [{"offset": ivmd.offset, "type": hex(ivmd.type), "flags": hex(ivmd.flags),
                       "devid": hex(ivmd.devid), "aux": hex(ivmd.aux), "segment": ivmd.segment,
                       "bdf": str(ivmd.bdf), "start": hex(ivmd.start), "length": hex(ivmd.mem_length)}
                      for ivmd in table.ivmds]}


def _devices_text(region: HostRegion) -> str:
    if region.all_devices:
        return "all devices"
    names = [f"{device} (unresolved)" if isinstance(device, UnresolvedDevice) else str(device)
             for device in region.devices]
    if len(names) > _MAX_LISTED:
        names = [*names[:_MAX_LISTED // 2], "...", names[-1], f"({len(names)} devices)"]
    return " ".join(names) or "(none)"


def format_inventory(inv: Inventory) -> str:
    """A table a person reads: one line per region, then the warnings."""
    lines = [f"host {inv.host}: {len(inv.regions)} reserved region(s)"]
    width = max((len(str(region.range)) for region in inv.regions), default=5)
    lines.append(f"{'RANGE':<{width}}  {'SIZE':>10}  DEVICES")
    for region in inv.regions:
        lines.append(f"{str(region.range):<{width}}  {_size_text(region.range.size):>10}  {_devices_text(region)}")
    lines.extend(f"warning: {warning}" for warning in inv.warnings)
    return "\n".join(lines) + "\n"


def _size_text(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size:#x}"
