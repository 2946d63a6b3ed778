"""The simulated xenstored's tree as bytes and back, for ``--persist``.

Pure, and only through the store's public :class:`~rmrrd.xenstore.store.Snapshot`:
the server does the file I/O (atomically).  What survives is what C xenstored
keeps across a live update: nodes with values and permissions (children in their
order), the introduced domains and targets, and the special nodes' permissions.
Connections, watches and transactions do not survive; clients re-register, as they
must after any xenstored restart.

Format: JSON, one object; values are base64 because xenstore values are bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from rmrrd.errors import InputError
from rmrrd.xenstore.store import Quotas, Snapshot, Store
from rmrrd.xenstore.wire import Perm, XenstoreError, format_perms, parse_perms

FORMAT_VERSION = 1


def dump(store: Store) -> bytes:
    """The persistent part of ``store``; parents always come before children."""
    snapshot = store.snapshot()
    document = {
        "version": FORMAT_VERSION,
        "nodes": [[path, base64.b64encode(value).decode(), _perms_text(perms)] for path, value, perms in snapshot.nodes],
        "special": {name: _perms_text(perms) for name, perms in snapshot.special.items()},
        "domains": {str(domid): list(channel) for domid, channel in snapshot.domains.items()},
        "targets": {str(domid): target for domid, target in snapshot.targets.items()},
    }
    return json.dumps(document, separators=(",", ":")).encode()


def load(data: bytes, source: str, quotas: Quotas | None = None) -> Store:
    """Rebuild a store from ``dump`` output; InputError names ``source`` and what
    is wrong, never a trace."""
    try:
        return Store.from_snapshot(_snapshot(json.loads(data)), quotas)
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error, XenstoreError) as exc:
        raise InputError(f"{source}: not a saved xenstore tree: {exc}") from None


def _perms_text(perms: tuple[Perm, ...]) -> list[str]:
    return [perm.decode() for perm in format_perms(perms)]


def _perms(texts: list[str]) -> tuple[Perm, ...]:
    return tuple(parse_perms([text.encode() for text in texts]))


def _snapshot(document: Any) -> Snapshot:
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"format version {document.get('version')!r}, expected {FORMAT_VERSION}")
    nodes = tuple((path, base64.b64decode(value, validate=True), _perms(perms))
                  for path, value, perms in document["nodes"])
    return Snapshot(nodes, {name: _perms(perms) for name, perms in document["special"].items()},
                    {int(domid): (int(channel[0]), int(channel[1])) for domid, channel in document["domains"].items()},
                    {int(domid): int(target) for domid, target in document["targets"].items()})
