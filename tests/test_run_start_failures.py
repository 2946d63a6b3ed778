"""Every way ``rmrrd run`` can fail to start: one log line naming the cause, a
journald priority, a documented exit status, never a traceback; and a crash after
start logged at critical (``<2>``) with its traceback, as one journal entry.

The daemon runs as a process whose stderr is the stream ``JOURNAL_STREAM`` names,
as systemd runs it, so the priority prefixes are the real ones.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rmrrd.cli.run import EXIT_CRASHED, EXIT_STATUSES, EXIT_UNAVAILABLE
from support import INVENTORIES
from support.processes import config_text, rmrrd_argv, run_to_end
from support.prometheus import free_port
from support.raw_xenstore import listening_socket

pytestmark = pytest.mark.process

EXIT_BAD_INPUT = 2


@dataclass
class Outcome:
    status: int
    lines: list[str]

    def only_failure(self, priority: str) -> str:
        """The one line at ``priority`` or worse; fails unless it is the last and only one."""
        assert all(line.startswith("<") for line in self.lines), self.lines  # one entry per line
        assert "Traceback" not in "\n".join(self.lines) or priority == "<2>", self.lines
        bad = [line for line in self.lines if line[:3] in ("<0>", "<1>", "<2>", "<3>")]
        assert len(bad) == 1 and bad[0] == self.lines[-1] and bad[0].startswith(priority), self.lines
        return bad[0]


def run_rmrrd(workdir: Path, *args: str, command: list[str] | None = None,
              as_user: list[str] | None = None) -> Outcome:
    """``rmrrd run ARGS`` to its end, its output the stream journald would be reading."""
    argv = [*(as_user or []), *(command or rmrrd_argv()), "run", *args]
    return Outcome(*run_to_end(workdir, argv))


def seed_config(workdir: Path, *, port: int | None = None, xenstore: Path | None = None,
                embedded: bool = False, extra: str = "") -> Path:
    for name in ("node-a.yaml", "node-b.yaml"):
        shutil.copy(INVENTORIES / name, workdir / name)
    path = workdir / "rmrrd.yaml"
    path.write_text(config_text(workdir, port or free_port(), xenstore=xenstore or workdir / "xs.sock",
                                embedded=embedded, extra=extra))
    return path


@pytest.fixture
def listening(workdir: Path) -> Iterator[Path]:
    """A live unix socket at ``workdir/xs.sock``, as a running xenstored has."""
    with listening_socket(workdir / "xs.sock"):
        yield workdir / "xs.sock"


def test_every_status_is_documented() -> None:
    assert set(EXIT_STATUSES) == {0, EXIT_UNAVAILABLE, EXIT_BAD_INPUT, EXIT_CRASHED}


def test_xenstored_unreachable(workdir: Path) -> None:
    config = seed_config(workdir)
    outcome = run_rmrrd(workdir, "--config", str(config))
    assert outcome.status == EXIT_UNAVAILABLE
    line = outcome.only_failure("<3>")
    assert f"cannot connect to xenstored at {workdir / 'xs.sock'}: No such file or directory" in line


def test_xenstored_unreachable_on_a_terminal_is_one_plain_line(workdir: Path) -> None:
    config = seed_config(workdir)
    env = {key: value for key, value in os.environ.items() if key not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
    done = subprocess.run([sys.executable, "-m", "rmrrd", "run", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, check=False, env=env)
    assert done.returncode == EXIT_UNAVAILABLE and done.stdout == "" and "Traceback" not in done.stderr
    # What loaded before the connection was tried (peers, the HTTP listener) is
    # logged at info as it happens; the failure is one line, the last.
    lines = done.stderr.splitlines()
    assert [line for line in lines if " INFO " not in line] == lines[-1:]
    assert lines[-1].endswith(f" ERROR rmrrd.cli.run: cannot start: cannot connect to xenstored at "
                              f"{workdir / 'xs.sock'}: No such file or directory")


def test_metrics_port_in_use(workdir: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        outcome = run_rmrrd(workdir, "--simulate", "--config", str(seed_config(workdir, port=port)))
    finally:
        taken.close()
    assert outcome.status == EXIT_UNAVAILABLE
    assert f"cannot start: HTTP listener 127.0.0.1:{port}: Address already in use" in outcome.only_failure("<3>")


def test_bad_config(workdir: Path) -> None:
    config = seed_config(workdir, extra="limits:\n  query_rate: 0\n  max_allocations: lots\n")
    outcome = run_rmrrd(workdir, "--simulate", "--config", str(config))
    assert outcome.status == EXIT_BAD_INPUT
    line = outcome.only_failure("<3>")
    assert f"{config}:11: limits.query_rate: expected an integer from 1 to 10000, got 0; {config}:12: " in line


@pytest.mark.parametrize(("inventory", "why"), [
    ("a: &a [x, x]\nb: [*a, *a]\n", ":2: YAML alias *a refused"),
    ("host: node-a\nregions: " + "[" * 3000 + "]" * 3000 + "\n", ":2: nested deeper than 64 levels"),
])
def test_an_inventory_that_expands_or_nests_is_one_line_not_a_crash_loop(workdir: Path, inventory: str,
                                                                         why: str) -> None:
    config = seed_config(workdir)
    (workdir / "node-a.yaml").write_text(inventory)
    outcome = run_rmrrd(workdir, "--simulate", "--config", str(config))
    assert outcome.status == EXIT_BAD_INPUT
    assert f"{workdir / 'node-a.yaml'}{why}" in outcome.only_failure("<3>")


def test_unreadable_firmware_table(workdir: Path) -> None:
    tables = workdir / "sys" / "firmware" / "acpi" / "tables"
    tables.mkdir(parents=True)
    (tables / "DMAR").write_bytes(b"DMAR" + bytes(20))  # shorter than its own header
    config = workdir / "rmrrd.yaml"
    config.write_text(f"xenstore:\n  path: {workdir / 'xs.sock'}\nhost:\n  name: h\n  sources: [dmar]\n"
                      f"  sysfs_root: {workdir}\nmetrics:\n  listen: 127.0.0.1:{free_port()}\n")
    outcome = run_rmrrd(workdir, "--simulate", "--config", str(config))
    assert outcome.status == EXIT_BAD_INPUT
    assert str(tables / "DMAR") in outcome.only_failure("<3>")


def test_no_permission_on_the_xenstored_socket(workdir: Path, listening: Path) -> None:
    config = seed_config(workdir, xenstore=listening)
    as_user: list[str] = []
    if os.getuid() == 0:
        # Root may connect to any socket: run the daemon as nobody, who may read the
        # configuration and the code but not connect to a root-only socket.
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        workdir.chmod(0o755)
        for path in workdir.iterdir():
            path.chmod(0o644)
        can_run = subprocess.run([*as_user, sys.executable, "-c", "import rmrrd.cli"], capture_output=True,
                                 cwd=workdir, check=False)
        if can_run.returncode != 0 and not os.environ.get("CI"):
            pytest.skip(f"user nobody cannot run this checkout's Python: {can_run.stderr.decode()[-200:]}")
        assert can_run.returncode == 0, can_run.stderr  # CI lays the tree out readable
    listening.chmod(0o700 if os.getuid() == 0 else 0o000)
    outcome = run_rmrrd(workdir, "--config", str(config), as_user=as_user)
    assert outcome.status == EXIT_UNAVAILABLE
    assert f"cannot connect to xenstored at {listening}: Permission denied" in outcome.only_failure("<3>")


def test_simulate_refuses_a_live_socket_and_leaves_it_working(workdir: Path, listening: Path) -> None:
    outcome = run_rmrrd(workdir, "--simulate", "--config", str(seed_config(workdir, xenstore=listening)))
    assert outcome.status == EXIT_BAD_INPUT
    line = outcome.only_failure("<3>")
    assert f"cannot start: {listening}: a socket there accepts connections" in line
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(str(listening))  # still served by its owner
    probe.close()
    assert listening.is_socket()


# A fault no input can cause: the service replaced by one that breaks, before or
# after it reported itself started.  The handling under test is rmrrd's own.
FAULTY_SERVICE = """
import sys, trio
import rmrrd.cli.run as run_command
from rmrrd import cli

async def faulty(config, *, task_status=trio.TASK_STATUS_IGNORED, **_):
    if sys.argv[1] == "after":
        task_status.started()
        await trio.sleep(0.1)
    raise RuntimeError("injected fault")

run_command.run_service = faulty
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("when", "what"), [("after", "crashed"), ("before", "failed to start")])
def test_an_unforeseen_error_is_critical_with_its_traceback(workdir: Path, when: str, what: str) -> None:
    config = seed_config(workdir)
    outcome = run_rmrrd(workdir, "--config", str(config), command=[sys.executable, "-c", FAULTY_SERVICE, when])
    assert outcome.status == EXIT_CRASHED
    line = outcome.only_failure("<2>")
    assert f"<2>rmrrd.cli.run: rmrrd {what}: RuntimeError: injected fault | Traceback" in line
    assert 'in faulty | RuntimeError: injected fault' in line  # the frame that raised
