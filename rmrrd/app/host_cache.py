"""This host's inventory (and SeaBIOS size) for the checks made without the daemon, kept
as JSON between runs: the hooks' (:mod:`rmrrd.hooks.stock`) and ``rmrrd check --xl-config``.

Which host: :func:`this_host`, the configuration ``$RMRRD_CONFIG``, else
``/etc/rmrrd/rmrrd.yaml`` if it exists, else the built-in defaults (this host's DMAR
and IVRS tables), as the daemon reads it; the cache lives in ``$RMRRD_RUNTIME_DIR``,
else rmrrd's runtime directory ``/run/rmrrd``.

Loading it the daemon's way means the configuration (YAML), the inventory sources
(firmware tables or YAML files) and their parsers: tens of milliseconds that a hook
would pay on every domain start.  The first run pays them and writes the inventory,
with the files it came from, to ``host-inventory.json`` in rmrrd's runtime directory
(``/run/rmrrd``: a tmpfs, and the unit's ``RuntimeDirectory``, so a reboot or a
daemon stop starts afresh); a later run
uses it as long as the configuration file and every one of those files are unchanged
(same inode, size and modification time).  The cache holds nothing that is not
derived from those files, so a stale or broken cache is only ever a reason to load
again; a directory that cannot be written means no cache, not an error.

Not followed: PCI bus numbers read from sysfs to resolve DMAR device scopes (they
change only with a PCI rescan; ``rm`` the cache file, or restart, after one).
"""

from __future__ import annotations

import json
import os
from typing import Any

from rmrrd import inputs
from rmrrd.errors import InputError
from rmrrd.core.inventory import Inventory
from rmrrd.core.inventory_yaml import inventory_from_json, inventory_to_json

CACHE_NAME = "host-inventory.json"
FORMAT = 2
DEFAULT_CONFIG = "/etc/rmrrd/rmrrd.yaml"
RUNTIME_DIR = "/run/rmrrd"


def _stat(path: str) -> list[Any]:
    """What identifies a file's content without reading it; ``[path]`` for a missing one."""
    try:
        st = os.stat(path)
    except OSError:
        return [path]
    return [path, st.st_ino, st.st_size, st.st_mtime_ns]


def _load(config_path: str | None) -> tuple[Inventory, int, list[str]]:
    """The inventory the daemon's way, ``defaults.seabios_size``, and the files they depend on."""
    from pathlib import Path

    from rmrrd.edges.config import default_config, load_config
    from rmrrd.edges.host_inventory import TABLE_SOURCES, load_host

    config = load_config(Path(config_path)) if config_path is not None else default_config()
    acpi_dir = config.host.sysfs_root / "sys/firmware/acpi/tables"
    depends = [str(acpi_dir / TABLE_SOURCES[str(source)]) if str(source) in TABLE_SOURCES else str(source)
               for source in config.host.sources]
    return load_host(config), config.defaults.seabios_size, depends


def host_inventory(config_path: str | None, runtime_dir: str) -> tuple[Inventory, int]:
    """This host's inventory and SeaBIOS size (KiB), from the cache when its files are unchanged.

    Raises :class:`InputError` as loading the configuration and inventory does.
    """
    cache = os.path.join(runtime_dir, CACHE_NAME)
    config_key = _stat(config_path) if config_path is not None else ["built-in defaults"]
    try:
        saved = inputs.parse_json(inputs.read_bytes(cache, inputs.INVENTORY, "host cache"), cache)
        if (saved["format"] == FORMAT and saved["config"] == config_key
                and all(_stat(entry[0]) == entry for entry in saved["depends"])):
            return inventory_from_json(saved["inventory"], cache), int(saved["seabios_size"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, InputError):
        pass  # no cache, or not one we wrote for these files: load
    inventory, seabios_size, depends = _load(config_path)
    record = {"format": FORMAT, "config": config_key, "depends": [_stat(path) for path in depends],
              "inventory": inventory_to_json(inventory), "seabios_size": seabios_size}
    try:
        os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
        partial = os.path.join(runtime_dir, f".{CACHE_NAME}.{os.getpid()}")
        with open(partial, "w", encoding="utf-8") as file:
            json.dump(record, file)
        os.replace(partial, cache)
    except OSError:
        pass  # a read-only or missing runtime directory: every run loads
    return inventory, seabios_size


def this_host() -> tuple[Inventory, int]:
    """This host's inventory and SeaBIOS size (KiB) from the configuration the daemon
    would read here (module docstring), through the cache.

    Raises :class:`InputError` as loading the configuration and inventory does.
    """
    config = os.environ.get("RMRRD_CONFIG") or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    return host_inventory(config, os.environ.get("RMRRD_RUNTIME_DIR") or RUNTIME_DIR)
