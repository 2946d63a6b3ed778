"""The real firmware tables the tests parse: the repository's own, plus an optional extra corpus.

The repository carries the tables whose publishers give a licence
(``tests/data/firmware/``, with their sources in its README).  More can be added for a
run by naming a directory of tables in ``RMRRD_EXTRA_FIRMWARE``; an ``expected.json``
and a ``README.md`` in that directory's parent, in the same formats, add values and
counts to check.  Tests refer to tables by file name; a test that needs one table only
the extra corpus has is skipped, by :func:`table`, when that corpus is absent.

Import as ``from support.firmware import CORPUS`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rmrrd.core.pci import Bdf

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "firmware" / "tables"
EXTRA_ENV = "RMRRD_EXTRA_FIRMWARE"

_README_ROW = re.compile(r"^\| `([^`]+)` \| (DMAR|IVRS) \| (\d+) (RMRR|IVMD) \|", re.MULTILINE)


@dataclass(frozen=True)
class Corpus:
    """One directory of tables, with what its parent says about them."""

    tables: dict[str, Path]
    """File name to path, binary tables only (``*.dsl`` disassemblies left out)."""
    expected: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``expected.json``: decoded values, for the tables it lists."""
    counts: dict[str, tuple[str, int]] = field(default_factory=dict)
    """From the README's table: signature and number of RMRRs or IVMDs, per file."""


def load_corpus(tables: Path) -> Corpus:
    """Read a corpus directory; ``expected.json`` and ``README.md`` beside it are optional."""
    found = {path.name: path for path in sorted(tables.iterdir())
             if path.is_file() and path.suffix != ".dsl"}
    expected_path = tables.parent / "expected.json"
    readme_path = tables.parent / "README.md"
    expected = json.loads(expected_path.read_text()) if expected_path.is_file() else {}
    counts = ({m[1]: (m[2], int(m[3])) for m in _README_ROW.finditer(readme_path.read_text())}
              if readme_path.is_file() else {})
    return Corpus(found, expected, counts)


def _extra() -> Corpus | None:
    directory = os.environ.get(EXTRA_ENV)
    if not directory:
        return None
    path = Path(directory)
    if not path.is_dir():
        # A mistyped variable must not quietly test less than the caller asked for.
        raise RuntimeError(f"{EXTRA_ENV}={directory}: not a directory")
    return load_corpus(path)


OWN = load_corpus(BUNDLED)
"""The tables in the repository."""
EXTRA = _extra()
"""The corpus named by ``RMRRD_EXTRA_FIRMWARE``, or None."""


def _merged() -> Corpus:
    if EXTRA is None:
        return OWN
    # The repository's copy wins for names in both; test_fixtures_tables checks they agree.
    return Corpus({**EXTRA.tables, **OWN.tables}, {**EXTRA.expected, **OWN.expected},
                  {**EXTRA.counts, **OWN.counts})


CORPUS = _merged()
"""Every table this run has: the repository's and the extra corpus's."""
NAMES = sorted(CORPUS.tables)


def table(name: str) -> Path:
    """The path of one table by file name; skips the test when only an absent extra corpus has it."""
    path = CORPUS.tables.get(name)
    if path is None:
        pytest.skip(f"{name} is not in the repository's corpus; set {EXTRA_ENV} to a corpus that has it")
    return path


def is_dmar(name: str) -> bool:
    """Which parser a table needs, from its file name (every corpus names the signature)."""
    return "DMAR" in name.upper()


def assert_matches_expected(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Compare every value ``want`` (an ``expected.json`` entry) gives, key by key.

    Driven by ``want``'s own keys, so a value added to expected.json is compared too;
    a key missing from ``got`` fails (KeyError), it is never skipped.  RMRRs and IVMDs
    are compared element by element on the expected element's keys (``got`` adds
    decoded fields such as ``devices``); the IVMD BDF is compared as a device, since
    expected.json writes it without the segment.
    """
    assert want, "empty expected entry"
    for key, value in want.items():
        if key in ("rmrrs", "ivmds"):
            assert len(got[key]) == len(value), key
            for index, (have, expect) in enumerate(zip(got[key], value)):
                for field, wanted in expect.items():
                    if field == "bdf":
                        assert Bdf.parse(have[field]) == Bdf.parse(wanted), (key, index, field)
                    else:
                        assert have[field] == wanted, (key, index, field)
        else:
            assert got[key] == value, key
