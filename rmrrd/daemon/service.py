"""``rmrrd run``: one trio nursery owning every long-lived task.

Start-up order matters to systemd and to tests: inventories are loaded, the
embedded xenstored (if any) and the HTTP listener are bound, xenstore is connected,
watches are registered and a first reconciliation has answered everything pending;
only then is READY=1 sent and ``task_status.started`` called.  From then on
:class:`rmrrd.daemon.health.Health` keeps ``STATUS=``, ``/healthz`` and the
connection and reload metrics true to what happens.  SIGTERM/SIGINT stop
the watches and let in-flight handlers and setups finish, all within one deadline
``limits.shutdown_grace_seconds`` after the signal (plus 1 s to write ``status =
stopped``), and return; SIGHUP reloads the configuration and inventories, keeping
the old ones if the new ones are invalid and logging each change
(:mod:`rmrrd.daemon.service_reload`), inside systemd's ``RELOADING=1`` ...
``READY=1``.  docs/operations.md describes all of it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from rmrrd import __version__
from rmrrd.config import Config, load_config
from rmrrd.errors import InputError
from rmrrd.logs import setup_logging
from rmrrd.host_inventory import load_host
from rmrrd.http_server import Request, serve_http
from rmrrd.inventory import Inventory
from rmrrd.inventory_yaml import inventory_to_json
from rmrrd.metrics import Metrics
from rmrrd.peers import load_peers
from rmrrd.reload_status import result_path
from rmrrd.schema import LIBXL_ROOT, REQUEST_ROOT, STATUS_KEY, classify_libxl_path, is_valid_id
from rmrrd.sdnotify import Notifier, watchdog_loop
from rmrrd.xenstore.client import XenstoreClient, open_xenstore
from rmrrd.xenstore.server import serve_xenstored
from rmrrd.xenstore.wire import XenstoreError

from rmrrd.daemon.context import Context
from rmrrd.daemon.domains import Domains
from rmrrd.daemon.health import Health
from rmrrd.daemon.service_reload import config_changes, inventory_changes, peer_changes
from rmrrd.daemon.state import Registry
from rmrrd.daemon.toolstack import ToolstackHandler
from rmrrd.daemon.xsutil import rm_quietly

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


class Daemon:
    """The watches and handlers, over one connected xenstore client."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.toolstack = ToolstackHandler(ctx)
        self.ready = trio.Event()
        self._watchers = trio.CancelScope()
        #: When in-flight work must be done by; set by :meth:`stop`.
        self._deadline = float("inf")

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop`; then let in-flight setups finish, within the grace."""
        async with trio.open_nursery() as work:
            self.domains = Domains(self.ctx, work)
            with self._watchers:
                async with trio.open_nursery() as watchers:
                    await watchers.start(self._watch_libxl)
                    await watchers.start(self._watch_requests)
                    await watchers.start(self._watch_special, "@introduceDomain", self.domains.introduced)
                    await watchers.start(self._watch_special, "@releaseDomain", self.domains.released)
                    await self.ready.wait()
                    task_status.started()
            # One deadline for the whole shutdown, fixed when it began: a shielded
            # handler still running (see _guarded) and the setups after it share
            # it, so SIGTERM to exit stays within the grace, not a multiple of it.
            with trio.move_on_at(self._deadline) as grace:
                await self.domains.queue.wait_idle()
            if grace.cancelled_caught:
                log.warning("shutdown: domain setups still running after %.1f s, abandoned; "
                            "the next start answers them", self.ctx.config.limits.shutdown_grace_seconds)
            work.cancel_scope.cancel()

    def stop(self) -> None:
        """Stop taking new events; :meth:`serve` returns once in-flight work is done."""
        self._deadline = trio.current_time() + self.ctx.config.limits.shutdown_grace_seconds
        self._watchers.cancel()

    async def _watch_libxl(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.ctx.xs.watch(LIBXL_ROOT) as events:
            task_status.started()
            async for event in events:
                self.ctx.metrics.watch_event("setup")
                what = classify_libxl_path(event.path)
                if what is None:
                    continue
                if what.domid is None:
                    # The initial event, again after every reconnect: reconcile.
                    await self._guarded("reconcile", self.domains.reconcile)
                    self.ready.set()
                elif what.request or what.domain_node:
                    self.domains.changed(what.domid)

    async def _watch_requests(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.ctx.xs.watch(REQUEST_ROOT) as events:
            task_status.started()
            # Checks need the domains' plans: wait for the first reconciliation.
            await self.ready.wait()
            async for event in events:
                self.ctx.metrics.watch_event("request")
                if event.path == REQUEST_ROOT:
                    await self._guarded("toolstack requests", self.toolstack.scan)
                elif event.path.startswith(REQUEST_ROOT + "/"):
                    req_id = event.path[len(REQUEST_ROOT) + 1:].split("/", 1)[0]
                    if is_valid_id(req_id):
                        await self._guarded(f"request {req_id}", partial(self.toolstack.handle, req_id))
                    else:
                        await rm_quietly(self.ctx.xs, f"{REQUEST_ROOT}/{req_id}")
                        log.warning("request %r: invalid id, removed unanswered", req_id[:40])

    async def _watch_special(self, path: str, handler: Callable[[], Awaitable[None]], *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.ctx.xs.watch(path) as events:
            task_status.started()
            async for _ in events:
                self.ctx.metrics.watch_event("release" if path == "@releaseDomain" else "introduce")
                await self._guarded(path, handler)

    async def _guarded(self, what: str, handler: Callable[[], Awaitable[None]]) -> None:
        """Run a handler to completion even during shutdown, and contain its failure.

        A handler that fails (xenstore dropped mid-way, say) is logged; the next
        event or the reconcile after the reconnect does the work again.
        """
        # Started before stop() at the latest, so this ends by stop()'s deadline too.
        with trio.move_on_after(self.ctx.config.limits.shutdown_grace_seconds) as scope:
            scope.shield = True
            try:
                await handler()
            except Exception as exc:
                log.error("%s failed: %s: %s", what, type(exc).__name__, exc)
                log.debug("%s failed", what, exc_info=True)


async def reload(ctx: Context, config_path: Path | None, log_level: str | None = None,
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
    _count_regions(ctx)
    return None


def _count_regions(ctx: Context) -> None:
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
    ctx_box: list[Context] = []

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
                registry = Registry(query_rate=config.limits.query_rate, query_burst=config.limits.query_burst,
                                    max_allocations=config.limits.max_allocations)
                ctx = Context(xs, config, host, peers, registry, metrics)
                ctx_box.append(ctx)
                _count_regions(ctx)
                daemon = Daemon(ctx)
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


def _status_line(ctx: Context) -> str:
    """What ``systemctl status`` shows: the scale of what the daemon serves."""
    return (f"serving {len(ctx.registry)} domains; host {ctx.host.host} with {len(ctx.host.regions)} "
            f"regions, {len(ctx.peers)} peers")


async def _mark_stopped(xs: XenstoreClient) -> None:
    """``/tool/rmrrd/status`` = ``stopped``, best effort: xenstore may be gone too."""
    with trio.move_on_after(1) as scope:
        scope.shield = True
        try:
            await xs.write(STATUS_KEY, "stopped")
        except XenstoreError as exc:
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
