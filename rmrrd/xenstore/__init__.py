"""Xenstore: the wire codec, rmrrd's trio client, and a simulated xenstored.

- ``wire``: sans-IO framing, op numbers, errno names, paths and permissions.
- ``client``: the trio client the daemon uses (``open_xenstore``).
- ``store``/``server``: the simulated xenstored used by tests and benchmarks.
"""
