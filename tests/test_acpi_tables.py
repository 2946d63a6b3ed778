"""The ACPI table builder the DMAR, IVRS and fuzz tests share, checked once here."""

from __future__ import annotations

import pytest

from support.acpi_tables import dmar, rmrr, scope

pytestmark = pytest.mark.unit


def test_built_tables_have_valid_headers() -> None:
    from rmrrd.core.acpi import parse_header

    table = dmar([rmrr(0, 0x1000, 0x1FFF, [scope(1, 0, [(2, 0)])])])
    header, cut = parse_header(table, "DMAR")
    assert header.length == len(table) == len(cut) and header.checksum_ok
