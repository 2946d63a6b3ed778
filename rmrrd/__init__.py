"""rmrrd: the reserved-device-memory daemon for Xen hosts.

Module map, pure logic first (no I/O: testable without a socket), I/O last.

The core (formats, inventories, domain setup, toolstack checks):

- ``errors``: the error family (``InputError`` for anything a user must fix).
- ``ranges``: page-granular address ranges and range sets; ``pci``: PCI addresses.
- ``inventory``: a host's reserved regions and their devices; ``inventory_yaml``: the
  YAML and JSON forms; ``acpi``, ``dmar``, ``ivrs``: the firmware tables;
  ``sysfs_pci``, ``host_inventory``: this host's inventory from its sources;
  ``peers``, ``http_client``: peer hosts' inventories.
- ``xlcfg``: xl.cfg ``rdm=`` and ``pci=`` strings; ``xlcfg_file``: the xl.cfg file format
  as libxlutil reads it; ``libxl_domain``: what stock xl/libxl make of a configuration
  (xl.cfg, or ``libvirt_xml``: libvirt's domain XML); ``guest_layout``: hvmloader's fixed
  areas; ``regions``: reserved regions and merging; ``planner``: the layout (4.1);
  ``checks``: assign / hotplug / migrate verdicts (4.3); ``guest_queries``: answers
  to a guest's queries (4.2); ``rate_limit``: a token bucket.
- ``schema``: where everything lives in xenstore.

Xenstore (``xenstore/``): ``wire`` (the sans-IO codec), ``client`` (trio client with
reconnects), ``blocking`` (a small blocking client for short commands), ``locate``, ``store*`` (the simulated xenstored's pure state machine), ``server``
(its trio layer).

The daemon (``daemon/``): ``setup``, ``queries``, ``toolstack``, ``domains``
(reconciliation), ``service`` (the nursery, signals, HTTP, sd_notify). Operations:
``config``, ``logs``, ``sdnotify``, ``http_server``, ``metrics``, ``gc_pauses`` (short
garbage-collection pauses for the long-running processes).

The command line: ``cli`` and one module per subcommand in ``commands/``; ``demo``
plays the seed scenario.  Toolstack hooks (``hooks/``): ``libvirt`` (libvirt's libxl
hook), ``xl`` (the xl wrapper), ``stock`` (what stock libxl does with a new domain on
this host), ``host_cache`` (their cached host inventory).
"""

__version__ = "0.1.0"
