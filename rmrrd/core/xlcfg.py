"""xl.cfg's ``rdm=`` string and ``pci=`` device specifications, parsed strictly.

The toolstack hands rmrrd the very strings an operator wrote in xl.cfg, so rmrrd
reads them with xl's vocabulary and defaults:

* ``rdm="strategy=host,policy=strict|relaxed"`` (xl.cfg(5), ``docs/man/xl.cfg.5.pod.in``):
  ``host`` is the only strategy and there is none unless set (only the assigned
  devices' regions are then considered); the domain's ``policy`` is ``relaxed``
  unless set (libxl's ``libxl__rdm_setdefault``).
* ``pci=["[DDDD:]BB:DD.F[@VSLOT],KEY=VALUE,..."]`` (xl-pci-configuration(5),
  ``docs/man/xl-pci-configuration.5.pod``): rmrrd reads ``rdm_policy`` and accepts xl's
  other keys without acting on them.

Both parsers keep "not given" apart from a value (``policy`` and ``rdm_policy`` are
``None`` when absent), because Xen's default for a device depends on it: xl copies the
``policy`` an ``rdm=`` names into every ``pci=`` device without its own ``rdm_policy``,
and libxl makes a device that still has none ``strict`` (see docs/planner.md).

Anything else is refused with an :class:`InputError` naming the key or value, so a
typo such as ``rdm_polcy=relaxed`` never silently leaves a device strict.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from rmrrd.errors import InputError
from rmrrd.core.pci import Bdf


class Policy(enum.Enum):
    """What an unresolved conflict does: ``strict`` refuses, ``relaxed`` warns."""

    STRICT = "strict"
    RELAXED = "relaxed"

    def __str__(self) -> str:
        return self.value


class Strategy(enum.Enum):
    """``rdm=strategy=``: ``host`` reserves every region of this host."""

    HOST = "host"


DEFAULT_DOMAIN_POLICY = Policy.RELAXED
"""``rdm=``'s ``policy`` unless set: libxl's ``libxl__rdm_setdefault`` (xl.cfg(5) names none)."""

DEFAULT_DEVICE_POLICY = Policy.STRICT
"""A device's policy when neither it nor ``rdm=`` names one: ``libxl__device_pci_setdefault``."""

# Keys of a pci= spec that rmrrd accepts and ignores: they steer pciback and QEMU, not
# memory layout.  "bdf" is read (it is the keyed form of the positional address).
_IGNORED_PCI_KEYS = frozenset({"permissive", "msitranslate", "seize", "power_mgmt", "vslot", "name"})


class RdmConfig(NamedTuple):
    """A parsed ``rdm=`` string: the domain-wide strategy and policy."""

    strategy: Strategy | None = None
    policy: Policy | None = None
    """The ``policy`` the string names; ``None`` when it names none."""

    @property
    def domain_policy(self) -> Policy:
        """The policy of the domain's host regions: the named one, else ``relaxed``."""
        return self.policy or DEFAULT_DOMAIN_POLICY

    def __str__(self) -> str:
        items = [f"strategy={self.strategy.value}"] if self.strategy else []
        return ",".join(items + ([f"policy={self.policy}"] if self.policy else []))


class DeviceSpec(NamedTuple):
    """A parsed ``pci=`` entry: the device and its ``rdm_policy``."""

    bdf: Bdf
    policy: Policy | None = None
    """The ``rdm_policy`` the spec names; ``None`` when it names none."""

    def __str__(self) -> str:
        return f"{self.bdf},rdm_policy={self.policy}" if self.policy else str(self.bdf)


def _items(text: str, what: str) -> list[tuple[str, str]]:
    """Split ``k=v,k=v``; every item must have a key and a value."""
    items = []
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key or not value:
            raise InputError(f"{what}: item {item.strip()!r} is not KEY=VALUE")
        items.append((key, value))
    return items


def _policy(value: str, key: str, what: str) -> Policy:
    try:
        return Policy(value)
    except ValueError:
        raise InputError(f"{what}: {key}={value!r} is not strict or relaxed") from None


def parse_rdm(text: str) -> RdmConfig:
    """Parse an xl.cfg ``rdm=`` string; empty means xl's defaults.

    Raises :class:`InputError` for an unknown key, a value other than ``host`` for
    ``strategy`` or ``strict``/``relaxed`` for ``policy``, or a key given twice.
    """
    if not text.strip():
        return RdmConfig()
    what = "rdm="
    strategy: Strategy | None = None
    policy: Policy | None = None
    seen: set[str] = set()
    for key, value in _items(text, f"rdm= {text!r}"):
        if key in seen:
            raise InputError(f"{what}: {key} given twice in {text!r}")
        seen.add(key)
        if key == "strategy":
            if value != Strategy.HOST.value:
                raise InputError(f"{what}: strategy={value!r} is not supported: 'host' is xl's only strategy")
            strategy = Strategy.HOST
        elif key == "policy":
            policy = _policy(value, key, what)
        else:
            raise InputError(f"{what}: unknown key {key!r} in {text!r}: expected strategy or policy")
    return RdmConfig(strategy, policy)


def parse_device_spec(text: str) -> DeviceSpec:
    """Parse an xl ``pci=`` device specification, ``[DDDD:]BB:DD.F[@VSLOT][,KEY=VALUE...]``.

    The address may instead be given as ``bdf=...`` (xl's keyed form).  Raises
    :class:`InputError` for a bad address, an unknown key, a bad ``rdm_policy``, or
    a key given twice.
    """
    head, _, rest = text.strip().partition(",")
    what = f"device {text!r}"
    items = _items(rest, what) if rest else []
    address: str | None = None
    if "=" in head:
        items.insert(0, _items(head, what)[0])
    else:
        # "@VSLOT" places the device in the guest; it does not change what it needs.
        address = head.partition("@")[0]
    policy: Policy | None = None
    seen: set[str] = set()
    for key, value in items:
        if key in seen:
            raise InputError(f"{what}: {key} given twice")
        seen.add(key)
        if key == "rdm_policy":
            policy = _policy(value, key, what)
        elif key == "bdf":
            if address is not None:
                raise InputError(f"{what}: the address is given both positionally and as bdf=")
            address = value.partition("@")[0]
        elif key not in _IGNORED_PCI_KEYS:
            raise InputError(f"{what}: unknown key {key!r}: expected rdm_policy or one of xl's "
                             f"{', '.join(sorted(_IGNORED_PCI_KEYS | {'bdf'}))}")
    if not address:
        raise InputError(f"{what}: no PCI address")
    if address.endswith(".*"):
        raise InputError(f"{what}: all-functions '*' is not supported: name each function")
    return DeviceSpec(Bdf.parse(address), policy)
