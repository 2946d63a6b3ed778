"""``rmrrd check assign|hotplug|migrate --xl-config FILE``: the check offline, for the
domain stock xl 4.17 would create from an xl.cfg file on this host.

The files are in tests/data/xl/; this host is etc/inventories/node-a.yaml (the USB
controller D1 with a region at 0xe0000-0xeffff, in the guest's BIOS area; the GPU D2
with 0xa0000000-0xa37fffff, 2.5 GiB), the peers node-b (D3 at 0x40000000, 1 GiB) and
tests/data/xl/node-c.yaml (D5 where node-a's GPU region is, aliases node-c.example and
192.0.2.3).  Each expected verdict is derived from docs/planner.md ("The layout", "The
checks") and docs/xl-config.md, not from running the code; the comments say how.

A guest of ``memory = 2048`` has 2040 MiB of RAM (8 MiB of cirrus video RAM), so low RAM
ends at 0x7f800000: D2's region lies above it in the MMIO hole, D3's at 1 GiB inside
it.  At ``memory = 4096`` low RAM would end at 0xf0000000 (4 GiB less the 256 MiB hole),
over D2's region, unless ``rdm="strategy=host"`` reserves it: it starts above
``rdm_mem_boundary`` (2048 MiB), so libxl ends low RAM at 0xa0000000 instead.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import trio

from rmrrd.cli import main
from rmrrd.core.libxl_domain import from_xl_config
from rmrrd.core.xlcfg_file import load_xl_config
from support import D1, D2, D3, INVENTORIES, REPO
from support.processes import Daemon, rmrrd_argv
from support.xs_tools import needs_xenstore_tools, request_setup

DATA = REPO / "tests" / "data" / "xl"
D5 = "0000:05:00.0"
HOSTS = ["--inventory", str(INVENTORIES / "node-a.yaml"), "--peer", str(INVENTORIES / "node-b.yaml"),
         "--peer", str(DATA / "node-c.yaml")]
EXAMPLES = REPO / ".tools" / "xen-utils-common" / "etc" / "xen"


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object], str]:
    """Exit status, the --json result and stderr of ``rmrrd check ARGS --json``."""
    status = main(["check", *args, "--json"])
    captured = capsys.readouterr()
    return status, json.loads(captured.out) if captured.out else {}, captured.err


def cfg(name: str) -> str:
    return str(DATA / name)


CASES = [
    # hotplug: a device without rdm_policy is strict (xl pci-attach).
    # D2's region was reserved by rdm="strategy=host" and is clear of RAM.
    (["hotplug", "--xl-config", cfg("hvm-2g-host.cfg"), "--device", D2], 0, "ok", []),
    # Not reserved without rdm=: clear of RAM and fixed areas, but unreserved.
    (["hotplug", "--xl-config", cfg("hvm-2g.cfg"), "--device", D2], 3, "warn", [f"0xa0000000-0xa37fffff unreserved {D2}"]),
    # D1's region is in the BIOS area (SeaBIOS 128 KiB: 0xe0000-0xfffff): strict fails, relaxed warns.
    (["hotplug", "--xl-config", cfg("hvm-2g.cfg"), "--device", D1], 1, "fail", [f"0xe0000-0xeffff bios {D1}"]),
    (["hotplug", "--xl-config", cfg("hvm-2g.cfg"), "--device", f"{D1},rdm_policy=relaxed"], 3, "warn",
     [f"0xe0000-0xeffff bios {D1}"]),
    # assign: the same rules; a device without rdm_policy is strict under stock xl (rdm= policy never set).
    (["assign", "--xl-config", cfg("hvm-2g-host.cfg"), "--device", D2], 0, "ok", []),
    (["assign", "--xl-config", cfg("hvm-2g.cfg"), "--device", D2], 3, "warn", [f"0xa0000000-0xa37fffff unreserved {D2}"]),
    (["assign", "--xl-config", cfg("hvm-2g-host.cfg"), "--device", D1], 1, "fail", [f"0xe0000-0xeffff bios {D1}"]),
    (["assign", "--xl-config", cfg("hvm-2g-host.cfg"), "--device", f"{D1},rdm_policy=relaxed"], 3, "warn",
     [f"0xe0000-0xeffff bios {D1}"]),
    # migrate: the target's regions against this layout.  node-c's D5 region is where
    # node-a's GPU region is: reserved with rdm="strategy=host", unreserved without.
    (["migrate", "--xl-config", cfg("hvm-2g-host.cfg"), "--target", "node-c.example", "--device", D5], 0, "ok", []),
    (["migrate", "--xl-config", cfg("hvm-2g.cfg"), "--target", "node-c", "--device", D5], 3, "warn",
     [f"0xa0000000-0xa37fffff unreserved {D5}"]),
    # node-b's D3 region at 1 GiB is guest RAM: strict fails, relaxed warns.
    (["migrate", "--xl-config", cfg("hvm-2g.cfg"), "--target", "node-b", "--device", D3], 1, "fail",
     [f"0x40000000-0x40003fff ram {D3}"]),
    (["migrate", "--xl-config", cfg("hvm-2g.cfg"), "--target", "192.0.2.3", "--device", f"{D5},rdm_policy=relaxed"],
     3, "warn", [f"0xa0000000-0xa37fffff unreserved {D5}"]),
    (["migrate", "--xl-config", cfg("hvm-2g.cfg"), "--target", "node-b", "--device", f"{D3},rdm_policy=relaxed"], 3,
     "warn", [f"0x40000000-0x40003fff ram {D3}"]),
]


@pytest.mark.parametrize(("args", "status", "verdict", "conflicts"), CASES)
def test_verdicts_follow_xens_rules(capsys: pytest.CaptureFixture[str], args: list[str], status: int, verdict: str,
                                    conflicts: list[str]) -> None:
    done, result, _ = check(capsys, *args, *HOSTS)
    assert (done, result["verdict"], result["conflicts"], result["ranking"], result["id"]) == (
        status, verdict, conflicts, [], None), result
    assert result["reason"]


def test_an_alias_names_its_host_in_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    _, result, _ = check(capsys, "migrate", "--xl-config", cfg("hvm-2g-host.cfg"), "--target", "node-c.example",
                         "--device", D5, *HOSTS)
    assert str(result["reason"]).startswith("migrate to node-c (as node-c.example): ")


def test_migrate_without_target_ranks_the_peers(capsys: pytest.CaptureFixture[str]) -> None:
    # node-c: its region reserved and clear (ok); node-b: its region in RAM, at most warn without devices.
    status, result, _ = check(capsys, "migrate", "--xl-config", cfg("hvm-2g-host.cfg"), *HOSTS)
    assert (status, result["verdict"]) == (0, "ok"), result
    assert result["ranking"] == ["node-c ok fail=0 warn=0", "node-b warn fail=0 warn=1"]
    assert str(result["reason"]).startswith("best target node-c: ")


def test_the_xl_policy_bug_warns_and_leaves_the_device_strict(capsys: pytest.CaptureFixture[str]) -> None:
    """rdm= naming policy= is dropped by xl 4.15+: no host reservations, D2's region stays
    in low RAM and a strict hot-plug fails; without policy= low RAM ends below it."""
    status, result, err = check(capsys, "hotplug", "--xl-config", cfg("hvm-4g-policy-bug.cfg"), "--device", D2, *HOSTS)
    assert (status, result["verdict"], result["conflicts"]) == (1, "fail", [f"0xa0000000-0xa37fffff ram {D2}"])
    [warning] = err.splitlines()
    assert warning.startswith(f"rmrrd check: warning: {cfg('hvm-4g-policy-bug.cfg')}:6: rdm: xl 4.15 and later "
                              f"drop an rdm= that names a policy")
    assert 'Fix: write rdm="strategy=host" without policy=' in warning
    status, result, err = check(capsys, "hotplug", "--xl-config", cfg("hvm-4g-host.cfg"), "--device", D2, *HOSTS)
    assert (status, result["verdict"], result["conflicts"]) == (0, "ok", [])
    assert "xl leaves the rdm policy uninitialised" in err


def test_a_domain_libxl_would_not_create_fails_saying_why(capsys: pytest.CaptureFixture[str]) -> None:
    # A strict pci= device whose region is in low RAM below rdm_mem_boundary (4096 MiB).
    status, result, _ = check(capsys, "hotplug", "--xl-config", cfg("hvm-4g-gpu-strict.cfg"),
                              "--device", f"{D1},rdm_policy=relaxed", *HOSTS)
    assert (status, result["verdict"], result["conflicts"]) == (1, "fail", [])
    assert str(result["reason"]).startswith("libxl would refuse to create the domain on node-a: "
                                            f"region 0xa0000000-0xa37fffff (pci {D2})")
    # memory < maxmem with passthrough: PoD, refused whatever the layout.
    status, result, _ = check(capsys, "assign", "--xl-config", cfg("pod-with-device.cfg"), "--device", D2, *HOSTS)
    assert (status, result["verdict"]) == (1, "fail")
    assert f"{cfg('pod-with-device.cfg')}:3: memory: memory 1024 MiB < maxmem 2048 MiB" in str(result["reason"])


def test_a_domain_created_without_passthrough_takes_no_device(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    """No pci= and no passthrough=: libxl creates it without passthrough, Xen refuses devices."""
    plain = tmp_path / "plain.cfg"
    plain.write_text('type = "hvm"\nmemory = 2048\n')
    for op in ("hotplug", "assign"):
        status, result, _ = check(capsys, op, "--xl-config", str(plain), "--device", D2, *HOSTS)
        assert (status, result["verdict"]) == (1, "fail")
        assert 'passthrough="enabled"' in str(result["reason"])


@pytest.mark.skipif(not EXAMPLES.exists(), reason="Xen's example files are unpacked by scripts/bootstrap")
@pytest.mark.parametrize("name", ["xlexample.hvm", "xlexample.pvlinux"])
def test_xens_example_files_take_no_hot_plugged_device(capsys: pytest.CaptureFixture[str], name: str) -> None:
    """Xen's examples have no pci= and no passthrough=: a hot-plug is refused, HVM or PV."""
    status, result, err = check(capsys, "hotplug", "--xl-config", str(EXAMPLES / name), "--device", D2, *HOSTS)
    assert (status, result["verdict"], err) == (1, "fail", "")
    assert "created without passthrough" in str(result["reason"])


@pytest.mark.parametrize(("name", "message"), [
    ("bad-syntax.cfg", ":3: rdm: lexical error near '\"strategy=host'"),
    ("bad-mmio-hole.cfg", ":3: mmio_hole: invalid value 64: xl refuses an mmio_hole outside 256..3840 MiB"),
])
def test_a_file_xl_rejects_exits_2_naming_file_line_and_key(capsys: pytest.CaptureFixture[str], name: str,
                                                           message: str) -> None:
    assert main(["check", "assign", "--xl-config", cfg(name), "--device", D2, *HOSTS]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"rmrrd check: {cfg(name)}{message}\n")


NODE_A = ["--inventory", str(INVENTORIES / "node-a.yaml")]
USAGE = [
    (["--domid", "1", "--xl-config", "g.cfg", "--device", D2], "not allowed with argument"),
    (["--device", D2], "one of the arguments --domid --xl-config is required"),
    (["--domid", "1", "--device", D2, *NODE_A], "--inventory is for --xl-config"),
    (["--domid", "1", "--device", D2, "--peer", "b.yaml"], "--peer is for --xl-config"),
    (["--xl-config", cfg("hvm-2g.cfg"), "--device", D2, "--timeout", "1", *NODE_A], "--timeout is for --domid"),
    (["--xl-config", cfg("hvm-2g.cfg"), "--device", D2, "--xenstore", "/x", *NODE_A], "--xenstore is for --domid"),
    (["--xl-config", cfg("hvm-2g.cfg"), *NODE_A], "needs exactly one device=SPEC, got 0"),
    (["--xl-config", cfg("hvm-2g.cfg"), "--device", "0000:zz:02.0", *NODE_A], "0000:zz:02.0"),
    (["--xl-config", cfg("hvm-2g.cfg"), "--device", D2, "--target", "node-b", *NODE_A], "takes no target"),
    (["--xl-config", str(DATA / "absent.cfg"), "--device", D2, *NODE_A], "absent.cfg"),
    (["--xl-config", cfg("hvm-2g.cfg"), "--device", D2, "--inventory", cfg("hvm-2g.cfg")], "hvm-2g.cfg"),
]


@pytest.mark.parametrize(("args", "message"), USAGE)
def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str], args: list[str],
                                           message: str) -> None:
    try:
        status = main(["check", "hotplug", *args])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_migrate_targets_only_known_peers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = ["check", "migrate", "--xl-config", cfg("hvm-2g.cfg"), "--inventory", str(INVENTORIES / "node-a.yaml")]
    assert main([*base, "--target", "node-z", "--peer", str(INVENTORIES / "node-b.yaml")]) == 2
    assert "migrate target 'node-z' is not a known peer (known: node-b)" in capsys.readouterr().err
    assert main(base) == 2
    assert "give at least one --peer FILE" in capsys.readouterr().err
    clash = tmp_path / "other.yaml"
    clash.write_text("host: node-d\naliases: [node-c.example]\nregions: []\n")
    assert main([*base, "--target", "node-c.example", "--peer", str(DATA / "node-c.yaml"), "--peer", str(clash)]) == 2
    assert "'node-c.example' is in both" in capsys.readouterr().err


def test_without_inventory_this_host_is_the_daemons(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """$RMRRD_CONFIG names this host's inventory, as for the daemon and the hooks."""
    monkeypatch.setenv("RMRRD_RUNTIME_DIR", str(tmp_path / "run"))
    config = tmp_path / "rmrrd.yaml"
    for source, verdict in (("node-a.yaml", "fail"), ("node-b.yaml", "ok")):
        # node-a: D1's region in the BIOS area; node-b: D1 has no region at all.
        config.write_text(f"host:\n  name: {source[:-5]}\n  sources: [{INVENTORIES / source}]\n")
        monkeypatch.setenv("RMRRD_CONFIG", str(config))
        status, result, _ = check(capsys, "hotplug", "--xl-config", cfg("hvm-2g.cfg"), "--device", D1)
        assert result["verdict"] == verdict, result
    assert (tmp_path / "run" / "host-inventory.json").exists()


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "hotplug", "--xl-config", cfg("hvm-2g.cfg"), "--device", D1, *HOSTS]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"fail: hotplug {D1}: region 0xe0000-0xeffff overlaps guest bios; rdm_policy=relaxed accepts the risk, "
        "otherwise this guest cannot use the device",
        f"  conflict 0xe0000-0xeffff bios {D1}"]


# --- the daemon and the offline check agree ---------------------------------------------------

AGREEMENT = [
    ["hotplug", "--device", D2],
    ["hotplug", "--device", D1],
    ["hotplug", "--device", f"{D1},rdm_policy=relaxed"],
    ["assign", "--device", D2],
    ["assign", "--device", f"{D1},rdm_policy=relaxed"],
    ["migrate", "--target", "node-b", "--device", f"{D3},rdm_policy=relaxed"],
    ["migrate"],
]


@needs_xenstore_tools
@pytest.mark.process
@pytest.mark.parametrize("name", ["hvm-2g-host.cfg", "hvm-4g-host.cfg", "hvm-2g.cfg"])
async def test_the_daemon_says_the_same_for_the_request_the_file_makes(rmrrd_daemon: Daemon, tmp_path: Path,
                                                                        name: str) -> None:
    """The daemon serves domain 1 from the setup keys the file makes (as a toolstack would
    write them); ``check --domid 1`` and ``check --xl-config`` must give one answer, with
    this host and the peer from the daemon's own configuration."""
    domain = from_xl_config(load_xl_config(DATA / name)).domain
    keys = {key: value for key, value in domain.setup_keys().items() if value}
    keys.update((f"pci/{n}", spec) for n, spec in enumerate(domain.pci_specs()))
    await request_setup(rmrrd_daemon.xs, 1, keys)
    env = {**rmrrd_daemon.xs.env, "RMRRD_CONFIG": str(rmrrd_daemon.config), "RMRRD_RUNTIME_DIR": str(tmp_path)}
    for args in AGREEMENT:
        answers = []
        for domain_args in (["--domid", "1"], ["--xl-config", str(DATA / name),
                                               "--peer", str(rmrrd_daemon.workdir / "node-b.yaml")]):
            done = await trio.run_process(rmrrd_argv("check", *args, *domain_args, "--json"), env=env,
                                          capture_stdout=True, capture_stderr=True, check=False)
            result = json.loads(done.stdout)
            answers.append((done.returncode, result["verdict"], result["reason"], result["conflicts"],
                            result["ranking"]))
        assert answers[0] == answers[1], (args, answers)
