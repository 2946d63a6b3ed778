"""A machine whose RMRRs come from Xen's ``rmrr=`` boot option, and the same regions as
an inventory for rmrrd (``tests/xen/test_xen_hvm_layout.py``).

Xen's VT-d enforces these regions and reports them to libxl (``strategy=host``), but
the DMAR table dom0 reads is QEMU's, without them: rmrrd learns them from an inventory
file built from the same list.
"""

from __future__ import annotations

from dataclasses import dataclass

from xen.testbed import BootConfig


@dataclass(frozen=True)
class Rmrr:
    """One region given to Xen with ``rmrr=`` (whole pages, inclusive bounds)."""

    first: int
    last: int
    devices: tuple[str, ...]

    def xen_arg(self) -> str:
        """The ``rmrr=`` entry (``parse_rmrr_param`` in xen/drivers/passthrough/vtd/dmar.c):
        page numbers in hex, then the devices."""
        return f"{self.first >> 12:x}-{self.last >> 12:x}={','.join(self.devices)}"

    def inventory(self) -> str:
        """The entry of an inventory's ``regions`` list (docs/inventory.md)."""
        devices = ", ".join(f'"0000:{device}"' for device in self.devices)
        return f"  - range: {self.first:#x}-{self.last:#x}\n    devices: [{devices}]\n"


REGIONS = (
    # 16 MiB: in every test guest's low RAM and below every boundary the tests use.
    Rmrr(0x1000000, 0x1003FFF, ("00:1f.3",)),
    # 65 MiB: above a 32 MiB rdm_mem_boundary, so libxl ends low RAM below it.
    Rmrr(0x4100000, 0x4100FFF, ("00:1f.0",)),
    # Above every test guest's RAM, in the MMIO hole; shared by two devices.
    Rmrr(0x7E000000, 0x7E003FFF, ("00:1f.2", "00:01.0")),
)
"""The host's RMRRs.  Xen's ``rmrr=`` takes only devices that exist and pages the host
has (``register_one_rmrr``; the machine's 2 GiB are all below 4 GiB), at most 16 pages
an entry: q35's LPC, SATA and SMBus functions and the virtio-serial port at 00:01.0."""

HVM_RMRR = BootConfig(name="hvm-rmrr", hvm=True,
                      xen_args=("rmrr=" + ";".join(region.xen_arg() for region in REGIONS), "conring_size=1m"))
"""qemu-system-xen and SeaBIOS in dom0; a console ring large enough for the hvmloader
output of every guest the tests create."""

INVENTORY_TEXT = "host: hvm-rmrr\nregions:\n" + "".join(region.inventory() for region in REGIONS)
INVENTORY = "/etc/testbed/hvm-rmrr.yaml"
"""Where dom0 keeps INVENTORY_TEXT, for ``rmrrd plan`` and ``rmrrd run``."""
RMRRD_CONFIG_TEXT = f"""\
xenstore:
  path: /run/xenstored/socket
host:
  name: hvm-rmrr
  sources: [{INVENTORY}]
defaults:
  seabios_size: 256
"""
"""``rmrrd run`` on this machine: the regions of ``rmrr=`` (its DMAR has none), and
Debian's 256 KiB SeaBIOS, which its hvmloader loads."""
ASSIGNABLE = ("00:1f.0", "00:1f.2", "00:1f.3")
"""The devices of the RMRRs that ``xl pci-assignable-add`` gives to ``xen-pciback``, so
that Xen itself judges their assignment (00:01.0 is the testbed's own serial port)."""
