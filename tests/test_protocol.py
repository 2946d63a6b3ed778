"""The protocol: every path as the schema page writes it, each value's encoder and
decoder round-tripping, the toolstack request line parsed strictly.

The paths are spelled out literally here, once: everything else (the daemon, the
CLI, the demo, the tests' helpers) builds them with :mod:`rmrrd.protocol`, so this is
what holds the layout to docs/xenstore-schema.md.
"""

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from rmrrd import protocol
from rmrrd.core.inventory_yaml import load_inventory_file
from rmrrd.core.pci import Bdf
from rmrrd.core.planner import DomainRequest, Plan, learned_plan, parse_domain_request, plan
from rmrrd.core.ranges import Range
from rmrrd.core.xlcfg import Policy
from rmrrd.errors import InputError
from rmrrd.protocol import (Answer, AnswerRegion, Result, answer_entries, attachment_entry, allocation_entry,
                            classify_libxl_path, decode_allocation, decode_answer, decode_attachment, decode_result,
                            format_request, parse_domid, parse_request, request_entries, result_entries)
from rmrrd.xenstore.wire import Perm

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "xenstore-schema.md"
INVENTORIES = Path(__file__).resolve().parent.parent / "etc" / "inventories"


def test_every_path_as_the_schema_page_writes_it() -> None:
    built = {
        protocol.rdm_path(7): "/libxl/7/rdm",
        protocol.answer_path(7): "/local/domain/7/rmrr",
        protocol.query_path(7): "/local/domain/7/rmrr/query",
        protocol.query_path(7, "q1"): "/local/domain/7/rmrr/query/q1",
        protocol.reply_path(7, "q1"): "/local/domain/7/rmrr/reply/q1",
        protocol.request_path("r1"): "/tool/rmrrd/request/r1",
        protocol.result_path("r1"): "/tool/rmrrd/result/r1",
        protocol.assigned_path(7): "/tool/rmrrd/assigned/7",
        protocol.allocated_path(7): "/tool/rmrrd/allocated/7",
        protocol.STATUS_KEY: "/tool/rmrrd/status",
        protocol.VERSION_KEY: "/tool/rmrrd/version",
        protocol.PID_KEY: "/tool/rmrrd/pid",
    }
    assert [path for path, literal in built.items() if path != literal] == []
    page = SCHEMA.read_text()
    for literal in ("/libxl/<domid>/rdm/request", "/local/domain/<domid>/rmrr/query/<id>",
                    "/tool/rmrrd/result/<id>/verdict", "/tool/rmrrd/assigned/<domid>/<key>",
                    "/tool/rmrrd/allocated/<domid>/<start>", "/tool/rmrrd/status"):
        assert literal in page
    for key in (*protocol.SCALAR_KEYS, *protocol.DEVICE_LISTS):
        assert f"/libxl/<domid>/rdm/{key}" in page


def test_the_guest_reads_its_answer_and_writes_only_its_queries() -> None:
    assert protocol.guest_perms(7, protocol.ANSWER_PERMS) == [Perm(0, "n"), Perm(7, "r")]
    assert protocol.guest_perms(7, protocol.QUERY_PERMS) == [Perm(0, "n"), Perm(7, "b")]
    assert protocol.guest_perms(0, protocol.ANSWER_PERMS) == [Perm(0, "n")]


def test_a_request_is_written_with_request_last() -> None:
    assert request_entries({"memory": "1024", "pci/0": "0000:00:02.0"}, "3") == [
        ("memory", "1024"), ("pci/0", "0000:00:02.0"), ("request", "3")]


def seed_plan() -> Plan:
    request = parse_domain_request("4096", "1024", None, None, ["0000:00:02.0"], ["0000:00:14.0"], ["node-b"])
    return plan(request, load_inventory_file(INVENTORIES / "node-a.yaml"),
                {"node-b": load_inventory_file(INVENTORIES / "node-b.yaml")})


def test_an_answer_decodes_to_what_was_encoded() -> None:
    answer = decode_answer(dict(answer_entries("1", seed_plan(), None)))
    assert (answer.generation, answer.status, answer.error) == ("1", "ready", None)
    assert (answer.lowmem_end, answer.highmem_end) == (0xA0000000, 0x160000000)
    assert AnswerRegion(Range(0xA0000000, 0xA3800000), "pci 0000:00:02.0", "none", "avoided") in answer.regions
    assert answer.e820[0].endswith(" ram") and len(answer.e820) == len(seed_plan().e820)
    refused = decode_answer(dict(answer_entries("2", None, "memory: missing")))
    assert refused == Answer("2", "error", "memory: missing", None, None, (), ())


def test_a_learned_answer_says_so_and_a_pv_guest_has_no_layout() -> None:
    hvm = dict(answer_entries("learned-1", seed_plan(), None, "hvm"))
    assert (hvm["origin"], hvm["type"], hvm["lowmem_end"]) == ("learned", "hvm", "0xa0000000")
    assert decode_answer(hvm).origin == "learned"
    assert decode_answer(dict(answer_entries("1", seed_plan(), None))).origin is None
    pv = learned_plan("pv", DomainRequest(128), False, load_inventory_file(INVENTORIES / "node-a.yaml"), {})
    assert answer_entries("learned-2", pv, None, "pv") == [
        ("generation", "learned-2"), ("status", "ready"), ("origin", "learned"), ("type", "pv")]


def test_a_decoded_answer_ignores_queries_and_replies_but_not_a_broken_region() -> None:
    entries = dict(answer_entries("1", seed_plan(), None))
    assert decode_answer({**entries, "query/q1": "e820", "reply/q0": "ok"}) == decode_answer(entries)
    broken = {key: value for key, value in entries.items() if key != "region/1/action"}
    with pytest.raises(InputError, match="region/1: no action"):
        decode_answer(broken)
    with pytest.raises(InputError, match="not a complete answer"):
        decode_answer({"generation": "1"})


def test_a_result_round_trips() -> None:
    result = Result("warn", "best target node-b: ...", ("0x40000000-0x40003fff ram 0000:03:00.0",),
                    ("node-b warn fail=0 warn=1",))
    entries = result_entries(result)
    assert entries[:2] == [("verdict", "warn"), ("reason", "best target node-b: ...")]
    assert ("conflict/0", result.conflicts[0]) in entries and ("rank/0", result.ranking[0]) in entries
    assert decode_result(dict(entries)) == result
    with pytest.raises(InputError, match="verdict 'maybe'"):
        decode_result({"verdict": "maybe"})


def test_records_round_trip() -> None:
    bdf = Bdf.parse("0000:00:14.0")
    assert attachment_entry(bdf, "hotplug") == ("0000-00-14-0", "0000:00:14.0 hotplug")
    assert decode_attachment("0000:00:14.0 hotplug") == (bdf, "hotplug")
    with pytest.raises(InputError, match="expected 'BDF assign' or 'BDF hotplug'"):
        decode_attachment("0000:00:14.0 teleport")
    rng = Range(0xA3800000, 0xA3801000)
    assert allocation_entry(rng) == ("0xa3800000", "0xa3800000-0xa3800fff")
    assert decode_allocation(allocation_entry(rng)[1]) == rng


def test_the_status_a_daemon_writes() -> None:
    assert protocol.status_entries("0.1.0", 42) == [
        ("/tool/rmrrd/status", "ready"), ("/tool/rmrrd/version", "0.1.0"), ("/tool/rmrrd/pid", "42")]


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
