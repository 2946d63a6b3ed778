"""The daemon: xenstore in, planner and checks, xenstore out (docs/xenstore-schema.md).

- ``state``: what the daemon remembers of each domain (pure).
- ``requests``: parsing toolstack request nodes (pure).
- ``setup``: answering ``/libxl/<domid>/rdm/request`` (4.1).
- ``queries``: answering a guest's ``rmrr/query/<id>`` nodes (4.2).
- ``toolstack``: answering ``/tool/rmrrd/request/<id>`` (4.3).
- ``service``: wiring it all into one trio nursery: watches, reconciliation,
  the HTTP listener, signals, sd_notify.
"""
