"""Toolstack hooks operators install as they are: libvirt's libxl hook and an ``xl`` wrapper.

Each is an entry point of its own (``rmrrd-libvirt-hook``, ``rmrrd-xl``) that its
caller runs for every operation, so each imports only what the operation it checks
needs (docs/toolstack.md says where they go, docs/performance.md what they cost).
"""
