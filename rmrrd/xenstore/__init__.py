"""Xenstore, both ends, knowing nothing of rmrrd's keys.

- ``wire``: the sans-IO codec (framing, op numbers, errno names, paths, permissions).
- ``client`` (with ``client_conn``, ``client_watch``): rmrrd's trio client:
  pipelined requests, watches, transactions, reconnects.
- ``ops``: small compositions of client calls (pipelined gather, reading text, lists
  and subtrees).
- ``store`` (with ``store_node``, ``store_view``, ``store_watch``, ``store_persist``):
  the simulated xenstored's pure state machine; ``server``: its trio layer.
"""
