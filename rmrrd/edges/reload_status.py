"""The outcome of the daemon's last reload, in a file, so ``systemctl reload`` can report it.

Why a file: systemd's notify protocol ends a reload with ``READY=1`` whatever came of
it.  Under ``Type=notify`` with ``ExecReload=/bin/kill -HUP $MAINPID`` (the only way
on systemd 252, Debian 12's) ``systemctl reload`` returns as soon as the signal is
sent; under ``Type=notify-reload`` (systemd 253 and later) it waits for ``READY=1``,
and still reports success for a file that was refused.  So the unit's
``ExecReload=`` is ``rmrrd reload --pid $MAINPID``: it sends SIGHUP, waits until this
file holds the outcome of a reload that began after its signal, prints it and exits
1 if the daemon kept its old configuration, which ``systemctl reload`` reports as a
failed job.

The file is ``$RUNTIME_DIRECTORY/reload-result.json``: systemd gives the daemon and
its ``ExecReload=`` the same ``RUNTIME_DIRECTORY`` (``RuntimeDirectory=rmrrd``:
``/run/rmrrd``), which only root may write.  Without that variable the daemon
writes no file and ``rmrrd reload`` refuses to run.  One JSON object, written to a
temporary name and renamed over the old, so a reader sees a whole one or the last.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from rmrrd.errors import InputError

RESULT_NAME = "reload-result.json"
POLL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """One reload: which daemon, when it began (CLOCK_MONOTONIC, µs), what came of it."""

    pid: int
    began_usec: int
    error: str | None
    status: str

    @property
    def ok(self) -> bool:
        return self.error is None


def result_path(environ: Mapping[str, str]) -> Path | None:
    """Where the outcome is kept, from ``RUNTIME_DIRECTORY`` (the first of a list), or None."""
    directory = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(directory) / RESULT_NAME if directory.startswith("/") else None


def write_outcome(path: Path, outcome: ReloadOutcome) -> None:
    """Replace the file with ``outcome``; raises OSError if the directory is not writable."""
    temporary = path.with_name(f".{path.name}.{outcome.pid}")
    temporary.write_text(json.dumps(asdict(outcome)) + "\n")
    os.replace(temporary, path)


def read_outcome(path: Path) -> ReloadOutcome | None:
    """The last outcome written, or None when there is none (or it is not one)."""
    try:
        data = json.loads(path.read_text())
        return ReloadOutcome(int(data["pid"]), int(data["began_usec"]),
                             None if data["error"] is None else str(data["error"]), str(data["status"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def request_reload(pid: int, path: Path, timeout: float) -> ReloadOutcome | None:
    """SIGHUP to ``pid``, then the outcome of the reload it caused; None after ``timeout`` s.

    A reload counts only if it began after the signal was sent, so the outcome of an
    earlier reload is never taken for this one.  Raises InputError if ``pid`` is no
    process this user may signal.
    """
    sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise InputError(f"no process {pid}") from None
    except PermissionError:
        raise InputError(f"process {pid}: not permitted to signal it") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = read_outcome(path)
        if outcome is not None and outcome.pid == pid and outcome.began_usec >= sent:
            return outcome
        time.sleep(POLL_SECONDS)
    return None
