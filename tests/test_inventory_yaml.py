"""YAML and JSON inventories: loading, errors with lines, dumping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmrrd.errors import InputError
from rmrrd.core.inventory import HostRegion, Inventory, UnresolvedDevice
from rmrrd.core.inventory_yaml import (
    dump_inventory_yaml,
    inventory_from_json,
    inventory_to_json,
    load_inventory_file,
    load_inventory_text,
    parse_device,
)
from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import Range

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[1]


def test_seed_inventories_load() -> None:
    inv = load_inventory_file(ROOT / "etc" / "inventories" / "node-a.yaml")
    assert inv.host == "node-a"
    assert inv.regions == (
        HostRegion(Range(0xE0000, 0xF0000), (Bdf(0, 0, 0x14, 0),)),
        HostRegion(Range(0xA0000000, 0xA3800000), (Bdf(0, 0, 2, 0),)),
    )
    assert inv.warnings == ()
    node_b = load_inventory_file(ROOT / "etc" / "inventories" / "node-b.yaml")
    assert node_b.regions_for(Bdf(0, 3, 0, 0))[0].range == Range(0x40000000, 0x40004000)


def test_short_bdf_and_sexagesimal_lookalike_stay_text() -> None:
    # Unquoted 00:14.0 is a base-60 float in YAML 1.1; it must still read as a BDF.
    inv = load_inventory_text("host: h\nregions:\n  - range: 0x1000-0x1fff\n    devices: [00:14.0]\n", "t.yaml")
    assert inv.regions[0].devices == (Bdf(0, 0, 0x14, 0),)


def test_all_devices_and_unresolved_forms() -> None:
    text = """host: h
regions:
  - range: 0x1000-0x1fff
    devices: [all]
  - range: 0x2000-0x2fff
    devices: ["0001:00:1c.0/00.0", "0000:00:1d.0"]
"""
    inv = load_inventory_text(text, "t.yaml")
    assert inv.regions[0].all_devices and inv.regions[0].devices == ()
    assert inv.regions[0].belongs_to(Bdf(0, 5, 0, 0))
    assert inv.regions[1].devices == (UnresolvedDevice(1, 0, ((0x1C, 0), (0, 0))), Bdf(0, 0, 0x1D, 0))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("host: h\nregions:\n  - range: 0xe0000-0xefffe\n    devices: []\n", "t.yaml:3: regions[0].range: "),
        ("host: h\nregions:\n  - range: 0xe0000-0xeffff\n    devices: [00:14.0]\n    color: red\n",
         "t.yaml:5: regions[0].color: unknown key"),
        ("host: h\nregions:\n  - range: 0xe0000-0xeffff\n", "t.yaml:3: regions[0]: missing key 'devices'"),
        ("regions: []\n", "t.yaml:1: document: missing key 'host'"),
        ("host: h\nregions:\n  - range: 0x0-0xfff\n    devices:\n      - 00:14.0\n      - 00:99.0\n",
         "t.yaml:6: regions[0].devices[1]: invalid PCI device"),
        ("host: h\nregions:\n  - range: 0x0-0xfff\n    devices: [all, 00:14.0]\n", "'all' must be the only"),
        ("host: h\nregions:\n  - range: 0x0-0xfff\n    devices: [00:14.0, 0000:00:14.0]\n", "listed twice"),
        ("host: h\nhost: g\nregions: []\n", "t.yaml:2: host: duplicate key"),
        ("host: h\nregions: [\n", "t.yaml:"),
        ("host: ~\nregions: []\n", "t.yaml:1: host: expected a non-empty string"),
        ("", "empty inventory"),
        ("- a\n", "expected a mapping"),
        ("host: h\nregions:\n  - range: 0x0-0xfff\n    devices: [0000:00:1c.0/zz.0]\n", "bad hop"),
    ],
)
def test_errors_name_file_line_and_key(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        load_inventory_text(text, "t.yaml")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the inventory"):
        load_inventory_file(tmp_path / "absent.yaml")


def test_json_rejects_wrong_types() -> None:
    with pytest.raises(InputError, match=r"peer: regions\[0\]\.devices: expected a list"):
        inventory_from_json({"host": "h", "regions": [{"range": "0x0-0xfff", "devices": "00:14.0"}]}, "peer")
    with pytest.raises(InputError, match="peer: host: expected a non-empty string"):
        inventory_from_json({"host": 3, "regions": []}, "peer")


_devices = st.one_of(
    st.builds(Bdf, st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7)),
    st.builds(UnresolvedDevice, st.integers(0, 0xFFFF), st.integers(0, 0xFF),
              st.lists(st.tuples(st.integers(0, 0x1F), st.integers(0, 7)), min_size=2, max_size=4).map(tuple)),
)
_ranges = st.tuples(st.integers(0, (1 << 52) - (1 << 20)), st.integers(1, 1 << 20)).map(
    lambda pair: Range(pair[0] * 0x1000, (pair[0] + pair[1]) * 0x1000))
_regions = st.one_of(
    st.builds(HostRegion, _ranges, st.lists(_devices, unique=True, max_size=4).map(tuple), all_devices=st.just(False)),
    st.builds(lambda rng: HostRegion(rng, (), all_devices=True), _ranges),
)
_inventories = st.builds(Inventory, st.text(min_size=1, max_size=20),
                         st.lists(_regions, max_size=5).map(tuple),
                         st.lists(st.text(min_size=1, max_size=40), max_size=3).map(tuple),
                         aliases=st.just(()))  # builds() would fill every field of a NamedTuple;
                                               # aliases have their own test below


@given(_inventories)
def test_yaml_round_trip(inv: Inventory) -> None:
    assert load_inventory_text(dump_inventory_yaml(inv), "dump") == inv


@given(_inventories)
def test_json_round_trip(inv: Inventory) -> None:
    wire = json.loads(json.dumps(inventory_to_json(inv)))
    assert inventory_from_json(wire, "peer") == inv
    assert wire["unresolved"] == any(isinstance(d, UnresolvedDevice) for r in inv.regions for d in r.devices)


def test_parse_device_forms() -> None:
    assert parse_device("03:00.0") == Bdf(0, 3, 0, 0)
    assert str(parse_device("0000:00:1c.0/00.1/02.3")) == "0000:00:1c.0/00.1/02.3"


def test_aliases_round_trip_and_are_checked() -> None:
    text = "host: node-b\naliases: [node-b.example, 10.0.0.2]\nregions: []\n"
    inv = load_inventory_text(text, "b.yaml")
    assert inv.aliases == ("node-b.example", "10.0.0.2")
    assert load_inventory_text(dump_inventory_yaml(inv), "again.yaml") == inv
    assert inventory_from_json(inventory_to_json(inv), "json") == inv
    with pytest.raises(InputError, match=r"^b\.yaml:2: aliases\[1\]: 'fe80::1' is not a host name"):
        load_inventory_text("host: node-b\naliases: [nb, 'fe80::1']\nregions: []\n", "b.yaml")
    with pytest.raises(InputError, match=r"aliases\[0\]: 'node-b' is listed already"):
        load_inventory_text("host: node-b\naliases: [node-b]\nregions: []\n", "b.yaml")
