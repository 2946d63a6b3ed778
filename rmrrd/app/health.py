"""What the running service tells its watchers about itself, kept true in one place.

Three watchers ask the same question, "is rmrrd serving, and if not, why?": systemd
(``STATUS=`` and the reload protocol, :mod:`rmrrd.edges.sdnotify`), a probe or a person
(``/healthz``) and Prometheus (the connection and reload metrics).  Each event that
changes the answer (ready, xenstore lost, a reconnect attempt failed, xenstore back,
a reload begun and done, stopping) is one call here, which updates all three at
once, so they cannot disagree.

Readiness is not liveness: ``/healthz`` answers 503 with the reasons while rmrrd is
starting, stopping, without xenstore, or running a configuration older than its
file (the last reload failed); ``/livez`` answers 200 whenever the event loop can
answer at all.  The watchdog (:func:`rmrrd.edges.sdnotify.watchdog_loop`) is liveness too.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import trio

from rmrrd.edges.http_server import Request
from rmrrd.edges.metrics import Metrics
from rmrrd.edges.reload_status import ReloadOutcome, write_outcome
from rmrrd.edges.sdnotify import Notifier

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"
#: How much of an error message ``STATUS=`` carries: it is one line of ``systemctl
#: status``; ``/healthz`` and the journal have all of it.
STATUS_DETAIL_CHARS = 160
#: How often ``STATUS=`` is brought up to date with what is served (the domain count).
STATUS_REFRESH_SECONDS = 5.0


def _clock() -> str:
    return time.strftime("%H:%M:%S")


def _cut(text: str, chars: int | None) -> str:
    return text if chars is None or len(text) <= chars else text[:chars - 3] + "..."


class Health:
    """The service's state as its watchers see it; the daemon reports events to it."""

    def __init__(self, notifier: Notifier, metrics: Metrics, *, reload_result: Path | None = None) -> None:
        self._notifier = notifier
        self._metrics = metrics
        self._reload_result = reload_result
        self._summary: Callable[[], str] = lambda: "starting"
        self._phase = "starting"
        self._lost: tuple[str, str] | None = None  # since when xenstore is unreachable, and why
        self._attempts = 0
        self._reload_error: tuple[str, str] | None = None  # when the last reload failed, and why
        self._last_status = ""
        metrics.config_loaded(True, time.time())

    # --- events --------------------------------------------------------------

    def serving(self, summary: Callable[[], str]) -> None:
        """Start-up is complete: ``summary`` tells what is served (domains, regions, peers)."""
        self._summary = summary
        self._phase = "serving"
        self._metrics.xenstore_connected()
        self._last_status = self.status()
        self._notifier.ready(self._last_status)

    def xenstore_lost(self, reason: str) -> None:
        self._lost = (_clock(), reason)
        self._attempts = 0
        self._metrics.xenstore_lost()
        self.refresh_status()

    def xenstore_attempt_failed(self, reason: str) -> None:
        self._attempts += 1
        self._metrics.xenstore_connect_failed()
        self.refresh_status()

    def xenstore_back(self) -> None:
        self._lost = None
        self._metrics.reconnected()
        self.refresh_status()

    def reload_begins(self) -> int:
        """SIGHUP received; returns the reload's start on CLOCK_MONOTONIC (µs)."""
        return self._notifier.reloading("reloading configuration and inventories")

    def reload_done(self, began_usec: int, error: str | None) -> None:
        """The reload ended: applied (``error`` None) or refused with the old configuration kept."""
        self._reload_error = None if error is None else (_clock(), error)
        self._metrics.config_loaded(error is None, time.time())
        self._last_status = self.status()
        # READY=1 ends the reload for systemd, whatever its outcome: STATUS= says it.
        self._notifier.ready(self._last_status)
        if self._reload_result is not None:
            try:
                write_outcome(self._reload_result, ReloadOutcome(os.getpid(), began_usec, error, self._last_status))
            except OSError as exc:
                log.warning("cannot record the reload's outcome in %s: %s", self._reload_result, exc)

    def stopping(self) -> None:
        self._phase = "stopping"
        self._notifier.stopping()
        self.refresh_status()

    # --- what the watchers read ----------------------------------------------

    def problems(self, detail_chars: int | None = None) -> list[str]:
        """Why rmrrd is not ready, one reason each; empty when it serves normally.

        Each reason is what is wrong, then the detail (an error message, cut to
        ``detail_chars`` when given)."""
        reasons = []
        if self._phase != "serving":
            reasons.append(self._phase if self._phase == "starting" else "stopping: finishing in-flight answers")
        if self._lost is not None:
            since, why = self._lost
            tries = f", {self._attempts} reconnect attempts failed" if self._attempts else ""
            reasons.append(f"xenstore unreachable since {since}{tries}, nothing is answered until it is back: "
                           f"{_cut(why, detail_chars)}")
        if self._reload_error is not None:
            when, why = self._reload_error
            reasons.append(f"reload failed at {when}, running the configuration loaded before: "
                           f"{_cut(why, detail_chars)}")
        return reasons

    def status(self) -> str:
        """The one line ``systemctl status`` shows: what is wrong first, then what is served."""
        parts = self.problems(STATUS_DETAIL_CHARS)
        if self._phase == "serving":
            parts.append(self._summary())
        return "; ".join(parts)

    def refresh_status(self) -> None:
        """Send ``STATUS=`` if it changed (the domain count, a state): called on events and
        periodically, so ``systemctl status`` is never older than a few seconds."""
        if self._phase == "starting":
            return  # READY=1 carries the first STATUS=
        status = self.status()
        if status != self._last_status:
            self._last_status = status
            self._notifier.status(status)

    async def refresh_loop(self, interval: float = STATUS_REFRESH_SECONDS) -> None:
        """Keep ``STATUS=`` current until cancelled (events update it at once anyway)."""
        while True:
            await trio.sleep(interval)
            self.refresh_status()

    async def readiness_route(self, request: Request) -> tuple[int, str, bytes]:
        """``/healthz``: 200 ``ok`` while serving normally, else 503 with one reason a line."""
        reasons = self.problems()
        if not reasons:
            return 200, TEXT, b"ok\n"
        return 503, TEXT, "".join(f"{reason}\n" for reason in reasons).encode()

    async def liveness_route(self, request: Request) -> tuple[int, str, bytes]:
        """``/livez``: the event loop answers, whatever the state (a stuck loop answers nothing)."""
        return 200, TEXT, f"alive; {self._phase}\n".encode()
