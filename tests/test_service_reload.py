"""What a reload reports: changed keys, regions and peers (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmrrd.edges.config import Config, parse_config_text
from rmrrd.app.reload import config_changes, flatten, inventory_changes, peer_changes
from rmrrd.core.inventory import HostRegion, Inventory
from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import Range

pytestmark = pytest.mark.unit

ENV = {"XENSTORED_PATH": "/run/xs"}


def config(text: str) -> Config:
    return parse_config_text(text, Path("/etc/rmrrd/rmrrd.yaml"), environ=ENV, hostname="node-a")


def region(start: int, end: int, *devices: str) -> HostRegion:
    return HostRegion(Range(start, end), tuple(Bdf.parse(d) for d in devices))


def test_flatten_uses_the_file_keys() -> None:
    flat = flatten(config(""))
    assert flat["metrics.listen"] == "127.0.0.1:8407"
    assert flat["limits.query_rate"] == 20 and flat["peers"] == ()
    assert "source" not in flat and "metrics.port" not in flat


def test_no_change_no_lines() -> None:
    assert config_changes(config("log: {level: info}"), config("")) == []


def test_changes_in_file_order_and_restart_keys_marked() -> None:
    old = config("")
    new = config("metrics: {listen: '[::1]:9000'}\nlimits: {results_kept: 9, query_burst: 3}\npeers: [/p]\n")
    assert [str(change) for change in config_changes(old, new)] == [
        "peers: [] -> [/p]",
        "metrics.listen: 127.0.0.1:8407 -> [::1]:9000 (takes effect at the next restart)",
        "limits.query_burst: 40 -> 3 (takes effect at the next restart)",
        "limits.results_kept: 256 -> 9",
    ]


def test_inventory_changes() -> None:
    old = Inventory("a", (region(0xe0000, 0xf0000, "0000:00:14.0"), region(0x1000, 0x2000)))
    new = Inventory("a", (region(0xe0000, 0xf0000, "0000:00:14.0", "0000:00:14.1"),
                          HostRegion(Range(0x1000, 0x2000), (), all_devices=True)))
    assert inventory_changes(old, new) == [
        "region 0x1000-0x1fff (no device) removed",
        "region 0xe0000-0xeffff (0000:00:14.0) removed",
        "region 0x1000-0x1fff (all devices) added",
        "region 0xe0000-0xeffff (0000:00:14.0 0000:00:14.1) added",
    ]
    assert inventory_changes(old, old) == []


def test_peer_changes() -> None:
    b = Inventory("b", (region(0x1000, 0x2000, "0000:01:00.0"),))
    c = Inventory("c", ())
    b2 = Inventory("b", ())
    assert peer_changes({"b": b}, {"b": b2, "c": c}) == [
        "peer c added (0 regions)",
        "peer b: region 0x1000-0x1fff (0000:01:00.0) removed",
    ]
    assert peer_changes({"b": b, "c": c}, {}) == ["peer b removed", "peer c removed"]
