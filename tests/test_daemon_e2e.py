"""The seed scenario end to end: ``rmrrd run --simulate`` as a process,
Debian's xenstore-utils as the toolstack.

Every value is written with ``xenstore-write`` and read back with ``xenstore-read`` /
``xenstore-list``; waits are ``xenstore-watch`` events.  Each test gets a fresh daemon
(``rmrrd_daemon``), so devices one test assigns never share regions with another's.
"""

from __future__ import annotations

import pytest

from support import D1, D2, D3, SEED_DOMAIN
from support.processes import Daemon
from support.xs_tools import Region, needs_xenstore_tools, read_answer, request_setup, toolstack_check, watching
from rmrrd.core.ranges import Range, RangeSet, parse_range

pytestmark = [needs_xenstore_tools, pytest.mark.process]

MIB = 1 << 20
FOUR_GIB = 1 << 32
LEGACY_HOLE = Range(0xA0000, 0x100000)
"""VGA memory and the BIOS area, never RAM in an HVM guest's e820."""


async def test_seed_setup_answer(rmrrd_daemon: Daemon) -> None:
    answer = await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    assert (answer.generation, answer.status, answer.error) == ("1", "ready", None)
    assert (answer.lowmem_end, answer.highmem_end) == ("0xa0000000", "0x160000000")
    assert answer.regions == {
        "0xa0000000-0xa37fffff": Region("0xa0000000-0xa37fffff", f"pci {D2}", "none", "avoided"),
        "0x40000000-0x40003fff": Region("0x40000000-0x40003fff", "migrate node-b", "ram", "warned"),
        "0xe0000-0xeffff": Region("0xe0000-0xeffff", f"hotplug {D1}", "bios", "warned"),
    }
    # RAM is neither lost nor invented: what moved above 4 GiB is what left low RAM.
    lowmem_end, highmem_end = int(answer.lowmem_end or "", 16), int(answer.highmem_end or "", 16)
    assert lowmem_end + highmem_end - FOUR_GIB == 4096 * MIB
    # The e820 hvmloader would give: sorted, disjoint, its RAM exactly the layout's
    # (less the legacy VGA/BIOS hole, as hvmloader's), D2's avoided region reserved,
    # node-b's warned region left inside RAM.
    entries = [(parse_range(text.split()[0]), text.split()[1]) for text in answer.e820]
    assert all(a.end <= b.start for (a, _), (b, _) in zip(entries, entries[1:])), answer.e820
    layout = RangeSet([Range(0, lowmem_end), Range(FOUR_GIB, highmem_end)]) - RangeSet([LEGACY_HOLE])
    assert RangeSet([rng for rng, kind in entries if kind == "ram"]) == layout, answer.e820
    d2, node_b = parse_range("0xa0000000-0xa37fffff"), parse_range("0x40000000-0x40003fff")
    assert any(kind == "reserved" and rng.contains(d2) for rng, kind in entries), answer.e820
    assert any(kind == "ram" and rng.contains(node_b) for rng, kind in entries), answer.e820
    xs = rmrrd_daemon.xs
    assert await xs.read("/tool/rmrrd/status") == "ready"
    assert await xs.read("/tool/rmrrd/pid") == str(rmrrd_daemon.process.pid)


CHECK_ROWS = [
    # (request, verdict, conflict kind expected or None) -- the seed scenario's rows
    (f"op=assign domid=1 device={D2}", "ok", None),
    (f"op=hotplug domid=1 device={D1}", "fail", f"0xe0000-0xeffff bios {D1}"),
    (f"op=hotplug domid=1 device={D1},rdm_policy=relaxed", "warn", f"0xe0000-0xeffff bios {D1}"),
    (f"op=migrate domid=1 target=node-b device={D3}", "fail", f"0x40000000-0x40003fff ram {D3}"),
    (f"op=migrate domid=1 target=node-b device={D3},rdm_policy=relaxed", "warn", f"0x40000000-0x40003fff ram {D3}"),
]


@pytest.mark.parametrize(("request_line", "verdict", "conflict"), CHECK_ROWS)
async def test_seed_checks_strict_and_relaxed(rmrrd_daemon: Daemon, request_line: str, verdict: str,
                                             conflict: str | None) -> None:
    await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    result = await toolstack_check(rmrrd_daemon.xs, "seed", request_line)
    assert result.verdict == verdict, result
    assert result.conflicts == ([conflict] if conflict else []), result
    assert result.reason and "\n" not in result.reason
    # Answered requests are removed: a pending node means "not answered yet".
    assert await rmrrd_daemon.xs.list("/tool/rmrrd/request") == []


async def test_accepted_hotplug_is_remembered_and_refuses_another_domain(rmrrd_daemon: Daemon) -> None:
    xs = rmrrd_daemon.xs
    await request_setup(xs, 1, SEED_DOMAIN)
    relaxed = await toolstack_check(xs, "h1", f"op=hotplug domid=1 device={D1},rdm_policy=relaxed")
    assert relaxed.verdict == "warn"
    assert await xs.read("/tool/rmrrd/assigned/1/0000-00-14-0") == f"{D1} hotplug"
    # Domain 2 reserves D1's region for hotplug too, but D1 now belongs to domain 1:
    # refused whatever the policy.  Likewise D2, statically assigned to domain 1.
    await request_setup(xs, 2, {"memory": "2048", "hotplug/0": D1, "hotplug/1": D2})
    for req_id, device in (("h2", D1), ("h3", D2)):
        shared = await toolstack_check(xs, req_id, f"op=hotplug domid=2 device={device},rdm_policy=relaxed")
        assert shared.verdict == "fail", shared
        assert "domain 1" in shared.reason, shared


async def test_mem_boundary_row_strict_error_relaxed_warning(rmrrd_daemon: Daemon) -> None:
    xs = rmrrd_daemon.xs
    strict = await request_setup(xs, 2, {**SEED_DOMAIN, "mem_boundary": "4096"})
    assert strict.status == "error"
    assert strict.error is not None and D2 in strict.error and "0xa0000000-0xa37fffff" in strict.error
    relaxed = await request_setup(xs, 3, {**SEED_DOMAIN, "mem_boundary": "4096",
                                          "pci/0": f"{D2},rdm_policy=relaxed"})
    assert (relaxed.status, relaxed.error) == ("ready", None)
    assert relaxed.regions["0xa0000000-0xa37fffff"] == Region("0xa0000000-0xa37fffff", f"pci {D2}", "ram", "warned")
    # Not avoided: low RAM runs through the region (4 GiB - 1 GiB hole).
    assert relaxed.lowmem_end == "0xc0000000"
    # A check against a refused domain fails with the setup's reason.
    refused = await toolstack_check(xs, "r2", f"op=assign domid=2 device={D2}")
    assert refused.verdict == "fail" and "refused at setup" in refused.reason


async def test_videoram_hap_and_bios_keys_shape_the_layout(rmrrd_daemon: Daemon) -> None:
    xs = rmrrd_daemon.xs
    # 8 MiB of video RAM is not guest RAM; ROMBIOS reserves 0x9e000 up and 0xe0000 up.
    answer = await request_setup(xs, 4, {"memory": "1032", "videoram": "8", "hap": "0", "bios": "rombios"})
    assert (answer.status, answer.lowmem_end, answer.highmem_end) == ("ready", "0x40000000", "0x100000000")
    assert answer.e820[:3] == ["0x0-0x9dfff ram", "0x9e000-0x9ffff reserved", "0xe0000-0xfffff reserved"]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("hap", "yes", "hap: 'yes' is not 0 or 1"),
    ("bios", "uefi", "bios: 'uefi' is not seabios, ovmf, rombios"),
    ("videoram", "8M", "videoram: '8M' is not a size in MiB"),
    ("videoram", "1024", "memory 1024 MiB less videoram 1024 MiB is below"),
])
async def test_bad_new_keys_are_errors_naming_the_key(rmrrd_daemon: Daemon, key: str, value: str,
                                                      message: str) -> None:
    answer = await request_setup(rmrrd_daemon.xs, 5, {"memory": "1024", key: value})
    assert answer.status == "error"
    assert answer.error is not None and message in answer.error, answer.error


async def test_changed_request_generation_is_answered_again(rmrrd_daemon: Daemon) -> None:
    xs = rmrrd_daemon.xs
    first = await request_setup(xs, 1, SEED_DOMAIN)
    assert first.lowmem_end == "0xa0000000"
    second = await request_setup(xs, 1, {"memory": "2048"}, generation="2")
    assert (second.generation, second.status) == ("2", "ready")
    # 2 GiB fits below D2's region: nothing to avoid, no RAM above 4 GiB.
    assert (second.lowmem_end, second.highmem_end) == ("0x80000000", "0x100000000")
    assert second.regions["0xa0000000-0xa37fffff"].action == "none"


async def test_removing_libxl_domain_removes_the_answer(rmrrd_daemon: Daemon) -> None:
    xs = rmrrd_daemon.xs
    await request_setup(xs, 1, SEED_DOMAIN)
    await request_setup(xs, 2, {"memory": "1024"})
    async with watching(xs, "/local/domain/1/rmrr") as watch:
        await xs.rm("/libxl/1")
        await watch.until("/local/domain/1/rmrr", lambda value: value is None)
    assert await xs.list("/local/domain/1/rmrr") == []
    # The other domain is untouched.
    assert (await read_answer(xs, 2)).status == "ready"


MALFORMED = [
    # (request value, a word the reason must name)
    (f"op=frobnicate domid=1 device={D2}", "frobnicate"),
    (f"op=assign domid=banana device={D2}", "banana"),
    (f"op=assign domid=1 colour=red device={D2}", "colour"),
    (f"op=assign domid=1 device={D2} junk", "junk"),
    ("op=assign domid=1", "device"),
    (f"op=assign domid=1 device={D2} device={D1}", "exactly one device"),
    (f"op=hotplug domid=1 target=node-b device={D1}", "target"),
    ("op=assign domid=1 device=0000:zz:02.0", "0000:zz:02.0"),
    (f"op=assign domid=99999 device={D2}", "99999"),
    ("", "missing op"),
]


async def test_malformed_requests_fail_naming_the_bad_word(rmrrd_daemon: Daemon) -> None:
    xs = rmrrd_daemon.xs
    await request_setup(xs, 1, SEED_DOMAIN)
    for n, (line, word) in enumerate(MALFORMED):
        result = await toolstack_check(xs, f"bad{n}", line)
        assert (result.verdict, result.conflicts) == ("fail", []), (line, result)
        assert word in result.reason, (line, result.reason)
    # A well-formed request about a domain rmrrd never answered is refused too.
    unknown = await toolstack_check(xs, "unknown", f"op=assign domid=7 device={D2}")
    assert unknown.verdict == "fail" and "domain 7" in unknown.reason


@pytest.mark.parametrize("daemon_limits", [{"results_kept": 3}])
async def test_results_beyond_the_limit_are_removed_oldest_first(rmrrd_daemon: Daemon) -> None:
    xs = rmrrd_daemon.xs
    await request_setup(xs, 1, SEED_DOMAIN)
    for n in range(6):
        result = await toolstack_check(xs, f"r{n}", f"op=assign domid=1 device={D2}")
        assert result.verdict == "ok"
        assert sorted(await xs.list("/tool/rmrrd/result")) == [f"r{k}" for k in range(max(0, n - 2), n + 1)]
