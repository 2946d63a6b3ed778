"""``rmrrd run --simulate`` scraped live: promtool, a real Prometheus, every metric fed."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import trio

from support import WAIT
from support.processes import Daemon, XenstoredProcess, read_key, setup_domain, start_daemon
from support.prometheus import PrometheusServer, promtool_check_metrics, tools_available
from rmrrd.app.check import ask_daemon
from rmrrd.app.toolstack import guest_query
from rmrrd.core.inventory_yaml import inventory_to_json, load_inventory_file
from rmrrd.protocol import STATUS_KEY, format_request
from rmrrd.xenstore.client import open_xenstore

pytestmark = pytest.mark.process

needs_prometheus = pytest.mark.skipif(not tools_available(), reason="Debian's prometheus package (.ci/run installs it)")


def samples(body: bytes) -> dict[str, float]:
    """``name{labels}`` to value, as the text format writes them."""
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def scripted_setup(xenstore: Path) -> None:
    """Domain 1 of the seed, one guest query, one toolstack check."""
    assert setup_domain(xenstore, 1).status == "ready"

    async def run() -> None:
        async with open_xenstore(str(xenstore)) as xs:
            await xs.introduce(1, 0, 0)
            async with open_xenstore(f"{xenstore}.d/1") as guest:
                assert (await guest_query(guest, 1, "q1", "e820")).startswith("ok")
                assert (await guest_query(guest, 1, "q2", "nonsense")).startswith("error")
            _, result = await trio.to_thread.run_sync(ask_daemon, str(xenstore),
                                                      format_request("assign", 1, ("0000:00:02.0",)), WAIT)
            assert result.verdict == "ok"

    trio.run(run)


def test_every_documented_metric_is_fed(workdir: Path, daemons: list[Daemon]) -> None:
    daemon = start_daemon(workdir)
    daemons.append(daemon)
    scripted_setup(daemon.xenstore)
    status, content_type, body = daemon.get("/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    got = samples(body)
    assert got["rmrrd_domains"] == 1
    assert got['rmrrd_host_regions{host="node-a"}'] == 2
    assert got['rmrrd_host_regions{host="node-b"}'] == 1
    assert got['rmrrd_setups_total{status="ready"}'] == 1
    assert got['rmrrd_conflicts_total{action="warned",kind="bios"}'] == 1
    assert got['rmrrd_conflicts_total{action="warned",kind="ram"}'] == 1
    assert got['rmrrd_requests_total{op="assign",verdict="ok"}'] == 1
    assert got['rmrrd_request_duration_seconds_count{op="setup"}'] == 1
    assert got['rmrrd_request_duration_seconds_count{op="assign"}'] == 1
    assert got['rmrrd_guest_queries_total{kind="e820",outcome="ok"}'] == 1
    assert sum(v for k, v in got.items() if k.startswith("rmrrd_guest_queries_total{") and "ok" not in k) == 1
    for watch in ("setup", "query", "request"):
        assert got[f'rmrrd_xenstore_watch_events_total{{watch="{watch}"}}'] >= 1
    assert got["rmrrd_xenstore_reconnects_total"] == 0
    assert any(re.fullmatch(r'rmrrd_build_info\{python="[\d.]+",version="[^"]+"\}', k) for k in got)
    assert daemon.stop() == 0


def test_reconnects_are_counted(workdir: Path, daemons: list[Daemon], xenstored_process: XenstoredProcess) -> None:
    xenstored = xenstored_process
    daemon = start_daemon(workdir, xenstore=xenstored.path)
    daemons.append(daemon)
    mark = len(daemon.log_lines())
    xenstored.stop()
    again = XenstoredProcess(xenstored.path)
    try:
        # The client counts the reconnect in the same step as it logs it.
        daemon.wait_for_log("reconnected (#1)", after=mark)
        assert samples(daemon.get("/metrics")[2])["rmrrd_xenstore_reconnects_total"] == 1
        # The new xenstored is empty: the reconcile after the reconnect marks it served.
        daemon.wait_for_log("reconciled", after=mark)
        assert read_key(again.path, STATUS_KEY) == "ready"
        assert daemon.stop() == 0
    finally:
        again.stop()


def test_inventory_and_healthz(workdir: Path, daemons: list[Daemon]) -> None:
    daemon = start_daemon(workdir)
    daemons.append(daemon)
    status, content_type, body = daemon.get("/inventory")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == inventory_to_json(load_inventory_file(workdir / "node-a.yaml"))
    assert daemon.get("/healthz")[:2] == (200, "text/plain; charset=utf-8")
    assert daemon.stop(signal.SIGINT) == 0


@needs_prometheus
def test_live_scrape_is_promtool_clean(workdir: Path, daemons: list[Daemon]) -> None:
    daemon = start_daemon(workdir)
    daemons.append(daemon)
    scripted_setup(daemon.xenstore)
    assert promtool_check_metrics(daemon.get("/metrics")[2]) == []
    assert daemon.stop() == 0


@needs_prometheus
def test_prometheus_scrapes_the_setup_counter(workdir: Path, daemons: list[Daemon]) -> None:
    daemon = start_daemon(workdir)
    daemons.append(daemon)
    query = 'rmrrd_setups_total{job="rmrrd",status="ready"}'
    with PrometheusServer(workdir, [f"127.0.0.1:{daemon.port}"]) as prometheus:
        prometheus.wait_ready()
        prometheus.wait_for_value(query, 0.0)
        scripted_setup(daemon.xenstore)
        assert setup_domain(daemon.xenstore, 2).status == "ready"
        assert prometheus.wait_for_value(query, 2.0) == 2.0
        assert prometheus.wait_for_value('rmrrd_domains{job="rmrrd"}', 2.0) == 2.0
        assert prometheus.target_health() == ["up"]
    assert daemon.stop() == 0


def test_toolstack_conflicts_are_counted(workdir: Path, daemons: list[Daemon]) -> None:
    daemon = start_daemon(workdir)
    daemons.append(daemon)
    # Domain 1 reserved nothing for D2: assigning it later is an `unreserved` conflict.
    assert setup_domain(daemon.xenstore, 1, {"memory": "1024"}).status == "ready"

    async def run() -> str:
        _, result = await trio.to_thread.run_sync(ask_daemon, str(daemon.xenstore),
                                                  format_request("assign", 1, ("0000:00:02.0",)), WAIT)
        return result.verdict

    assert trio.run(run) == "warn"
    got = samples(daemon.get("/metrics")[2])
    assert daemon.stop() == 0
    assert sum(v for k, v in got.items() if k.startswith('rmrrd_conflicts_total{') and 'kind="unreserved"' in k) == 1
