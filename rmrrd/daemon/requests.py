"""Toolstack request nodes, parsed strictly and purely.

A request is one line of space-separated ``key=value`` words, for instance
``op=hotplug domid=1 device=0000:00:14.0,rdm_policy=relaxed``.  ``device`` may repeat
(only for ``migrate``); every other key appears once.  Anything else is an
:class:`InputError` whose message becomes the ``fail`` reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rmrrd.errors import InputError
from rmrrd.schema import parse_domid
from rmrrd.xlcfg import DeviceSpec, parse_device_spec

Op = Literal["assign", "hotplug", "migrate"]
OPS: tuple[Op, ...] = ("assign", "hotplug", "migrate")
MAX_REQUEST_LENGTH = 4096
_WORD_RE = re.compile(r"([a-z_]+)=(\S+)")
_HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


@dataclass(frozen=True, slots=True)
class ToolRequest:
    op: Op
    domid: int
    devices: tuple[DeviceSpec, ...]
    target: str | None


def parse_request(text: str) -> ToolRequest:
    """Parse one request value; the error names the word that is wrong."""
    if len(text) > MAX_REQUEST_LENGTH:
        raise InputError(f"request is {len(text)} bytes, longer than {MAX_REQUEST_LENGTH}")
    words: dict[str, list[str]] = {}
    for word in text.split():
        match = _WORD_RE.fullmatch(word)
        if match is None:
            raise InputError(f"malformed word {word[:40]!r}: expected key=value")
        words.setdefault(match[1], []).append(match[2])
    unknown = sorted(set(words) - {"op", "domid", "device", "target"})
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r}: expected op, domid, device, target")
    op = _single(words, "op")
    if op not in OPS:
        raise InputError(f"op={op[:40]!r} is not one of {', '.join(OPS)}")
    domid = parse_domid(_single(words, "domid"))
    if domid is None:
        raise InputError(f"domid={words['domid'][0][:40]!r} is not a domain id")
    devices = tuple(parse_device_spec(spec) for spec in words.get("device", []))
    target = words["target"][0] if "target" in words else None
    if len(words.get("target", [])) > 1:
        raise InputError("target given more than once")
    if target is not None and _HOST_RE.fullmatch(target) is None:
        raise InputError(f"target={target[:40]!r} is not a host name")
    if op != "migrate":
        if target is not None:
            raise InputError(f"op={op} takes no target")
        if len(devices) != 1:
            raise InputError(f"op={op} needs exactly one device=SPEC, got {len(devices)}")
    return ToolRequest(op, domid, devices, target)


def _single(words: dict[str, list[str]], key: str) -> str:
    values = words.get(key)
    if not values:
        raise InputError(f"missing {key}=")
    if len(values) > 1:
        raise InputError(f"{key} given more than once")
    return values[0]


def format_request(op: Op, domid: int, devices: tuple[str, ...] = (), target: str | None = None) -> str:
    """The request line ``parse_request`` reads (what ``rmrrd check`` writes)."""
    words = [f"op={op}", f"domid={domid}"]
    if target is not None:
        words.append(f"target={target}")
    words += [f"device={device}" for device in devices]
    return " ".join(words)
