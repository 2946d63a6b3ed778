"""``rmrrd inventory``: table, --yaml (round-trips), --json (with the raw table), errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmrrd import cli
from rmrrd.commands import inventory
from rmrrd.inventory_yaml import inventory_from_json, load_inventory_text

ROOT = Path(__file__).parents[1]
TABLES = ROOT / ".." / "shared" / "fixtures" / "tables"
EXPECTED = json.loads((ROOT / ".." / "shared" / "fixtures" / "expected.json").read_text())


@pytest.fixture(autouse=True)
def only_inventory(monkeypatch: pytest.MonkeyPatch) -> None:
    # Test this subcommand alone, through the real dispatcher and its error handling.
    monkeypatch.setattr(cli, "_commands", lambda: [inventory])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["inventory", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_dmar_json_shows_fixture_values(capsys: pytest.CaptureFixture[str]) -> None:
    name = "linuxhw_Toshiba-dynabook-R731-E_5949EA99A04B_DMAR.bin"
    status, out, _ = run(capsys, "--dmar", str(TABLES / name), "--json", "--host", "toshiba")
    assert status == 0
    obj = json.loads(out)
    assert obj["table"]["rmrrs"][0]["base"] == EXPECTED[name]["rmrrs"][0]["base"]
    assert obj["table"]["drhds"] == EXPECTED[name]["drhds"]
    assert inventory_from_json({k: v for k, v in obj.items() if k != "table"}, "out").host == "toshiba"


def test_ivrs_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--ivrs", str(TABLES / "linuxhw_MECHREVO-WUJIE14XA_9249A3556422_IVRS.bin"))
    assert status == 0
    assert "0x9618e000-0x9618efff" in out and "(4096 devices)" in out and "warning: " in out


def test_yaml_output_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--dmar", str(TABLES / "linuxhw_HP-ProLiant-DL360-G7_60DCEE46526A_DMAR.bin"),
                         "--yaml", "--host", "dl360")
    assert status == 0
    inv = load_inventory_text(out, "stdout")
    assert inv.host == "dl360" and len(inv.regions) == 3 and "unresolved" in out


def test_yaml_file_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--yaml-file", str(ROOT / "etc" / "inventories" / "node-a.yaml"))
    assert status == 0 and "0xa0000000-0xa37fffff      56 MiB  0000:00:02.0" in out


@pytest.mark.parametrize("argv", [["--dmar", str(TABLES / "fwupdtf_IVRS-REMAP")], ["--ivrs", "/nonexistent/IVRS"]])
def test_bad_file_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == "" and err.count("\n") == 1 and argv[1] in err
