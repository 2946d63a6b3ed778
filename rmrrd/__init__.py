"""rmrrd: the reserved-device-memory daemon for Xen hosts.

The layers are folders, lowest first; a module imports only from its own layer and
those below (``tests/test_import_layers.py`` fails otherwise).  ``docs/design.md``
draws the same map.

- ``errors``: the error family, three roots: ``InputError`` (the user's to fix),
  ``PeerError`` (xenstored or a peer said no), ``TransportError`` (connection
  lost, timeout).  ``inputs``: every input file read within bounds (size, nesting,
  YAML aliases), refused with one ``InputError`` naming the file.
- ``core/`` (pure: no I/O, no clock): ``ranges``, ``pci``; ``inventory`` and its
  ``inventory_yaml`` forms; the firmware tables ``acpi``, ``dmar``, ``ivrs``;
  ``xlcfg`` (xl.cfg ``rdm=`` and ``pci=``), ``xlcfg_file`` (the xl.cfg file format as
  libxlutil reads it), ``libxlu`` (libxlutil's ``rdm=`` and ``pci=`` parsers),
  ``libxl_domain`` (what stock xl/libxl make of a configuration: xl.cfg, or
  ``libvirt_xml``, libvirt's domain XML); ``guest_layout`` (hvmloader's fixed areas);
  ``regions``; ``planner`` (a domain's layout); ``checks`` (assign, hotplug, migrate
  verdicts); ``guest_queries`` (a guest's queries); ``rate_limit``; ``newest`` (the
  per-request nodes kept).
- ``xenstore/``: ``wire`` (the sans-IO codec both ends share), ``client`` with
  ``client_conn`` and ``client_watch`` (rmrrd's trio client), ``blocking`` (a small
  blocking client for short commands), ``locate`` (where xenstored is), ``store`` with
  ``store_node``, ``store_view``, ``store_watch``, ``store_persist`` (the simulated
  xenstored's pure state machine), ``server`` (its trio layer), ``ops`` (small
  compositions of client calls).  Nothing here knows rmrrd's keys.
- ``protocol``: every xenstore key and value rmrrd reads or writes, with typed
  encode and decode.
- ``daemon/``: ``lifecycle`` (one domain's pure state machine), ``owner`` (the task
  that owns a domain), ``domains`` (every domain; reconciliation), ``setup``,
  ``toolstack`` (checks), ``watches`` (the watches and the shutdown), ``settings``
  (what the daemon is given).
- ``edges/``, beside the daemon and independent of it: ``config``, ``logs``,
  ``metrics``, ``http_server``, ``http_client`` and ``peers`` (peer hosts'
  inventories), ``host_inventory`` and ``sysfs_pci`` (this host's), ``sdnotify``,
  ``runtime_paths``, ``gc_pauses``.
- ``app/``: ``service`` (``rmrrd run``: the wiring into one trio nursery, signals,
  reload), ``reload`` (what a reload changed), ``toolstack`` (the toolstack's and the
  guest's side of the protocol), ``check`` (a toolstack check, blocking), ``demo``
  (the seed scenario), ``host_cache`` (this host's inventory for the checks made
  without the daemon, cached), ``xl_config`` (a domain read from an xl.cfg file).
- ``cli/``: the ``rmrrd`` command, one module per subcommand; ``docs`` (its man page
  and completion).  ``hooks/``, beside it: ``libvirt`` (libvirt's libxl hook), ``xl``
  (the xl wrapper), ``stock`` (what stock libxl does with a new domain on this host).
"""

__version__ = "0.1.0"
