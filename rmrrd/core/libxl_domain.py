"""What stock xl and libxl 4.17 make of a domain's configuration, for its memory layout.

:class:`LibxlDomain` is the part of libxl's ``libxl_domain_config`` that decides where
an HVM guest's RAM goes and what happens to its reserved regions, after libxl's
defaults.  It is built from an xl.cfg file by :func:`from_xl_config` (xl's own
parsing rules and bugs included) and from libvirt's domain XML by
:mod:`rmrrd.core.libvirt_xml`; :meth:`LibxlDomain.setup_keys` turns it into the strings of a
setup request (the ``/libxl/<domid>/rdm/`` keys), which the planner reads as it reads
any request.  Every rule below is checked against Xen 4.17's sources:

* ``tools/xl/xl_parse.c`` ``parse_config_data``: the keys and their checks; ``type``
  matches a *prefix* (``strncmp(buf, "hvm", strlen(buf))``); ``maxmem`` defaults to
  ``memory``; each ``pci=`` device starts with the policy of ``rdm=`` ("the per-device
  policy always follows the global policy by default");
* ``tools/libs/util/libxlu_pci.c`` (:mod:`rmrrd.core.libxlu`): an ``rdm=`` that names a
  valid ``policy=`` fails to parse (the inverted test of 4.15+) and xl drops the whole
  setting without a word; an ``rdm=`` with only ``strategy=host`` leaves the policy as
  it was, and xl's ``libxl_rdm_reserve rdm`` is never initialised;
* ``tools/libs/light/libxl_create.c`` ``libxl__domain_build_info_setdefault``: HAP on
  (rmrrd assumes a host with HAP), firmware and video RAM defaults by device model
  and ``vga``, ``libxl__rdm_setdefault`` (domain policy relaxed, boundary 2048 MiB);
  ``libxl__domain_config_setdefault`` refuses PoD (``memory < maxmem``) with PCI
  devices; ``libxl_x86.c`` refuses passthrough to PVH guests;
* ``tools/libs/light/libxl_dom.c`` ``libxl__build_hvm``: the layout is built from
  ``max_memkb - video_memkb``; ``libxl_pci.c`` ``libxl__device_pci_setdefault``: a
  device with no policy is strict.

A value libxl would leave undefined (the uninitialised policy) is predicted as if it
held libxl's "unset" value, and said in a warning.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from rmrrd.errors import InputError
from rmrrd.core.libxlu import RdmParse, xl_pci_spec, xlu_rdm_parse
from rmrrd.core.pci import Bdf
from rmrrd.core.xlcfg import DeviceSpec, Policy

if TYPE_CHECKING:  # the planner is imported when a request is built, not by the hooks' fast exits
    from rmrrd.core.inventory import Inventory
    from rmrrd.core.planner import DomainRequest, Plan
    from rmrrd.core.xlcfg_file import XlConfig

MMIO_HOLE_DEFAULT_MIB = 256
"""``HVM_BELOW_4G_MMIO_LENGTH``, libxl's hole when none is set."""
MMIO_HOLE_RANGE_MIB = (256, 3840)
"""xl refuses an ``mmio_hole`` outside ``HVM_BELOW_4G_MMIO_LENGTH``..``_START``."""
RDM_MEM_BOUNDARY_DEFAULT_MIB = 2048
"""``LIBXL_RDM_MEM_BOUNDARY_MEMKB_DEFAULT``."""
DEFAULT_MEMORY_MIB = 32
"""libxl's ``max_memkb`` when neither ``memory`` nor ``maxmem`` is set."""

POLICY_BUG_FIX = ('write rdm="strategy=host" without policy= and give every pci= device its own '
                  "rdm_policy=")


class DomainType(enum.Enum):
    """``libxl_domain_type``: only HVM guests have reserved regions handled."""

    HVM = "hvm"
    PV = "pv"
    PVH = "pvh"


class DeviceModel(enum.Enum):
    """``device_model_version``: it decides the default firmware and video RAM."""

    QEMU_XEN = "qemu-xen"
    TRADITIONAL = "qemu-xen-traditional"


# libxl__domain_build_info_setdefault: (default video RAM, minimum) in MiB by device
# model and vga kind; None for a kind the device model refuses.
VIDEORAM_DEFAULTS: dict[DeviceModel, dict[str, tuple[int, int] | None]] = {
    DeviceModel.QEMU_XEN: {"none": (0, 0), "qxl": (128, 128), "stdvga": (16, 16), "cirrus": (8, 8)},
    DeviceModel.TRADITIONAL: {"none": (0, 0), "qxl": None, "stdvga": (8, 8), "cirrus": (4, 4)},
}

BIOS_NAMES = ("unknown", "rombios", "seabios", "ovmf")
"""``libxl_bios_type``'s names; "unknown" is its 0, which means "the default"."""


class LibxlDomain(NamedTuple):
    """A domain's layout inputs as libxl holds them once its defaults are applied.

    Sizes are MiB.  ``pci`` devices carry the policy libxl assigns them with.
    ``refusals`` are the reasons libxl will refuse to create the domain whatever its
    reserved regions (an empty tuple when there are none).
    """

    type: DomainType
    max_memory_mib: int
    memory_mib: int
    videoram_mib: int = 0
    hap: bool = True
    bios: str = "seabios"
    mmio_hole_mib: int = MMIO_HOLE_DEFAULT_MIB
    rdm_host: bool = False
    rdm_policy: Policy = Policy.RELAXED
    rdm_mem_boundary_mib: int = RDM_MEM_BOUNDARY_DEFAULT_MIB
    pci: tuple[DeviceSpec, ...] = ()
    refusals: tuple[str, ...] = ()
    passthrough: bool = True
    """Whether the domain was created able to take devices (``c_info.passthrough``;
    libxl's default is "only when it has ``pci=`` devices at creation")."""
    device_policy: Policy = Policy.STRICT
    """The policy of a device added without its own ``rdm_policy``: strict, whether
    attached to the running domain (``xl pci-attach`` and libvirt hand libxl an unset
    policy, which ``libxl__device_pci_setdefault`` makes strict whatever the domain's
    ``rdm=`` policy) or named in ``pci=`` (xl copies the ``rdm=`` policy, which 4.15
    and later never set)."""

    def setup_keys(self) -> dict[str, str]:
        """The setup request's single-valued keys (``memory``, ``config`` ...) as strings.

        ``memory`` is what libxl lays out, ``maxmem``, of which ``videoram`` is video
        RAM.  Raises :class:`InputError` for a domain that is not HVM: Xen handles
        reserved regions for HVM guests only (``libxl__domain_device_construct_rdm``
        runs from ``libxl__build_hvm``).
        """
        if self.type is not DomainType.HVM:
            raise InputError(f"a {self.type.value.upper()} guest: Xen reserves device memory for HVM guests "
                             f"only, there is no layout to plan")
        return {
            "memory": str(self.max_memory_mib),
            "mmio_hole": str(self.mmio_hole_mib),
            "config": f"strategy=host,policy={self.rdm_policy}" if self.rdm_host else "",
            "mem_boundary": str(self.rdm_mem_boundary_mib),
            "videoram": str(self.videoram_mib),
            "hap": "1" if self.hap else "0",
            "bios": self.bios,
        }

    def pci_specs(self) -> list[str]:
        """The ``pci/<n>`` values: every device with the policy libxl assigns it with."""
        return [f"{spec.bdf},rdm_policy={spec.policy}" for spec in self.pci]


class Prediction(NamedTuple):
    """What xl makes of a file: the domain, and what an operator should know about it."""

    domain: LibxlDomain
    warnings: list[str]


# --- xl.cfg to LibxlDomain -------------------------------------------------------------


def _type(cfg: XlConfig) -> DomainType:
    """``type`` (a prefix of hvm, pv or pvh, in that order) and the deprecated ``builder``."""
    kind: DomainType | None = None
    text = cfg.string("type")
    if text is not None:
        kind = next((t for t in DomainType if t.value.startswith(text)), None)
        if kind is None:
            raise InputError(f"{cfg.where('type')}: invalid domain type {text!r}: xl refuses it")
    builder = cfg.string("builder")
    if builder is not None:
        built = (DomainType.HVM if "hvm".startswith(builder)
                 else DomainType.PV if "generic".startswith(builder) else None)
        if built is None:
            raise InputError(f"{cfg.where('builder')}: invalid domain type {builder!r}: xl refuses it")
        if kind is not None and kind is not built:
            raise InputError(f"{cfg.where('builder')}: contradicts type: xl refuses it")
        kind = built
    return kind or DomainType.PV


def _size(cfg: XlConfig, key: str) -> int | None:
    value = cfg.number(key)
    if value is not None and value <= 0:
        raise InputError(f"{cfg.where(key)}: {value} MiB: xl passes it to libxl as a huge size, refused here")
    return value


def _rdm(cfg: XlConfig, warnings: list[str]) -> bool:
    """``rdm=``: whether xl keeps ``strategy=host``, with a warning for each of its traps."""
    text = cfg.string("rdm")
    if text is None:
        return False
    where = cfg.where("rdm")
    result = xlu_rdm_parse(text)
    if result is RdmParse.POLICY_BUG:
        warnings.append(
            f"{where}: xl 4.15 and later drop an rdm= that names a policy (an inverted test of "
            f"parse_rdm_policy() in xlu_rdm_parse(), tools/libs/util/libxlu_pci.c), without a word: "
            f"this guest gets no host reservations and its pci= devices without rdm_policy are strict. "
            f"Fix: {POLICY_BUG_FIX}")
    elif result is RdmParse.INVALID:
        warnings.append(f"{where}: xl cannot parse rdm={text!r} and ignores it: no host reservations")
    else:
        unset = "policy" if result is RdmParse.HOST else "strategy and policy"
        warnings.append(
            f"{where}: xl leaves the rdm {unset} uninitialised (parse_config_data's libxl_rdm_reserve is "
            f"never initialised and xlu_rdm_parse sets no policy): the host regions' policy and that of "
            f"pci= devices without rdm_policy depend on the xl binary; predicted as libxl's unset value "
            f"(host regions relaxed, devices strict"
            + (", no host reservations" if result is RdmParse.NO_STRATEGY else "")
            + "). Fix: give every pci= device its own rdm_policy=")
    return result is RdmParse.HOST


def _devices(cfg: XlConfig) -> list[DeviceSpec]:
    """``pci=``: each function with the policy libxl assigns it with.

    xl starts each device with the ``rdm=`` policy, which is libxl's INVALID (no usable
    ``rdm=``) or uninitialised (predicted as INVALID): either way a device that names
    no ``rdm_policy`` is strict (``libxl__device_pci_setdefault``).
    """
    devices: list[DeviceSpec] = []
    for entry in cfg.items("pci") or []:
        try:
            bdfs, policy = xl_pci_spec(entry)
        except InputError as exc:
            raise InputError(f"{cfg.where('pci')}: {exc}") from None
        devices += [DeviceSpec(bdf, policy or Policy.STRICT) for bdf in bdfs]
    return devices


def _firmware(cfg: XlConfig, model: DeviceModel, warnings: list[str]) -> str:
    """``bios`` then ``firmware`` (which wins), then libxl's default for the device model."""
    bios: str | None = None
    text = cfg.string("bios")
    if text is not None:
        if text.lower() not in BIOS_NAMES:
            raise InputError(f"{cfg.where('bios')}: invalid value {text!r}: xl refuses it")
        bios = text.lower()
    firmware = cfg.string("firmware")
    if firmware is not None:
        if firmware.lower() in BIOS_NAMES:
            bios = firmware.lower()
        elif "uefi".startswith(firmware):
            bios = "ovmf"
        elif not "bios".startswith(firmware):
            warnings.append(f"{cfg.where('firmware')}: a custom firmware image: predicted as hvmloader would "
                            f"lay out the guest")
    if bios in (None, "unknown"):
        bios = "rombios" if model is DeviceModel.TRADITIONAL else "seabios"
    return bios


def _videoram(cfg: XlConfig, model: DeviceModel, refusals: list[str]) -> int:
    kind = "cirrus"
    vga = cfg.string("vga")
    if vga is not None:
        if vga not in ("stdvga", "cirrus", "none", "qxl"):
            raise InputError(f"{cfg.where('vga')}: unknown vga {vga!r}: xl refuses it")
        kind = vga
    else:
        std = cfg.boolean("stdvga")
        if std is not None:
            kind = "stdvga" if std else "cirrus"
    limits = VIDEORAM_DEFAULTS[model][kind]
    if limits is None:
        refusals.append(f"{cfg.where('vga')}: qxl needs the qemu-xen device model: libxl refuses it")
        return 0
    default, minimum = limits
    given = cfg.number("videoram")
    if given is None:
        return default
    if model is DeviceModel.TRADITIONAL and kind == "cirrus":
        return 4  # "ignoring videoram other than 4 MB for CIRRUS on QEMU_XEN_TRADITIONAL"
    if given < minimum:
        refusals.append(f"{cfg.where('videoram')}: {given} MiB is below the {minimum} MiB {kind} needs: "
                        f"libxl refuses it")
    return given


PASSTHROUGH_MODES = ("default", "disabled", "enabled", "sync_pt", "share_pt")
"""``libxl_passthrough``'s names, as ``libxl_passthrough_from_string`` takes them (any case)."""


def _passthrough(cfg: XlConfig, has_devices: bool, refusals: list[str]) -> bool:
    """``passthrough=``: whether the domain is created able to take devices.

    ``libxl__domain_config_setdefault``: "default" enables it only for a domain with
    ``pci=`` devices at creation, so a domain created without them refuses a device
    hot-plugged later; "disabled" with devices is refused.
    """
    text = cfg.string("passthrough")
    mode = "default" if text is None else text.lower()
    if mode not in PASSTHROUGH_MODES:
        raise InputError(f"{cfg.where('passthrough')}: unknown passthrough option {text!r}: xl refuses it")
    if mode == "disabled" and has_devices:
        refusals.append(f"{cfg.where('passthrough')}: passthrough disabled but devices are specified: "
                        f"libxl refuses it")
    return mode != "disabled" and (mode != "default" or has_devices)


def from_xl_config(cfg: XlConfig) -> Prediction:
    """What ``xl create`` makes of the file, as far as the memory layout goes.

    Raises :class:`InputError` naming file, line and key where xl itself would stop.
    Warnings (``FILE:LINE: KEY: ...``) include every setting xl ignores.
    """
    warnings: list[str] = []
    refusals: list[str] = []
    kind = _type(cfg)
    hap = cfg.boolean("hap")
    memory, maxmem = _size(cfg, "memory"), _size(cfg, "maxmem")
    max_memory = maxmem or memory or DEFAULT_MEMORY_MIB
    target = memory or max_memory
    rdm_host = _rdm(cfg, warnings)
    devices = _devices(cfg)
    passthrough = _passthrough(cfg, bool(devices), refusals)
    if passthrough and target < max_memory and kind is not DomainType.PV:
        refusals.append(f"{cfg.where('memory')}: memory {target} MiB < maxmem {max_memory} MiB starts the guest "
                        f"in PoD mode, which libxl refuses with passthrough (IOMMU required for device "
                        f"passthrough but not supported together with PoD)")
    if passthrough and kind is DomainType.PVH:
        refusals.append(f"{cfg.where('pci' if devices else 'passthrough')}: libxl refuses passthrough to x86 "
                        f"PVH guests")
    domain = LibxlDomain(kind, max_memory, target, hap=True if hap is None else hap,
                         rdm_host=rdm_host, pci=tuple(devices), passthrough=passthrough)
    if kind is DomainType.HVM:
        domain = _hvm(cfg, domain, warnings, refusals)
    warnings += [f"{cfg.source}:{problem.line}: {problem.key}: {problem.message}" for problem in cfg.problems]
    return Prediction(domain._replace(refusals=tuple(refusals)), warnings)


def _hvm(cfg: XlConfig, domain: LibxlDomain, warnings: list[str], refusals: list[str]) -> LibxlDomain:
    """The HVM-only keys, in ``parse_config_data``'s order."""
    hole = cfg.number("mmio_hole")
    if hole is not None and not MMIO_HOLE_RANGE_MIB[0] <= hole <= MMIO_HOLE_RANGE_MIB[1]:
        raise InputError(f"{cfg.where('mmio_hole')}: invalid value {hole}: xl refuses an mmio_hole outside "
                         f"{MMIO_HOLE_RANGE_MIB[0]}..{MMIO_HOLE_RANGE_MIB[1]} MiB")
    boundary = cfg.number("rdm_mem_boundary")
    if boundary is not None and boundary < 0:
        raise InputError(f"{cfg.where('rdm_mem_boundary')}: {boundary} MiB is negative: refused here")
    model = DeviceModel.QEMU_XEN
    text = cfg.string("device_model_version")
    if text is not None:
        try:
            model = DeviceModel(text)
        except ValueError:
            raise InputError(f"{cfg.where('device_model_version')}: unknown device model {text!r}: "
                             f"xl refuses it") from None
    elif cfg.boolean("device_model_stubdomain_override"):
        model = DeviceModel.TRADITIONAL
    bios = _firmware(cfg, model, warnings)
    if model is DeviceModel.TRADITIONAL and bios != "rombios":
        refusals.append(f"{cfg.where('bios')}: qemu-xen-traditional requires bios=rombios: libxl refuses it")
    if model is DeviceModel.QEMU_XEN and bios == "rombios":
        refusals.append(f"{cfg.where('bios')}: qemu-xen does not support bios=rombios: libxl refuses it")
    videoram = _videoram(cfg, model, refusals)
    if domain.max_memory_mib - videoram < 2:
        raise InputError(f"{cfg.where('memory')}: {domain.max_memory_mib} MiB leaves no guest RAM beside "
                         f"{videoram} MiB of video RAM")
    return domain._replace(videoram_mib=videoram, bios=bios,
                           mmio_hole_mib=MMIO_HOLE_DEFAULT_MIB if hole is None else hole,
                           rdm_mem_boundary_mib=RDM_MEM_BOUNDARY_DEFAULT_MIB if boundary is None else boundary)


# --- libxl's saved configuration (the JSON of `xl list -l`) to LibxlDomain -----------------

KIB_PER_MIB = 1024
_JSON_VGA = {"std": "stdvga", "cirrus": "cirrus", "none": "none", "qxl": "qxl"}
"""``libxl_vga_interface_type`` names as libxl's JSON writes them, to xl.cfg's ``vga``."""


class _Json:
    """One object of libxl's JSON, read with errors naming the field's path."""

    def __init__(self, obj: object, where: str) -> None:
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected an object, found {type(obj).__name__}")
        self.obj: dict[str, object] = obj
        self.where = where

    def sub(self, key: str) -> _Json:
        return _Json(self.obj.get(key, {}), f"{self.where}.{key}")

    def text(self, key: str) -> str | None:
        value = self.obj.get(key)
        if value is not None and not isinstance(value, str):
            raise InputError(f"{self.where}.{key}: expected a string, found {value!r:.40}")
        return value

    def number(self, key: str, low: int = 0, high: int = 2**64 - 1) -> int | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InputError(f"{self.where}.{key}: expected an integer {low}..{high}, found {value!r:.40}")
        return value

    def enum(self, key: str, names: Sequence[str]) -> str | None:
        value = self.text(key)
        if value is not None and value not in names:
            raise InputError(f"{self.where}.{key}: {value!r:.40} is not one of {', '.join(names)}")
        return value

    def memkb(self, key: str) -> int | None:
        """A ``MemKB`` field in MiB (libxl leaves a field at its default out of the JSON)."""
        value = self.number(key)
        return None if value is None else value // KIB_PER_MIB

    def defbool(self, key: str) -> bool | None:
        value = self.enum(key, ("True", "False", "<default>"))
        return None if value in (None, "<default>") else value == "True"


def _json_policy(field: _Json, key: str) -> Policy | None:
    """``libxl_rdm_reserve_policy``: ``invalid`` (libxl's "unset") reads as None."""
    value = field.enum(key, ("invalid", "strict", "relaxed"))
    return None if value in (None, "invalid") else Policy(value)


def _json_devices(config: _Json) -> list[DeviceSpec]:
    """``pcidevs``: each function with the policy it was assigned with (an unset one
    is strict: ``libxl__device_pci_setdefault``)."""
    entries = config.obj.get("pcidevs", [])
    if not isinstance(entries, list):
        raise InputError(f"{config.where}.pcidevs: expected a list")
    devices = []
    for n, entry in enumerate(entries):
        device = _Json(entry, f"{config.where}.pcidevs[{n}]")
        bdf = Bdf(device.number("domain", 0, 0xFFFF) or 0, device.number("bus", 0, 0xFF) or 0,
                  device.number("dev", 0, 0x1F) or 0, device.number("func", 0, 7) or 0)
        devices.append(DeviceSpec(bdf, _json_policy(device, "rdm_policy") or Policy.STRICT))
    return devices


def from_libxl_json(obj: object) -> LibxlDomain:
    """What libxl built, from the configuration it saved for a running domain.

    ``obj`` is the object libxl keeps in ``/var/lib/xen/userdata-d.<domid>.<uuid>.libxl-json``
    (``libxl__set_domain_configuration``), the ``config`` that ``xl list -l`` prints:
    the configuration as xl handed it over, before libxl's defaults, which are applied
    here as for an xl.cfg file.  Field names and enum strings are those of
    ``tools/libs/light/libxl_types.idl``; a field at its default is absent.  Raises
    :class:`InputError` naming the field that is malformed.  xl's ``rdm=`` policy bug
    leaves no trace in it: a dropped ``rdm=`` looks like none.
    """
    config = _Json(obj, "libxl-json")
    c_info, b_info = config.sub("c_info"), config.sub("b_info")
    kind = c_info.enum("type", [t.value for t in DomainType])
    if kind is None:
        raise InputError("libxl-json.c_info.type: missing (hvm, pv or pvh)")
    max_memory = b_info.memkb("max_memkb") or DEFAULT_MEMORY_MIB
    target = b_info.memkb("target_memkb") or max_memory
    devices = _json_devices(config)
    hap = c_info.defbool("hap")
    # libxl__domain_config_setdefault: "default" is enabled only for a domain created
    # with PCI or device-tree devices (a device attached later is in pcidevs too, and
    # could only be attached to a domain that had passthrough).
    mode = c_info.enum("passthrough", ("default", "disabled", "enabled", "sync_pt", "share_pt"))
    passthrough = mode not in (None, "default", "disabled") or (
        mode != "disabled" and bool(devices or config.obj.get("dtdevs")))
    domain = LibxlDomain(DomainType(kind), max_memory, target, hap=True if hap is None else hap, pci=tuple(devices),
                         passthrough=passthrough)
    if domain.type is not DomainType.HVM:
        return domain
    hvm = b_info.sub("type.hvm")
    model = (DeviceModel.TRADITIONAL if b_info.enum("device_model_version", ("unknown", "qemu_xen_traditional",
                                                                             "qemu_xen")) == "qemu_xen_traditional"
             else DeviceModel.QEMU_XEN)
    bios = hvm.enum("bios", BIOS_NAMES)
    if bios in (None, "unknown"):
        bios = "rombios" if model is DeviceModel.TRADITIONAL else "seabios"
    vga = _JSON_VGA.get(hvm.sub("vga").enum("kind", ("unknown", *_JSON_VGA)) or "cirrus", "cirrus")
    videoram = b_info.memkb("video_memkb")
    if videoram is None:
        default = VIDEORAM_DEFAULTS[model][vga]
        videoram = default[0] if default is not None else 0
    rdm = hvm.sub("rdm")
    hole = hvm.memkb("mmio_hole_memkb")
    boundary = hvm.memkb("rdm_mem_boundary_memkb")
    return domain._replace(videoram_mib=videoram, bios=bios,
                           mmio_hole_mib=hole or MMIO_HOLE_DEFAULT_MIB,
                           rdm_host=rdm.enum("strategy", ("ignore", "host")) == "host",
                           # libxl__rdm_setdefault: a domain policy left unset is relaxed.
                           rdm_policy=_json_policy(rdm, "policy") or Policy.RELAXED,
                           rdm_mem_boundary_mib=RDM_MEM_BOUNDARY_DEFAULT_MIB if boundary is None else boundary)


def _kib(keys: Mapping[str, str | None], key: str, what: str) -> int | None:
    text = keys.get(key)
    if text is None:
        return None
    if not text.isdigit() or len(text) > 20:
        raise InputError(f"{what} {text[:40]!r} is not a number of KiB")
    return int(text) // KIB_PER_MIB


_BACKEND_DEV = re.compile(r"dev-(\d{1,4})")


def backend_devices(backend: Mapping[str, str], what: str) -> list[DeviceSpec]:
    """The devices of a PCI backend as libxl writes it (``libxl_create_pci_backend_device``):
    ``dev-<n>`` the function, ``opts-<n>`` its options, ``rdm_policy`` among them."""
    devices = []
    for key in sorted(backend, key=lambda key: (len(key), key)):
        match = _BACKEND_DEV.fullmatch(key)
        if match is None:
            continue
        try:
            bdf = Bdf.parse(backend[key])
        except InputError as exc:
            raise InputError(f"{what}/{key}: {exc}") from None
        opts = dict(item.partition("=")[::2] for item in backend.get(f"opts-{match[1]}", "").split(","))
        policy = opts.get("rdm_policy", "invalid")
        devices.append(DeviceSpec(bdf, Policy(policy) if policy in ("strict", "relaxed") else Policy.STRICT))
    return devices


def from_libxl_xenstore(kind: str, keys: Mapping[str, str | None], backend: Mapping[str, str] | None,
                        saved: LibxlDomain | None, what: str) -> LibxlDomain:
    """What libxl built, from what it wrote to xenstore over its saved configuration.

    ``kind`` is ``/libxl/<domid>/type``; ``keys`` the domain's ``memory/static-max``,
    ``memory/target`` and ``memory/videoram`` (KiB, ``libxl__build_post``) and
    ``platform/mmio_hole_size`` (bytes) and ``platform/device-model``
    (``libxl__domain_build``), by :func:`rmrrd.protocol.domain_keys`' names; ``backend``
    the PCI backend's keys (None: there is none).  Xenstore says what is running
    (the memory, the devices attached now, hot-plugged ones included; none without a
    backend, whatever ``saved`` lists: ``xl pci-detach`` of a domain's last device
    removes the backend before libxl takes the device out of the saved configuration,
    and creation writes the backend before it saves the configuration); ``saved``
    (:func:`from_libxl_json`) adds what only the configuration holds: ``rdm=``,
    ``rdm_mem_boundary``, the firmware, HAP and passthrough.  Without it those are
    libxl's defaults.  Raises :class:`InputError` naming ``what`` and the key.
    """
    try:
        guest = DomainType(kind)
    except ValueError:
        raise InputError(f"{what}: type {kind[:20]!r} is not hvm, pv or pvh") from None
    max_memory = _kib(keys, "static_max", f"{what}: memory/static-max") or DEFAULT_MEMORY_MIB
    target = _kib(keys, "target", f"{what}: memory/target") or max_memory
    domain = saved if saved is not None and saved.type is guest else LibxlDomain(guest, max_memory, target)
    devices = () if backend is None else tuple(backend_devices(backend, f"{what}: PCI backend"))
    domain = domain._replace(max_memory_mib=max_memory, memory_mib=target, pci=devices,
                             passthrough=domain.passthrough or bool(devices))
    if guest is not DomainType.HVM:
        return domain
    if saved is None:
        model = (DeviceModel.TRADITIONAL if keys.get("device_model") == "qemu_xen_traditional"
                 else DeviceModel.QEMU_XEN)
        domain = domain._replace(bios="rombios" if model is DeviceModel.TRADITIONAL else "seabios")
    videoram = _kib(keys, "videoram", f"{what}: memory/videoram")
    hole = keys.get("mmio_hole")
    if hole is not None:
        if not hole.isdigit() or len(hole) > 20:
            raise InputError(f"{what}: platform/mmio_hole_size {hole[:40]!r} is not a number of bytes")
        domain = domain._replace(mmio_hole_mib=int(hole) // (KIB_PER_MIB * KIB_PER_MIB))
    return domain if videoram is None else domain._replace(videoram_mib=videoram)


def domain_request(domain: LibxlDomain, hotplug: Sequence[str] = (), migrate: Sequence[str] = (),
                   reserve: Sequence[str] = (), *, seabios_size: int | None = None) -> DomainRequest:
    """The planner's request for ``domain``, plus rmrrd's own what-ifs (hot-plug, migrate, reserve).

    ``seabios_size`` (KiB) is the host's SeaBIOS image, which xl.cfg does not say
    (``defaults.seabios_size``; upstream's 128 when None).
    """
    from rmrrd.core.planner import XL_DEFAULTS, parse_domain_request

    keys = domain.setup_keys()
    defaults = XL_DEFAULTS if seabios_size is None else XL_DEFAULTS._replace(seabios_size=seabios_size)
    request = parse_domain_request(keys["memory"], keys["mmio_hole"], keys["config"], keys["mem_boundary"],
                                   domain.pci_specs(), hotplug, migrate, reserve, defaults,
                                   videoram=keys["videoram"], hap=keys["hap"], bios=keys["bios"])
    return request._replace(device_policy=domain.device_policy)


def libxl_plan(domain: LibxlDomain, host: Inventory, peers: Mapping[str, Inventory], *,
               seabios_size: int | None = None) -> tuple[DomainRequest, Plan]:
    """The layout libxl gives ``domain`` on ``host``, and the request it is planned from.

    What the checks judge a device or a migration against, for a domain the daemon
    learned from libxl and for one ``rmrrd check --xl-config`` reads from a file: an
    HVM guest's layout is the planner's, a PV or PVH guest has none
    (:func:`rmrrd.core.planner.learned_plan`).  Raises :class:`InputError` as the
    planner does.
    """
    from rmrrd.core.planner import DomainRequest, learned_plan

    if domain.type is DomainType.HVM:
        request = domain_request(domain, seabios_size=seabios_size)
    else:
        request = DomainRequest(domain.max_memory_mib, pci=domain.pci).validated()
    return request, learned_plan(domain.type.value, request, domain.passthrough, host, peers)
