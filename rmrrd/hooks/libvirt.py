"""``/etc/libvirt/hooks/libxl``: refuse a domain whose PCI devices Xen would refuse here.

libvirt runs the hook as ``libxl GUEST OPERATION SUB-OPERATION EXTRA`` with the domain
XML on stdin, in a bare environment (docs/hooks.rst in libvirt).  On ``prepare``
(before a start, and on the destination of a migration) and ``migrate`` (the
destination, before ``prepare``) it predicts what stock libxl 4.17 does with the
domain's ``<hostdev>`` PCI devices and memory against this host's reserved regions
(:mod:`rmrrd.core.libvirt_xml`, then the planner) and exits 1 with one line on stderr
when Xen would fail to build the domain, which makes libvirt refuse the operation.

Never blocks what it cannot judge: every other operation, a domain without PCI
devices, a non-HVM domain, and any failure of rmrrd itself (no configuration, an
unreadable inventory) exit 0, the latter with a line on stderr (libvirt logs stderr
only on failure, so a wrong setup shows in ``rmrrd-libvirt-hook`` run by hand).
Nothing is written on stdout: for ``migrate`` libvirt would take it as a new XML.

Which configuration and inventory it uses: :mod:`rmrrd.hooks.stock`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rmrrd import inputs
from rmrrd.errors import InputError

CHECKED_OPERATIONS = ("prepare", "migrate")
EXIT_ALLOW, EXIT_REFUSE = 0, 1


def verdict(xml: str) -> tuple[bool, str | None]:
    """(allowed, the line to print) for one domain XML."""
    if "hostdev" not in xml:
        # No <hostdev>, no <interface type='hostdev'>: nothing to check, nothing to load.
        return True, None
    from rmrrd.hooks.stock import predict
    from rmrrd.core.libvirt_xml import libxl_domain_from_xml, parse_domain_xml, pci_devices

    root = parse_domain_xml(xml)
    if not pci_devices(root):
        return True, None
    outcome, line = predict(libxl_domain_from_xml(root), (root.findtext("name") or "?").strip())
    return outcome != "fail", None if line is None else f"rmrrd: {line}"


def main(argv: Sequence[str] | None = None) -> int:
    """The hook's entry point; returns libvirt's exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Read the whole XML whatever the operation: libvirt writes all of it.  Past
    # the cap it is drained, not kept (parse_domain_xml refuses it then).
    xml = sys.stdin.read(inputs.SMALL + 1)
    while len(xml) > inputs.SMALL and sys.stdin.read(inputs.SMALL):
        pass
    if len(args) < 2 or args[1] not in CHECKED_OPERATIONS:
        return EXIT_ALLOW
    try:
        allowed, line = verdict(xml)
    except InputError as exc:
        print(f"rmrrd: not checked, allowing {args[1]} of {args[0]}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_ALLOW
    if line is not None:
        print(line, file=sys.stderr)
    return EXIT_ALLOW if allowed else EXIT_REFUSE


if __name__ == "__main__":
    sys.exit(main())
