"""``rmrrd plan`` through ``rmrrd.cli.main``: options, output forms, exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rmrrd.cli import EXIT_BROKEN_PIPE, main

_ETC = Path(__file__).resolve().parent.parent / "etc" / "inventories"
_SEED = ["plan", "--inventory", str(_ETC / "node-a.yaml"), "--peer", str(_ETC / "node-b.yaml"),
         "--memory", "4096", "--mmio-hole", "1024", "--hotplug", "0000:00:14.0", "--migrate", "node-b"]


def test_seed_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_SEED, "--pci", "0000:00:02.0", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer) == {"status", "error", "lowmem_end", "highmem_end", "regions", "e820"}
    assert (answer["status"], answer["lowmem_end"], answer["highmem_end"]) == ("ready", "0xa0000000", "0x160000000")
    assert {"range": "0xa0000000-0xa37fffff", "source": "pci 0000:00:02.0", "conflict": "none",
            "action": "avoided"} in answer["regions"]
    assert answer["e820"][0] == "0x0-0x9ffff ram"


def test_seed_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_SEED, "--pci", "0000:00:02.0"]) == 0
    out = capsys.readouterr().out
    assert "lowmem_end   0xa0000000" in out
    assert any(line.split() == ["0xe0000-0xeffff", "hotplug", "0000:00:14.0", "bios", "warned"]
               for line in out.splitlines())


def test_strict_conflict_exits_1_and_relaxed_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_SEED, "--pci", "0000:00:02.0", "--mem-boundary", "4096"]) == 1
    assert "status       error" in capsys.readouterr().out
    assert main([*_SEED, "--pci", "0000:00:02.0,rdm_policy=relaxed", "--mem-boundary", "4096"]) == 0


def test_videoram_bios_and_seabios_size(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--inventory", str(_ETC / "node-a.yaml"), "--memory", "1040", "--videoram", "16",
            "--hap", "1", "--bios", "seabios", "--seabios-size", "256", "--json"]
    assert main(args) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["lowmem_end"], answer["highmem_end"]) == ("0x40000000", "0x100000000")
    assert answer["e820"][:2] == ["0x0-0x9ffff ram", "0xc0000-0xfffff reserved"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--bios", "uefi"], "bios: 'uefi' is not seabios, ovmf, rombios"),
    (["--hap", "2"], "hap: '2' is not 0 or 1"),
    (["--seabios-size", "512"], "seabios_size 512 KiB is not a multiple of 4 KiB from 4 to 256 KiB"),
    (["--mmio-hole", "64"], "mmio_hole 64 MiB is outside"),
    (["--migrate", "node-z"], "migrate host 'node-z' is not a known peer"),
    (["--rdm", "strategy=all"], "strategy='all'"),
    (["--reserve", "0x1000-0x1001"], "not page granular"),
])
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], extra: list[str],
                                         message: str) -> None:
    assert main([*_SEED, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_inventory_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", "--inventory", str(tmp_path / "absent.yaml"), "--memory", "1024"]) == 2
    assert "absent.yaml" in capsys.readouterr().err


def test_same_peer_twice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_SEED, "--peer", str(_ETC / "node-b.yaml")]) == 2
    assert "peer host name 'node-b' is in both" in capsys.readouterr().err


@pytest.mark.process
def test_a_reader_that_went_away_ends_the_command_quietly() -> None:
    """``rmrrd plan ... | head``: exit status as for SIGPIPE, no trace on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        done = subprocess.run([sys.executable, "-m", "rmrrd", *_SEED], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (EXIT_BROKEN_PIPE, "")


def test_xl_config_predicts_stock_xl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The seed guest written as an xl.cfg: xl drops its rdm= (policy named), devices strict."""
    cfg = tmp_path / "guest.cfg"
    cfg.write_text('type = "hvm"\nmemory = 4096\nmmio_hole = 1024\nvideoram = 16\n'
                   'rdm = "strategy=host,policy=relaxed"\npci = [ "0000:00:02.0", "00:14.0,rdm_policy=relaxed" ]\n')
    assert main(["plan", "--inventory", str(_ETC / "node-a.yaml"), "--xl-config", str(cfg), "--json"]) == 0
    captured = capsys.readouterr()
    answer = json.loads(captured.out)
    # maxmem 4096 less 16 MiB of video RAM; the GPU region moved low RAM down to 0xa0000000.
    assert (answer["lowmem_end"], answer["highmem_end"]) == ("0xa0000000", "0x15f000000")
    assert [r["source"] for r in answer["regions"]] == ["pci 0000:00:14.0", "pci 0000:00:02.0"]
    assert f"rmrrd plan: warning: {cfg}:5: rdm: xl 4.15 and later drop" in captured.err


def test_xl_config_refusals_exit_1_and_conflicting_options_exit_2(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "pod.cfg"
    cfg.write_text("type='hvm'\nmemory=1024\nmaxmem=2048\npci=['00:02.0,rdm_policy=relaxed']\n")
    inventory = ["plan", "--inventory", str(_ETC / "node-a.yaml"), "--xl-config", str(cfg)]
    assert main(inventory) == 1
    assert "rmrrd plan: error: " in capsys.readouterr().err
    assert main([*inventory, "--memory", "1024"]) == 2
    assert "--memory cannot be combined with --xl-config" in capsys.readouterr().err
    cfg.write_text("type='hvm'\nmemory=1024\nmmio_hole=64\n")
    assert main(inventory) == 2
    assert f"{cfg}:3: mmio_hole: invalid value 64" in capsys.readouterr().err
    assert main(["plan", "--inventory", str(_ETC / "node-a.yaml")]) == 2
