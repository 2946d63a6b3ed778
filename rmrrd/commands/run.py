"""``rmrrd run``: the daemon in the foreground, as systemd runs it.

``--simulate`` starts the embedded simulated xenstored on ``xenstore.path`` (as
``xenstore.embedded: true`` does), so the daemon can be seen working on a machine
without Xen.  ``--check-config`` loads the configuration and every inventory it
names, reports, and exits: 0 when all is valid, 2 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

import trio

from rmrrd.cli import EXIT_USAGE
from rmrrd.config import DEFAULT_CONFIG_PATH, Config, default_config, load_config
from rmrrd.gc_pauses import short_gc_pauses
from rmrrd.logs import LEVELS, setup_logging
from rmrrd.peers import load_peers
from rmrrd.xenstore.client_conn import ConnectionLost

from rmrrd.daemon.service import run_service
from rmrrd.host_inventory import load_host

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("run", help="run the daemon in the foreground")
    parser.add_argument("--config", type=Path,
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH} if it exists, else built-in defaults)")
    parser.add_argument("--simulate", action="store_true",
                        help="start the embedded simulated xenstored on xenstore.path")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and inventories, then exit")
    parser.add_argument("--log-level", choices=LEVELS, help="override log.level of the configuration")
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> tuple[Config, Path | None]:
    """The configuration named on the command line, or the default file, or defaults."""
    path: Path | None = args.config
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    return (load_config(path) if path is not None else default_config()), path


def run(args: argparse.Namespace) -> int:
    config, path = config_from_args(args)
    level = args.log_level or config.log.level
    setup_logging(level)
    if args.check_config:
        return check_config(config, path)
    try:
        with short_gc_pauses():
            trio.run(partial(run_service, config, simulate=args.simulate, config_path=path,
                             log_level=args.log_level))
    except ConnectionLost as exc:
        print(f"rmrrd run: cannot reach xenstore at {config.xenstore.path}: {exc}", file=sys.stderr)
        return 1
    return 0


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
