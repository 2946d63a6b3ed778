"""A PCI device tree as Linux exposes it under ``/sys/bus/pci/devices``, for the tests
of the sysfs bridge lookup and of the host inventory that uses it."""

from __future__ import annotations

from pathlib import Path


def make_device(root: Path, name: str, *, bridge: bool, secondary: int = 0) -> None:
    """A ``config`` file with a type-1 (bridge) or type-0 header, as Linux exposes it."""
    config = bytearray(64)
    config[0x0E] = 0x81 if bridge else 0x00  # bit 7: multi-function, must be ignored
    config[0x19] = secondary
    device = root / "sys" / "bus" / "pci" / "devices" / name
    device.mkdir(parents=True)
    (device / "config").write_bytes(bytes(config))
