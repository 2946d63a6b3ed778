"""SIGTERM, SIGINT and SIGHUP against ``rmrrd run`` as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from support import WAIT
from support.processes import Daemon, XenstoredProcess, read_key, rmrrd_argv, setup_domain, start_daemon
from rmrrd.xenstore.ops import read_text
from rmrrd.app.demo import SEED_DOMAIN
from rmrrd.app.toolstack import write_request
from rmrrd.protocol import answer_path
from rmrrd.xenstore.client import open_xenstore

pytestmark = pytest.mark.process

BURST = 40


def _answers(xenstore: Path, domids: range) -> dict[int, tuple[str | None, str | None]]:
    """(status, generation) of each domain's answer: both set, or both absent."""

    async def run() -> dict[int, tuple[str | None, str | None]]:
        async with open_xenstore(str(xenstore)) as xs:
            return {domid: (await read_text(xs, f"{answer_path(domid)}/status"),
                            await read_text(xs, f"{answer_path(domid)}/generation")) for domid in domids}

    return trio.run(run)


def test_sigterm_mid_burst_leaves_whole_answers_and_a_restart_finishes(
        workdir: Path, daemons: list[Daemon], xenstored_process: XenstoredProcess) -> None:
    xenstored = xenstored_process
    daemon = start_daemon(workdir, xenstore=xenstored.path)
    daemons.append(daemon)
    domids = range(10, 10 + BURST)

    async def burst() -> None:
        async with open_xenstore(str(xenstored.path)) as xs:
            for domid in domids:
                await write_request(xs, domid, SEED_DOMAIN)
            daemon.process.send_signal(signal.SIGTERM)

    trio.run(burst)
    assert daemon.wait_exit() == 0
    first = _answers(xenstored.path, domids)
    # Whatever was in flight finished as a whole answer (one transaction each).
    assert all((status is None) == (generation is None) for status, generation in first.values())
    assert all(status in (None, "ready") for status, _ in first.values())

    again = start_daemon(workdir, xenstore=xenstored.path)
    daemons.append(again)
    # The reconcile of the next start answers what the stop left.
    assert set(_answers(xenstored.path, domids).values()) == {("ready", "1")}
    assert again.stop(signal.SIGINT) == 0


def test_sighup_uses_a_changed_inventory_for_the_next_setup(workdir: Path, daemons: list[Daemon]) -> None:
    daemon = start_daemon(workdir)
    daemons.append(daemon)
    before = setup_domain(daemon.xenstore, 1, {"memory": "1024", "pci/0": "0000:05:00.0"})
    assert before.status == "ready" and before.regions == ()

    inventory = workdir / "node-a.yaml"
    inventory.write_text(inventory.read_text()
                         + "  - range: 0x7f000000-0x7f0fffff\n    devices: [\"0000:05:00.0\"]\n")
    mark = len(daemon.log_lines())
    daemon.process.send_signal(signal.SIGHUP)
    assert "1 changes" in daemon.wait_for_log("reload done", after=mark)
    assert "reload: host node-a: region 0x7f000000-0x7f0fffff (0000:05:00.0) added" in daemon.log()

    after = setup_domain(daemon.xenstore, 2, {"memory": "1024", "pci/0": "0000:05:00.0"})
    assert after.status == "ready"
    assert "0x7f000000-0x7f0fffff" in [str(region.range) for region in after.regions]
    # Domain 1 was built on the old layout and keeps its answer.
    assert read_key(daemon.xenstore, f"{answer_path(1)}/region/0/range") is None
    assert daemon.stop() == 0


def test_sighup_with_an_invalid_config_keeps_the_old_one(workdir: Path, daemons: list[Daemon]) -> None:
    """systemd sees RELOADING=1, then READY=1 with the failure in STATUS=; the reload
    metric reads 0 and /healthz 503; the old configuration keeps serving; ``rmrrd
    reload`` (the unit's ExecReload=) exits 1.  A good file afterwards clears it all."""
    daemon = start_daemon(workdir, env={"RUNTIME_DIRECTORY": str(workdir)})
    daemons.append(daemon)
    notify = daemon.notify
    assert notify is not None
    loaded_at = daemon.metric("rmrrd_config_last_reload_success_timestamp_seconds")
    good = daemon.config.read_text()
    daemon.config.write_text(good + "limits:\n  query_rat: 5\n")
    mark = len(daemon.log_lines())
    daemon.process.send_signal(signal.SIGHUP)
    reloading, *_, ready = notify.wait_for("READY=1")
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+\nSTATUS=reloading configuration and inventories",
                        reloading)
    assert re.fullmatch(r"READY=1\nSTATUS=reload failed at [\d:]{8}, running the configuration loaded before: "
                        r".*rmrrd\.yaml:\d+: limits\.query_rat: unknown key.*\.\.\.; serving 0 domains; "
                        r"host node-a with 2 regions, 1 peers", ready)
    line = daemon.wait_for_log("reload failed", after=mark)
    assert re.search(rf"{re.escape(str(daemon.config))}:\d+: limits\.query_rat: unknown key", line)
    assert line.startswith(tuple("0123456789")) and " ERROR " in line
    assert daemon.metric("rmrrd_config_last_reload_successful") == 0
    assert daemon.metric("rmrrd_config_last_reload_success_timestamp_seconds") == loaded_at
    status, _, body = daemon.get("/healthz")
    assert status == 503 and b"reload failed at " in body and b"limits.query_rat: unknown key" in body
    assert body.count(b"\n") == 1 and b"..." not in body  # all of it, on one line
    assert daemon.get("/livez")[0] == 200
    # Still serving, on the old configuration.
    assert setup_domain(daemon.xenstore, 1).status == "ready"

    # The unit's ExecReload= reports the same failure, with the key, and exits 1.
    refused = reload_command(daemon, workdir)
    assert refused.returncode == 1
    assert "failed, the running configuration is kept" in refused.stderr and "query_rat" in refused.stderr

    # A valid change afterwards applies, is named key by key, and clears the failure.
    daemon.config.write_text(good + "limits:\n  results_kept: 10\n  query_rate: 5\nlog:\n  level: debug\n")
    mark = len(daemon.log_lines())
    applied = reload_command(daemon, workdir)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.startswith("rmrrd reload: done; serving 1 domains; host node-a")
    daemon.wait_for_log("reload done", after=mark)
    log = "\n".join(daemon.log_lines()[mark:])
    assert "reload: limits.results_kept: 256 -> 10" in log
    assert "limits.query_rate: 20 -> 5 (takes effect at the next restart)" in log
    assert "log.level: info -> debug" in log
    assert daemon.get("/healthz")[:3:2] == (200, b"ok\n")
    assert daemon.metric("rmrrd_config_last_reload_successful") == 1
    assert daemon.metric("rmrrd_config_last_reload_success_timestamp_seconds") > loaded_at
    assert "reload failed" in notify.wait_for("READY=1")[-1]  # the refused `rmrrd reload`
    assert notify.wait_for("READY=1")[-1].startswith("READY=1\nSTATUS=serving 1 domains; host node-a")
    # log.level took effect: debug lines appear from now on.
    mark = len(daemon.log_lines())
    setup_domain(daemon.xenstore, 2)
    daemon.stop()
    assert any(" DEBUG " in line for line in daemon.log_lines()[mark:])


def test_reload_command_without_a_daemon_outcome(workdir: Path, daemons: list[Daemon]) -> None:
    """``rmrrd reload`` needs RUNTIME_DIRECTORY, a live process, and an answer in time."""
    daemon = start_daemon(workdir)  # no RUNTIME_DIRECTORY: it records no outcome
    daemons.append(daemon)
    unset = subprocess.run(rmrrd_argv("reload", "--pid", str(daemon.process.pid)), capture_output=True, text=True,
                           timeout=WAIT, env=_without("RUNTIME_DIRECTORY"))
    assert (unset.returncode, unset.stderr.count("\n")) == (2, 1) and "RUNTIME_DIRECTORY is unset" in unset.stderr
    silent = reload_command(daemon, workdir, "--timeout", "1")
    assert silent.returncode == 1 and "no outcome from process" in silent.stderr
    daemon.stop()
    gone = reload_command(daemon, workdir)
    assert gone.returncode == 2 and f"no process {daemon.process.pid}" in gone.stderr


def reload_command(daemon: Daemon, runtime_directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``rmrrd reload --pid`` as the unit's ExecReload= runs it, with the unit's RUNTIME_DIRECTORY."""
    return subprocess.run(rmrrd_argv("reload", "--pid", str(daemon.process.pid), *args), capture_output=True,
                          text=True, timeout=WAIT + 60,
                          env={**_without("RUNTIME_DIRECTORY"), "RUNTIME_DIRECTORY": str(runtime_directory)})


def _without(name: str) -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != name}


def test_sighup_with_files_that_are_not_inputs_keeps_the_old_state(workdir: Path, daemons: list[Daemon]) -> None:
    """An inventory that expands by YAML aliases, a configuration that is /dev/zero:
    each reload fails with one line naming the file, and the daemon serves on, on
    what it had (it used to die of MemoryError or RecursionError)."""
    daemon = start_daemon(workdir)
    daemons.append(daemon)
    inventory, config = workdir / "node-a.yaml", daemon.config
    good = inventory.read_text()
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join([f'*{chr(97 + n)}'] * 10)}]\n" for n in range(8))
    inventory.write_text(good + bomb)
    mark = len(daemon.log_lines())
    daemon.process.send_signal(signal.SIGHUP)
    line = daemon.wait_for_log("reload failed", after=mark)
    assert line.endswith(f"keeping the running configuration: {config}: host.sources: {inventory}:10: YAML alias "
                         "*a refused: rmrrd's files need none, and aliases can expand without bound")
    config.rename(workdir / "rmrrd.yaml.good")
    config.symlink_to("/dev/zero")
    mark = len(daemon.log_lines())
    daemon.process.send_signal(signal.SIGHUP)
    line = daemon.wait_for_log("reload failed", after=mark)
    assert line.endswith(f"{config}: larger than 1048576 bytes: not a configuration")
    assert setup_domain(daemon.xenstore, 1).status == "ready"
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()


def test_log_level_on_the_command_line_outranks_the_file_on_reload(workdir: Path, daemons: list[Daemon]) -> None:
    daemon = start_daemon(workdir, args=("--log-level", "warning"), extra_config="log:\n  level: debug\n")
    daemons.append(daemon)
    daemon.process.send_signal(signal.SIGHUP)
    setup_domain(daemon.xenstore, 1)
    assert daemon.stop() == 0
    # Warnings (the seed domain's conflicts) and nothing below.
    lines = daemon.log_lines()
    assert any(" WARNING " in line for line in lines)
    assert not any(" INFO " in line or " DEBUG " in line for line in lines)


def test_sigterm_with_xenstored_hung_exits_0_within_the_grace(
        workdir: Path, daemons: list[Daemon], xenstored_process: XenstoredProcess) -> None:
    """The shutdown bound holds when the work cannot finish: xenstored stopped mid-burst.

    Setups waiting on xenstored should be abandoned at ``shutdown_grace_seconds``
    (1 s here) and the ``stopped`` status write gives up after 1 s.  ``wait_exit``
    allows 8 s: room for a loaded machine, and still below the client's 10 s request
    timeout, so a shutdown that waits for xenstored instead of the grace fails here.
    """
    xenstored = xenstored_process
    daemon = start_daemon(workdir, xenstore=xenstored.path, extra_config="limits:\n  shutdown_grace_seconds: 1\n")
    daemons.append(daemon)

    async def burst() -> None:
        async with open_xenstore(str(xenstored.path)) as xs:
            for domid in range(10, 10 + BURST):
                await write_request(xs, domid, SEED_DOMAIN)

    trio.run(burst)
    xenstored.process.send_signal(signal.SIGSTOP)
    try:
        assert daemon.stop(timeout=8.0) == 0
    finally:
        xenstored.process.send_signal(signal.SIGCONT)
    log = daemon.log()
    assert "signal SIGTERM: stopping within 1.0 s" in log
    assert "no answer to" not in log  # nothing waited for xenstored's timeout
    assert log.rstrip().endswith("rmrrd stopped")
