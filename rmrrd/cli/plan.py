"""``rmrrd plan``: the offline what-if of a domain setup.

Takes the same inputs the toolstack writes under ``/libxl/<domid>/rdm/``, as options,
or reads them from an xl.cfg file with ``--xl-config`` as stock xl would (its warnings
on stderr, docs/xl-config.md), and prints the answer the daemon would write: a
readable table, or with ``--json`` one object with the xenstore answer's field names.
Exit status 0 when the domain could be built (``ready``), 1 when not (``error``, or
libxl would refuse the file), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rmrrd.cli.exits import EXIT_BROKEN_PIPE, EXIT_USAGE
from rmrrd.errors import InputError
from rmrrd.core.inventory import Inventory
from rmrrd.core.inventory_yaml import load_inventory_file
from rmrrd.core.planner import XL_DEFAULTS, DomainRequest, Plan, parse_domain_request, plan

EXIT_READY = 0
EXIT_ERROR = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "plan", help="plan a guest's layout around reserved regions (offline)",
        description="Plan one guest's memory layout around its reserved regions, as the daemon "
                    "would answer /libxl/<domid>/rdm/.  Defaults are xl's.",
        exit_statuses={EXIT_READY: "status ready: the domain can be built with this layout",
                       EXIT_ERROR: "status error: the domain must not be built as asked (the error says why), "
                                   "or libxl would refuse the --xl-config file",
                       EXIT_USAGE: "bad arguments, or an inventory or request that is invalid",
                       EXIT_BROKEN_PIPE: "the reader of the output went away"})
    parser.add_argument("--inventory", metavar="FILE", type=Path, required=True,
                        help="this host's inventory (YAML, docs/inventory.md)")
    parser.add_argument("--peer", metavar="FILE", type=Path, action="append", default=[],
                        help="a peer host's inventory, for --migrate (repeatable)")
    parser.add_argument("--xl-config", metavar="FILE", type=Path,
                        help="read memory, mmio_hole, rdm, rdm_mem_boundary, pci, videoram, hap and bios from "
                             "an xl.cfg file as stock xl 4.17 does, its bugs included (instead of those options)")
    parser.add_argument("--memory", metavar="MIB", help="guest RAM in MiB (required without --xl-config)")
    parser.add_argument("--mmio-hole", metavar="MIB", help="MMIO hole below 4 GiB in MiB (default 256)")
    parser.add_argument("--rdm", metavar="STRING", help="xl.cfg rdm= string (default policy=relaxed)")
    parser.add_argument("--mem-boundary", metavar="MIB", help="xl.cfg rdm_mem_boundary in MiB (default 2048)")
    parser.add_argument("--pci", metavar="SPEC", action="append", default=[],
                        help="a statically assigned device, xl pci= syntax (repeatable)")
    parser.add_argument("--hotplug", metavar="SPEC", action="append", default=[],
                        help="a device that may be hot-plugged later (repeatable)")
    parser.add_argument("--migrate", metavar="HOST", action="append", default=[],
                        help="a peer host the guest may move to (repeatable)")
    parser.add_argument("--reserve", metavar="RANGE", action="append", default=[],
                        help="an extra range START-END to reserve (repeatable)")
    parser.add_argument("--videoram", metavar="MIB",
                        help="MiB of --memory that is video RAM, not guest RAM (default 0; xl: 8 for "
                             "the default cirrus card, 16 for stdvga)")
    parser.add_argument("--hap", metavar="0|1", help="1 (default, as xl): a lowered lowmem_end is rounded "
                                                     "down to 2 MiB; 0 for shadow paging")
    parser.add_argument("--bios", metavar="seabios|ovmf|rombios", help="the guest's firmware (default seabios)")
    parser.add_argument("--seabios-size", metavar="KIB", type=int, default=XL_DEFAULTS.seabios_size,
                        help="size of the SeaBIOS image in KiB, as defaults.seabios_size of the daemon's "
                             "configuration (default 128, upstream Xen's; Debian ships 256)")
    parser.add_argument("--json", action="store_true", help="print the answer as one JSON object")
    parser.set_defaults(run=run)


def load_peers(paths: Sequence[Path]) -> dict[str, Inventory]:
    """Peer inventories by host name, each with the aliases its file lists.

    A host, or an alias, that two files name is an error naming both: a migration
    target must stand for one host (the daemon drops such an alias with a warning
    instead, as it must come up whatever its peers say).
    """
    peers: dict[str, Inventory] = {}
    origin: dict[str, Path] = {}
    for path in paths:
        inventory = load_inventory_file(path)
        for name in (inventory.host, *inventory.aliases):
            if name in origin:
                raise InputError(f"peer host name {name!r} is in both {origin[name]} and {path}")
            origin[name] = path
        peers[inventory.host] = inventory
    return peers


_XL_CONFIG_DECIDES = ("memory", "mmio_hole", "rdm", "mem_boundary", "pci", "videoram", "hap", "bios")
"""Options the xl.cfg file decides: giving both would leave one of them unused."""


def _request(args: argparse.Namespace) -> tuple[DomainRequest, tuple[str, ...]]:
    """The request from the options or the xl.cfg file, and what libxl would refuse."""
    if args.xl_config is None:
        if args.memory is None:
            raise InputError("--memory is required (or --xl-config FILE)")
        defaults = XL_DEFAULTS._replace(seabios_size=args.seabios_size)
        return parse_domain_request(args.memory, args.mmio_hole, args.rdm, args.mem_boundary,
                                    args.pci, args.hotplug, args.migrate, args.reserve, defaults,
                                    videoram=args.videoram, hap=args.hap, bios=args.bios), ()
    # Imported here: the xl.cfg reader is only needed with this option.
    from rmrrd.app.xl_config import read_xl_config
    from rmrrd.core.libxl_domain import domain_request

    given = [name for name in _XL_CONFIG_DECIDES if getattr(args, name) not in (None, [])]
    if given:
        raise InputError(f"--{given[0].replace('_', '-')} cannot be combined with --xl-config: the file decides it")
    domain = read_xl_config(args.xl_config, "plan")
    request = domain_request(domain, args.hotplug, args.migrate, args.reserve, seabios_size=args.seabios_size)
    return request, domain.refusals


def run(args: argparse.Namespace) -> int:
    host = load_inventory_file(args.inventory)
    peers = load_peers(args.peer)
    request, refusals = _request(args)
    result = plan(request, host, peers)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_plan(result))
    for refusal in refusals:
        print(f"rmrrd plan: error: {refusal}", file=sys.stderr)
    return EXIT_READY if result.status == "ready" and not refusals else EXIT_ERROR


def format_plan(result: Plan) -> str:
    """The readable form: layout, one row per region, then the e820."""
    lines = [f"status       {result.status}"]
    if result.error:
        lines.append(f"error        {result.error}")
    lines += [f"lowmem_end   {result.lowmem_end:#x}", f"highmem_end  {result.highmem_end:#x}", ""]
    rows = [("RANGE", "SOURCE", "CONFLICT", "ACTION")] + [
        (str(r.range), r.source_text, r.conflict_text, r.action) for r in result.regions]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    widths[0] = max([widths[0]] + [len(str(entry.range)) for entry in result.e820])
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3] for row in rows]
    if not result.regions:
        lines.append("(no reserved regions)")
    lines += ["", "E820"] + [f"{str(entry.range).ljust(widths[0])}  {entry.type}" for entry in result.e820]
    return "\n".join(lines)
