"""Real Prometheus tooling for tests: ``promtool check metrics`` and a live server.

The daemon's own scrape test reuses :class:`PrometheusServer`: start it with the
daemon's ``host:port`` as the target, then ``wait_for_value`` on a PromQL query.
Everything here blocks (subprocesses, urllib), so trio tests call it through
``trio.to_thread.run_sync`` to keep their own servers answering scrapes.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
START_TIMEOUT = 60.0


def promtool_check_metrics(text: bytes) -> list[str]:
    """Problems ``promtool check metrics`` reports on ``text`` (empty when clean)."""
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    lines = (result.stdout + result.stderr).decode().splitlines()
    if result.returncode != 0 and not lines:
        lines = [f"promtool exited with {result.returncode}"]
    return lines


def tools_available() -> bool:
    return shutil.which(PROMETHEUS) is not None and shutil.which(PROMTOOL) is not None


def free_port() -> int:
    """A TCP port nobody listens on right now (the configuration refuses port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrometheusServer:
    """A Prometheus server on loopback scraping ``targets`` every second."""

    def __init__(self, workdir: Path, targets: list[str], *, job: str = "rmrrd") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        # JSON is YAML: no hand-formatted YAML to get wrong.
        config.write_text(
            json.dumps(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
                }
            )
        )
        self._log = open(workdir / "prometheus.log", "wb")
        self._process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = workdir / "prometheus.log"

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Block until ``/-/ready`` answers 200; raise with Prometheus's log if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"Prometheus did not become ready:\n{self.log_path.read_text()}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query through ``/api/v1/query``."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
        if answer.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for_value(self, expr: str, expected: float, timeout: float = 30.0) -> float:
        """Poll ``expr`` until its single sample equals ``expected``; return it.

        Raises AssertionError with the last result seen when it does not get there.
        """
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            last = self.query(expr)
            if len(last) == 1 and float(last[0]["value"][1]) == expected:
                return expected
            time.sleep(0.25)
        raise AssertionError(f"{expr} never became {expected}; last result {last}")

    def target_health(self) -> list[str]:
        """The ``health`` of every active scrape target (``up``, ``down``, ``unknown``)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as response:
            answer = json.load(response)
        return [target["health"] for target in answer["data"]["activeTargets"]]
