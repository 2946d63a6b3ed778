"""Guest queries: every verb and every error path, on the seed's domain 1.

The plan is built the way the daemon builds it, from the inventories shipped in
``etc/inventories``: low RAM ends at 0xa0000000, D2's region 0xa0000000-0xa37fffff
opens the MMIO hole, D1's 0xe0000-0xeffff sits in the BIOS area and node-b's
0x40000000-0x40003fff in RAM.
"""

from __future__ import annotations

import pytest

from rmrrd.errors import InputError
from rmrrd.core.guest_queries import (
    HOLE_END,
    MAX_REPLY_BYTES,
    QUOTE_MAX,
    Allocations,
    QueryResult,
    handle_query,
)
from rmrrd.core.inventory import Inventory
from rmrrd.core.planner import Plan, parse_domain_request, plan
from rmrrd.core.ranges import Range
from rmrrd.protocol import answer_entries
from support import D1
from support.plans import reserve_plan, seed_plan

pytestmark = pytest.mark.unit

MAX_LENGTH = 256
HOLE_START = 0xA3800000
"""The seed plan's first free address in the hole: just past D2's region."""


@pytest.fixture
def seed() -> Plan:
    result = seed_plan()
    assert result.status == "ready" and result.lowmem_end == 0xA0000000
    return result


def ask(query: bytes, plan_: Plan, allocations: Allocations | None = None) -> QueryResult:
    """One query as the daemon answers it: handled, then what it decided applied."""
    table = allocations if allocations is not None else Allocations(8)
    result = handle_query(query, plan_, table, max_length=MAX_LENGTH)
    table.apply(result)
    return result


# --- e820 and regions ------------------------------------------------------------------

def test_e820_is_the_answer_e820_keys_joined(seed: Plan) -> None:
    result = ask(b"e820", seed)
    keys = [value for key, value in answer_entries("1", seed, None) if key.startswith("e820/")]
    assert result == QueryResult("ok " + ",".join(keys), "e820", "ok")
    assert "0xa0000000-0xa37fffff reserved" in result.reply


def test_regions_lists_each_region_range(seed: Plan) -> None:
    result = ask(b"regions", seed)
    keys = [value for key, value in answer_entries("1", seed, None) if key.endswith("/range")]
    assert result == QueryResult("ok " + ",".join(keys), "regions", "ok")
    assert result.reply == "ok 0xe0000-0xeffff,0x40000000-0x40003fff,0xa0000000-0xa37fffff"


def test_regions_of_a_domain_without_any() -> None:
    assert ask(b"regions", reserve_plan([])) == QueryResult("ok none", "regions", "ok")


def test_long_answers_point_at_the_keys() -> None:
    # 200 single pages spread over the hole: every one is a region and an e820 entry.
    many = [str(Range(0xB0000000 + n * 0x10000, 0xB0000000 + n * 0x10000 + 0x1000)) for n in range(200)]
    crowded = reserve_plan(many)
    e820 = ask(b"e820", crowded)
    assert e820.reply.startswith("error E2BIG ") and "rmrr/e820/0 to rmrr/e820/" in e820.reply
    assert (e820.kind, e820.outcome) == ("e820", "error")
    regions = ask(b"regions", crowded)
    assert regions.reply.startswith("error E2BIG 200 entries") and "rmrr/region/<n>/range" in regions.reply
    assert (regions.kind, regions.outcome) == ("regions", "error")


def test_an_answer_just_within_the_limit_is_given_whole() -> None:
    # Find the largest region count whose listing still fits, and check it is answered.
    ranges = [str(Range(0xB0000000 + n * 0x10000, 0xB0000000 + n * 0x10000 + 0x1000)) for n in range(200)]
    count = max(n for n in range(1, 200) if len("ok " + ",".join(ranges[:n])) <= MAX_REPLY_BYTES)
    assert ask(b"regions", reserve_plan(ranges[:count])).outcome == "ok"
    assert ask(b"regions", reserve_plan(ranges[:count + 1])).reply.startswith("error E2BIG")


# --- check ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "reply"), [
    (b"check 0xb0000000-0xb0000fff", "ok clear"),
    (b"check 0x200000000-0x200000fff", "ok clear"),            # above the highest RAM
    (b"check 0xa0000000-0xa37fffff", "ok overlaps reserved"),  # D2, clear of RAM
    (b"check 0xa37ff000-0xa3800fff", "ok overlaps reserved"),
    (b"check 0xe0000-0xeffff", "ok overlaps reserved bios"),   # D1
    (b"check 0x40000000-0x40000fff", "ok overlaps reserved ram"),
    (b"check 0x1000-0x1fff", "ok overlaps ram"),
    (b"check 0x9f000-0xa0fff", "ok overlaps ram vga"),
    (b"check 0xc0000-0xc0fff", "ok overlaps rom"),
    (b"check 0xfc000000-0xfc000fff", "ok overlaps firmware"),
    (b"check 0xfff00000-0x100000fff", "ok overlaps firmware ram"),
    (b"check 0x0-0xffffffffffffffff", "ok overlaps reserved ram vga rom bios firmware"),
])
def test_check_names_what_a_range_overlaps(seed: Plan, query: bytes, reply: str) -> None:
    assert ask(query, seed) == QueryResult(reply, "check", "ok")


def test_check_sees_this_domains_allocations_only(seed: Plan) -> None:
    mine = Allocations(8)
    assert ask(b"alloc 0x1000", seed, mine).reply == "ok 0xa3800000-0xa3800fff"
    assert ask(b"check 0xa3800000-0xa3800fff", seed, mine).reply == "ok overlaps allocated"
    assert ask(b"check 0xa37ff000-0xa3800fff", seed, mine).reply == "ok overlaps reserved allocated"
    assert ask(b"check 0xa3800000-0xa3800fff", seed, Allocations(8)).reply == "ok clear"


# --- alloc -----------------------------------------------------------------------------------

def test_alloc_takes_the_lowest_room_after_reserved_regions(seed: Plan) -> None:
    allocations = Allocations(8)
    assert ask(b"alloc 0x1000", seed, allocations) == QueryResult("ok 0xa3800000-0xa3800fff", "alloc", "ok",
                                                                  allocated=Range(0xA3800000, 0xA3801000))
    assert ask(b"alloc 0x1000", seed, allocations).reply == "ok 0xa3801000-0xa3801fff"
    assert allocations.ranges() == (Range(0xA3800000, 0xA3801000), Range(0xA3801000, 0xA3802000))


def test_alloc_aligns_to_the_size_rounded_up_to_a_power_of_two(seed: Plan) -> None:
    allocations = Allocations(8)
    ask(b"alloc 0x1000", seed, allocations)
    # 0x3000 rounds up to 0x4000: the next 0x4000 boundary after 0xa3801000.
    assert ask(b"alloc 0x3000", seed, allocations).reply == "ok 0xa3804000-0xa3806fff"
    # A 256 MiB BAR lands on a 256 MiB boundary, past D2's region.
    assert ask(b"alloc 0x10000000", seed, allocations).reply == "ok 0xb0000000-0xbfffffff"


def test_alloc_with_an_explicit_alignment(seed: Plan) -> None:
    allocations = Allocations(8)
    ask(b"alloc 0x1000", seed, allocations)
    # An OpRegion needs only page alignment: it fills the gap the default would skip.
    assert ask(b"alloc 0x3000 align=0x1000", seed, allocations).reply == "ok 0xa3801000-0xa3803fff"
    assert ask(b"alloc 0x1000 align=0x1000000", seed, allocations).reply == "ok 0xa4000000-0xa4000fff"


def test_alloc_below_bounds_the_end(seed: Plan) -> None:
    allocations = Allocations(8)
    assert ask(b"alloc 0x800000 below=0xa4000000", seed, allocations).reply == "ok 0xa3800000-0xa3ffffff"
    refused = ask(b"alloc 0x1000 below=0xa4000000", seed, allocations)
    assert refused.reply.startswith("error ENOSPC no room for 0x1000 bytes aligned to 0x1000 "
                                    "ending at or below 0xa4000000")
    assert (refused.kind, refused.outcome) == ("alloc", "error")
    # Options in either order.
    assert ask(b"alloc 0x1000 below=0xb0000000 align=0x2000", seed, allocations).reply == "ok 0xa4000000-0xa4000fff"


def test_alloc_never_passes_the_hole_end() -> None:
    # A hole of 256 MiB minus the firmware area: 0xf0000000-0xfbffffff.
    small = plan(parse_domain_request("8192", "256", None, None), Inventory("here", ()), {})
    assert small.lowmem_end == 0xF0000000
    allocations = Allocations(8)
    assert ask(b"alloc 0x8000000", small, allocations).reply == "ok 0xf0000000-0xf7ffffff"
    assert ask(b"alloc 0x4000000", small, allocations).reply == "ok 0xf8000000-0xfbffffff"
    assert ask(b"alloc 0x1000", small, allocations).reply.startswith("error ENOSPC")
    assert all(r.end <= HOLE_END for r in allocations.ranges())


def test_alloc_larger_than_the_hole(seed: Plan) -> None:
    allocations = Allocations(8)
    result = ask(b"alloc 0x80000000", seed, allocations)
    assert result.reply == ("error ENOSPC no room for 0x80000000 bytes aligned to 0x80000000 "
                            "in the MMIO hole 0xa0000000-0xfbffffff")
    assert len(allocations) == 0


def test_alloc_cap(seed: Plan) -> None:
    allocations = Allocations(2)
    ask(b"alloc 0x1000", seed, allocations)
    ask(b"alloc 0x1000", seed, allocations)
    result = ask(b"alloc 0x1000", seed, allocations)
    assert result == QueryResult("error EDQUOT this domain holds 2 allocations, the limit is 2; free one first",
                                 "alloc", "rejected")
    assert len(allocations) == 2
    assert ask(b"free 0xa3800000-0xa3800fff", seed, allocations).reply == "ok"
    assert ask(b"alloc 0x1000", seed, allocations).reply == "ok 0xa3800000-0xa3800fff"


def test_handling_a_query_changes_nothing_itself(seed: Plan) -> None:
    """alloc and free say what to do; the caller records it first, then applies it."""
    allocations = Allocations(8)
    result = handle_query(b"alloc 0x1000", seed, allocations, max_length=MAX_LENGTH)
    assert result.allocated == Range(0xA3800000, 0xA3801000) and len(allocations) == 0
    allocations.apply(result)
    freed = handle_query(b"free 0xa3800000-0xa3800fff", seed, allocations, max_length=MAX_LENGTH)
    assert (freed.reply, freed.freed) == ("ok", Range(0xA3800000, 0xA3801000))
    assert allocations.ranges() == (Range(0xA3800000, 0xA3801000),)


def test_a_zero_cap_allows_nothing(seed: Plan) -> None:
    assert ask(b"alloc 0x1000", seed, Allocations(0)).reply.startswith("error EDQUOT")


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(InputError, match="cap -1"):
        Allocations(-1)


# --- free --------------------------------------------------------------------------------------

def test_free_releases_exactly_an_allocation(seed: Plan) -> None:
    allocations = Allocations(8)
    ask(b"alloc 0x2000", seed, allocations)
    assert ask(b"free 0xa3800000-0xa3800fff", seed, allocations) == QueryResult(
        "error ENOENT 0xa3800000-0xa3800fff is not an allocation of this domain", "free", "error")
    assert ask(b"free 0xa3800000-0xa3801fff", seed, allocations) == QueryResult(
        "ok", "free", "ok", freed=Range(0xA3800000, 0xA3802000))
    assert len(allocations) == 0
    assert ask(b"free 0xa3800000-0xa3801fff", seed, allocations).reply.startswith("error ENOENT")


def test_freed_room_is_reused(seed: Plan) -> None:
    allocations = Allocations(8)
    ask(b"alloc 0x1000", seed, allocations)
    ask(b"alloc 0x1000", seed, allocations)
    ask(b"free 0xa3800000-0xa3800fff", seed, allocations)
    assert ask(b"alloc 0x1000", seed, allocations).reply == "ok 0xa3800000-0xa3800fff"


# --- a failed layout ----------------------------------------------------------------------------

def test_a_failed_layout_answers_enodev_to_valid_queries() -> None:
    # D1 given with pci= is strict by default, and its region is in the BIOS area.
    failed = seed_plan(pci=D1)
    assert failed.status == "error"
    allocations = Allocations(8)
    for query, kind in [(b"e820", "e820"), (b"regions", "regions"), (b"check 0x0-0xfff", "check"),
                        (b"alloc 0x1000", "alloc"), (b"free 0x0-0xfff", "free")]:
        result = ask(query, failed, allocations)
        assert result.reply.startswith("error ENODEV ") and "rmrr/error" in result.reply
        assert (result.kind, result.outcome) == (kind, "error")
    assert len(allocations) == 0
    assert ask(b"alloc 0x1001", failed).reply.startswith("error EINVAL")


# --- malformed queries ---------------------------------------------------------------------------

@pytest.mark.parametrize(("query", "kind", "message"), [
    (b"", "other", "empty query"),
    (b"e820\n", "other", "byte 0x0a at offset 4 is not printable ASCII"),
    (b"e820\0", "other", "byte 0x00 at offset 4 is not printable ASCII"),
    (b"check\t0x0-0xfff", "other", "byte 0x09 at offset 5 is not printable ASCII"),
    (b"e820 \xc3\xa9", "other", "byte 0xc3 at offset 5 is not printable ASCII"),
    (b" e820", "other", "tokens must be separated by single spaces, with none leading or trailing"),
    (b"e820 ", "other", "tokens must be separated by single spaces, with none leading or trailing"),
    (b"alloc  0x1000", "other", "tokens must be separated by single spaces, with none leading or trailing"),
    (b"E820", "other", "unknown query 'E820': expected one of e820, regions, check, alloc, free"),
    (b"e820 now", "e820", "e820 takes no arguments, got 1 argument"),
    (b"regions a b", "regions", "regions takes no arguments, got 2 arguments"),
    (b"check", "check", "check takes one range START-END, got 0 arguments"),
    (b"check 0x0-0xfff 0x0-0xfff", "check", "check takes one range START-END, got 2 arguments"),
    (b"check 0x0-0x7ff", "check", "check: range '0x0-0x7ff' is not page granular"),
    (b"check 0x2000-0xfff", "check", "check: invalid range '0x2000-0xfff': end is below start"),
    (b"check 0-0xfff", "check", "check: '0-0xfff' is not START-END"),
    (b"check 0x00000000000000000-0xfff", "check", "is not START-END, two hexadecimal numbers"),
    (b"free 0xa3800000", "free", "free: '0xa3800000' is not START-END"),
    (b"alloc", "alloc", "alloc takes SIZE [align=A] [below=ADDR], got 0 arguments"),
    (b"alloc 0x1000 align=0x1000 below=0x1000 x", "alloc", "got 4 arguments"),
    (b"alloc 4096", "alloc", "alloc size '4096' is not a hexadecimal number"),
    (b"alloc 0x0", "alloc", "alloc size 0x0 is not a non-zero multiple of 0x1000"),
    (b"alloc 0x1800", "alloc", "alloc size 0x1800 is not a non-zero multiple of 0x1000"),
    (b"alloc 0x1000 align=0x800", "alloc", "alloc align 0x800 is not a power of two of at least 0x1000"),
    (b"alloc 0x1000 align=0x3000", "alloc", "alloc align 0x3000 is not a power of two"),
    (b"alloc 0x1000 align=", "alloc", "alloc align '' is not a hexadecimal number"),
    (b"alloc 0x1000 size=0x1000", "alloc", "alloc option 'size=0x1000' is not align=A or below=ADDR"),
    (b"alloc 0x1000 below=0x1 below=0x2", "alloc", "alloc option below is given twice"),
    (b"alloc 0x1000 align", "alloc", "alloc option 'align' is not align=A or below=ADDR"),
])
def test_malformed_queries_are_rejected_with_the_reason(seed: Plan, query: bytes, kind: str, message: str) -> None:
    allocations = Allocations(8)
    result = ask(query, seed, allocations)
    assert result.reply.startswith("error EINVAL ") and message in result.reply
    assert (result.kind, result.outcome) == (kind, "rejected")
    assert len(allocations) == 0


def test_length_limit_is_exact(seed: Plan) -> None:
    fits = b"check 0x" + b"0" * 8 + b"-0xfff"
    assert handle_query(fits, seed, Allocations(8), max_length=len(fits)).reply == "ok overlaps ram"
    result = handle_query(fits, seed, Allocations(8), max_length=len(fits) - 1)
    assert result == QueryResult(f"error EINVAL query is {len(fits)} bytes, longer than the limit of "
                                 f"{len(fits) - 1}", "other", "rejected")


def test_a_huge_query_is_refused_by_its_length(seed: Plan) -> None:
    # Undecodable throughout: only the length check can have produced this answer.
    result = ask(b"\xff" * 1_000_000, seed)
    assert result.reply == f"error EINVAL query is 1000000 bytes, longer than the limit of {MAX_LENGTH}"


def test_guest_text_is_quoted_short_and_escaped(seed: Plan) -> None:
    verb = "x" * 200
    result = ask(verb.encode(), seed)
    assert f"'{'x' * QUOTE_MAX}'..." in result.reply and "x" * (QUOTE_MAX + 1) not in result.reply
    option = ask(b"alloc 0x1000 align='\"\\" + b"y" * 100, seed)
    # ascii() escapes the backslash and keeps the reply on one line.
    assert "\\\\" in option.reply and len(option.reply) < 200
