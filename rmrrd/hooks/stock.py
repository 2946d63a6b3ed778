"""What stock libxl does with a new domain on this host, for the hooks.

A domain that is about to be created (libvirt's ``prepare``, ``xl create``) is planned
as libxl will build it (:class:`~rmrrd.core.libxl_domain.LibxlDomain`) against this host's
inventory, kept between runs by :mod:`rmrrd.app.host_cache` (which also says which
configuration it is read from).  No daemon is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # imported by predict(): the hooks' fast exits need none of it
    from rmrrd.core.libxl_domain import LibxlDomain

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
    from rmrrd.app.host_cache import this_host
    from rmrrd.core.libxl_domain import libxl_plan

    host, seabios_size = this_host()
    _, result = libxl_plan(domain, host, {}, seabios_size=seabios_size)
    if result.status != "ready":
        return "fail", f"Xen would refuse domain {name} on {host.host}: {result.error}"
    warned = [region for region in result.regions if region.action == "warned"]
    if warned:
        return "warn", (f"domain {name}: {len(warned)} reserved region(s) overlap the guest under "
                        f"rdm_policy=relaxed, first {warned[0].range} ({warned[0].source_text})")
    return "ok", None
