"""Learning the domains xl created: what libxl wrote to xenstore, and the configuration it saved.

On a stock Xen host nothing writes ``/libxl/<domid>/rdm/``: libxl reserves device
memory itself (``libxl__domain_device_construct_rdm``).  So that ``rmrrd check`` works
for every running domain, a setup that finds no request there but a domain libxl
built computes the layout libxl gave it and answers with ``origin=learned``
(docs/xenstore-schema.md).  What libxl writes before it introduces a domain
(``libxl__build_post``): ``/libxl/<domid>/type``, the ``memory/`` and ``platform/``
keys; the PCI backend's ``dev-<n>`` / ``opts-<n>`` once devices are attached (and on
every ``xl pci-attach``; ``xl pci-detach`` removes them, and the whole backend with the
last device); the saved configuration
``<libxl_dir>/userdata-d.<domid>.<uuid>.libxl-json`` at the end of ``xl create``
(``domcreate_complete``) and on every attach.  A domain is learned again whenever
one of those xenstore keys changes, and whenever an answer would be current otherwise
only because the saved configuration had not been written yet.

Reading the saved configuration is a small local file read inside the setup's
transaction (a few KiB; bounded by :data:`MAX_SAVED_BYTES`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rmrrd import inputs
from rmrrd.errors import InputError
from rmrrd.core.inventory import Inventory
from rmrrd.core.libxl_domain import DomainType, LibxlDomain, from_libxl_json, from_libxl_xenstore, libxl_plan
from rmrrd.core.planner import RequestDefaults
from rmrrd.protocol import LIBXL_JSON, domain_keys, libxl_type_path, pci_backend_path
from rmrrd.xenstore.client import Transaction

from rmrrd.daemon.lifecycle import SetupOutcome
from rmrrd.xenstore.ops import gather, read_text, read_tree

MAX_SAVED_BYTES = inputs.SMALL
"""A saved configuration larger than this is not libxl's: refused, not read."""
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class LibxlKeys:
    """What libxl wrote to xenstore about one domain, as read in one transaction."""

    domid: int
    kind: str
    keys: Mapping[str, str | None]
    backend: Mapping[str, str] | None

    @property
    def uuid(self) -> str | None:
        """From the domain's ``vm`` key (``/vm/<uuid>``), if it is one."""
        vm = self.keys.get("vm") or ""
        uuid = vm.rsplit("/", 1)[-1]
        return uuid if _UUID.fullmatch(uuid) else None


async def read_libxl_keys(tx: Transaction, domid: int) -> LibxlKeys | None:
    """libxl's keys for ``domid``, or None while it has not built the domain (no
    ``type``, or no ``memory/static-max``, which it writes just before the introduction)."""
    kind = await read_text(tx, libxl_type_path(domid))
    if kind is None:
        return None
    paths = domain_keys(domid)
    values = dict(zip(paths, await gather(lambda key: read_text(tx, paths[key]), paths)))
    if values["static_max"] is None:
        return None
    backend = await read_tree(tx, pci_backend_path(domid))
    return LibxlKeys(domid, kind, values, backend or None)


def saved_config_path(libxl_dir: Path, keys: LibxlKeys) -> Path | None:
    """Where libxl keeps the domain's configuration (``libxl__userdata_path``)."""
    uuid = keys.uuid
    return None if uuid is None else libxl_dir / LIBXL_JSON.format(domid=keys.domid, uuid=uuid)


def read_saved(path: Path | None) -> LibxlDomain | None:
    """The saved configuration, or None when libxl has not written it (yet).

    Raises :class:`InputError` naming the file when it is there but is not libxl's
    JSON (read within :data:`MAX_SAVED_BYTES` and the nesting cap of :mod:`rmrrd.inputs`).
    """
    if path is None or not path.exists():
        return None  # one removed before the read below is an error this once: the domain is going
    data = inputs.read_bytes(path, MAX_SAVED_BYTES, "libxl configuration")
    # libxl__set_domain_configuration stores the C string with its NUL.
    obj = inputs.parse_json(data.removesuffix(b"\0"), str(path))
    try:
        return from_libxl_json(obj)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def learn(keys: LibxlKeys, libxl_dir: Path, defaults: RequestDefaults, host: Inventory,
          peers: Mapping[str, Inventory], laid_out: LibxlDomain | None = None) -> tuple[str, SetupOutcome]:
    """The learned answer's generation and outcome.

    The generation is a digest of what was learned, so a setup triggered by a change
    that changes nothing finds its answer current.  ``laid_out``: an HVM guest as
    libxl built it, once known (:attr:`Domain.laid_out`): its layout is planned from
    that, as libxl laid it out at creation (``libxl__domain_device_construct_rdm``) and
    never again; the devices attached since are held, and checked, but move nothing,
    and a later ``xl mem-max`` (``memory/static-max``) moves nothing either.  None: the
    domain as it is now (at creation, or after a restart of rmrrd, which cannot tell a
    device attached later from one the guest was built with).
    """
    what = f"domain {keys.domid}"
    try:
        saved = read_saved(saved_config_path(libxl_dir, keys))
        domain = from_libxl_xenstore(keys.kind, keys.keys, keys.backend, saved, what)
    except InputError as exc:
        return f"learned-error-{_digest(str(exc))}", SetupOutcome(None, None, str(exc), learned=keys.kind)
    generation = f"learned-{_digest(repr((domain, saved is not None)))}"
    try:
        hvm = domain.type is DomainType.HVM
        built = laid_out if laid_out is not None and laid_out.type is domain.type else domain
        request, plan = libxl_plan(built, host, peers, seabios_size=defaults.seabios_size)
        request = request._replace(pci=domain.pci)  # what it holds now: the devices attached since too
    except InputError as exc:
        return generation, SetupOutcome(None, None, f"{what}: {exc}", learned=domain.type.value)
    return generation, SetupOutcome(request, plan, None, learned=domain.type.value, saved=saved is not None,
                                    laid_out=built if hvm else None)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
