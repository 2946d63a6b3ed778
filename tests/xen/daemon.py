"""``rmrrd run`` in a testbed dom0, for the tests that drive the daemon there.

Started through dom0's warm Python (``Dom0.rmrrd``), its output appended to a log file
the tests read while it runs; ready when it says so in xenstore.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import shlex
from collections.abc import Iterator
from dataclasses import dataclass

from xen.testbed import CommandFailed, Dom0, Result

CONFIG = "/etc/rmrrd/rmrrd.yaml"
LOG = "/var/log/rmrrd.log"
STATUS = "/tool/rmrrd/status"


@dataclass
class Rmrrd:
    """The daemon running in dom0 with the configuration in CONFIG, its log in LOG."""

    dom0: Dom0
    executor: concurrent.futures.ThreadPoolExecutor
    run: concurrent.futures.Future[Result] | None = None
    pid: int = 0

    def start(self) -> None:
        self.run = self.executor.submit(self.dom0.rmrrd, "run", "--config", CONFIG, timeout=3600, output=LOG,
                                        check=False)
        for _ in range(60):
            if self.run.done():
                raise AssertionError(f"rmrrd exited at start:\n{self.run.result().describe()}\n{self.log()}")
            if self.dom0.xs_read(STATUS) == "ready":
                self.pid = int(self.dom0.xs_read("/tool/rmrrd/pid") or 0)
                return
            self.dom0.run(["testbed-xs-wait", "2", STATUS, "ready"], timeout=20, check=False)
        raise AssertionError(f"rmrrd not ready:\n{self.log()}")

    def log(self) -> str:
        return self.dom0.run(["cat", LOG], check=False).text

    def signal(self, name: str) -> None:
        self.dom0.run(["kill", f"-{name}", str(self.pid)])

    def stop(self) -> Result:
        """SIGTERM, as systemd stops it; what the run came to."""
        assert self.run is not None
        self.signal("TERM")
        return self.run.result(timeout=120)

    def wait_for_log(self, needle: str, timeout: float = 30, *, regex: bool = False) -> None:
        """Wait until a line of the log contains ``needle`` (or matches it, an extended
        regex, with ``regex``)."""
        try:
            self.dom0.wait_until(f"grep -q{'E' if regex else 'F'} {shlex.quote(needle)} {LOG}", timeout)
        except CommandFailed:
            raise AssertionError(f"no line with {needle!r} in rmrrd's log:\n{self.log()}") from None


@contextlib.contextmanager
def running(dom0: Dom0, config_text: str) -> Iterator[Rmrrd]:
    """``rmrrd run`` with ``config_text`` as CONFIG and a fresh LOG, ready; stopped
    (SIGTERM) at the end unless a test did."""
    dom0.write_file(CONFIG, config_text)
    dom0.run(["rm", "-f", LOG])
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        daemon = Rmrrd(dom0, executor)
        daemon.start()
        yield daemon
        if daemon.run is not None and not daemon.run.done():
            daemon.stop()
