"""Inventories as text: the YAML file of docs/inventory.md and its JSON twin.

The YAML form is what operators write for simulated and peer hosts and what
``rmrrd inventory --yaml`` exports; the JSON form is what a daemon serves at
``/inventory`` and reads from its peers.  Both use the same field names::

    host: node-a
    aliases: [node-a.example, 10.0.0.1]  # optional: other names of the host
    warnings: ["..."]            # optional: what the source noticed (firmware bugs)
    regions:
      - range: 0xe0000-0xeffff   # inclusive, page granular
        devices: ["0000:00:14.0"]

A device is one of:

* a BDF, ``SSSS:BB:DD.F`` or ``BB:DD.F`` (segment 0, as in xl);
* an unresolved DMAR scope path, ``SSSS:BB:DD.F/DD.F...`` (the start bus and one
  ``DD.F`` hop per bridge, see :class:`rmrrd.core.inventory.UnresolvedDevice`).  The ``/``
  is what marks it: a one-hop path needs no bridge and is always resolved to a BDF;
* ``all``, alone in the list: the region applies to every device (IVMD type 0x20).

Both loaders go through one validator working on plain values (dicts, lists,
strings), so the YAML and JSON forms cannot drift apart.  The YAML loader composes
the node tree instead of calling ``safe_load`` for two reasons: every error can name
the line it comes from, and scalars stay the text the operator wrote (YAML 1.1 would
read ``00:14.0`` as a base-60 float and ``0x1000`` as an integer).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rmrrd import inputs
from rmrrd.errors import InputError
from rmrrd.core.inventory import HOST_NAME_RE, Device, HostRegion, Inventory, UnresolvedDevice
from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import parse_range

if TYPE_CHECKING:  # imported where YAML is read or written: the JSON form needs neither
    from pathlib import Path

    import yaml

ALL_DEVICES = "all"
"""The device list entry that marks a region as applying to every device."""

_HOST_KEYS = frozenset({"host", "aliases", "regions", "warnings"})
# "unresolved" is accepted on input so that JSON served by a peer reads back as is;
# it is derived from the devices, never trusted over them.
_REGION_KEYS = frozenset({"range", "devices", "unresolved"})
_HOST_JSON_KEYS = _HOST_KEYS | {"unresolved"}

_HOP_RE = re.compile(r"([0-9a-fA-F]{1,2})\.([0-7])")
_START_RE = re.compile(r"([0-9a-fA-F]{1,4}):([0-9a-fA-F]{1,2})")

# A key path inside the document, e.g. ("regions", 0, "range").
_KeyPath = tuple[str | int, ...]
_Locate = Callable[[_KeyPath], str]


# --- devices ---------------------------------------------------------------------


def parse_device(text: str) -> Device:
    """Parse a BDF or an unresolved scope path (``SSSS:BB:DD.F/DD.F...``)."""
    if "/" not in text:
        return Bdf.parse(text)
    head, *hops = text.split("/")
    # The head is ``SSSS:BB:DD.F``: segment and start bus, then the first hop.
    start, sep, first_hop = head.rpartition(":")
    start_match = _START_RE.fullmatch(start)
    if not sep or start_match is None:
        raise InputError(f"invalid unresolved device {text!r}: expected SSSS:BB:DD.F/DD.F...")
    path = []
    for hop in [first_hop, *hops]:
        hop_match = _HOP_RE.fullmatch(hop)
        if hop_match is None or int(hop_match[1], 16) > 0x1F:
            raise InputError(f"invalid unresolved device {text!r}: bad hop {hop!r}, expected DD.F")
        path.append((int(hop_match[1], 16), int(hop_match[2])))
    return UnresolvedDevice(int(start_match[1], 16), int(start_match[2], 16), tuple(path))


def is_unresolved(region: HostRegion) -> bool:
    """Whether any device of the region is only known by its scope path."""
    return any(isinstance(device, UnresolvedDevice) for device in region.devices)


def device_strings(region: HostRegion) -> list[str]:
    """The region's devices as the file formats write them."""
    if region.all_devices:
        return [ALL_DEVICES]
    return [str(device) for device in region.devices]


# --- the shared validator ----------------------------------------------------------


def _where(source: str, locate: _Locate, path: _KeyPath) -> str:
    """``file:line: key`` prefix for an error about the value at ``path``."""
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")
    return f"{source}{locate(path)}: {key or 'document'}"


def _check_keys(obj: Mapping[str, Any], allowed: frozenset[str], required: Sequence[str],
                source: str, locate: _Locate, path: _KeyPath) -> None:
    for key in obj:
        if key not in allowed:
            raise InputError(f"{_where(source, locate, (*path, key))}: unknown key (expected one of "
                             f"{', '.join(sorted(allowed))})")
    for key in required:
        if key not in obj:
            raise InputError(f"{_where(source, locate, path)}: missing key {key!r}")


def _string(value: Any, source: str, locate: _Locate, path: _KeyPath) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{_where(source, locate, path)}: expected a non-empty string")
    return value


def _list(value: Any, source: str, locate: _Locate, path: _KeyPath) -> list[Any]:
    if not isinstance(value, list):
        raise InputError(f"{_where(source, locate, path)}: expected a list")
    return value


def _region(obj: Any, source: str, locate: _Locate, path: _KeyPath) -> HostRegion:
    if not isinstance(obj, dict):
        raise InputError(f"{_where(source, locate, path)}: expected a mapping with range and devices")
    _check_keys(obj, _REGION_KEYS, ("range", "devices"), source, locate, path)
    range_path = (*path, "range")
    try:
        rng = parse_range(_string(obj["range"], source, locate, range_path))
    except InputError as exc:
        raise InputError(f"{_where(source, locate, range_path)}: {exc}") from None
    texts = _list(obj["devices"], source, locate, (*path, "devices"))
    devices: dict[Device, None] = {}  # ordered, and a set for the duplicate check
    for index, item in enumerate(texts):
        item_path = (*path, "devices", index)
        text = _string(item, source, locate, item_path)
        if text == ALL_DEVICES:
            if len(texts) != 1:
                raise InputError(f"{_where(source, locate, item_path)}: 'all' must be the only device")
            return HostRegion(rng, (), all_devices=True)
        try:
            device = parse_device(text)
        except InputError as exc:
            raise InputError(f"{_where(source, locate, item_path)}: {exc}") from None
        if device in devices:
            raise InputError(f"{_where(source, locate, item_path)}: device {device} listed twice")
        devices[device] = None
    return HostRegion(rng, tuple(devices))


def _inventory(obj: Any, source: str, locate: _Locate, allowed: frozenset[str]) -> Inventory:
    if not isinstance(obj, dict):
        raise InputError(f"{_where(source, locate, ())}: expected a mapping with host and regions")
    _check_keys(obj, allowed, ("host", "regions"), source, locate, ())
    host = _string(obj["host"], source, locate, ("host",))
    items = _list(obj["regions"], source, locate, ("regions",))
    regions = tuple(_region(item, source, locate, ("regions", index)) for index, item in enumerate(items))
    warnings = [_string(text, source, locate, ("warnings", index))
                for index, text in enumerate(_list(obj.get("warnings", []), source, locate, ("warnings",)))]
    aliases: list[str] = []
    for index, item in enumerate(_list(obj.get("aliases", []), source, locate, ("aliases",))):
        alias = _string(item, source, locate, ("aliases", index))
        if HOST_NAME_RE.fullmatch(alias) is None:
            raise InputError(f"{_where(source, locate, ('aliases', index))}: {alias!r} is not a host name "
                             f"(letters, digits, '.', '_', '-')")
        if alias == host or alias in aliases:
            raise InputError(f"{_where(source, locate, ('aliases', index))}: {alias!r} is listed already")
        aliases.append(alias)
    return Inventory(host, regions, tuple(warnings), tuple(aliases))


# --- YAML --------------------------------------------------------------------------


def _plain(node: yaml.Node, path: _KeyPath, lines: dict[_KeyPath, int], source: str) -> Any:
    """Turn a composed YAML node into plain values, recording each value's line.

    Scalars stay strings (their text as written); only an explicit null becomes None,
    so that a missing value is reported as such rather than as the string ``null``.
    """
    import yaml

    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        return None if node.tag == "tag:yaml.org,2002:null" else str(node.value)
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, (*path, index), lines, source) for index, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise InputError(f"{source}:{key_node.start_mark.line + 1}: mapping keys must be plain words")
            key = str(key_node.value)
            if key in result:
                raise InputError(f"{source}:{key_node.start_mark.line + 1}: {key}: duplicate key")
            result[key] = _plain(value_node, (*path, key), lines, source)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return result
    raise InputError(f"{source}:{node.start_mark.line + 1}: unsupported YAML node")  # pragma: no cover


def _yaml_locator(lines: Mapping[_KeyPath, int]) -> _Locate:
    """Line of the value at a key path, or of its nearest ancestor (for missing keys)."""

    def locate(path: _KeyPath) -> str:
        while path not in lines and path:
            path = path[:-1]
        return f":{lines[path]}" if path in lines else ""

    return locate


def load_inventory_text(text: str, source: str) -> Inventory:
    """Parse a YAML inventory; ``source`` (usually the file name) prefixes every error.

    Raises :class:`InputError` naming the source, the line and the key for YAML syntax
    errors, aliases and nesting :func:`rmrrd.inputs.compose_yaml` refuses, unknown or
    missing keys, and ranges that are not page granular.
    """
    root = inputs.compose_yaml(text, source)
    if root is None:
        raise InputError(f"{source}: empty inventory: expected host and regions")
    lines: dict[_KeyPath, int] = {}
    obj = _plain(root, (), lines, source)
    return _inventory(obj, source, _yaml_locator(lines), _HOST_KEYS)


def load_inventory_file(path: str | Path) -> Inventory:
    """Read and parse a YAML inventory file (at most :data:`rmrrd.inputs.INVENTORY`
    bytes); errors name the file (and line)."""
    return load_inventory_text(inputs.read_text(path, inputs.INVENTORY, "inventory"), str(path))


def _quote(text: str) -> str:
    """A YAML double-quoted scalar for any text (yaml's own escaping: JSON's surrogate
    pairs for characters beyond the BMP do not read back in YAML)."""
    import yaml

    dumped: str = yaml.safe_dump(text, default_style='"', width=float("inf"), allow_unicode=True)
    return dumped.rstrip("\n")


def dump_inventory_yaml(inv: Inventory) -> str:
    """The inventory in the YAML format; reads back with the loader.

    Written by hand rather than by ``yaml.dump`` so that the output looks like the
    documented example (flow lists of quoted devices, unquoted ranges) and carries a
    comment on unresolved devices for the operator who reads it.
    """
    out = [f"host: {_quote(inv.host)}"]
    if inv.aliases:
        out.append(f"aliases: [{', '.join(_quote(alias) for alias in inv.aliases)}]")
    if inv.warnings:
        out.append("warnings:")
        out.extend(f"  - {_quote(warning)}" for warning in inv.warnings)
    out.append("regions:" if inv.regions else "regions: []")
    for region in inv.regions:
        out.append(f"  - range: {region.range}")
        devices = ", ".join(_quote(text) for text in device_strings(region))
        note = "  # unresolved: scope path through bridges, no bus numbers" if is_unresolved(region) else ""
        out.append(f"    devices: [{devices}]{note}")
    return "\n".join(out) + "\n"


# --- JSON --------------------------------------------------------------------------


def inventory_to_json(inv: Inventory) -> dict[str, Any]:
    """The inventory as served at ``/inventory``: the YAML's fields plus markers.

    ``unresolved`` (per region and for the whole host) tells a reader at a glance that
    some device is only named by its scope path, so a peer cannot match it to a BDF.
    """
    regions = [{"range": str(region.range), "devices": device_strings(region),
                "unresolved": is_unresolved(region)} for region in inv.regions]
    return {"host": inv.host, "aliases": list(inv.aliases), "regions": regions, "warnings": list(inv.warnings),
            "unresolved": any(region["unresolved"] for region in regions)}


def inventory_from_json(obj: Any, source: str) -> Inventory:
    """Validate a decoded JSON inventory (a peer's ``/inventory``); errors name ``source``.

    The markers ``unresolved`` are accepted and ignored: they are derived from the
    devices, which are authoritative.
    """
    return _inventory(obj, source, lambda path: "", _HOST_JSON_KEYS)
