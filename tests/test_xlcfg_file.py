"""The xl.cfg reader against xl's own parser (libxlutil 4.17 through ctypes).

Every file is read by both; they must agree on whether it parses and, key by key, on
what xl's accessors return.  The corpus: the example files Xen ships (as Debian
installs them in /etc/xen, unpacked by scripts/bootstrap), hand-made edge cases, and
generated files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.libxlutil import LIBXLUTIL
from rmrrd.errors import InputError
from rmrrd.core.xlcfg_file import XlConfig, load_xl_config, parse_xl_config, strtol

EXAMPLES = Path(__file__).resolve().parents[1] / ".tools" / "xen-utils-common" / "etc" / "xen"
EXAMPLE_FILES = sorted(EXAMPLES.glob("xlexample.*"))

needs_libxlutil = pytest.mark.skipif(LIBXLUTIL is None, reason="libxlutil.so.4.17 (libxenmisc4.17) not installed")

EDGE_CASES = [
    "",
    "\n\n# only a comment\n",
    'name = "a"; memory = 1024\n',
    "memory = 1024",  # the last setting needs no newline
    "memory = 0400\n",  # octal, as strtol reads it
    'memory = "0x800"\n',  # a quoted number is a number
    "memory = 1024k\n",
    "memory = 12abc\n",
    'memory = " 512"\n',
    'memory = "512 "\n',
    'memory = "-5"\n',
    "memory = 99999999999999999999\n",
    "memory = 1\nmemory = 2\n",  # the last one wins
    "memory += 1\n",
    'rdm = "a"\nrdm += "b"\n',
    "pci = ['a']\npci += ['b', 'c']\n",
    "pci = ['a']\npci += 'b'\n",
    "pci = [ 'a', ['b'], 'c' ]\n",
    "pci = [\n  'a',\n  'b',\n]\n",
    "pci = []\n",
    "pci = [,]\n",
    "pci = 'a'\n",
    "memory = [1]\n",
    'vif = [ "" ]\n',
    "x = 'it''s'\n",
    "x = 'a\\'b'\n",
    'x = "tab\\there"\n',
    'x = "\\q"\n',
    'x = "\\x41"\n',
    "x = 1 # trailing comment\n",
    "x = 1 # no newline at the end",
    "x = 1\r\n",
    "Memory = 1\n",
    "memory = 1 2\n",
    "memory 1\n",
    "= 1\n",
    "memory = \n",
    "x.y_z = 3\n",
    "x = 1;;\n",
    "x = 'unterminated\n",
    "x = (1)\n",
    "x = -1\n",
]


def _same(text: str, keys: set[str]) -> None:
    """rmrrd and libxlutil agree on ``text``: both refuse it, or every key reads the same."""
    assert LIBXLUTIL is not None
    theirs = LIBXLUTIL.parse(text)
    try:
        ours: XlConfig | None = parse_xl_config(text, "t.cfg")
    except InputError:
        ours = None
    assert (ours is None) == (theirs is None), f"parse disagrees on {text!r}"
    if ours is None or theirs is None:
        return
    try:
        for key in keys | set(ours.settings):
            assert ours.string(key) == theirs.string(key), (key, text)
            assert ours.number(key) == theirs.number(key), (key, text)
            assert ours.items(key) == theirs.items(key), (key, text)
    finally:
        theirs.close()


@needs_libxlutil
@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_read_as_xl_reads_them(text: str) -> None:
    _same(text, {"memory", "x", "pci", "rdm"})


@needs_libxlutil
def test_xen_example_files_read_as_xl_reads_them() -> None:
    assert {path.name for path in EXAMPLE_FILES} >= {"xlexample.hvm", "xlexample.pvlinux", "xlexample.pvhlinux"}
    for path in EXAMPLE_FILES:
        _same(path.read_text(), set())
        assert load_xl_config(path).settings["name"].line > 1


_ATOMS = st.sampled_from(["1", "0x10", "010", "12ab", "'s'", '"2048"', "'a,b'", '""', "'1 '", "[]"])
_VALUES = st.recursive(_ATOMS, lambda inner: st.lists(inner, max_size=3).map(lambda vs: "[" + ", ".join(vs) + "]"),
                       max_leaves=6)
_LINE = st.one_of(
    st.tuples(st.sampled_from(["memory", "maxmem", "pci", "rdm", "x.y"]), st.sampled_from([" = ", "=", " += "]),
              _VALUES, st.sampled_from(["\n", ";", " # c\n", ""])).map("".join),
    st.sampled_from(["\n", "# comment\n", "bad line\n", "A = 1\n", "x = [\n1,\n]\n"]),
)


@needs_libxlutil
@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=6).map("".join))
def test_generated_files_read_as_xl_reads_them(text: str) -> None:
    _same(text, {"memory", "maxmem", "pci", "rdm", "x.y"})


def test_errors_name_file_and_line() -> None:
    with pytest.raises(InputError, match=r"^g\.cfg:3: b: config parsing error near 'x'"):
        parse_xl_config("a = 1\nb = [ 1,\n 2 x ]\n", "g.cfg")
    with pytest.raises(InputError, match=r"^g\.cfg:2: lexical error near '#c'.*needs a newline"):
        parse_xl_config("a = 1\n#c", "g.cfg")
    with pytest.raises(InputError, match=r"^g\.cfg:1: a: lexical error.*carriage return"):
        parse_xl_config("a = 1\r\n", "g.cfg")


def test_ignored_settings_are_reported_with_their_line() -> None:
    cfg = parse_xl_config("memory = '1G'\n\npci = '01:00.0'\nmaxmem += 5\n", "g.cfg")
    assert cfg.number("memory") is None and cfg.items("pci") is None and cfg.number("maxmem") is None
    assert [(p.line, p.key) for p in cfg.problems] == [(1, "memory"), (3, "pci"), (4, "maxmem")]
    assert "'1G' is not a valid number" in cfg.problems[0].message


def test_unreadable_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        load_xl_config(tmp_path / "missing.cfg")
    (tmp_path / "bin.cfg").write_bytes(b"memory = 1\n\xff\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load_xl_config(tmp_path / "bin.cfg")


@pytest.mark.parametrize(("text", "value"), [("10", 10), ("010", 8), ("0x1F", 31), (" -3", -3), ("+0", 0),
                                             ("08", None), ("0x", None), ("1 ", None), ("", None)])
def test_strtol(text: str, value: int | None) -> None:
    assert strtol(text) == value
