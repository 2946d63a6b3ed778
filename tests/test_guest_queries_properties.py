"""Guest queries under hypothesis: whatever a guest writes, the answer is well formed,
and no sequence of ``alloc`` / ``free`` breaks the allocation invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rmrrd.core.guest_queries import HOLE_END, MAX_REPLY_BYTES, Allocations, QueryResult, handle_query
from rmrrd.core.inventory import Inventory
from rmrrd.core.planner import DomainRequest, Plan, plan
from rmrrd.core.ranges import PAGE_SIZE, Range, RangeSet

from support.plans import seed_plan

pytestmark = pytest.mark.unit

SEED = seed_plan()
MAX_LENGTH = 128
_KINDS = {"e820", "regions", "check", "alloc", "free", "other"}
_OUTCOMES = {"ok", "error", "rejected"}

# Fragments of valid and nearly valid queries, so random joins reach the verb parsers.
_FRAGMENTS = [b"e820", b"regions", b"check", b"alloc", b"free", b"align=", b"below=", b"=", b"-",
              b"0x", b"0x1000", b"0xa3800000-0xa3800fff", b"0x0-0xfff", b"0xfff", b"0X10", b" ", b"  ",
              b"\n", b"\0", b"\xff", b"ffffffffffffffffff", b"'", b"\\"]
_queries = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=10).map(b"".join),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=6).map(b" ".join),
)


@st.composite
def _plans(draw: st.DrawFn) -> Plan:
    """The seed plan, or a guest with random reserved ranges across its MMIO hole."""
    if draw(st.booleans()):
        return SEED
    hole_mib = draw(st.sampled_from([256, 1024, 3840]))
    hole_start = (1 << 32) - hole_mib * (1 << 20)
    pages = (HOLE_END - hole_start) // PAGE_SIZE
    starts = draw(st.lists(st.integers(0, pages - 1), max_size=8))
    reserve = tuple(Range(hole_start + n * PAGE_SIZE, min(hole_start + (n + draw(st.sampled_from([1, 16, 0x1000])))
                                                           * PAGE_SIZE, HOLE_END)) for n in starts)
    request = DomainRequest(memory_mib=8192, mmio_hole_mib=hole_mib, reserve=reserve)
    return plan(request, Inventory("here", ()), {})


def answer(raw: bytes, plan_: Plan, allocations: Allocations, *, max_length: int) -> QueryResult:
    """One query as the daemon answers it: handled, then what it decided applied."""
    result = handle_query(raw, plan_, allocations, max_length=max_length)
    allocations.apply(result)
    return result


def _well_formed(reply: str) -> bool:
    return reply == "ok" or reply.startswith(("ok ", "error "))


@settings(max_examples=500)
@given(st.lists(_queries, min_size=1, max_size=6), _plans())
def test_any_bytes_get_a_well_formed_answer(queries: list[bytes], plan_: Plan) -> None:
    allocations = Allocations(4)
    for raw in queries:
        result = answer(raw, plan_, allocations, max_length=MAX_LENGTH)
        assert result.reply.isascii() and result.reply.isprintable()
        assert len(result.reply.encode()) <= MAX_REPLY_BYTES < 2048
        assert _well_formed(result.reply)
        assert result.kind in _KINDS and result.outcome in _OUTCOMES
        assert (result.outcome == "ok") == (result.reply == "ok" or result.reply.startswith("ok "))
        assert len(allocations) <= allocations.cap


_sizes = st.sampled_from([0x1000, 0x2000, 0x3000, 0x10000, 0x100000, 0x1000000, 0x10000000])
_aligns = st.sampled_from([None, 0x1000, 0x4000, 0x100000, 0x2000000])
_belows = st.one_of(st.none(), st.integers(0x90000000 // PAGE_SIZE, 0x100000000 // PAGE_SIZE).map(
    lambda page: page * PAGE_SIZE))


@st.composite
def _alloc(draw: st.DrawFn) -> tuple[bytes, int, int, int | None]:
    size, align, below = draw(_sizes), draw(_aligns), draw(_belows)
    query = f"alloc {size:#x}" + (f" align={align:#x}" if align else "") + (f" below={below:#x}" if below else "")
    return query.encode(), size, align or 1 << (size - 1).bit_length(), below


def _hole(plan_: Plan) -> Range:
    return Range(plan_.lowmem_end, HOLE_END)


@settings(max_examples=300)
@given(_plans(), st.lists(st.one_of(_alloc(), st.integers(0, 15)), max_size=30))
def test_alloc_and_free_keep_allocations_sound(plan_: Plan, steps: list[tuple[bytes, int, int, int | None] | int]
                                              ) -> None:
    allocations = Allocations(6)
    for step in steps:
        if isinstance(step, int):
            # Free the n-th allocation (if there is one), or a range that is not one.
            held = allocations.ranges()
            target = held[step % len(held)] if held and step < 12 else Range(0x1000, 0x2000)
            result = answer(f"free {target}".encode(), plan_, allocations, max_length=MAX_LENGTH)
            assert (result.reply == "ok") == (target in held)
            assert target not in allocations.ranges()
            continue
        query, size, align, below = step
        before = allocations.ranges()
        result = answer(query, plan_, allocations, max_length=MAX_LENGTH)
        if len(before) >= allocations.cap:
            assert result.reply.startswith("error EDQUOT") and allocations.ranges() == before
        elif result.outcome == "ok":
            got = Range.inclusive(*(int(part, 16) for part in result.reply[3:].split("-")))
            assert set(allocations.ranges()) == set(before) | {got}
            assert got.size == size and got.start % align == 0
            assert below is None or got.end <= below
        else:
            assert result.reply.startswith("error ENOSPC") and allocations.ranges() == before
        _assert_sound(plan_, allocations)


def _assert_sound(plan_: Plan, allocations: Allocations) -> None:
    held = allocations.ranges()
    assert list(held) == sorted(held)
    assert all(a.end <= b.start for a, b in zip(held, held[1:])), "allocations overlap"
    assert all(_hole(plan_).contains(r) for r in held)
    assert not RangeSet(held).overlaps(plan_.reserved)
    assert not RangeSet(held).overlaps(plan_.ram)


@settings(max_examples=100)
@given(_plans(), st.lists(st.tuples(st.sampled_from([0x100000, 0x300000, 0x1000000]),
                                    st.sampled_from([0x100000, 0x400000])), min_size=1, max_size=5))
def test_alloc_takes_the_lowest_fitting_address(plan_: Plan, requests: list[tuple[int, int]]) -> None:
    """Against a brute force over every aligned start in the hole (coarse aligns keep it small)."""
    allocations = Allocations(8)
    for size, align in requests:
        taken = plan_.reserved | allocations.as_set()
        first = -(-plan_.lowmem_end // align) * align
        expected = next((Range(start, start + size) for start in range(first, HOLE_END - size + 1, align)
                         if not taken.overlaps(Range(start, start + size))), None)
        result = answer(f"alloc {size:#x} align={align:#x}".encode(), plan_, allocations,
                              max_length=MAX_LENGTH)
        if expected is None:
            assert result.reply.startswith("error ENOSPC")
        else:
            assert result.reply == f"ok {expected}"
