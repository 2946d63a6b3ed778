"""The simulated xenstored's tree as bytes and back, for ``--persist``.

Pure: the server does the file I/O (atomically).  What survives is what C xenstored
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
from rmrrd.xenstore.store import Quotas, Store
from rmrrd.xenstore.store_node import Node
from rmrrd.xenstore.store_view import Tree
from rmrrd.xenstore.wire import XenstoreError, format_perms, parse_perms

FORMAT_VERSION = 1


def dump(store: Store) -> bytes:
    """The persistent part of ``store``; parents always come before children."""
    nodes = []
    stack = ["/"]
    while stack:
        path = stack.pop()
        node = store.tree.nodes[path]
        nodes.append([path, base64.b64encode(node.value).decode(), [p.decode() for p in format_perms(node.perms)]])
        prefix = path if path != "/" else ""
        stack.extend(f"{prefix}/{child}" for child in reversed(node.children))
    document = {
        "version": FORMAT_VERSION,
        "nodes": nodes,
        "special": {k: [p.decode() for p in format_perms(v)] for k, v in store.special_perms.items()},
        "domains": {str(d): list(v) for d, v in store.introduced.items()},
        "targets": {str(d): t for d, t in store.targets.items()},
    }
    return json.dumps(document, separators=(",", ":")).encode()


def load(data: bytes, source: str, quotas: Quotas | None = None) -> Store:
    """Rebuild a store from ``dump`` output; InputError names ``source`` and what
    is wrong, never a trace."""
    try:
        document = json.loads(data)
        return _build(document, quotas)
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error, XenstoreError) as exc:
        raise InputError(f"{source}: not a saved xenstore tree: {exc}") from None


def _build(document: Any, quotas: Quotas | None) -> Store:
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"format version {document.get('version')!r}, expected {FORMAT_VERSION}")
    store = Store(quotas)
    # The saved tree replaces the initial one whole (its /tool may have been removed).
    store.tree = tree = Tree()
    for path, value, perms in document["nodes"]:
        node = Node(base64.b64decode(value, validate=True), tuple(parse_perms([p.encode() for p in perms])), 0)
        if path == "/":
            tree.put("/", node)
            continue
        cut = path.rfind("/")
        parent = tree.nodes[path[:cut] or "/"]  # KeyError: child listed before parent
        parent.children[path[cut + 1 :]] = None
        tree.put(path, node)
    if "/" not in tree.nodes:
        raise ValueError("no root node")
    for name, perms in document["special"].items():
        if name in store.special_perms:
            store.special_perms[name] = tuple(parse_perms([p.encode() for p in perms]))
    store.introduced = {int(d): (int(v[0]), int(v[1])) for d, v in document["domains"].items()}
    store.targets = {int(d): int(t) for d, t in document["targets"].items()}
    return store
