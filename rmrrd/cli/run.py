"""``rmrrd run``: the daemon in the foreground, as systemd runs it.

``--simulate`` starts the embedded simulated xenstored (as ``xenstore.embedded:
true`` does), so the daemon can be seen working on a machine without Xen; with no
``xenstore.path`` configured it listens on a socket of rmrrd's own
(:mod:`rmrrd.edges.runtime_paths`), never on Xen's.  ``--check-config`` loads the
configuration and every inventory it names, reports, and exits: 0 when all is
valid, 2 otherwise.

Every way the daemon can fail to start ends in one log line naming the cause (with
journald's ``<3>`` under systemd) and an exit status of :data:`EXIT_STATUSES`; an
unforeseen exception, at start or later, is logged at ``<2>`` (critical) with its
traceback folded into that one journal entry.
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
from pathlib import Path
from typing import Any

import trio

from rmrrd.cli.exits import EXIT_USAGE, sole_cause
from rmrrd.edges.config import DEFAULT_CONFIG_PATH, Config, default_config, load_config
from rmrrd.errors import InputError, PeerError, TransportError
from rmrrd.edges.gc_pauses import short_gc_pauses
from rmrrd.edges.logs import LEVELS, setup_logging
from rmrrd.edges.peers import load_peers
from rmrrd.edges.runtime_paths import own_xenstored_socket, prepare_own_xenstored_socket

from rmrrd.app.service import run_service
from rmrrd.edges.host_inventory import load_host

log = logging.getLogger(__name__)

EXIT_UNAVAILABLE = 1
"""Could not start: xenstored unreachable, a port or socket taken or not permitted."""
EXIT_CRASHED = 70
"""An unforeseen error stopped the daemon (EX_SOFTWARE of sysexits.h): a bug."""
EXIT_STATUSES = {
    0: "stopped by SIGTERM or SIGINT; or --check-config found everything valid",
    EXIT_UNAVAILABLE: "could not start: xenstored unreachable, the metrics port in use, "
                      "no permission on a socket or port",
    EXIT_USAGE: "bad arguments, an invalid configuration, unreadable firmware tables or "
                "inventories, or a socket path another live socket holds",
    EXIT_CRASHED: "an unforeseen error (a bug): logged at critical with its traceback",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run the daemon in the foreground", exit_statuses=EXIT_STATUSES,
                                   description="Run the daemon in the foreground, as systemd runs it: watch "
                                               "xenstore, answer domain setups, guest queries and toolstack "
                                               "checks, serve /metrics, /inventory and /healthz.")
    parser.add_argument("--config", type=Path,
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH} if it exists, else built-in defaults)")
    parser.add_argument("--simulate", action="store_true",
                        help="start the embedded simulated xenstored (on xenstore.path when the "
                             "configuration sets it, else on a socket of rmrrd's own)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and inventories, then exit")
    parser.add_argument("--log-level", choices=LEVELS, help="override log.level of the configuration")
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> tuple[Config, Path | None]:
    """The configuration named on the command line, or the default file, or defaults."""
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is None:
        return default_config(embedded=args.simulate), None
    return load_config(path, embedded=args.simulate), path


def run(args: argparse.Namespace) -> int:
    if args.check_config:
        # For a person at a terminal: an invalid file is reported by the CLI, one
        # problem a line, all of them at once.
        config, path = config_from_args(args)
        setup_logging(args.log_level or config.log.level)
        return check_config(config, path)
    # Logging first, so that even an invalid configuration is one journal line.
    setup_logging(args.log_level or "info")
    try:
        config, path = config_from_args(args)
    except InputError as exc:
        return _cannot_start(EXIT_USAGE, str(exc))
    setup_logging(args.log_level or config.log.level)
    started = False

    async def serve() -> None:
        nonlocal started
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_service, config, simulate=args.simulate, config_path=path,
                                        log_level=args.log_level))
            started = True

    try:
        if config.xenstore.embedded and config.xenstore.path == own_xenstored_socket():
            prepare_own_xenstored_socket()
        with short_gc_pauses():
            trio.run(serve)
    except Exception as exc:  # every way out is sorted by _failed: none escapes as a trace
        return _failed(sole_cause(exc), started)
    return 0


def _failed(exc: BaseException, started: bool) -> int:
    """Log why the daemon stopped, as one line; its exit status."""
    if not started:
        if isinstance(exc, InputError):
            return _cannot_start(EXIT_USAGE, str(exc))
        if isinstance(exc, (TransportError, PeerError)):
            # xenstored unreachable, or it refused what the daemon needs to start.
            return _cannot_start(EXIT_UNAVAILABLE, str(exc))
        if isinstance(exc, OSError):
            where = f"{exc.filename}: " if exc.filename else ""
            return _cannot_start(EXIT_UNAVAILABLE, f"{where}{exc.strerror or exc}")
    # A bug, at start or later: the traceback is what a developer needs, and the
    # journal formatter keeps it one entry (lines joined with " | ").
    log.critical("rmrrd %s: %s: %s", "crashed" if started else "failed to start", type(exc).__name__, exc,
                 exc_info=exc)
    return EXIT_CRASHED


def _cannot_start(status: int, cause: str) -> int:
    # A ConfigError lists one problem per line; the journal wants one entry.
    log.error("cannot start: %s", cause.replace("\n", "; "))
    return status


def check_config(config: Config, path: Path | None) -> int:
    """``--check-config``: load what the daemon would load at start, say what it found.

    An invalid file never gets here (``load_config`` raised, and the CLI exits 2 with
    file, line and key); a host inventory that cannot be built raises the same way.
    A peer that cannot be read is only a warning to the running daemon (it keeps
    serving with the others), but a configuration check exists to catch exactly
    that before a restart, so here it fails the check.
    """
    host = load_host(config)
    loaded = trio.run(partial(load_peers, list(config.peers), exclude=config.host.name))
    # load_peers has logged each problem on stderr, one line each.
    verdict = f"INVALID, {len(loaded.problems)} peer problems (logged above)" if loaded.problems else "valid"
    print(f"{path or 'built-in defaults'}: {verdict}; "
          f"xenstore {config.xenstore.path}{' (embedded)' if config.xenstore.embedded else ''}; "
          f"HTTP {config.metrics.listen}; host {host.host} with {len(host.regions)} regions; "
          f"{len(loaded.peers)} peers ({', '.join(sorted(loaded.peers)) or 'none'}); "
          f"log level {config.log.level}")
    return EXIT_USAGE if loaded.problems else 0
