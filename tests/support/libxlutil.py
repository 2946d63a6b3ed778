"""Xen 4.17's own xl.cfg parser (libxlutil, Debian's libxenmisc4.17), called through ctypes.

The oracle for rmrrd's reading of xl.cfg: the very functions xl calls
(``xlu_cfg_readdata``, ``xlu_cfg_get_string``/``_long``/``_list``, ``xlu_rdm_parse``,
``xlu_pci_parse_spec_string``).  Loading the library needs no Xen: only parsing runs.
``LIBXLUTIL`` is None when the library is not installed (scripts/bootstrap installs it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass


class _RdmReserve(ctypes.Structure):
    _fields_ = [("strategy", ctypes.c_int), ("policy", ctypes.c_int)]


class _DevicePci(ctypes.Structure):
    """``libxl_device_pci`` of Xen 4.17 (tools/libs/light/libxl_types.idl)."""

    _fields_ = [("func", ctypes.c_uint8), ("dev", ctypes.c_uint8), ("bus", ctypes.c_uint8),
                ("domain", ctypes.c_int), ("vdevfn", ctypes.c_uint32), ("vfunc_mask", ctypes.c_uint32),
                ("msitranslate", ctypes.c_bool), ("power_mgmt", ctypes.c_bool), ("permissive", ctypes.c_bool),
                ("seize", ctypes.c_bool), ("rdm_policy", ctypes.c_int), ("name", ctypes.c_char_p)]


UNTOUCHED = 0x5A5A
"""Written into an ``libxl_rdm_reserve`` before parsing, to see which fields xl left alone."""
POLICIES = {-1: "invalid", 0: "strict", 1: "relaxed"}


@dataclass(frozen=True)
class PciSpec:
    segment: int
    bus: int
    device: int
    function: int
    all_functions: bool
    rdm_policy: str


class Libxlutil:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libxlutil.so.4.17")
        self.light = ctypes.CDLL("libxenlight.so.4.17")
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.fopen.restype = ctypes.c_void_p
        self.devnull = libc.fopen(b"/dev/null", b"w")
        lib = self.lib
        lib.xlu_cfg_init.restype = ctypes.c_void_p
        lib.xlu_cfg_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.xlu_cfg_readdata.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.xlu_cfg_destroy.argtypes = [ctypes.c_void_p]
        lib.xlu_cfg_get_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p),
                                           ctypes.c_int]
        lib.xlu_cfg_get_long.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_long),
                                         ctypes.c_int]
        lib.xlu_cfg_get_list.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p),
                                         ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        lib.xlu_cfg_get_listitem.restype = ctypes.c_char_p
        lib.xlu_cfg_get_listitem.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.xlu_rdm_parse.argtypes = [ctypes.c_void_p, ctypes.POINTER(_RdmReserve), ctypes.c_char_p]
        lib.xlu_pci_parse_spec_string.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DevicePci), ctypes.c_char_p]
        self.light.libxl_device_pci_init.argtypes = [ctypes.POINTER(_DevicePci)]

    def _cfg(self) -> int:
        cfg: int = self.lib.xlu_cfg_init(self.devnull, b"test")
        return cfg

    def parse(self, text: str) -> Parsed | None:
        """The file as xl reads it, or None where xl fails to parse it."""
        cfg = self._cfg()
        data = text.encode()
        if self.lib.xlu_cfg_readdata(cfg, data, len(data)) != 0:
            self.lib.xlu_cfg_destroy(cfg)
            return None
        return Parsed(self, cfg)

    def rdm(self, text: str) -> tuple[int, str | None, str | None]:
        """``xlu_rdm_parse``: (return code, strategy, policy); None for a field left untouched."""
        cfg = self._cfg()
        rdm = _RdmReserve(UNTOUCHED, UNTOUCHED)
        rc = self.lib.xlu_rdm_parse(cfg, ctypes.byref(rdm), text.encode())
        self.lib.xlu_cfg_destroy(cfg)
        strategy = None if rdm.strategy == UNTOUCHED else {0: "ignore", 1: "host"}[rdm.strategy]
        policy = None if rdm.policy == UNTOUCHED else POLICIES[rdm.policy]
        return rc, strategy, policy

    def pci(self, text: str) -> PciSpec | None:
        """``xlu_pci_parse_spec_string`` on a freshly initialised device, or None where it fails."""
        cfg = self._cfg()
        pci = _DevicePci()
        self.light.libxl_device_pci_init(ctypes.byref(pci))
        rc = self.lib.xlu_pci_parse_spec_string(cfg, ctypes.byref(pci), text.encode())
        self.lib.xlu_cfg_destroy(cfg)
        if rc != 0:
            return None
        return PciSpec(pci.domain, pci.bus, pci.dev, pci.func, pci.vfunc_mask == 0xFFFFFFFF,
                       POLICIES[pci.rdm_policy])


class Parsed:
    """A parsed file: xl's accessors, with ``dont_warn`` set."""

    def __init__(self, owner: Libxlutil, cfg: int) -> None:
        self.owner, self.cfg = owner, cfg

    def string(self, key: str) -> str | None:
        value = ctypes.c_char_p()
        if self.owner.lib.xlu_cfg_get_string(self.cfg, key.encode(), ctypes.byref(value), 1) != 0:
            return None
        return (value.value or b"").decode()

    def number(self, key: str) -> int | None:
        value = ctypes.c_long()
        if self.owner.lib.xlu_cfg_get_long(self.cfg, key.encode(), ctypes.byref(value), 1) != 0:
            return None
        return value.value

    def items(self, key: str) -> list[str] | None:
        handle, count = ctypes.c_void_p(), ctypes.c_int()
        if self.owner.lib.xlu_cfg_get_list(self.cfg, key.encode(), ctypes.byref(handle), ctypes.byref(count), 1):
            return None
        items = []
        for index in range(count.value):
            item = self.owner.lib.xlu_cfg_get_listitem(handle, index)
            if item is None:
                break
            items.append(item.decode())
        return items

    def close(self) -> None:
        self.owner.lib.xlu_cfg_destroy(self.cfg)


def _load() -> Libxlutil | None:
    try:
        return Libxlutil()
    except OSError:
        return None


LIBXLUTIL = _load()
