"""The alerting rules an operator installs (monitoring/rmrrd.rules.yml), held by promtool.

``promtool test rules`` runs monitoring/rmrrd.rules.test.yml: each alert fires on a
synthetic series that needs action and stays silent on its near miss.  The tests here
also prove those cases can fail (every alert made to always fire, then never, must
break them), that every alert carries what an on-call reads (severity, summary,
description, a runbook section that exists), and that each metric an alert reads is
one the daemon serves.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.prometheus import PROMTOOL, tools_available
from rmrrd.edges.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "rmrrd.rules.yml"
RULE_TESTS = ROOT / "monitoring" / "rmrrd.rules.test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

needs_promtool = pytest.mark.skipif(not tools_available(), reason="Debian's prometheus package (.ci/run installs it)")


def alerts() -> list[dict[str, Any]]:
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


@needs_promtool
@pytest.mark.process
def test_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


@needs_promtool
@pytest.mark.process
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for alert in alerts():
        name = alert["alert"]
        own = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in own), f"{name}: no case where it fires"
        assert any(not case["exp_alerts"] for case in own), f"{name}: no case where it stays silent"


@needs_promtool
@pytest.mark.process
@pytest.mark.parametrize("mutation", ["vector(1)", "vector(1) > 2"], ids=["always", "never"])
def test_the_unit_tests_catch_a_broken_alert(tmp_path: Path, mutation: str) -> None:
    """Every alert made to fire always (or never) fails its own cases."""
    document = yaml.safe_load(RULES.read_text())
    for rule in document["groups"][0]["rules"]:
        rule["expr"] = mutation
    (tmp_path / RULES.name).write_text(yaml.safe_dump(document))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    failed = set(re.findall(r"alertname: (\w+), time:", result.stdout + result.stderr))
    assert failed == {alert["alert"] for alert in alerts()}


def test_every_alert_says_what_to_do() -> None:
    headings = {_anchor(line.lstrip("#").strip()) for line in OPERATIONS.read_text().splitlines()
                if line.startswith("### ")}
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert set(alert["annotations"]) == {"summary", "description", "runbook"}, name
        document, _, anchor = alert["annotations"]["runbook"].partition("#")
        assert (document, anchor) == ("docs/operations.md", name.lower())
        assert anchor in headings, f"{name}: no '### {name}' section in docs/operations.md"


def test_no_alert_on_a_warning_the_operator_chose() -> None:
    """Relaxed-policy warnings (action="warned") and toolstack verdicts are not alerts."""
    for alert in alerts():
        assert "warned" not in alert["expr"] and "rmrrd_conflicts_total" not in alert["expr"], alert["alert"]
        assert "rmrrd_requests_total" not in alert["expr"], alert["alert"]


def test_alerts_read_metrics_the_daemon_serves() -> None:
    served = set(re.findall(r"^([a-z_]+?)(?:\{| )", Metrics().render()[1].decode(), re.MULTILINE))
    for alert in alerts():
        for name in re.findall(r"\b((?:rmrrd|process)_[a-z_]+)", alert["expr"]):
            assert name in served, f"{alert['alert']}: {name} is not on /metrics"


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, spaces to dashes, punctuation dropped."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
