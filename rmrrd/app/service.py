"""``rmrrd run``: one trio nursery owning every long-lived task.

Start-up order matters to systemd and to tests: inventories are loaded, the
embedded xenstored (if any) and the HTTP listener are bound, xenstore is connected,
watches are registered and a first reconciliation has answered everything pending;
only then is READY=1 sent and ``task_status.started`` called.  From then on
:class:`rmrrd.app.health.Health` keeps ``STATUS=``, ``/healthz`` and the
connection and reload metrics true to what happens.  SIGTERM/SIGINT stop
the watches and let in-flight handlers and setups finish, all within one deadline
``limits.shutdown_grace_seconds`` after the signal (plus 1 s to write ``status =
stopped``), and return; SIGHUP reloads the configuration and inventories, keeping
the old ones if the new ones are invalid and logging each change
(:mod:`rmrrd.app.reload`), inside systemd's ``RELOADING=1`` ... ``READY=1``.
docs/operations.md describes all of it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from rmrrd import __version__
from rmrrd.core.inventory import Inventory
from rmrrd.core.inventory_yaml import inventory_to_json
from rmrrd.edges.config import Config, load_config
from rmrrd.edges.host_inventory import load_host
from rmrrd.edges.http_server import Request, serve_http
from rmrrd.edges.logs import setup_logging
from rmrrd.edges.metrics import Metrics
from rmrrd.edges.peers import load_peers
from rmrrd.edges.reload_status import result_path
from rmrrd.edges.sdnotify import Notifier, watchdog_loop
from rmrrd.errors import InputError, PeerError, TransportError
from rmrrd.protocol import STATUS_KEY, STOPPED
from rmrrd.xenstore.client import XenstoreClient, open_xenstore
from rmrrd.xenstore.server import serve_xenstored

from rmrrd.daemon.lifecycle import Limits
from rmrrd.daemon.settings import Settings
from rmrrd.daemon.watches import Daemon

from rmrrd.app.health import Health
from rmrrd.app.reload import config_changes, inventory_changes, peer_changes

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServiceHandle:
    """What ``run_service`` reports once it serves: where to reach it."""

    http_port: int
    xenstore_path: Path


async def load_peer_inventories(config: Config, previous: dict[str, Inventory]) -> dict[str, Inventory]:
    """The peers' inventories; a peer that fails to load keeps its previous one.

    ``load_peers`` has logged each problem already; here only what is kept is said.
    """
    loaded = await load_peers(list(config.peers), exclude=config.host.name)
    peers = dict(loaded.peers)
    if loaded.problems:
        for name in sorted(set(previous) - set(peers)):
            peers[name] = previous[name]
            log.warning("peer %s: keeping the inventory loaded before", name)
    return peers


def settings_from(config: Config, host: Inventory, peers: dict[str, Inventory]) -> Settings:
    """What the daemon answers with, from the configuration and the inventories."""
    limits = config.limits
    return Settings(config.defaults, host, peers, limits.max_query_length, limits.results_kept,
                    limits.shutdown_grace_seconds, config.host.libxl_dir)


def limits_from(config: Config) -> Limits:
    """The per-domain limits, bound at start (``RESTART_KEYS`` in :mod:`rmrrd.app.reload`)."""
    limits = config.limits
    return Limits(limits.query_rate, limits.query_burst, limits.max_allocations)


@dataclass
class Running:
    """What the running service was started or last reloaded with."""

    config: Config
    host: Inventory
    peers: dict[str, Inventory]
    metrics: Metrics
    daemon: Daemon

    def apply(self) -> None:
        """Hand the daemon the settings of the current configuration and inventories."""
        self.daemon.domains.settings = settings_from(self.config, self.host, self.peers)


async def reload(ctx: Running, config_path: Path | None, log_level: str | None = None,
                 simulate: bool = False) -> str | None:
    """SIGHUP: read the configuration and inventories again; keep the old on error.

    Nothing is half-applied: the new configuration, host inventory and peers are all
    read first and swapped in together, or none is.  ``log_level`` is the command
    line's ``--log-level``, which outranks ``log.level`` in the file, and ``simulate``
    its ``--simulate``, which outranks ``xenstore.embedded``.  One log line
    per change says what the reload did.  Returns why it was refused, or None when
    it applied.
    """
    try:
        config = load_config(config_path, embedded=simulate) if config_path is not None else ctx.config
        host = load_host(config)
        peers = await load_peer_inventories(config, ctx.peers)
    except InputError as exc:
        # ConfigError lists one problem per line; the journal wants one line.
        error = str(exc).replace("\n", "; ")
        log.error("reload failed, keeping the running configuration: %s", error)
        return error
    changes = [str(change) for change in config_changes(ctx.config, config)]
    changes += [f"host {host.host}: {line}" for line in inventory_changes(ctx.host, host)]
    changes += peer_changes(ctx.peers, peers)
    for line in changes:
        log.info("reload: %s", line)
    log.info("reload done from %s: %d changes", config_path or "built-in defaults", len(changes))
    if log_level is None and config.log.level != ctx.config.log.level:
        setup_logging(config.log.level)
    for name in set(ctx.peers) - set(peers):
        ctx.metrics.forget_host(name)
    if host.host != ctx.host.host:
        ctx.metrics.forget_host(ctx.host.host)
    ctx.config, ctx.host, ctx.peers = config, host, peers
    ctx.apply()
    _count_regions(ctx)
    return None


def _count_regions(ctx: Running) -> None:
    ctx.metrics.set_host_regions(ctx.host.host, len(ctx.host.regions))
    for name, inventory in ctx.peers.items():
        ctx.metrics.set_host_regions(name, len(inventory.regions))


async def run_service(config: Config, *, simulate: bool = False, config_path: Path | None = None,
                      log_level: str | None = None, notifier: Notifier | None = None,
                      install_signals: bool = True,
                      task_status: trio.TaskStatus[ServiceHandle] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon until SIGTERM/SIGINT (or until cancelled).

    ``config_path`` is the file SIGHUP re-reads (None: only the inventories are
    re-read); ``log_level`` is a ``--log-level`` and ``simulate`` a ``--simulate``
    that outrank the file on reload (``config`` has them applied already).
    """
    notifier = notifier or Notifier.from_env()
    host = load_host(config)
    peers = await load_peer_inventories(config, {})
    metrics = Metrics()
    health = Health(notifier, metrics, reload_result=result_path(os.environ))
    ctx_box: list[Running] = []

    async def inventory_route(request: Request) -> tuple[int, str, bytes]:
        current = ctx_box[0].host if ctx_box else host
        return 200, "application/json", json.dumps(inventory_to_json(current)).encode() + b"\n"

    async def on_reconnect() -> None:
        # The client logs the reconnect itself; the reconcile follows from the
        # watches' initial events, which it re-registers.
        health.xenstore_back()

    routes = {"/metrics": metrics.http_route, "/inventory": inventory_route,
              "/healthz": health.readiness_route, "/livez": health.liveness_route}
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) if install_signals \
            else _no_signals() as signals:
        async with trio.open_nursery() as root:
            xs_path = config.xenstore.path
            if config.xenstore.embedded:
                await root.start(partial(serve_xenstored, xs_path, persist=config.xenstore.persist))
            port = await root.start(partial(serve_http, config.metrics.host, config.metrics.port, routes))
            async with open_xenstore(str(xs_path), on_reconnect=on_reconnect, on_lost=health.xenstore_lost,
                                     on_connect_failed=health.xenstore_attempt_failed) as xs:
                daemon = Daemon(xs, settings_from(config, host, peers), limits_from(config), metrics)
                ctx = Running(config, host, peers, metrics, daemon)
                ctx_box.append(ctx)
                _count_regions(ctx)
                async with trio.open_nursery() as serving:
                    await serving.start(daemon.serve)
                    health.serving(partial(_status_line, ctx))
                    root.start_soon(watchdog_loop, notifier)
                    root.start_soon(health.refresh_loop)
                    log.info("rmrrd %s ready: %s", __version__, _status_line(ctx))
                    task_status.started(ServiceHandle(port, Path(xs_path)))
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            began = health.reload_begins()
                            health.reload_done(began, await reload(ctx, config_path, log_level, simulate))
                            continue
                        log.info("signal %s: stopping within %.1f s", signal.Signals(signum).name,
                                 ctx.config.limits.shutdown_grace_seconds)
                        break
                    health.stopping()
                    daemon.stop()
                await _mark_stopped(xs)
            root.cancel_scope.cancel()
    log.info("rmrrd stopped")


def _status_line(ctx: Running) -> str:
    """What ``systemctl status`` shows: the scale of what the daemon serves."""
    return (f"serving {len(ctx.daemon)} domains; host {ctx.host.host} with {len(ctx.host.regions)} "
            f"regions, {len(ctx.peers)} peers")


async def _mark_stopped(xs: XenstoreClient) -> None:
    """``/tool/rmrrd/status`` = ``stopped``, best effort: xenstore may be gone too."""
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await xs.write(STATUS_KEY, STOPPED)
        except (PeerError, TransportError) as exc:
            log.warning("cannot mark %s stopped: %s", STATUS_KEY, exc)


class _no_signals:
    """A signal receiver that never receives: for running the service in-process."""

    def __enter__(self) -> _no_signals:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> _no_signals:
        return self

    async def __anext__(self) -> int:
        await trio.sleep_forever()
        raise StopAsyncIteration
