"""``rmrrd-xl`` run in place of xl against a running daemon, with a stand-in for the real xl.

The stand-in (``$RMRRD_XL``) records the arguments it was run with, so each test sees
whether the wrapper ran xl, and with exactly the arguments it was given.  Domain 1 is
the seed's (node-a: the USB controller 00:14.0 has a region in the BIOS area; peer
node-b, also known as node-b.example, has one at 1 GiB, in the guest's RAM).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from support import D1, INVENTORIES, SEED_DOMAIN
from support.processes import Daemon
from support.xs_tools import needs_xenstore_tools, request_setup

pytestmark = [needs_xenstore_tools, pytest.mark.process]
WRAPPER = Path(sys.executable).parent / "rmrrd-xl"


@pytest.fixture
def fake_xl(tmp_path: Path) -> Path:
    script = tmp_path / "xl"
    script.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      f"open({str(tmp_path / 'xl.ran')!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    script.chmod(0o755)
    return script


def xl_ran(fake_xl: Path) -> list[str] | None:
    record = fake_xl.parent / "xl.ran"
    return json.loads(record.read_text()) if record.exists() else None


async def wrapper(daemon_env: dict[str, str], fake_xl: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(daemon_env, RMRRD_XL=str(fake_xl))
    return await trio.run_process([str(WRAPPER), *args], env=env, capture_stdout=True, capture_stderr=True,
                                  check=False, stdin=subprocess.DEVNULL)


async def test_a_refused_attach_does_not_run_xl(rmrrd_daemon: Daemon, fake_xl: Path) -> None:
    await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    done = await wrapper(rmrrd_daemon.xs.env, fake_xl, "pci-attach", "1", "00:14.0")
    assert done.returncode == 1 and xl_ran(fake_xl) is None
    [line] = done.stderr.decode().splitlines()
    assert line.startswith(f"rmrrd: refused: hotplug {D1}: region 0xe0000-0xeffff overlaps guest bios")
    assert line.endswith("(rmrrd-xl --force ... runs xl anyway)")


async def test_force_runs_xl_with_xls_own_arguments(rmrrd_daemon: Daemon, fake_xl: Path) -> None:
    await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    done = await wrapper(rmrrd_daemon.xs.env, fake_xl, "--force", "-v", "pci-attach", "1", "00:14.0")
    assert done.returncode == 0, done
    assert xl_ran(fake_xl) == ["-v", "pci-attach", "1", "00:14.0"]


async def test_a_warning_is_shown_and_xl_runs(rmrrd_daemon: Daemon, fake_xl: Path) -> None:
    await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    await rmrrd_daemon.xs.write({"/local/domain/1/name": "guest1"})
    done = await wrapper(rmrrd_daemon.xs.env, fake_xl, "pci-attach", "guest1", "00:14.0,rdm_policy=relaxed")
    assert done.returncode == 0
    assert done.stderr.decode().startswith(f"rmrrd: warning: hotplug {D1}: region 0xe0000-0xeffff")
    assert xl_ran(fake_xl) == ["pci-attach", "guest1", "00:14.0,rdm_policy=relaxed"]


async def test_migrate_names_the_target_as_xl_migrate_does(rmrrd_daemon: Daemon, fake_xl: Path,
                                                          tmp_path: Path) -> None:
    """``user@host`` as ssh takes it, and a host known by an alias."""
    await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    done = await wrapper(rmrrd_daemon.xs.env, fake_xl, "migrate", "-s", "ssh -p 2222", "1", "root@node-b")
    assert done.returncode == 0
    assert done.stderr.decode().startswith("rmrrd: warning: migrate to node-b: region 0x40000000-0x40003fff")
    assert xl_ran(fake_xl) == ["migrate", "-s", "ssh -p 2222", "1", "root@node-b"]
    unknown = await wrapper(rmrrd_daemon.xs.env, fake_xl, "migrate", "1", "node-z")
    assert unknown.returncode == 1 and "migrate target 'node-z' is not a known peer" in unknown.stderr.decode()


async def test_what_cannot_be_checked_runs_xl(rmrrd_daemon: Daemon, fake_xl: Path, tmp_path: Path) -> None:
    # Domain 7 was neither requested nor built by libxl: no layout to check against.
    done = await wrapper(rmrrd_daemon.xs.env, fake_xl, "pci-attach", "7", "00:14.0")
    assert done.returncode == 0 and xl_ran(fake_xl) == ["pci-attach", "7", "00:14.0"]
    assert done.stderr.decode() == ("rmrrd: xl pci-attach not checked: rmrrd has no layout for domain 7 "
                                    "(neither requested nor learned from libxl)\n")
    # No xenstore at all.
    gone = await wrapper(dict(rmrrd_daemon.xs.env, XENSTORED_PATH=str(tmp_path / "none")), fake_xl,
                         "migrate", "1", "node-b")
    assert gone.returncode == 0 and "not checked: cannot connect to xenstored" in gone.stderr.decode()


async def test_other_commands_go_straight_to_xl(rmrrd_daemon: Daemon, fake_xl: Path) -> None:
    done = await wrapper(rmrrd_daemon.xs.env, fake_xl, "list", "-l")
    assert (done.returncode, done.stderr, xl_ran(fake_xl)) == (0, b"", ["list", "-l"])


@pytest.fixture
def stock_env(tmp_path: Path) -> dict[str, str]:
    """No daemon: ``xl create`` is predicted from this host's inventory (node-a)."""
    config = tmp_path / "rmrrd.yaml"
    config.write_text(f"host:\n  name: node-a\n  sources: [{INVENTORIES / 'node-a.yaml'}]\n")
    return {"PATH": "/usr/bin:/bin", "RMRRD_CONFIG": str(config), "RMRRD_RUNTIME_DIR": str(tmp_path / "run"),
            "XENSTORED_PATH": str(tmp_path / "no-xenstore")}


async def test_create_refuses_what_libxl_would_refuse(stock_env: dict[str, str], fake_xl: Path,
                                                      tmp_path: Path) -> None:
    guest = tmp_path / "guest.cfg"
    guest.write_text('name = "web1"\ntype = "hvm"\nmemory = 2048\npci = [ "00:14.0" ]\n')
    done = await wrapper(stock_env, fake_xl, "create", str(guest))
    assert done.returncode == 1 and xl_ran(fake_xl) is None
    assert done.stderr.decode().startswith("rmrrd: refused: Xen would refuse domain web1 on node-a: "
                                           "region 0xe0000-0xeffff")
    # The same device, added on xl's command line as xl allows.
    guest.write_text('name = "web1"\ntype = "hvm"\nmemory = 2048\n')
    extra = await wrapper(stock_env, fake_xl, "create", "-q", str(guest), 'pci=["00:14.0"]')
    assert extra.returncode == 1 and xl_ran(fake_xl) is None


async def test_create_warns_about_xls_rdm_bug_and_runs_xl(stock_env: dict[str, str], fake_xl: Path,
                                                         tmp_path: Path) -> None:
    guest = tmp_path / "guest.cfg"
    guest.write_text('name = "web1"\ntype = "hvm"\nmemory = 2048\nrdm = "strategy=host,policy=relaxed"\n'
                     'pci = [ "00:14.0,rdm_policy=relaxed" ]\n')
    done = await wrapper(stock_env, fake_xl, "create", str(guest), "-c")
    assert done.returncode == 0 and xl_ran(fake_xl) == ["create", str(guest), "-c"]
    lines = done.stderr.decode().splitlines()
    assert lines[0].startswith(f"rmrrd: warning: {guest}:4: rdm: xl 4.15 and later drop an rdm= that names a policy")
    assert lines[1].startswith("rmrrd: warning: domain web1: 1 reserved region(s) overlap the guest")


async def test_create_of_what_cannot_be_predicted_runs_xl(stock_env: dict[str, str], fake_xl: Path,
                                                         tmp_path: Path) -> None:
    pv = tmp_path / "pv.cfg"
    pv.write_text('name = "pv1"\nmemory = 512\npci = [ "00:14.0" ]\n')
    assert (await wrapper(stock_env, fake_xl, "create", str(pv))).returncode == 0
    broken = tmp_path / "broken.cfg"
    broken.write_text('name = "x"\nmemory = [\n')
    done = await wrapper(stock_env, fake_xl, "create", str(broken))
    assert done.returncode == 0 and xl_ran(fake_xl) == ["create", str(broken)]
    assert done.stderr.decode().startswith(f"rmrrd: xl create not checked: {broken}:3: memory: config parsing error")
