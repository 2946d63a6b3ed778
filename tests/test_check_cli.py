"""``rmrrd check assign|hotplug|migrate`` as a process against a running daemon:
exit 0 ok, 1 fail, 3 warn, 2 for bad arguments and when no daemon answers.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import trio

from support import D1, D2, D3, SEED_DOMAIN
from support.processes import Daemon, XenstoredProcess, rmrrd_argv
from support.xs_tools import Xenstore, needs_xenstore_tools, request_setup

pytestmark = [needs_xenstore_tools, pytest.mark.process]


async def check(xs: Xenstore, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(rmrrd_argv("check", *args), env=xs.env, capture_stdout=True,
                                  capture_stderr=True, check=False)


def one_line_error(done: subprocess.CompletedProcess[bytes]) -> str:
    """The usage error rmrrd printed: one line, no traceback."""
    lines = done.stderr.decode().strip().splitlines()
    assert b"Traceback" not in done.stderr, done.stderr
    assert lines, done
    return lines[-1]


CASES = [
    # (arguments, exit status, verdict, conflicts)
    (["assign", "--domid", "1", "--device", D2], 0, "ok", []),
    (["hotplug", "--domid", "1", "--device", D1], 1, "fail", [f"0xe0000-0xeffff bios {D1}"]),
    (["hotplug", "--domid", "1", "--device", f"{D1},rdm_policy=relaxed"], 3, "warn", [f"0xe0000-0xeffff bios {D1}"]),
    (["migrate", "--domid", "1", "--target", "node-b", "--device", D3], 1, "fail",
     [f"0x40000000-0x40003fff ram {D3}"]),
    (["migrate", "--domid", "1", "--target", "node-b", "--device", f"{D3},rdm_policy=relaxed"], 3, "warn",
     [f"0x40000000-0x40003fff ram {D3}"]),
]


@pytest.mark.parametrize(("args", "status", "verdict", "conflicts"), CASES)
async def test_check_exit_status_and_json(rmrrd_daemon: Daemon, args: list[str], status: int,
                                          verdict: str, conflicts: list[str]) -> None:
    await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    done = await check(rmrrd_daemon.xs, *args, "--json")
    assert done.returncode == status, done
    result = json.loads(done.stdout)
    assert (result["verdict"], result["conflicts"], result["ranking"]) == (verdict, conflicts, [])
    assert result["reason"] and result["id"].startswith("cli-")
    # The result stays readable by id through xenstore, as the CLI printed it.
    assert await rmrrd_daemon.xs.read(f"/tool/rmrrd/result/{result['id']}/verdict") == verdict


async def test_check_text_output(rmrrd_daemon: Daemon) -> None:
    await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    done = await check(rmrrd_daemon.xs, "hotplug", "--domid", "1", "--device", D1)
    assert done.returncode == 1
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("fail: ") and "bios" in lines[0]
    assert lines[1:] == [f"  conflict 0xe0000-0xeffff bios {D1}"]


async def test_migrate_without_target_ranks_the_peers(rmrrd_daemon: Daemon) -> None:
    await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    done = await check(rmrrd_daemon.xs, "migrate", "--domid", "1", "--json")
    result = json.loads(done.stdout)
    # node-b's only region was reserved at setup with a RAM conflict: a warning.
    assert (done.returncode, result["verdict"]) == (3, "warn"), done
    assert [line.split()[0] for line in result["ranking"]] == ["node-b"]
    assert "node-b" in result["reason"]


BAD_ARGUMENTS = [
    (["teleport", "--domid", "1"], "invalid choice"),
    (["assign", "--device", D2], "--domid"),
    (["assign", "--domid", "one", "--device", D2], "one"),
    (["assign", "--domid", "1"], "exactly one device"),
    (["assign", "--domid", "1", "--device", D2, "--device", D1], "exactly one device"),
    (["assign", "--domid", "1", "--device", "0000:zz:02.0"], "0000:zz:02.0"),
    (["hotplug", "--domid", "1", "--device", D1, "--target", "node-b"], "target"),
    (["migrate", "--domid", "1", "--target", "node/b"], "node/b"),
    (["migrate", "--domid", "1", "--target", "node b"], "--target 'node b': expected one word"),
    (["hotplug", "--domid", "1", "--device", f"{D1} op=assign"], f"--device '{D1} op=assign': expected one word"),
    (["hotplug", "--domid", "1", "--device", ""], "--device '': expected one word"),
]


@pytest.mark.parametrize(("args", "word"), BAD_ARGUMENTS)
async def test_bad_arguments_exit_2_without_asking(tmp_path: Path, args: list[str], word: str) -> None:
    # No xenstore at all: bad arguments are refused before any connection.
    done = await check(Xenstore(tmp_path / "absent.socket"), *args)
    assert done.returncode == 2, done
    assert word in one_line_error(done)


async def test_no_xenstore_exits_2(tmp_path: Path) -> None:
    done = await check(Xenstore(tmp_path / "absent.socket"), "assign", "--domid", "1", "--device", D2)
    assert done.returncode == 2, done
    assert "cannot reach xenstore" in one_line_error(done)


async def test_no_daemon_answering_exits_2_and_withdraws_the_request(xenstored_process: XenstoredProcess) -> None:
    xs = xenstored_process.xs
    done = await check(xs, "assign", "--domid", "1", "--device", D2, "--timeout", "0.3")
    assert done.returncode == 2, done
    assert "no verdict within 0.3 s" in one_line_error(done)
    # The unanswered request is not left for a daemon started later to act on.
    assert await xs.list("/tool/rmrrd/request") == []
