"""rmrrd: the reserved-device-memory daemon for Xen hosts.

Module map (pure logic first, I/O last):

- ``errors``: the error family (``InputError`` for anything a user must fix).
- ``ranges``, ``pci``: page-granular address ranges and PCI addresses.
- ``inventory``: a host's reserved regions and their devices.
- ``cli``, ``commands/``: the ``rmrrd`` command line.
"""

__version__ = "0.1.0"
