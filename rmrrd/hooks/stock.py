"""What stock libxl does with a new domain on this host, for the hooks.

A domain that is about to be created (libvirt's ``prepare``, ``xl create``) is planned
as libxl will build it (:class:`~rmrrd.core.libxl_domain.LibxlDomain`) against this host's
inventory, kept between runs by :mod:`rmrrd.hooks.host_cache`.  No daemon is needed.

The configuration is ``$RMRRD_CONFIG``, else ``/etc/rmrrd/rmrrd.yaml`` if it exists,
else the built-in defaults (this host's DMAR and IVRS tables); the cache lives in
``$RMRRD_RUNTIME_DIR``, else rmrrd's runtime directory ``/run/rmrrd``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # imported by predict(): the hooks' fast exits need none of it
    from rmrrd.core.libxl_domain import LibxlDomain

DEFAULT_CONFIG = "/etc/rmrrd/rmrrd.yaml"
RUNTIME_DIR = "/run/rmrrd"
Outcome = Literal["ok", "warn", "fail"]


def predict(domain: LibxlDomain, name: str) -> tuple[Outcome, str | None]:
    """``fail`` when libxl would refuse to build ``domain`` here, ``warn`` when it would
    build it with a relaxed conflict, ``ok`` otherwise; and the one line to say so.

    Raises :class:`~rmrrd.errors.InputError` when this host's inventory cannot be
    loaded (the caller then cannot check).
    """
    if domain.refusals:
        return "fail", f"libxl would refuse domain {name}: {domain.refusals[0]}"
    if domain.type.value != "hvm":
        return "ok", None
    from rmrrd.hooks.host_cache import host_inventory
    from rmrrd.core.libxl_domain import domain_request
    from rmrrd.core.planner import plan

    config = os.environ.get("RMRRD_CONFIG") or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    host, seabios_size = host_inventory(config, os.environ.get("RMRRD_RUNTIME_DIR") or RUNTIME_DIR)
    result = plan(domain_request(domain, seabios_size=seabios_size), host, {})
    if result.status != "ready":
        return "fail", f"Xen would refuse domain {name} on {host.host}: {result.error}"
    warned = [region for region in result.regions if region.action == "warned"]
    if warned:
        return "warn", (f"domain {name}: {len(warned)} reserved region(s) overlap the guest under "
                        f"rdm_policy=relaxed, first {warned[0].range} ({warned[0].source_text})")
    return "ok", None
