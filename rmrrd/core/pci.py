"""PCI device addresses in xl's notation: ``SSSS:BB:DD.F``.

Input may omit the segment (``BB:DD.F`` means segment 0, as in xl); output always
carries it, so two spellings of one device compare equal once parsed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from rmrrd.errors import InputError

_BDF_RE = re.compile(r"(?:([0-9a-fA-F]{1,4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])")


class _BdfFields(NamedTuple):
    segment: int
    bus: int
    device: int
    function: int


class Bdf(_BdfFields):
    """A PCI function: segment, bus, device (0-31) and function (0-7).

    A value (docs/design.md, "Values"): immutable, hashable, ordered by segment,
    bus, device, function.  Made only valid: numbers out of range raise
    :class:`InputError`, whoever builds it (a parser, a firmware table, libxl's JSON).
    """

    __slots__ = ()

    def __new__(cls, segment: int, bus: int, device: int, function: int) -> Bdf:
        if not (0 <= segment <= 0xFFFF and 0 <= bus <= 0xFF and 0 <= device <= 0x1F and 0 <= function <= 7):
            raise InputError(f"invalid PCI address {segment:x}:{bus:x}:{device:x}.{function:x}")
        return super().__new__(cls, segment, bus, device, function)

    @classmethod
    def parse(cls, text: str) -> Bdf:
        """Parse ``SSSS:BB:DD.F`` or ``BB:DD.F``; the error names the bad text."""
        match = _BDF_RE.fullmatch(text)
        if match is None:
            raise InputError(f"invalid PCI device {text!r}: expected SSSS:BB:DD.F or BB:DD.F")
        segment = int(match[1], 16) if match[1] else 0
        device = int(match[3], 16)
        if device > 0x1F:
            raise InputError(f"invalid PCI device {text!r}: device number {device:#x} is above 0x1f")
        return cls(segment, int(match[2], 16), device, int(match[4], 16))

    def __str__(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.device:02x}.{self.function:x}"
