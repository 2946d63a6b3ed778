"""libvirt's domain XML for its libxl driver, turned into what libxl will be given.

libvirt builds the ``libxl_domain_config`` itself (``src/libxl/libxl_conf.c``,
``libxlBuildDomainConfig``), so a hook that sees the XML can predict what libxl does
with it.  The conversions that decide the memory layout:

* ``<os><type>``: ``hvm`` is HVM, ``xenpvh`` PVH, anything else PV
  (``libxlMakeDomCreateInfo``);
* ``<memory>`` is ``max_memkb`` and ``<currentMemory>`` ``target_memkb``, each rounded
  up to a MiB ("Xen requires the memory sizes to be rounded to 1MiB increments",
  ``libxlMakeDomBuildInfo``); ``unit=`` as libvirt reads it, KiB by default;
* ``<features><hap state='off'/>`` turns HAP off, ``<hap/>`` on, none leaves libxl's
  default (on);
* ``<os firmware='efi'>`` or a ``<loader type='pflash'>`` is OVMF, else libxl's
  default (SeaBIOS, ROMBIOS for the ``qemu-dm`` emulator);
* the first ``<video>``: ``vga``/``xen`` is stdvga, ``cirrus``, ``qxl``, with
  ``video_memkb`` its ``vram`` (KiB); no video is ``vga=none`` (``libxlMakeVideo``);
* every ``<hostdev mode='subsystem' type='pci'>`` and ``<interface type='hostdev'>``
  with a PCI source is a ``pcidevs`` entry with no ``rdm_policy``, which libxl makes
  strict (``libxlMakePCI``); libvirt sets no ``rdm``, ``rdm_mem_boundary`` or
  ``mmio_hole``, so libxl's defaults apply.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from rmrrd import inputs
from rmrrd.errors import InputError
from rmrrd.core.libxl_domain import VIDEORAM_DEFAULTS, DeviceModel, DomainType, LibxlDomain
from rmrrd.core.pci import Bdf
from rmrrd.core.xlcfg import DeviceSpec, Policy

_UNITS = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
          "gb": 1000**3, "g": 1024**3, "gib": 1024**3, "tb": 1000**4, "t": 1024**4, "tib": 1024**4}
"""libvirt's ``unit=`` values (``virScaleInteger``), case-insensitive."""

_VIDEO_KINDS = {"vga": "stdvga", "xen": "stdvga", "cirrus": "cirrus", "qxl": "qxl"}


def parse_domain_xml(text: str) -> ET.Element:
    """The ``<domain>`` element; :class:`InputError` for anything else.

    Within the bounds of every input (:mod:`rmrrd.inputs`): at most
    :data:`~rmrrd.inputs.SMALL` bytes, elements nested at most
    :data:`~rmrrd.inputs.MAX_DEPTH` deep, and no DOCTYPE (libvirt writes none, and
    its entities are how XML expands without bound).
    """
    if len(text) > inputs.SMALL:
        raise InputError(f"domain XML: larger than {inputs.SMALL} bytes")
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise InputError("domain XML: a DOCTYPE or ENTITY declaration (libvirt writes none)")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InputError(f"domain XML: {exc}") from None
    if root.tag != "domain":
        raise InputError(f"domain XML: the root element is <{root.tag}>, not <domain>")
    level = [root]
    for _ in range(inputs.MAX_DEPTH):
        level = [child for element in level for child in element]
    if level:
        raise InputError(f"domain XML: elements nested deeper than {inputs.MAX_DEPTH} levels")
    return root


def _hex(element: ET.Element, name: str) -> int:
    """An address attribute as libvirt writes it (``0x0a``), read as libvirt reads it (base 0)."""
    text = element.get(name, "0")
    try:
        return int(text, 0)
    except ValueError:
        raise InputError(f"domain XML: PCI address {name}={text!r} is not a number") from None


def pci_devices(root: ET.Element) -> list[Bdf]:
    """The host PCI functions the domain is given, as libvirt passes them to libxl."""
    addresses = root.findall("./devices/hostdev[@mode='subsystem'][@type='pci']/source/address")
    addresses += root.findall("./devices/interface[@type='hostdev']/source/address[@type='pci']")
    return [Bdf(_hex(a, "domain"), _hex(a, "bus"), _hex(a, "slot"), _hex(a, "function")) for a in addresses]


def _mib(root: ET.Element, tag: str) -> int | None:
    """``<memory>`` or ``<currentMemory>`` in MiB, rounded up as libvirt does for Xen."""
    element = root.find(tag)
    if element is None or not (element.text or "").strip():
        return None
    unit = element.get("unit", "KiB").lower()
    if unit not in _UNITS:
        raise InputError(f"domain XML: <{tag}> unit {element.get('unit')!r} is unknown")
    try:
        value = int((element.text or "").strip())
    except ValueError:
        raise InputError(f"domain XML: <{tag}> {element.text!r} is not a whole number") from None
    return -(-value * _UNITS[unit] // (1 << 20))


def libxl_domain_from_xml(root: ET.Element) -> LibxlDomain:
    """What libxl is given for this domain XML (see the module docstring).

    Raises :class:`InputError` for XML that libvirt itself would not have produced
    (no ``<memory>``, a bad address).
    """
    os_type = (root.findtext("./os/type") or "").strip()
    kind = {"hvm": DomainType.HVM, "xenpvh": DomainType.PVH}.get(os_type, DomainType.PV)
    max_memory = _mib(root, "memory")
    if max_memory is None:
        raise InputError("domain XML: no <memory>")
    memory = _mib(root, "currentMemory") or max_memory
    hap = root.find("./features/hap")
    devices = tuple(DeviceSpec(bdf, Policy.STRICT) for bdf in pci_devices(root))
    refusals = []
    if devices and memory < max_memory and kind is not DomainType.PV:
        refusals.append(f"currentMemory {memory} MiB < memory {max_memory} MiB starts the guest in PoD mode, "
                        f"which libxl refuses with PCI devices")
    domain = LibxlDomain(kind, max_memory, memory, hap=hap is None or hap.get("state", "on") != "off",
                         pci=devices, refusals=tuple(refusals))
    if kind is not DomainType.HVM:
        return domain
    emulator = (root.findtext("./devices/emulator") or "").strip()
    model = DeviceModel.TRADITIONAL if emulator.rsplit("/", 1)[-1] == "qemu-dm" else DeviceModel.QEMU_XEN
    os_element, loader = root.find("./os"), root.find("./os/loader")
    if (os_element is not None and os_element.get("firmware") == "efi") or (
            loader is not None and loader.get("type") == "pflash"):
        bios = "ovmf"
    else:
        bios = "rombios" if model is DeviceModel.TRADITIONAL else "seabios"
    video = root.find("./devices/video/model")
    if video is None:
        videoram = 0
    else:
        kind_name = _VIDEO_KINDS.get(video.get("type", ""))
        limits = VIDEORAM_DEFAULTS[model].get(kind_name or "")
        vram = video.get("vram")
        if limits is None:
            raise InputError(f"domain XML: video type {video.get('type')!r} is not one libvirt's libxl driver "
                             f"accepts")
        videoram = -(-int(vram) // 1024) if vram else limits[0]
    return domain._replace(videoram_mib=videoram, bios=bios)
