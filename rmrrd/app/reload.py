"""What a SIGHUP reload changed, as one log line per change (pure).

An operator who runs ``systemctl reload rmrrd`` wants to see in the journal that the
edit took: which keys changed, which host regions came or went, which peers were
added or dropped, and which changes the running daemon cannot apply.  Those last
ones are bound at start-up: the xenstore connection and the embedded xenstored
(``xenstore.*``), the bound HTTP listener (``metrics.listen``), and the per-domain
limits baked into each domain's token bucket and allocation table when the
:class:`rmrrd.daemon.lifecycle.Limits` were fixed.  They are still swapped into the
configuration (so ``--check-config`` and the next restart agree with the file), but
the log says they wait for a restart instead of pretending they took effect.

Everything here compares values; the reload itself (reading files) is in
:mod:`rmrrd.app.service`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass

from rmrrd.edges.config import Config, MetricsConfig
from rmrrd.core.inventory import HostRegion, Inventory

#: Keys read once at start-up; a new value takes effect at the next restart.
RESTART_KEYS = frozenset({
    "xenstore.path", "xenstore.embedded", "xenstore.persist", "metrics.listen",
    "limits.query_rate", "limits.query_burst", "limits.max_allocations",
})


@dataclass(frozen=True, slots=True)
class ConfigChange:
    key: str
    old: object
    new: object

    @property
    def needs_restart(self) -> bool:
        return self.key in RESTART_KEYS

    def __str__(self) -> str:
        later = " (takes effect at the next restart)" if self.needs_restart else ""
        return f"{self.key}: {_show(self.old)} -> {_show(self.new)}{later}"


def flatten(config: Config) -> dict[str, object]:
    """``section.key`` to value, with the key names the file uses."""
    flat: dict[str, object] = {}
    for section in fields(config):
        if section.name == "source":
            continue  # where it came from, not a setting
        value = getattr(config, section.name)
        if isinstance(value, MetricsConfig):
            flat["metrics.listen"] = value.listen  # one key in the file, two fields
        elif is_dataclass(value):
            for key in fields(value):
                flat[f"{section.name}.{key.name}"] = getattr(value, key.name)
        else:
            flat[section.name] = value
    return flat


def config_changes(old: Config, new: Config) -> list[ConfigChange]:
    """Every key whose value differs, in the file's order."""
    before, after = flatten(old), flatten(new)
    return [ConfigChange(key, before[key], after[key]) for key in after if before.get(key) != after[key]]


def region_text(region: HostRegion) -> str:
    """A region and who uses it, as the log names it."""
    users = "all devices" if region.all_devices else " ".join(str(device) for device in region.devices)
    return f"{region.range} ({users or 'no device'})"


def inventory_changes(old: Inventory, new: Inventory) -> list[str]:
    """Regions removed and added between two inventories of one host, as log text."""
    before = {region_text(region) for region in old.regions}
    after = {region_text(region) for region in new.regions}
    return ([f"region {text} removed" for text in sorted(before - after)]
            + [f"region {text} added" for text in sorted(after - before)])


def peer_changes(old: Mapping[str, Inventory], new: Mapping[str, Inventory]) -> list[str]:
    """Peers added, removed or with a different inventory, as log text."""
    lines = [f"peer {name} removed" for name in sorted(set(old) - set(new))]
    lines += [f"peer {name} added ({len(new[name].regions)} regions)" for name in sorted(set(new) - set(old))]
    for name in sorted(set(old) & set(new)):
        lines += [f"peer {name}: {line}" for line in inventory_changes(old[name], new[name])]
    return lines


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)
