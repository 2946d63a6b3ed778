"""What stock xl makes of an xl.cfg file: rdm=, pci= and the layout keys.

``rdm=`` and ``pci=`` strings are held against libxlutil 4.17 itself (``xlu_rdm_parse``,
``xlu_pci_parse_spec_string``); the rest against the rules of ``xl_parse.c`` and
``libxl_create.c`` cited in rmrrd.core.libxl_domain, on the example files Xen ships.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.libxlutil import LIBXLUTIL
from rmrrd.errors import InputError
from rmrrd.core.checks import check_assign
from rmrrd.core.inventory import HostRegion, Inventory
from rmrrd.core.libxl_domain import (DomainType, LibxlDomain, domain_request, from_libxl_json, from_libxl_xenstore,
                                     from_xl_config, libxl_plan)
from rmrrd.core.libxlu import RdmParse, xl_pci_spec, xlu_rdm_parse
from rmrrd.core.pci import Bdf
from rmrrd.core.ranges import parse_range
from rmrrd.core.xlcfg import DeviceSpec, Policy, parse_device_spec
from rmrrd.core.xlcfg_file import load_xl_config, parse_xl_config

EXAMPLES = Path(__file__).resolve().parents[1] / ".tools" / "xen-utils-common" / "etc" / "xen"
needs_libxlutil = pytest.mark.skipif(LIBXLUTIL is None, reason="libxlutil.so.4.17 (libxenmisc4.17) not installed")

RDM_CASES = ["strategy=host", "strategy=host,policy=relaxed", "strategy=host,policy=strict", "policy=strict",
             "policy=Relaxed,strategy=host", "strategy=host,policy=invalid", "strategy=host,policy=bogus",
             "policy=bogus", "", "strategy=host,", "strategy=ignore", "strategy = host", "foo=bar",
             "strategy=host,strategy=host", "strategy=host,policy=relaxed,extra", ",", "strategy="]


def _oracle_rdm(text: str) -> RdmParse | str:
    """libxlutil's verdict, in the terms rmrrd predicts (a failure is either kind)."""
    assert LIBXLUTIL is not None
    rc, strategy, policy = LIBXLUTIL.rdm(text)
    if rc != 0:
        return "failed"
    assert policy is None, "xlu_rdm_parse never succeeds with a policy set"
    return RdmParse.HOST if strategy == "host" else RdmParse.NO_STRATEGY


def _ours_rdm(text: str) -> RdmParse | str:
    result = xlu_rdm_parse(text)
    return "failed" if result in (RdmParse.POLICY_BUG, RdmParse.INVALID) else result


@needs_libxlutil
@pytest.mark.parametrize("text", RDM_CASES)
def test_rdm_parse_as_libxlutil(text: str) -> None:
    assert _ours_rdm(text) == _oracle_rdm(text)


@needs_libxlutil
@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["strategy", "policy", "=", ",", "host", "strict", "relaxed", "Strict", "x", " "]),
                max_size=8).map("".join))
def test_generated_rdm_strings_parse_as_libxlutil(text: str) -> None:
    assert _ours_rdm(text) == _oracle_rdm(text)


@needs_libxlutil
def test_the_policy_bug_is_in_the_real_library() -> None:
    """Xen 4.17's libxlutil refuses rdm= with a valid policy and accepts one with a bogus policy."""
    assert LIBXLUTIL is not None
    assert LIBXLUTIL.rdm("strategy=host,policy=relaxed")[0] != 0
    assert LIBXLUTIL.rdm("strategy=host,policy=bogus") == (0, "host", None)
    assert xlu_rdm_parse("strategy=host,policy=relaxed") is RdmParse.POLICY_BUG
    assert xlu_rdm_parse("strategy=bogus") is RdmParse.INVALID


PCI_CASES = ["01:00.0", "0000:01:00.0", "0000:01:00.0,rdm_policy=relaxed", "01:00.0,rdm_policy=STRICT",
             "01:00.0,rdm_policy=invalid", "01:00.0,rdm_policy=bogus", "01:00.0, rdm_policy=relaxed",
             "01:00.0@3", "01:00.0@20", "01:00.*", "bdf=01:00.0,permissive=1", "01:1f.7", "01:20.0", "01:00.8",
             "1:2.3,msitranslate=1,seize=0,power_mgmt=1,vslot=4", "01:00.0,", "01:00.0,foo", "01:00.0,bar=1",
             "name=gpu0", "01:00.0,name=x", "", "zz:00.0", "10000:00:00.0", "100:00.0"]


def _oracle_pci(text: str) -> tuple[list[Bdf], str] | None:
    assert LIBXLUTIL is not None
    spec = LIBXLUTIL.pci(text)
    if spec is None:
        return None
    functions = range(8) if spec.all_functions else [spec.function]
    return [Bdf(spec.segment, spec.bus, spec.device, f) for f in functions], spec.rdm_policy


def _ours_pci(text: str) -> tuple[list[Bdf], str] | None:
    try:
        bdfs, policy = xl_pci_spec(text)
    except InputError:
        return None
    return bdfs, str(policy) if policy else "invalid"


@needs_libxlutil
@pytest.mark.parametrize("text", [case for case in PCI_CASES if "name=" not in case])
def test_pci_specs_parse_as_libxlutil(text: str) -> None:
    assert _ours_pci(text) == _oracle_pci(text)


@needs_libxlutil
@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["01", "0000", ":", ".", "0", "7", "*", "@", "3", ",", "rdm_policy", "=",
                                 "relaxed", "strict", "bdf", "permissive", "1"]), max_size=10).map("".join))
def test_generated_pci_specs_parse_as_libxlutil(text: str) -> None:
    assert _ours_pci(text) == _oracle_pci(text)


def test_spellings_only_sscanf_tolerates_are_refused() -> None:
    """xl's sscanf("%x") lets a 0x prefix or a space into some address fields; rmrrd does not."""
    assert LIBXLUTIL is None or LIBXLUTIL.pci("01: 00.0") is not None
    for text in ("01: 00.0", "01:00.0x"):
        with pytest.raises(InputError):
            xl_pci_spec(text)


def test_a_device_known_only_by_name_is_refused_with_a_reason() -> None:
    with pytest.raises(InputError, match="needs its address"):
        xl_pci_spec("name=gpu0")


def _predict(text: str):  # type: ignore[no-untyped-def]
    return from_xl_config(parse_xl_config(text, "g.cfg"))


def test_xen_hvm_example() -> None:
    prediction = from_xl_config(load_xl_config(EXAMPLES / "xlexample.hvm"))
    domain = prediction.domain
    assert (domain.type, domain.max_memory_mib, domain.videoram_mib, domain.bios) == (DomainType.HVM, 128, 8, "seabios")
    assert (domain.pci, domain.refusals, prediction.warnings) == ((), (), [])
    assert domain.setup_keys()["memory"] == "128"


@pytest.mark.parametrize("name", ["xlexample.pvlinux", "xlexample.pvhlinux"])
def test_xen_pv_examples_have_no_layout(name: str) -> None:
    domain = from_xl_config(load_xl_config(EXAMPLES / name)).domain
    assert domain.type is not DomainType.HVM
    with pytest.raises(InputError, match="HVM guests only"):
        domain.setup_keys()


def test_the_policy_bug_drops_host_reservations_and_says_how_to_fix_it() -> None:
    prediction = _predict('type="hvm"\nmemory=2048\nrdm="strategy=host,policy=relaxed"\npci=["01:00.0"]\n')
    assert prediction.domain.rdm_host is False
    assert prediction.domain.pci == (Bdf(0, 1, 0, 0),) or prediction.domain.pci[0].policy is Policy.STRICT
    [warning] = prediction.warnings
    assert warning.startswith("g.cfg:3: rdm: xl 4.15 and later drop an rdm= that names a policy")
    assert "rdm_policy=" in warning and 'rdm="strategy=host"' in warning


def test_strategy_alone_keeps_host_regions_and_warns_about_the_unset_policy() -> None:
    prediction = _predict('type="hvm"\nrdm="strategy=host"\npci=["01:00.0,rdm_policy=relaxed","02:00.0"]\n')
    domain = prediction.domain
    assert domain.rdm_host and domain.rdm_policy is Policy.RELAXED
    assert [spec.policy for spec in domain.pci] == [Policy.RELAXED, Policy.STRICT]
    assert "uninitialised" in prediction.warnings[0]


@pytest.mark.parametrize(("text", "kind"), [("type='h'", DomainType.HVM), ("type=''", DomainType.HVM),
                                            ("type='p'", DomainType.PV), ("type='pvh'", DomainType.PVH),
                                            ("builder='hvm'", DomainType.HVM), ("", DomainType.PV)])
def test_type_is_a_prefix_match_as_in_xl(text: str, kind: DomainType) -> None:
    assert _predict(text + "\n").domain.type is kind


@pytest.mark.parametrize(("text", "message"), [
    ("type='hvmx'", r"g\.cfg:1: type: invalid domain type"),
    ("type='pv'\nbuilder='hvm'", r"g\.cfg:2: builder: contradicts type"),
    ("type='hvm'\nmmio_hole=128", r"g\.cfg:2: mmio_hole: invalid value 128"),
    ("type='hvm'\nvga='vesa'", r"g\.cfg:2: vga: unknown vga"),
    ("type='hvm'\nbios='uefi'", r"g\.cfg:2: bios: invalid value"),
    ("type='hvm'\npci=['01:00.0, rdm_policy=relaxed']", r"g\.cfg:2: pci: .*unknown key ' rdm_policy'.*no spaces"),
    ("type='hvm'\ndevice_model_version='qemu'", r"device_model_version: unknown device model"),
])
def test_what_xl_refuses_names_file_line_and_key(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        _predict(text + "\n")


def test_layout_keys_and_defaults() -> None:
    domain = _predict("type='hvm'\nmemory=1024\nmaxmem=2048\nvga='stdvga'\nhap=0\nbios='OVMF'\n"
                      "mmio_hole=1024\nrdm_mem_boundary=1024\n").domain
    assert domain.setup_keys() == {"memory": "2048", "mmio_hole": "1024", "config": "", "mem_boundary": "1024",
                                   "videoram": "16", "hap": "0", "bios": "ovmf"}
    assert _predict("type='hvm'\nfirmware='uefi'\n").domain.bios == "ovmf"
    assert _predict("type='hvm'\nmemory=512\nstdvga=1\nvideoram=32\n").domain.videoram_mib == 32
    assert _predict("type='hvm'\nvga='none'\n").domain.videoram_mib == 0
    traditional = _predict("type='hvm'\ndevice_model_version='qemu-xen-traditional'\n").domain
    assert (traditional.bios, traditional.videoram_mib, traditional.refusals) == ("rombios", 4, ())


def test_what_libxl_refuses_is_reported_not_raised() -> None:
    pod = _predict("type='hvm'\nmemory=1024\nmaxmem=2048\npci=['01:00.0']\n").domain
    assert "PoD" in pod.refusals[0]
    assert "below the 8 MiB" in _predict("type='hvm'\nvideoram=4\n").domain.refusals[0]
    assert "rombios" in _predict("type='hvm'\nbios='rombios'\n").domain.refusals[0]
    assert "PVH" in _predict("type='pvh'\npci=['01:00.0']\n").domain.refusals[0]


def test_settings_xl_ignores_are_warnings_and_defaults_apply() -> None:
    prediction = _predict("type='hvm'\nmemory='4G'\npci='01:00.0'\n")
    assert prediction.domain.max_memory_mib == 32 and prediction.domain.pci == ()
    assert [w.split(":")[1:3] for w in prediction.warnings] == [["2", " memory"], ["3", " pci"]]


def test_all_functions_name_every_function() -> None:
    domain = _predict("type='hvm'\npci=['03:00.*,rdm_policy=relaxed']\n").domain
    assert [spec.bdf.function for spec in domain.pci] == list(range(8))


def test_domain_request_lays_out_maxmem_less_video_ram() -> None:
    domain = LibxlDomain(DomainType.HVM, 4096, 2048, videoram_mib=16, hap=False, bios="ovmf")
    request = domain_request(domain, seabios_size=256)
    assert (request.memory_mib, request.videoram_mib, request.ram) == (4096, 16, 4080 << 20)
    assert (request.hap, str(request.firmware.bios)) == (False, "ovmf")


# --- libxl's saved configuration and its xenstore keys (learned domains) -----------------------

HVM_SAVED = {
    # As libxl__set_domain_configuration writes it: the fields xl set, defaults left out.
    "c_info": {"type": "hvm", "name": "win", "uuid": "0d6c3b1e-6a5c-4c3e-9d2b-000000000001", "hap": "True"},
    "b_info": {"max_vcpus": 2, "max_memkb": 4194304, "target_memkb": 4194304, "device_model_version": "qemu_xen",
               "type.hvm": {"bios": "ovmf", "vga": {"kind": "std"}, "mmio_hole_memkb": 1048576,
                            "rdm": {"strategy": "host", "policy": "strict"},
                            "rdm_mem_boundary_memkb": 1048576}},
    "pcidevs": [{"func": 0, "dev": 2, "bus": 0, "domain": 0, "rdm_policy": "relaxed"},
                {"func": 0, "dev": 0, "bus": 3}],
}


def test_the_saved_configuration_of_an_hvm_guest_with_libxls_defaults() -> None:
    domain = from_libxl_json(HVM_SAVED)
    assert domain == LibxlDomain(
        DomainType.HVM, 4096, 4096, videoram_mib=16, hap=True, bios="ovmf", mmio_hole_mib=1024, rdm_host=True,
        rdm_policy=Policy.STRICT, rdm_mem_boundary_mib=1024,
        pci=(DeviceSpec(Bdf(0, 0, 2, 0), Policy.RELAXED), DeviceSpec(Bdf(0, 3, 0, 0), Policy.STRICT)),
        passthrough=True)
    # Nothing set beyond the memory: qemu-xen's SeaBIOS and cirrus, libxl's hole and
    # boundary, a relaxed domain policy, no passthrough (no device at creation).
    bare = from_libxl_json({"c_info": {"type": "hvm"}, "b_info": {"max_memkb": 1048576}})
    assert bare == LibxlDomain(DomainType.HVM, 1024, 1024, videoram_mib=8, passthrough=False)
    assert from_libxl_json({"c_info": {"type": "pv", "passthrough": "enabled"}}).passthrough


def test_a_device_attached_to_a_learned_domain_is_strict_whatever_its_rdm_policy() -> None:
    # xl pci-attach hands libxl no policy; libxl__device_pci_setdefault makes it strict,
    # even for a domain whose rdm= policy is relaxed.  A device region in the guest's
    # RAM then fails unless the device names rdm_policy=relaxed.
    relaxed = {"c_info": {"type": "hvm", "passthrough": "enabled"},
               "b_info": {"max_memkb": 1048576, "type.hvm": {"rdm": {"strategy": "host", "policy": "relaxed"}}}}
    host = Inventory("h", (HostRegion(parse_range("0x1000000-0x1000fff"), (Bdf(0, 0, 0x14, 0),)),))
    gpu = {"dev-0": "0000:00:02.0", "opts-0": "rdm_policy=relaxed"}  # learned before its configuration was saved
    for domain in (from_libxl_json(relaxed), from_libxl_xenstore("hvm", {"static_max": "1048576"}, gpu, None, "d")):
        _, layout = libxl_plan(domain, host, {})
        assert layout.device_policy is Policy.STRICT
        for spec, verdict in (("0000:00:14.0", "fail"), ("0000:00:14.0,rdm_policy=relaxed", "warn")):
            assert check_assign(layout, host, parse_device_spec(spec), {}).verdict == verdict


@pytest.mark.parametrize(("config", "message"), [
    ([], "libxl-json: expected an object"),
    ({"c_info": {}}, "libxl-json.c_info.type: missing"),
    ({"c_info": {"type": "hvm"}, "b_info": {"max_memkb": "4G"}}, "libxl-json.b_info.max_memkb: expected an integer"),
    ({"c_info": {"type": "hvm"}, "b_info": {"type.hvm": {"bios": "coreboot"}}}, "type.hvm.bios: 'coreboot'"),
    ({"c_info": {"type": "pv"}, "pcidevs": [{"bus": 256}]}, "libxl-json.pcidevs[0].bus: expected an integer 0..255"),
    ({"c_info": {"type": "pv", "hap": "yes"}}, "libxl-json.c_info.hap: 'yes' is not one of"),
])
def test_a_malformed_saved_configuration_names_the_field(config: object, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        from_libxl_json(config)


def test_xenstore_says_what_runs_over_the_saved_configuration() -> None:
    keys = {"static_max": "2097152", "target": "2088960", "videoram": "8192", "mmio_hole": str(512 << 20),
            "device_model": "qemu_xen", "vm": "/vm/x"}
    backend = {"num_devs": "2", "dev-0": "0000:00:14.0", "opts-0": "msitranslate=0,power_mgmt=0,permissive=0,"
               "rdm_policy=relaxed", "dev-1": "0000:00:02.0", "opts-1": "rdm_policy=invalid", "state-1": "1"}
    domain = from_libxl_xenstore("hvm", keys, backend, from_libxl_json(HVM_SAVED), "domain 3")
    assert (domain.max_memory_mib, domain.memory_mib, domain.videoram_mib, domain.mmio_hole_mib) == (2048, 2040, 8, 512)
    assert domain.pci == (DeviceSpec(Bdf(0, 0, 0x14, 0), Policy.RELAXED), DeviceSpec(Bdf(0, 0, 2, 0), Policy.STRICT))
    assert (domain.bios, domain.rdm_host, domain.rdm_policy) == ("ovmf", True, Policy.STRICT)  # the saved ones
    # No backend: no device, whatever the saved configuration still lists (libxl removes
    # the backend of a last device detached before it saves the configuration without it).
    assert from_libxl_xenstore("hvm", keys, None, from_libxl_json(HVM_SAVED), "domain 3").pci == ()
    unsaved = from_libxl_xenstore("hvm", {**keys, "device_model": "qemu_xen_traditional"}, None, None, "domain 3")
    assert (unsaved.bios, unsaved.rdm_host, unsaved.pci) == ("rombios", False, ())
    assert from_libxl_xenstore("pv", {"static_max": "131072"}, None, None, "domain 4").type is DomainType.PV
    with pytest.raises(InputError, match="domain 4: type 'hvm2' is not hvm, pv or pvh"):
        from_libxl_xenstore("hvm2", keys, None, None, "domain 4")
    with pytest.raises(InputError, match="domain 4: memory/static-max '12x' is not a number of KiB"):
        from_libxl_xenstore("pv", {"static_max": "12x"}, None, None, "domain 4")
    with pytest.raises(InputError, match="domain 4: PCI backend/dev-0: "):
        from_libxl_xenstore("pv", {"static_max": "131072"}, {"dev-0": "zz"}, None, "domain 4")


@pytest.mark.parametrize(("text", "passthrough"), [
    ('type="hvm"\n', False),  # "default" without pci=: libxl disables it
    ('type="hvm"\npci=["00:02.0"]\n', True),
    ('type="hvm"\npassthrough="enabled"\n', True),
    ('type="hvm"\npassthrough="Sync_PT"\n', True),  # libxl_passthrough_from_string ignores case
    ('type="hvm"\npassthrough="disabled"\n', False),
])
def test_passthrough_as_libxl_decides_it(text: str, passthrough: bool) -> None:
    prediction = _predict(text)
    assert (prediction.domain.passthrough, prediction.domain.refusals) == (passthrough, ())


def test_passthrough_refusals() -> None:
    assert _predict('type="hvm"\npassthrough="disabled"\npci=["00:02.0"]\n').domain.refusals == (
        "g.cfg:2: passthrough: passthrough disabled but devices are specified: libxl refuses it",)
    # PoD with passthrough, devices or not (libxl__domain_config_setdefault).
    [pod] = _predict('type="hvm"\nmemory=512\nmaxmem=1024\npassthrough="enabled"\n').domain.refusals
    assert pod.startswith("g.cfg:2: memory: memory 512 MiB < maxmem 1024 MiB starts the guest in PoD mode")
    assert _predict('type="pvh"\npassthrough="enabled"\n').domain.refusals == (
        "g.cfg:2: passthrough: libxl refuses passthrough to x86 PVH guests",)
    with pytest.raises(InputError, match=r"^g\.cfg:2: passthrough: unknown passthrough option 'on': xl refuses it"):
        _predict('type="hvm"\npassthrough="on"\n')
