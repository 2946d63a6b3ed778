"""The xenstore conformance tests against the real C xenstored and oxenstored.

``tests/test_xs_conformance.py`` runs unchanged in dom0, with pytest, once per
xenstored (one machine each); there ``tests/support/xs_backends.py`` reaches the real
xenstored through its unix socket and through /dev/xen/xenbus.  Each conformance test
on each xenstored and transport is one test here, failing with dom0's report of it.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import xs_backends
from xen.testbed import Dom0

CONFORMANCE = Path(__file__).resolve().parents[1] / "test_xs_conformance.py"
CASES = sorted(node.name for node in ast.parse(CONFORMANCE.read_text()).body
               if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and node.name.startswith("test_"))
"""The conformance module's tests, read from its source (no test module imports another)."""
TRANSPORTS = sorted(xs_backends.REAL_TRANSPORTS)
RUN_TIMEOUT = 900.0


@dataclass(frozen=True)
class Report:
    outcome: str  # passed, failed, error, skipped
    text: str


_runs: dict[str, tuple[dict[str, Report], str]] = {}


def conformance_run(dom0: Dom0, kind: str) -> tuple[dict[str, Report], str]:
    """Run the conformance module in dom0 against ``kind``, once: (reports by test id, output)."""
    if kind not in _runs:
        junit = f"/tmp/conformance-{kind}.xml"
        result = dom0.python(["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                              "tests/test_xs_conformance.py"], env={xs_backends.ENV: kind},
                             timeout=RUN_TIMEOUT, check=False)
        output = result.describe()
        reports: dict[str, Report] = {}
        xml = dom0.run(["cat", junit], check=False)
        if xml.ok:
            for case in ElementTree.fromstring(xml.stdout).iter("testcase"):
                outcome, text = "passed", ""
                for child in case:
                    if child.tag in ("failure", "error", "skipped"):
                        outcome, text = child.tag, (child.get("message") or "") + "\n" + (child.text or "")
                reports[case.get("name", "")] = Report(outcome, text)
        _runs[kind] = (reports, output)
    return _runs[kind]


def check(dom0: Dom0, kind: str, transport: str, case: str) -> None:
    reports, output = conformance_run(dom0, kind)
    report = reports.get(f"{case}[{kind}-{transport}]")
    if report is None:
        pytest.fail(f"dom0's pytest did not report {case} on {kind} over {transport}:\n{output}")
    if report.outcome == "skipped":
        pytest.skip(report.text.strip())
    assert report.outcome == "passed", f"{case} on {kind} over {transport} {report.outcome}:\n{report.text}"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_c_xenstored(dom0: Dom0, transport: str, case: str) -> None:
    check(dom0, "xenstored", transport, case)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_oxenstored(ox_dom0: Dom0, transport: str, case: str) -> None:
    check(ox_dom0, "oxenstored", transport, case)
