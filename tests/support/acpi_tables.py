"""Building ACPI tables byte by byte, from the specifications' layouts.

Shared by the DMAR, IVRS and fuzz tests so they build tables one way; its own test
is ``tests/test_acpi_tables.py``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

HEADER = struct.Struct("<4sIBB6s8sI4sI")


def fix_checksum(table: bytearray) -> bytes:
    """Set byte 9 so that the table's bytes sum to zero."""
    table[9] = 0
    table[9] = (-sum(table)) % 256
    return bytes(table)


def acpi_table(signature: str, body: bytes) -> bytes:
    """A table with a correct header (length, checksum) around ``body``."""
    table = bytearray(HEADER.pack(signature.encode(), HEADER.size + len(body), 1, 0, b"TESTOE", b"TESTTABL",
                                  1, b"TEST", 1) + body)
    return fix_checksum(table)


def scope(kind: int, start_bus: int, path: Sequence[tuple[int, int]], enum_id: int = 0) -> bytes:
    hops = b"".join(bytes(hop) for hop in path)
    return struct.pack("<BBxxBB", kind, 6 + len(hops), enum_id, start_bus) + hops


def rmrr(segment: int, base: int, limit: int, scopes: Sequence[bytes]) -> bytes:
    body = b"".join(scopes)
    return struct.pack("<HHxxHQQ", 1, 24 + len(body), segment, base, limit) + body


def drhd(segment: int, register: int, scopes: Sequence[bytes], flags: int = 0) -> bytes:
    body = b"".join(scopes)
    return struct.pack("<HHBxHQ", 0, 16 + len(body), flags, segment, register) + body


def dmar(structures: Sequence[bytes], width: int = 38, flags: int = 1) -> bytes:
    return acpi_table("DMAR", struct.pack("<BB10x", width, flags) + b"".join(structures))


def ivmd(kind: int, flags: int, devid: int, aux: int, start: int, length: int, segment: int = 0) -> bytes:
    return struct.pack("<BBHHHH6xQQ", kind, flags, 32, devid, aux, segment, start, length)


def ivrs(blocks: Sequence[bytes], ivinfo: int = 0x203041) -> bytes:
    return acpi_table("IVRS", struct.pack("<I8x", ivinfo) + b"".join(blocks))
