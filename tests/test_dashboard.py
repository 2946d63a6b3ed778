"""The Grafana dashboard (monitoring/rmrrd-dashboard.json), query by query, against a
real Prometheus that scraped ``rmrrd run --simulate`` while it played the seed scenario.

Grafana itself is not needed to know that a panel works: every panel is PromQL over
rmrrd's metrics.  Each query is run as Grafana would (its variables replaced: the job,
every instance, ``$__rate_interval``) through Prometheus's HTTP API, and must be valid
and return data; the variables' own ``label_values`` lookups must find the daemon.
"""

from __future__ import annotations

import json
import re
import signal
import urllib.error
from pathlib import Path
from typing import Any

import pytest
import trio

from support.processes import Daemon, start_daemon
from support.prometheus import PrometheusServer, tools_available
from rmrrd.app.demo import scenario
from rmrrd.app.toolstack import guest_query
from rmrrd.protocol import answer_path
from rmrrd.xenstore.client import open_xenstore

DASHBOARD = Path(__file__).resolve().parent.parent / "monitoring" / "rmrrd-dashboard.json"
#: What Grafana puts for each variable: the scrape job, "All" hosts (the variable's
#: allValue), and a rate window holding the whole scenario.
VARIABLES = {"$job": "rmrrd", "$instance": ".+", "$__rate_interval": "5m"}

needs_prometheus = pytest.mark.skipif(not tools_available(), reason="Debian's prometheus package (.ci/run installs it)")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with the variables replaced) for every target of every panel."""
    found = []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            found.append((panel["title"], expr))
    return found


def test_dashboard_is_well_formed() -> None:
    """Unique ids, one Prometheus datasource variable everywhere, no unknown variable,
    every panel inside Grafana's 24-column grid."""
    board = dashboard()
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    for title, expr in queries():
        assert "$" not in expr, (title, expr)  # every variable the queries use is known
    # The questions an operator asks, each with a panel.
    titles = {panel["title"] for panel in panels()}
    assert {"Setups by status", "Answer latency, p50 and p99", "Conflicts by kind and action",
            "Guest rejections by kind", "Connected", "Reload outcome"} <= titles


@needs_prometheus
@pytest.mark.process
def test_every_panel_query_returns_data(workdir: Path, daemons: list[Daemon]) -> None:
    daemon = start_daemon(workdir, env={"RUNTIME_DIRECTORY": str(workdir)})
    daemons.append(daemon)
    with PrometheusServer(workdir, [f"127.0.0.1:{daemon.port}"]) as prometheus:
        prometheus.wait_ready()
        prometheus.wait_for_value('rmrrd_xenstore_connected{job="rmrrd"}', 1.0)
        steps = trio.run(_seed_scenario_and_a_rejected_query, daemon.xenstore)
        assert all(step.ok for step in steps), [step for step in steps if not step.ok]
        daemon.process.send_signal(signal.SIGHUP)
        daemon.wait_for_log("reload done")
        # Everything above is scraped once these read as the scenario left them.
        prometheus.wait_for_value('rmrrd_setups_total{job="rmrrd",status="error"}', 1.0)
        prometheus.wait_for_value('rmrrd_guest_queries_total{job="rmrrd",kind="e820",outcome="ok"}', 2.0)
        # The query after the rejected one is in, and the rejection was counted once:
        # rmrrd's own removal of the node fires the watch again, and is not a query.
        assert prometheus.wait_for_value('sum(rmrrd_guest_queries_total{job="rmrrd",outcome="rejected"})', 1.0)
        prometheus.wait_for_value('changes(rmrrd_config_last_reload_success_timestamp_seconds{job="rmrrd"}[5m])', 1.0)

        for variable in dashboard()["templating"]["list"][1:]:
            metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"]).groups()  # type: ignore[union-attr]
            found = {series["metric"][label] for series in prometheus.query(metric.replace("$job", "rmrrd"))}
            assert found == {"rmrrd" if label == "job" else f"127.0.0.1:{daemon.port}"}, variable["name"]
        results = {}
        for title, expr in queries():
            try:
                results[(title, expr)] = prometheus.query(expr)
            except urllib.error.HTTPError as error:  # 400: Prometheus refuses the query
                raise AssertionError(f"{title}: {expr}: {error.read().decode()}") from None
            assert results[(title, expr)], f"{title}: no data for {expr}"
    assert daemon.stop() == 0

    def series(title: str, **labels: str) -> float:
        """The value of the one series of panel ``title`` carrying ``labels``."""
        (value,) = [float(item["value"][1]) for (panel, _), result in results.items() if panel == title
                    for item in result if labels.items() <= item["metric"].items()]
        return value

    # The panels show the scenario: an error among the setups, the relaxed warnings
    # as conflicts, the refused checks, the rejected query, the reload.
    assert series("Setups by status", status="error") > 0 and series("Setups by status", status="ready") > 0
    assert series("Conflicts by kind and action", kind="ram", action="warned") > 0
    assert series("Toolstack checks by verdict", op="hotplug", verdict="fail") > 0
    assert series("Guest rejections by kind", kind="other") > 0
    assert series("Successful loads") >= 1
    assert series("xenstore") == 1 and series("Last reload") == 1


async def _seed_scenario_and_a_rejected_query(xenstore: Path) -> list[Any]:
    async with open_xenstore(str(xenstore)) as xs:
        steps = await scenario(xs, xenstore, lambda domid: Path(f"{xenstore}.d/{domid}"), lambda line: None)
        async with open_xenstore(f"{xenstore}.d/1") as guest:
            # A query node whose name is too long for an id: removed unanswered, rejected.
            await guest.write(f"{answer_path(1)}/query/{'x' * 65}", "e820")
            assert (await guest_query(guest, 1, "after", "e820")).startswith("ok")
    return steps
