"""The parts every ACPI table shares: the 36-byte header, the checksum, subtable walks.

The DMAR (:mod:`rmrrd.core.dmar`) and IVRS (:mod:`rmrrd.core.ivrs`) parsers build on this.  All
of it is pure: bytes in, values out.  Firmware tables are input like any other, so a
malformed one raises :class:`TableError`, which names the table and the byte offset
of the problem; no ``struct.error`` or ``IndexError`` ever escapes, and no walk can
loop forever (every step advances by at least the subtable header's size).

Layout of the header (ACPI specification, "System Description Table Header"): 4-byte
signature, u32 length (of the whole table, header included), u8 revision, u8
checksum (all bytes of the table sum to 0 mod 256), 6-byte OEM id, 8-byte OEM table
id, u32 OEM revision, 4-byte creator id, u32 creator revision.  Little endian.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

from rmrrd.errors import InputError

HEADER_SIZE = 36
_HEADER = struct.Struct("<4sIBB6s8sI4sI")


class TableError(InputError):
    """A firmware table that cannot be parsed; the message names table and offset.

    ``offset`` is where in the table the problem is, so a reader can find it in a hex
    dump (``DMAR at offset 0x68: RMRR length 0 ...``).
    """

    def __init__(self, signature: str, offset: int, message: str) -> None:
        super().__init__(f"{signature} at offset {offset:#x}: {message}")
        self.signature = signature
        self.offset = offset


class AcpiHeader(NamedTuple):
    """The common header; text fields are decoded as Latin-1, byte for byte."""

    signature: str
    length: int
    revision: int
    checksum: int
    oem_id: str
    oem_table_id: str
    oem_revision: int
    creator_id: str
    creator_revision: int
    checksum_ok: bool


class Subtable(NamedTuple):
    """Where one subtable of a table sits: its type, offset and length in bytes."""

    offset: int
    type: int
    length: int


def _text(raw: bytes) -> str:
    # Latin-1 maps every byte to one character, so odd OEM ids (the fixtures hold
    # "AMD  \0") survive unchanged and compare equal to what iasl prints.
    return raw.decode("latin-1")


def table_checksum_ok(data: bytes) -> bool:
    """Whether the bytes sum to zero modulo 256, as the ACPI checksum requires."""
    return sum(data) % 256 == 0


def parse_header(data: bytes, signature: str, *, verify_checksum: bool = True,
                 aliases: tuple[str, ...] = ()) -> tuple[AcpiHeader, bytes]:
    """Check and decode the header; return it and the table cut to its own length.

    Raises :class:`TableError` when the data is shorter than a header, the signature
    is not ``signature`` (or one of ``aliases``), the length field is smaller than the header or larger than
    the data, or (with ``verify_checksum``) the checksum is wrong.  Bytes after the
    table's length are not part of it and are cut off.
    """
    if len(data) < HEADER_SIZE:
        raise TableError(signature, len(data), f"truncated: {len(data)} bytes, an ACPI header needs {HEADER_SIZE}")
    sig, length, revision, checksum, oem_id, oem_table_id, oem_revision, creator_id, creator_revision = (
        _HEADER.unpack_from(data))
    found = _text(sig)
    if found != signature and found not in aliases:
        expected = " or ".join(repr(name) for name in (signature, *aliases))
        raise TableError(signature, 0, f"signature is {found!r}, expected {expected}")
    if length < HEADER_SIZE:
        raise TableError(signature, 4, f"length field {length} is smaller than the {HEADER_SIZE}-byte header")
    if length > len(data):
        raise TableError(signature, 4, f"length field {length} runs past the end of the data ({len(data)} bytes)")
    table = data[:length]
    ok = table_checksum_ok(table)
    if verify_checksum and not ok:
        raise TableError(signature, 9, f"bad checksum: bytes sum to {sum(table) % 256:#04x}, not 0")
    header = AcpiHeader(found, length, revision, checksum, _text(oem_id), _text(oem_table_id), oem_revision,
                        _text(creator_id), creator_revision, ok)
    return header, table


def walk_subtables(table: bytes, start: int, signature: str, header: struct.Struct) -> Iterator[Subtable]:
    """Yield each subtable from ``start`` to the end of ``table``, checking lengths.

    ``header`` decodes a subtable's leading fields into ``(type, length)`` (DMAR:
    u16 type, u16 length; IVRS: u8 type, u8 flags, u16 length: its unpack then gives
    three values and the flags are dropped).  A length shorter than that header
    (zero included: the walk would never advance) or running past the table's end
    is a :class:`TableError` at the subtable's offset.
    """
    offset = start
    while offset < len(table):
        if offset + header.size > len(table):
            raise TableError(signature, offset, f"truncated subtable header: {len(table) - offset} bytes left, "
                             f"need {header.size}")
        fields = header.unpack_from(table, offset)
        kind, length = fields[0], fields[-1]
        if length < header.size:
            raise TableError(signature, offset, f"subtable type {kind:#x} has length {length}, "
                             f"less than its {header.size}-byte header")
        if offset + length > len(table):
            raise TableError(signature, offset, f"subtable type {kind:#x} of length {length} runs past the end "
                             f"of the table ({len(table)} bytes)")
        yield Subtable(offset, kind, length)
        offset += length


def require_length(signature: str, sub: Subtable, minimum: int, name: str) -> None:
    """Insist that a known subtable is long enough for its fixed fields."""
    if sub.length < minimum:
        raise TableError(signature, sub.offset, f"{name} length {sub.length} is below its fixed size {minimum}")
