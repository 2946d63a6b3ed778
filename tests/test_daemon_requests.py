"""Toolstack request parsing and the xenstore layout helpers."""

import pytest
from hypothesis import given, strategies as st

from rmrrd.daemon.requests import format_request, parse_request
from rmrrd.errors import InputError
from rmrrd.pci import Bdf
from rmrrd.schema import classify_libxl_path, parse_domid
from rmrrd.xlcfg import Policy

pytestmark = pytest.mark.unit


def test_hotplug_with_relaxed_policy() -> None:
    request = parse_request("op=hotplug domid=1 device=0000:00:14.0,rdm_policy=relaxed")
    assert (request.op, request.domid, request.target) == ("hotplug", 1, None)
    assert request.devices[0].bdf == Bdf(0, 0, 0x14, 0)
    assert request.devices[0].policy is Policy.RELAXED


def test_migrate_takes_a_target_and_several_devices() -> None:
    request = parse_request("op=migrate domid=7 target=node-b device=03:00.0 device=0000:04:00.1")
    assert request.target == "node-b"
    assert [str(spec.bdf) for spec in request.devices] == ["0000:03:00.0", "0000:04:00.1"]


def test_migrate_without_target_or_devices_is_a_ranking_request() -> None:
    request = parse_request("op=migrate domid=7")
    assert request.target is None and request.devices == ()


@pytest.mark.parametrize(("text", "message"), [
    ("", "missing op="),
    ("op=assign", "missing domid="),
    ("op=detach domid=1 device=00:14.0", "op='detach' is not one of"),
    ("op=assign domid=1", "exactly one device"),
    ("op=assign domid=1 device=00:14.0 device=00:02.0", "exactly one device"),
    ("op=assign domid=1 device=00:14.0 target=node-b", "takes no target"),
    ("op=assign domid=x device=00:14.0", "not a domain id"),
    ("op=assign domid=99999 device=00:14.0", "not a domain id"),
    ("op=assign domid=1 domid=2 device=00:14.0", "domid given more than once"),
    ("op=assign domid=1 device=00:14.0 colour=red", "unknown key 'colour'"),
    ("op=assign domid=1 device=zz:14.0", "PCI device"),
    ("op=migrate domid=1 target=../etc", "not a host name"),
    ("op=assign domid=1 device", "expected key=value"),
])
def test_malformed_requests_name_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_request(text)


def test_oversized_request_is_refused_before_parsing() -> None:
    with pytest.raises(InputError, match="longer than"):
        parse_request("op=assign " * 1000)


@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_input_error(text: str) -> None:
    try:
        parse_request(text)
    except InputError:
        pass


def test_format_request_round_trips() -> None:
    text = format_request("migrate", 3, ("0000:03:00.0,rdm_policy=relaxed",), "node-b")
    request = parse_request(text)
    assert (request.op, request.domid, request.target) == ("migrate", 3, "node-b")
    assert request.devices[0].policy is Policy.RELAXED


@pytest.mark.parametrize(("text", "domid"), [("0", 0), ("1", 1), ("32751", 32751), ("32752", None),
                                             ("01", None), ("-1", None), ("1 ", None), ("", None)])
def test_parse_domid(text: str, domid: int | None) -> None:
    assert parse_domid(text) == domid


def test_classify_libxl_paths() -> None:
    root = classify_libxl_path("/libxl")
    assert root is not None and root.domid is None
    request = classify_libxl_path("/libxl/4/rdm/request")
    assert request is not None and (request.domid, request.request, request.domain_node) == (4, True, False)
    node = classify_libxl_path("/libxl/4")
    assert node is not None and node.domain_node and not node.request
    other = classify_libxl_path("/libxl/4/rdm/pci/0")
    assert other is not None and not other.request and not other.domain_node
    assert classify_libxl_path("/libxl/dom4/rdm/request") is None
    assert classify_libxl_path("/local/domain/4") is None
