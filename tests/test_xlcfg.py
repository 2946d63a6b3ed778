"""xl.cfg ``rdm=`` and ``pci=`` parsing: xl's keys and defaults, strict refusals."""

from __future__ import annotations

import pytest

from rmrrd.errors import InputError
from rmrrd.core.pci import Bdf
from rmrrd.core.xlcfg import DeviceSpec, Policy, RdmConfig, Strategy, parse_device_spec, parse_rdm

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "expected"), [
    # No policy named: None, so that pci= devices know there is none to inherit.
    ("", RdmConfig(None, None)),
    ("strategy=host", RdmConfig(Strategy.HOST, None)),
    ("strategy=host,policy=strict", RdmConfig(Strategy.HOST, Policy.STRICT)),
    (" policy=strict , strategy=host ", RdmConfig(Strategy.HOST, Policy.STRICT)),
])
def test_rdm(text: str, expected: RdmConfig) -> None:
    assert parse_rdm(text) == expected
    assert parse_rdm(str(expected)) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("strategy=all", "strategy='all' is not supported"),
    ("policy=lax", "policy='lax' is not strict or relaxed"),
    ("reserve=host", "unknown key 'reserve'"),
    ("policy", "item 'policy' is not KEY=VALUE"),
    ("policy=strict,policy=relaxed", "policy given twice"),
])
def test_rdm_refusals(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_rdm(text)


@pytest.mark.parametrize(("text", "expected"), [
    # No rdm_policy: None, resolved by the planner (the domain's rdm= policy, else strict).
    ("00:02.0", DeviceSpec(Bdf(0, 0, 2, 0), None)),
    ("0001:03:00.1@4,rdm_policy=relaxed", DeviceSpec(Bdf(1, 3, 0, 1), Policy.RELAXED)),
    ("00:14.0,permissive=1,msitranslate=0,seize=1,power_mgmt=1,vslot=5,name=usb",
     DeviceSpec(Bdf(0, 0, 0x14, 0), None)),
    ("bdf=00:14.0,rdm_policy=strict", DeviceSpec(Bdf(0, 0, 0x14, 0), Policy.STRICT)),
])
def test_device_spec(text: str, expected: DeviceSpec) -> None:
    assert parse_device_spec(text) == expected
    assert parse_device_spec(str(expected)) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("00:02.0,rdm_polcy=relaxed", "unknown key 'rdm_polcy'"),
    ("00:02.0,rdm_policy=maybe", "rdm_policy='maybe' is not strict or relaxed"),
    ("00:02.0,rdm_policy=strict,rdm_policy=relaxed", "rdm_policy given twice"),
    ("00:02.0,bdf=00:03.0", "both positionally and as bdf="),
    ("00:02.*", "all-functions"),
    ("rdm_policy=strict", "no PCI address"),
    ("00:20.0", "device number 0x20 is above 0x1f"),
    ("00:02.0,seize", "item 'seize' is not KEY=VALUE"),
])
def test_device_spec_refusals(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_device_spec(text)
