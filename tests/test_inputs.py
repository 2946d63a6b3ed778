"""Every file rmrrd reads, fed what is not a file of its kind: ``/dev/zero``, YAML
that nests without end or expands by aliases, JSON nested thousands deep, XML with
entities.  Each is refused with one line that starts with the file's name, in
bounded time and memory; a daemon's SIGHUP keeps its old state
(``test_service_signals``) and its start exits 2 (``test_run_start_failures``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from rmrrd import inputs
from rmrrd.core.inventory_yaml import load_inventory_file
from rmrrd.core.libvirt_xml import parse_domain_xml
from rmrrd.core.xlcfg_file import load_xl_config
from rmrrd.edges.config import ConfigError, load_config
from rmrrd.edges.host_inventory import read_table
from rmrrd.edges.peers import load_peers
from rmrrd.errors import InputError

pytestmark = pytest.mark.unit

BILLION_LAUGHS = "".join([
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n",
    *(f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join([f'*{chr(97 + n)}'] * 10)}]\n" for n in range(8)),
    "host: node-z\nregions: []\n",
])
"""Ten to the ninth ``x`` once expanded: nine lines of YAML."""
DEEP_YAML = "host: node-z\nregions: " + "[" * 5000 + "]" * 5000 + "\n"


def zero(tmp_path: Path, name: str) -> Path:
    """``name`` in ``tmp_path``, a symlink to /dev/zero (endless, size 0 to stat)."""
    path = tmp_path / name
    os.symlink("/dev/zero", path)
    return path


def one_line(exc: BaseException, path: Path) -> str:
    text = str(exc)
    assert "\n" not in text and text.startswith(str(path)), text
    return text


READERS = {
    "configuration": lambda path: load_config(path, environ={}, hostname="h"),
    "inventory": load_inventory_file,
    "firmware table": read_table,
    "xl.cfg file": load_xl_config,
}


@pytest.mark.parametrize("what", READERS)
def test_dev_zero_is_refused_at_the_cap_naming_the_file(tmp_path: Path, what: str) -> None:
    path = zero(tmp_path, "input")
    with pytest.raises(InputError) as refused:
        READERS[what](path)
    assert one_line(refused.value, path).endswith(f"larger than {_cap(what)} bytes: not a {what}")


def _cap(what: str) -> int:
    return {"configuration": inputs.SMALL, "inventory": inputs.INVENTORY, "firmware table": inputs.TABLE,
            "xl.cfg file": inputs.SMALL}[what]


@pytest.mark.parametrize(("text", "why"), [
    (BILLION_LAUGHS, ":2: YAML alias *a refused"),
    (DEEP_YAML, ":2: nested deeper than 64 levels"),
    ("host: node-z\nregions: [\n", "not valid YAML"),
])
def test_an_inventory_that_expands_or_nests_is_refused(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "node-z.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as refused:
        load_inventory_file(path)
    assert why in one_line(refused.value, path)


@pytest.mark.parametrize(("text", "why"), [
    ("x: &x {level: debug}\nlog: *x\n", ":2: YAML alias *x refused"),
    ("log: " + "{a: " * 100 + "1" + "}" * 100 + "\n", ":1: nested deeper than 64 levels"),
])
def test_a_configuration_that_expands_or_nests_is_refused(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "rmrrd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ={}, hostname="h")
    assert refused.value.problems == [f"{path}{why}: rmrrd's files need none, and aliases can expand without bound"
                                      if "alias" in why else f"{path}{why}"]


async def test_a_peer_file_that_expands_is_a_problem_line_not_a_crash(tmp_path: Path) -> None:
    peers = tmp_path / "peers"
    peers.mkdir()
    (peers / "node-b.yaml").write_text("host: node-b\nregions: []\n")
    (peers / "node-z.yaml").write_text(BILLION_LAUGHS)
    endless = zero(tmp_path, "node-y.yaml")  # named as a file: a directory lists regular files only
    with trio.fail_after(10):
        loaded = await load_peers([peers, endless])
    assert set(loaded.peers) == {"node-b"}
    assert [problem.split(": ", 1)[0] for problem in loaded.problems] == [f"{peers / 'node-z.yaml'}:2", f"{endless}"]


@pytest.mark.parametrize(("data", "why"), [
    (b"[" * 100_000, "not valid JSON"),
    (b"[" * 65 + b"]" * 65, "nested deeper than 64 levels"),
    (b'{"host": ' * 70 + b"1" + b"}" * 70, "nested deeper than 64 levels"),
])
def test_json_that_nests_without_end_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(InputError, match=f"^http://node-b:8407/inventory: {why}"):
        inputs.parse_json(data, "http://node-b:8407/inventory")


def test_json_at_the_depth_cap_is_read() -> None:
    assert inputs.parse_json(b"[" * 64 + b"]" * 64, "x") is not None


@pytest.mark.parametrize(("xml", "why"), [
    ('<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><domain>&b;</domain>',
     "a DOCTYPE or ENTITY declaration"),
    ("<domain>" + "<x>" * 100 + "</x>" * 100 + "</domain>", "elements nested deeper than 64 levels"),
    ("<domain>" + " " * inputs.SMALL + "</domain>", f"larger than {inputs.SMALL} bytes"),
])
def test_libvirt_xml_that_expands_nests_or_overflows_is_refused(xml: str, why: str) -> None:
    with pytest.raises(InputError, match=f"^domain XML: {why}"):
        parse_domain_xml(xml)
