"""The daemon's Prometheus metrics (docs/metrics.md), on a registry of their own.

The daemon calls the small methods below at each event; ``render()`` gives the text
exposition format for ``/metrics``.  A registry per :class:`Metrics` (not
client_python's global one) keeps tests independent and keeps library metrics that
rmrrd does not own out of the scrape.

Cardinality is bounded by construction: no label carries a domain id, a device or
a request id.  Every label value is mapped onto a fixed set, and anything outside
it is counted as ``other`` (a new conflict kind added by the planner shows up as
``other`` until it is listed here, rather than as an unbounded series).  The one
open-ended label, ``host`` on ``rmrrd_host_regions``, takes this host and its
configured peers, a set the operator controls.  Every series of the fixed sets is
created at zero up front, so ``rate()`` and ``increase()`` work from the first
scrape and a dashboard never misses a series that has not fired yet.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from rmrrd import __version__
from rmrrd.core.guest_layout import FIXED_AREA_KINDS
from rmrrd.core.planner import SHARED_RMRR

OTHER = "other"
#: The classic text format.  Recent client_python labels it ``version=1.0.0`` (UTF-8
#: metric names); every rmrrd name is a legacy name, so the body is exactly 0.0.4,
#: which every Prometheus since 2.0 and promtool parse.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

SETUP_STATUSES = ("ready", "error")
#: What a region can overlap: guest RAM, hvmloader's fixed areas (vga, rom, bios,
#: firmware), ``shared-rmrr`` (a device scope listing other devices), and from the
#: toolstack checks ``shared`` (a device of another domain) and ``unreserved``
#: (a region the domain did not reserve at setup).
CONFLICT_KINDS = ("ram", *FIXED_AREA_KINDS, SHARED_RMRR, "shared", "unreserved")
CONFLICT_ACTIONS = ("avoided", "warned", "failed")
REQUEST_OPS = ("assign", "hotplug", "migrate")
VERDICTS = ("ok", "warn", "fail")
#: Operations timed by the latency histogram: domain setup and the toolstack checks.
TIMED_OPS = ("setup", *REQUEST_OPS)
QUERY_KINDS = ("e820", "regions", "check", "alloc", "free")
#: ``rejected``: refused before it was handled (malformed, too long, rate limit,
#: allocation cap); ``error``: handled, answer ``error`` (no room, bad range).
QUERY_OUTCOMES = ("ok", "error", "rejected")
#: What a xenstore watch fired for.
WATCH_KINDS = ("setup", "introduce", "release", "query", "request", "backend")

#: Seconds.  ``bench/bench_daemon.py`` (docs/performance.md) puts a setup at about
#: 3 ms on a busy host (paced 200/s: p50 3 ms, p99 8 to 54 ms), 50 to 300 ms inside
#: the daemon during a burst of 1000, and 1.6 to 2.8 s end to end for the last of
#: that burst (docs/metrics.md has the runs).  From 2 ms to 5 s each edge is at most 5/3 of the one before (a 1-1.5-2-3-5
#: ladder), so a quantile read from the histogram is never off by more than that
#: factor over the whole measured range; 20 ms (the alert in docs/operations.md) and
#: 5 s (the bound for a burst of 1000 setups) are edges.  Below 2 ms only 0.5 and 1 ms: no
#: setup and few checks are that quick.  23 edges is 24 series per ``op``.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
)  # fmt: skip


def bounded(value: str, allowed: Iterable[str]) -> str:
    """``value`` if it is one of ``allowed``, else ``other``: keeps series finite."""
    return value if value in allowed else OTHER


class Metrics:
    """Every rmrrd metric, on its own registry; one instance per daemon."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self._domains = Gauge("rmrrd_domains", "Domains rmrrd currently tracks.", registry=r)
        self._host_regions = Gauge(
            "rmrrd_host_regions",
            "Reserved regions in a host's inventory (this host and its peers).",
            ["host"],
            registry=r,
        )
        self._setups = Counter(
            "rmrrd_setups", "Domain setup answers written, by status.", ["status"], registry=r
        )
        self._conflicts = Counter(
            "rmrrd_conflicts",
            "Reserved-region conflicts found, by what was overlapped and what was done.",
            ["kind", "action"],
            registry=r,
        )
        self._requests = Counter(
            "rmrrd_requests",
            "Toolstack check requests answered, by operation and verdict.",
            ["op", "verdict"],
            registry=r,
        )
        self._latency = Histogram(
            "rmrrd_request_duration_seconds",
            "Time from noticing a request (domain setup: the change's first watch event; toolstack check) to its answer.",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._queries = Counter(
            "rmrrd_guest_queries",
            "Guest queries, by kind and outcome (rejected: refused before handling).",
            ["kind", "outcome"],
            registry=r,
        )
        self._watch_events = Counter(
            "rmrrd_xenstore_watch_events",
            "Xenstore watch events received, by what the watch is for.",
            ["watch"],
            registry=r,
        )
        self._reconnects = Counter(
            "rmrrd_xenstore_reconnects", "Times the xenstore connection was re-established.", registry=r
        )
        Info("rmrrd_build", "rmrrd version and Python it runs on.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self._create_series()

    def _create_series(self) -> None:
        for status in (*SETUP_STATUSES, OTHER):
            self._setups.labels(status)
        for kind in (*CONFLICT_KINDS, OTHER):
            for action in (*CONFLICT_ACTIONS, OTHER):
                self._conflicts.labels(kind, action)
        for op in (*REQUEST_OPS, OTHER):
            for verdict in VERDICTS:
                self._requests.labels(op, verdict)
        for op in (*TIMED_OPS, OTHER):
            self._latency.labels(op)
        for kind in (*QUERY_KINDS, OTHER):
            for outcome in QUERY_OUTCOMES:
                self._queries.labels(kind, outcome)
        for watch in (*WATCH_KINDS, OTHER):
            self._watch_events.labels(watch)

    # --- what the daemon calls -------------------------------------------------

    def set_domains(self, count: int) -> None:
        self._domains.set(count)

    def set_host_regions(self, host: str, count: int) -> None:
        self._host_regions.labels(host).set(count)

    def forget_host(self, host: str) -> None:
        """Drop a peer's series after a reload removed it from the configuration."""
        try:
            self._host_regions.remove(host)
        except KeyError:
            pass

    def setup_done(self, status: str, seconds: float | None = None) -> None:
        """A setup answer was written; ``seconds`` from request to answer, if timed."""
        self._setups.labels(bounded(status, SETUP_STATUSES)).inc()
        if seconds is not None:
            self._latency.labels("setup").observe(seconds)

    def conflict(self, kind: str, action: str) -> None:
        self._conflicts.labels(bounded(kind, CONFLICT_KINDS), bounded(action, CONFLICT_ACTIONS)).inc()

    def request_done(self, op: str, verdict: str, seconds: float) -> None:
        """A toolstack request was answered (``fail`` also for a malformed one)."""
        label = bounded(op, REQUEST_OPS)
        # A verdict is ok, warn or fail by the schema; anything else is a bug
        # upstream, counted as the safe answer rather than as a new series.
        self._requests.labels(label, verdict if verdict in VERDICTS else "fail").inc()
        self._latency.labels(label).observe(seconds)

    def guest_query(self, kind: str, outcome: str) -> None:
        self._queries.labels(bounded(kind, QUERY_KINDS), outcome if outcome in QUERY_OUTCOMES else "error").inc()

    def watch_event(self, watch: str) -> None:
        self._watch_events.labels(bounded(watch, WATCH_KINDS)).inc()

    def reconnected(self) -> None:
        self._reconnects.inc()

    # --- exposition ------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text format of every metric, as ``/metrics`` serves it."""
        return generate_latest(self.registry)

    async def http_route(self) -> tuple[int, str, bytes]:
        """``/metrics`` as an :mod:`rmrrd.edges.http_server` route."""
        return 200, CONTENT_TYPE, self.render()
