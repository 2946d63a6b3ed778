"""Mutated real tables: the parsers return or raise TableError, never anything else.

The checksum is recomputed after each mutation (else almost every mutant would stop
at the checksum check and the structure walk would never see it); a separate case
keeps the broken checksum.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmrrd.core.acpi import TableError
from rmrrd.core.dmar import dmar_inventory, parse_dmar
from rmrrd.core.ivrs import ivrs_inventory, parse_ivrs
from support.firmware import CORPUS, is_dmar
from support.acpi_tables import fix_checksum

pytestmark = [pytest.mark.unit, pytest.mark.firmware]

REAL = [(name, CORPUS.tables[name].read_bytes()) for name in sorted(CORPUS.tables)]


def _parse(name: str, data: bytes, verify_checksum: bool = True) -> None:
    try:
        if is_dmar(name):
            dmar_inventory(parse_dmar(data, lambda *_: 1, verify_checksum=verify_checksum), "h")
        else:
            ivrs_inventory(parse_ivrs(data, verify_checksum=verify_checksum), "h")
    except TableError:
        pass


_flip = st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255))
_cut = st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0))
# Length fields sit at 16-bit boundaries of subtable headers; any offset may be hit.
_length = st.tuples(st.just("length"), st.integers(0, 1 << 20), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 0xFFFF]))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REAL), st.lists(st.one_of(_flip, _cut, _length), min_size=1, max_size=4), st.booleans())
def test_mutated_tables_parse_or_raise_table_error(table: tuple[str, bytes], edits: list[tuple[str, int, int]],
                                                   keep_checksum_bad: bool) -> None:
    name, data = table
    raw = bytearray(data)
    for kind, where, value in edits:
        if not raw:
            break
        where %= len(raw)
        if kind == "flip":
            raw[where] ^= value
        elif kind == "cut":
            del raw[where:]
        elif where + 2 <= len(raw):
            struct.pack_into("<H", raw, where, value)
    mutated = bytes(raw) if keep_checksum_bad or len(raw) < 10 else fix_checksum(raw)
    _parse(name, mutated, verify_checksum=not keep_checksum_bad)
