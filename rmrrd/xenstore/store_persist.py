"""The simulated xenstored's tree as bytes and back, for ``--persist``.

Pure, and only through the store's public :class:`~rmrrd.xenstore.store.Snapshot`
and :class:`~rmrrd.xenstore.store.Changes`: the server's journal
(:mod:`rmrrd.xenstore.journal`) does the file I/O.  What survives is what C
xenstored keeps across a live update: nodes with values and permissions (children
in their order), the introduced domains and targets, and the special nodes'
permissions.  Connections, watches and transactions do not survive; clients
re-register, as they must after any xenstored restart.

Two forms, both JSON with values in base64 (xenstore values are bytes):

* a **snapshot** (:func:`dump`, :func:`load`): the whole tree, parents before
  children, and the generation it was taken at;
* a **journal record** (:func:`encode_changes`, :func:`decode_changes`): the
  state now of every node changed since the previous record (None for a removed
  one), with its child names so the order of children survives too.

Whatever the bytes, loading gives a store or an :class:`~rmrrd.errors.InputError`
naming the file, never a trace: a damaged file is the operator's to look at.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from rmrrd import inputs
from rmrrd.errors import InputError
from rmrrd.xenstore.store import Changes, Quotas, Snapshot, Store
from rmrrd.xenstore.wire import ABSOLUTE_PATH, PAYLOAD_MAX, Perm, XenstoreError, format_perms, parse_perms

FORMAT_VERSION = 1

_DAMAGE = (ValueError, KeyError, TypeError, IndexError, AttributeError, binascii.Error, XenstoreError)
"""What malformed JSON of the right syntax raises on the way to a store."""


def dump(store: Store) -> bytes:
    """The persistent part of ``store``; parents always come before children."""
    return dump_snapshot(store.snapshot())


def dump_snapshot(snapshot: Snapshot) -> bytes:
    """:func:`dump` of a snapshot already taken (so the encoding can run in a thread)."""
    document = {
        "version": FORMAT_VERSION,
        "generation": snapshot.generation,
        "nodes": [[path, _b64(value), _perms_text(perms)] for path, value, perms in snapshot.nodes],
        "special": {name: _perms_text(perms) for name, perms in snapshot.special.items()},
        "domains": {str(domid): list(channel) for domid, channel in snapshot.domains.items()},
        "targets": {str(domid): target for domid, target in snapshot.targets.items()},
    }
    return _json(document)


def load(data: bytes, source: str, quotas: Quotas | None = None) -> Store:
    """Rebuild a store from ``dump`` output; InputError names ``source`` and what
    is wrong, never a trace."""
    document = inputs.parse_json(data, source)
    try:
        return Store.from_snapshot(_snapshot(document), quotas)
    except _DAMAGE as exc:
        raise InputError(f"{source}: not a saved xenstore tree: {exc}") from None


def encode_changes(changes: Changes) -> bytes:
    """One journal record (without its framing, which the journal adds)."""
    record: dict[str, Any] = {
        "generation": changes.generation,
        "nodes": [[path] if state is None else [path, _b64(state[0]), _perms_text(state[1]), list(state[2])]
                  for path, state in changes.nodes],
    }
    if changes.meta is not None:
        special, domains, targets = changes.meta
        record["special"] = {name: _perms_text(perms) for name, perms in special.items()}
        record["domains"] = {str(domid): list(channel) for domid, channel in domains.items()}
        record["targets"] = {str(domid): target for domid, target in targets.items()}
    return _json(record)


def decode_changes(data: bytes, source: str) -> Changes:
    """A journal record back; InputError naming ``source`` if it is not one."""
    record = inputs.parse_json(data, source)
    try:
        nodes = tuple((_path(entry[0]), None if len(entry) == 1 else
                       (_value(entry[1]), _perms(entry[2]), tuple(_name(name) for name in entry[3])))
                      for entry in record["nodes"])
        meta = None
        if "special" in record:
            meta = ({str(name): _perms(perms) for name, perms in record["special"].items()},
                    _domains(record["domains"]), _targets(record["targets"]))
        return Changes(_generation(record["generation"]), nodes, meta)
    except _DAMAGE as exc:
        raise InputError(f"{source}: not a journal record: {exc}") from None


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def _value(text: str) -> bytes:
    value = base64.b64decode(text, validate=True)
    if len(value) > PAYLOAD_MAX:
        raise ValueError(f"a value of {len(value)} bytes, more than one payload")
    return value


def _path(path: Any) -> str:
    if not isinstance(path, str) or not ABSOLUTE_PATH.fullmatch(path):
        raise ValueError(f"invalid path {str(path)[:80]!r}")
    return path


def _name(name: Any) -> str:
    if not isinstance(name, str) or not ABSOLUTE_PATH.fullmatch("/" + name) or "/" in name:
        raise ValueError(f"invalid child name {str(name)[:80]!r}")
    return name


def _generation(value: Any) -> int:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"generation {value!r} is not a count")
    return value


def _perms_text(perms: tuple[Perm, ...]) -> list[str]:
    return [perm.decode() for perm in format_perms(perms)]


def _perms(texts: list[str]) -> tuple[Perm, ...]:
    return tuple(parse_perms([text.encode() for text in texts]))


def _domains(document: dict[str, Any]) -> dict[int, tuple[int, int]]:
    return {int(domid): (int(channel[0]), int(channel[1])) for domid, channel in document.items()}


def _targets(document: dict[str, Any]) -> dict[int, int]:
    return {int(domid): int(target) for domid, target in document.items()}


def _snapshot(document: Any) -> Snapshot:
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"format version {document.get('version')!r}, expected {FORMAT_VERSION}")
    nodes = tuple((_path(path), _value(value), _perms(perms)) for path, value, perms in document["nodes"])
    return Snapshot(nodes, {name: _perms(perms) for name, perms in document["special"].items()},
                    _domains(document["domains"]), _targets(document["targets"]),
                    _generation(document.get("generation", 0)))
