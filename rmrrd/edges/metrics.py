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

Beside rmrrd's own metrics the registry carries client_python's process, platform
and garbage-collector collectors (``process_*``, ``python_info``, ``python_gc_*``):
the daemon changes how the collector runs (:mod:`rmrrd.edges.gc_pauses`), so its effect
must be visible.  What is served leaves out client_python's ``*_created`` samples
(a creation time beside every counter and histogram, a third of the samples and
no question an operator asks), and is OpenMetrics when the scraper prefers it.
"""

from __future__ import annotations

import gc
import platform
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (CollectorRegistry, Counter, GCCollector, Gauge, Histogram, Info,
                               PlatformCollector, ProcessCollector)
import prometheus_client.openmetrics.exposition as openmetrics
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from rmrrd import __version__
from rmrrd.core.guest_layout import FIXED_AREA_KINDS
from rmrrd.core.planner import SHARED_RMRR
from rmrrd.edges.http_server import Request

OTHER = "other"
#: The classic text format.  Recent client_python labels it ``version=1.0.0`` (UTF-8
#: metric names); every rmrrd name is a legacy name, so the body is exactly 0.0.4,
#: which every Prometheus since 2.0 and promtool parse.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: OpenMetrics, in the version this client_python writes (0.0.1 or 1.0.0).
OPENMETRICS_CONTENT_TYPE: str = openmetrics.CONTENT_TYPE_LATEST
#: client_python's OpenMetrics writer, which carries no type hints.
_openmetrics_text: Callable[[Collector], bytes] = openmetrics.generate_latest

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
#: factor over the whole measured range; 20 ms (the performance target), 100 ms (the
#: RmrrdSlow alert, monitoring/rmrrd.rules.yml) and 5 s (the bound for a burst of 1000
#: setups) are edges.  Below 2 ms only 0.5 and 1 ms: no
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
        self._connected = Gauge(
            "rmrrd_xenstore_connected", "1 while rmrrd is connected to xenstored, 0 while it is not.", registry=r
        )
        self._disconnections = Counter(
            "rmrrd_xenstore_disconnections", "Times the xenstore connection was lost.", registry=r
        )
        self._connect_failures = Counter(
            "rmrrd_xenstore_connect_failures", "Attempts to reconnect to xenstored that failed.", registry=r
        )
        # Named as Prometheus names its own, so one alert or panel reads both.
        self._reload_ok = Gauge(
            "rmrrd_config_last_reload_successful",
            "1 if the last configuration load (start or reload) succeeded, 0 if it failed.",
            registry=r,
        )
        self._reload_time = Gauge(
            "rmrrd_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start or reload).",
            registry=r,
        )
        Info("rmrrd_build", "rmrrd version and Python it runs on.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        Gauge(
            "rmrrd_gc_frozen_objects",
            "Objects the garbage collector's full passes skip (rmrrd.edges.gc_pauses freezes survivors).",
            registry=r,
        ).set_function(gc.get_freeze_count)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
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

    def xenstore_connected(self) -> None:
        """The first connection is up."""
        self._connected.set(1)

    def xenstore_lost(self) -> None:
        """The connection dropped; the client is reconnecting."""
        self._connected.set(0)
        self._disconnections.inc()

    def xenstore_connect_failed(self) -> None:
        """One attempt to reconnect failed; the client tries again later."""
        self._connect_failures.inc()

    def reconnected(self) -> None:
        """Connected again, watches restored."""
        self._connected.set(1)
        self._reconnects.inc()

    def config_loaded(self, ok: bool, unix_time: float) -> None:
        """A configuration load (the start's, or a reload) succeeded or failed at ``unix_time``."""
        self._reload_ok.set(1 if ok else 0)
        if ok:
            self._reload_time.set(unix_time)

    # --- exposition ------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[str, bytes]:
        """Every metric as ``/metrics`` serves it to a client sending ``accept``: its
        content type and body, OpenMetrics if the client prefers that to plain text."""
        exposed = _WithoutCreated(self.registry)
        if prefers_openmetrics(accept):
            return OPENMETRICS_CONTENT_TYPE, _openmetrics_text(exposed)
        return CONTENT_TYPE, generate_latest(exposed)

    async def http_route(self, request: Request) -> tuple[int, str, bytes]:
        """``/metrics`` as an :mod:`rmrrd.edges.http_server` route."""
        content_type, body = self.render(request.headers.get("accept", ""))
        return 200, content_type, body


class _WithoutCreated:
    """A registry's families without client_python's ``<name>_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            created = family.name + "_created"
            if any(sample.name == created for sample in family.samples):
                trimmed = Metric(family.name, family.documentation, family.type, family.unit)
                trimmed.samples = [sample for sample in family.samples if sample.name != created]
                family = trimmed
            yield family


def prefers_openmetrics(accept: str) -> bool:
    """Whether an HTTP ``Accept`` header ranks OpenMetrics above the plain text format.

    Prometheus sends ``application/openmetrics-text;version=...;q=0.875,
    text/plain;version=0.0.4;q=0.5,*/*;q=0.1`` (the q values vary by version); curl
    sends ``*/*``, which gets plain text.  A tie goes to plain text, the older format.
    """
    best = {"openmetrics": 0.0, "text": 0.0}
    for media_range in accept.split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        kind = kind.lower()
        if kind == "application/openmetrics-text":
            best["openmetrics"] = max(best["openmetrics"], quality)
        elif kind in ("text/plain", "text/*", "*/*"):
            best["text"] = max(best["text"], quality)
    return best["openmetrics"] > best["text"]
