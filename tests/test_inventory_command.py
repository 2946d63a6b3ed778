"""``rmrrd inventory``: table, --yaml (round-trips), --json (with the raw table), errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmrrd import cli
from rmrrd.cli import inventory
from rmrrd.core.inventory_yaml import inventory_from_json, load_inventory_text
from support.firmware import CORPUS, OWN, is_dmar, table
from support.firmware import assert_matches_expected

ROOT = Path(__file__).parents[1]

pytestmark = pytest.mark.firmware


@pytest.fixture(autouse=True)
def only_inventory(monkeypatch: pytest.MonkeyPatch) -> None:
    # Test this subcommand alone, through the real dispatcher and its error handling.
    monkeypatch.setattr(cli, "_commands", lambda argv=None: [inventory])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["inventory", *argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("name", sorted(CORPUS.expected))
def test_json_prints_every_expected_value(capsys: pytest.CaptureFixture[str], name: str) -> None:
    option = "--dmar" if is_dmar(name) else "--ivrs"
    status, out, _ = run(capsys, option, str(table(name)), "--json", "--host", "fixture")
    assert status == 0
    obj = json.loads(out)
    assert_matches_expected(obj["table"], CORPUS.expected[name])
    inv = inventory_from_json({k: v for k, v in obj.items() if k != "table"}, "out")
    assert inv.host == "fixture"


def test_missing_sysfs_root_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A mistyped --sysfs-root must not quietly leave every bridged scope unresolved.
    name = "linuxhw_HP-ProLiant-DL360-G7_60DCEE46526A_DMAR.bin"
    status, out, err = run(capsys, "--dmar", str(table(name)), "--sysfs-root", str(tmp_path / "nope"))
    assert status == 2 and out == "" and err.count("\n") == 1
    assert str(tmp_path / "nope") in err and "sys/bus/pci/devices" in err


@pytest.mark.parametrize(("argv", "option"), [
    (["--ivrs", str(OWN.tables["linuxhw_MECHREVO-WUJIE14XA_9249A3556422_IVRS.bin"]), "--sysfs-root", "/"], "--sysfs-root"),
    (["--yaml-file", str(ROOT / "etc" / "inventories" / "node-a.yaml"), "--sysfs-root", "/"], "--sysfs-root"),
    (["--yaml-file", str(ROOT / "etc" / "inventories" / "node-a.yaml"), "--host", "x"], "--host"),
])
def test_options_that_do_not_apply_to_the_source_are_refused(
        capsys: pytest.CaptureFixture[str], argv: list[str], option: str) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"rmrrd inventory: {option} applies to ")


def test_ivrs_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--ivrs", str(table("linuxhw_MECHREVO-WUJIE14XA_9249A3556422_IVRS.bin")))
    assert status == 0
    assert "0x9618e000-0x9618efff" in out and "(4096 devices)" in out and "warning: " in out


def test_yaml_output_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--dmar", str(table("linuxhw_HP-ProLiant-DL360-G7_60DCEE46526A_DMAR.bin")),
                         "--yaml", "--host", "dl360")
    assert status == 0
    inv = load_inventory_text(out, "stdout")
    assert inv.host == "dl360" and len(inv.regions) == 3 and "unresolved" in out


def test_yaml_file_table(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--yaml-file", str(ROOT / "etc" / "inventories" / "node-a.yaml"))
    assert status == 0 and "0xa0000000-0xa37fffff      56 MiB  0000:00:02.0" in out


@pytest.mark.parametrize("argv", [["--dmar", str(OWN.tables["fwupdtf_IVRS-REMAP"])], ["--ivrs", "/nonexistent/IVRS"]])
def test_bad_file_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 2 and out == "" and err.count("\n") == 1 and argv[1] in err
