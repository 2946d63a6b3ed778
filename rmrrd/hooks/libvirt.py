"""``/etc/libvirt/hooks/libxl``: refuse a domain whose PCI devices Xen would refuse here.

libvirt runs the hook as ``libxl GUEST OPERATION SUB-OPERATION EXTRA`` with the domain
XML on stdin, in a bare environment (docs/hooks.rst in libvirt).  On ``prepare``
(before a start, and on the destination of a migration) and ``migrate`` (the
destination, before ``prepare``) it predicts what stock libxl 4.17 does with the
domain's ``<hostdev>`` PCI devices and memory against this host's reserved regions
(:mod:`rmrrd.libvirt_xml`, then the planner) and exits 1 with one line on stderr
when Xen would fail to build the domain, which makes libvirt refuse the operation.

Never blocks what it cannot judge: every other operation, a domain without PCI
devices, a non-HVM domain, and any failure of rmrrd itself (no configuration, an
unreadable inventory) exit 0, the latter with a line on stderr (libvirt logs stderr
only on failure, so a wrong setup shows in ``rmrrd-libvirt-hook`` run by hand).
Nothing is written on stdout: for ``migrate`` libvirt would take it as a new XML.

The configuration is ``$RMRRD_CONFIG``, else ``/etc/rmrrd/rmrrd.yaml``, else the
built-in defaults (this host's DMAR and IVRS tables); the inventory it names is kept
in ``$RMRRD_RUNTIME_DIR`` (``/run/rmrrd``) between runs (:mod:`rmrrd.hooks.host_cache`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from rmrrd.errors import InputError

CHECKED_OPERATIONS = ("prepare", "migrate")
EXIT_ALLOW, EXIT_REFUSE = 0, 1
DEFAULT_CONFIG = "/etc/rmrrd/rmrrd.yaml"
RUNTIME_DIR = "/run/rmrrd"
"""Where :mod:`rmrrd.hooks.host_cache` keeps this host's inventory between runs."""


def verdict(xml: str, config: str | None, runtime_dir: str) -> tuple[bool, str | None]:
    """(allowed, the line to print) for one domain XML.

    ``config`` is the configuration file (None: the default one if it exists, else
    the built-in defaults); ``runtime_dir`` where the inventory is cached.
    """
    if "hostdev" not in xml:
        # No <hostdev>, no <interface type='hostdev'>: nothing to check, nothing to load.
        return True, None
    from rmrrd.libvirt_xml import libxl_domain_from_xml, parse_domain_xml, pci_devices

    root = parse_domain_xml(xml)
    name = (root.findtext("name") or "?").strip()
    if not pci_devices(root):
        return True, None
    domain = libxl_domain_from_xml(root)
    if domain.refusals:
        return False, f"rmrrd: libxl would refuse domain {name}: {domain.refusals[0]}"
    if domain.type.value != "hvm":
        return True, None
    # Only now the heavier part: this host's inventory (cached) and the planner.
    from rmrrd.hooks.host_cache import host_inventory
    from rmrrd.libxl_domain import domain_request
    from rmrrd.planner import plan

    config_path = config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    host, seabios_size = host_inventory(config_path, runtime_dir)
    result = plan(domain_request(domain, seabios_size=seabios_size), host, {})
    if result.status != "ready":
        return False, f"rmrrd: Xen would refuse domain {name} on {host.host}: {result.error}"
    warned = [region for region in result.regions if region.action == "warned"]
    if warned:
        return True, (f"rmrrd: domain {name}: {len(warned)} reserved region(s) overlap the guest under "
                      f"rdm_policy=relaxed, first {warned[0].range} ({warned[0].source_text})")
    return True, None


def main(argv: Sequence[str] | None = None) -> int:
    """The hook's entry point; returns libvirt's exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Read the whole XML whatever the operation: libvirt writes all of it.
    xml = sys.stdin.read()
    if len(args) < 2 or args[1] not in CHECKED_OPERATIONS:
        return EXIT_ALLOW
    try:
        allowed, line = verdict(xml, os.environ.get("RMRRD_CONFIG") or None,
                                os.environ.get("RMRRD_RUNTIME_DIR") or RUNTIME_DIR)
    except InputError as exc:
        print(f"rmrrd: not checked, allowing {args[1]} of {args[0]}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_ALLOW
    if line is not None:
        print(line, file=sys.stderr)
    return EXIT_ALLOW if allowed else EXIT_REFUSE


if __name__ == "__main__":
    sys.exit(main())
