"""Domains xl created without a request: learned from libxl's keys and saved configuration.

The daemon runs in process against its simulated xenstored; each test writes what
libxl 4.17 writes for a domain it builds (``libxl__domain_make``: ``/libxl/<domid>/type``
and the ``vm`` link; ``libxl__build_post``: ``memory/``; ``libxl__domain_build``:
``platform/``; then the introduction), its PCI backend as ``libxl__device_pci_add``
writes it, and the JSON libxl saves at the end of ``xl create``.  The same flow on
the real Xen is in ``tests/xen/test_xen_rmrrd.py`` (PV guests),
``tests/xen/test_xen_hvm_layout.py`` (HVM guests) and ``tests/xen/test_xen_pci_attach.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from support.inprocess import InProcessDaemon, inprocess_daemon
from rmrrd.app.demo import D1, D2
from rmrrd.app.toolstack import create_domain, guest_query, read_answer
from rmrrd.core.ranges import parse_range
from rmrrd.protocol import allocated_path, answer_path, assigned_path, pci_backend_path, request_path, result_path
from rmrrd.xenstore.client import XenstoreClient
from rmrrd.xenstore.ops import read_text, read_tree

UUID = "0d6c3b1e-6a5c-4c3e-9d2b-{:012x}"
WAIT = 10.0


def uuid(domid: int) -> str:
    return UUID.format(domid)


def saved_config(kind: str, max_mib: int, *, hvm: dict[str, object] | None = None,
                 pcidevs: list[dict[str, object]] | None = None, passthrough: str | None = None) -> dict[str, object]:
    """A configuration as libxl saves it: fields at their default left out."""
    c_info: dict[str, object] = {"type": kind, "name": f"guest-{kind}"}
    if passthrough is not None:
        c_info["passthrough"] = passthrough
    b_info: dict[str, object] = {"max_memkb": max_mib * 1024, "target_memkb": max_mib * 1024}
    if hvm is not None:
        b_info["type.hvm"] = hvm
    config: dict[str, object] = {"c_info": c_info, "b_info": b_info}
    if pcidevs:
        config["pcidevs"] = pcidevs
    return config


async def xl_builds(xs: XenstoreClient, domid: int, kind: str, max_mib: int, videoram_mib: int = 0) -> None:
    """What libxl writes before it introduces the domain, and the introduction."""
    home = f"/local/domain/{domid}"
    async with xs.transaction() as tx:
        await tx.write(f"/libxl/{domid}/type", kind)
        await tx.write(f"/libxl/{domid}/dm-version", "qemu_xen")
        await tx.write(f"{home}/vm", f"/vm/{uuid(domid)}")
        await tx.write(f"{home}/name", f"guest-{domid}")
    async with xs.transaction() as tx:
        await tx.write(f"{home}/memory/static-max", str(max_mib * 1024))
        await tx.write(f"{home}/memory/target", str((max_mib - videoram_mib) * 1024))
        await tx.write(f"{home}/memory/videoram", str(videoram_mib * 1024))
        if kind == "hvm":
            await tx.write(f"{home}/platform/device-model", "qemu_xen")
    await xs.introduce(domid, 0, 0)


def save(daemon_dir: Path, domid: int, config: dict[str, object]) -> None:
    """libxl__set_domain_configuration, at the end of xl create and on every attach:
    yajl's pretty JSON and the C string's NUL (as found on Xen 4.17)."""
    path = daemon_dir / f"userdata-d.{domid}.{uuid(domid)}.libxl-json"
    path.write_bytes(json.dumps(config, indent=4).encode() + b"\n\0")


async def xl_pci_attach(xs: XenstoreClient, domid: int, n: int, bdf: str, policy: str = "strict") -> None:
    """libxl__device_pci_add_xenstore's keys for device ``n``."""
    backend = pci_backend_path(domid)
    async with xs.transaction() as tx:
        await tx.write(f"{backend}/key-{n}", bdf)
        await tx.write(f"{backend}/dev-{n}", bdf)
        await tx.write(f"{backend}/opts-{n}", f"msitranslate=0,power_mgmt=0,permissive=0,rdm_policy={policy}")
        await tx.write(f"{backend}/state-{n}", "1")
        await tx.write(f"{backend}/num_devs", str(n + 1))


async def xl_creates(xs: XenstoreClient, daemon_dir: Path, domid: int, kind: str, max_mib: int,
                     **config: Any) -> dict[str, str]:
    """``xl create`` as a test's starting point: the configuration saved before the
    introduction, so the first learned answer is the whole one; that answer."""
    save(daemon_dir, domid, saved_config(kind, max_mib, **config))
    await xl_builds(xs, domid, kind, max_mib)
    return await wait_answer(xs, domid, "origin", "learned")


async def wait_answer(xs: XenstoreClient, domid: int, key: str, value: str) -> dict[str, str]:
    """Wait until the answer's ``key`` holds ``value``; the whole answer."""
    with trio.fail_after(WAIT):
        async with xs.watch(answer_path(domid)) as events:
            async for _ in events:
                if await read_text(xs, f"{answer_path(domid)}/{key}") == value:
                    return await read_tree(xs, answer_path(domid))
    raise AssertionError("unreachable")


async def check(xs: XenstoreClient, req_id: str, line: str) -> dict[str, str]:
    """A toolstack check as ``rmrrd check`` makes it; its result."""
    with trio.fail_after(WAIT):
        async with xs.watch(f"{result_path(req_id)}/verdict") as events:
            await xs.write(request_path(req_id), line)
            async for _ in events:
                if await xs.exists(f"{result_path(req_id)}/verdict"):
                    return await read_tree(xs, result_path(req_id))
    raise AssertionError("unreachable")


async def learned_again(xs: XenstoreClient, domid: int, generation: str) -> None:
    """Wait until the domain's learned answer has a generation other than ``generation``."""
    with trio.fail_after(WAIT):
        while (await read_answer(xs, domid)).generation == generation:
            await trio.sleep(0.01)


async def held_by(xs: XenstoreClient, holder: int, device: str) -> None:
    """Domain 7 (set up by the caller) is refused ``device``, relaxed: ``holder`` has it."""
    taken = await check(xs, f"taken-{holder}", f"op=hotplug domid=7 device={device},rdm_policy=relaxed")
    assert taken["verdict"] == "fail" and f"assigned to domain {holder}" in taken["reason"], taken


async def test_an_hvm_domain_is_learned_at_its_introduction_then_from_its_saved_configuration(
        tmp_path: Path) -> None:
    async with inprocess_daemon(tmp_path) as daemon:
        xs = daemon.xs
        await xl_builds(xs, 3, "hvm", 4096, videoram_mib=8)
        # Introduced, not saved yet: libxl's defaults, no host reservations.
        first = await wait_answer(xs, 3, "origin", "learned")
        assert (first["status"], first["type"], first["lowmem_end"]) == ("ready", "hvm", "0xf0000000")
        # xl create ends: the configuration says rdm="strategy=host": the GPU's region at
        # 2.5 GiB is reserved and low memory ends below it, as libxl lays it out.
        save(tmp_path, 3, saved_config("hvm", 4096, hvm={"rdm": {"strategy": "host", "policy": "relaxed"}}))
        learned = await wait_answer(xs, 3, "lowmem_end", "0xa0000000")
        ram = (4096 - 8) << 20
        assert learned["highmem_end"] == f"{(1 << 32) + ram - 0xa0000000:#x}"
        assert {learned["region/0/range"], learned["region/1/range"]} == {"0xe0000-0xeffff", "0xa0000000-0xa37fffff"}
        answer = await read_answer(xs, 3)
        assert answer.origin == "learned" and answer.generation.startswith("learned-")
        # xl pci-attach D1 (the USB controller, its buffer in the BIOS area): the
        # domain holds it now, so another domain may not take D1's region.
        await xl_pci_attach(xs, 3, 0, D1, policy="relaxed")
        await learned_again(xs, 3, answer.generation)
        await create_domain(xs, 7, {"memory": "1024"})
        await held_by(xs, 3, D1)


async def test_a_device_hot_plugged_into_a_learned_hvm_guest_is_held_but_moves_nothing(tmp_path: Path) -> None:
    # libxl lays a guest out once, at creation, with the devices it has then
    # (libxl__domain_device_construct_rdm); xl pci-attach only assigns.  On the real
    # Xen: tests/xen/test_xen_hvm_layout.py, the "attach" guest.
    async with inprocess_daemon(tmp_path) as daemon:
        xs = daemon.xs
        built = await xl_creates(xs, tmp_path, 3, "hvm", 4096, hvm={}, passthrough="enabled")
        assert (built["lowmem_end"], "region/0/range" in built) == ("0xf0000000", False), built
        # The GPU, relaxed: its region at 2.5 GiB, above rdm_mem_boundary, lies in the
        # guest's RAM; had it been there at creation, libxl would have ended low RAM below it.
        generation = built["generation"]
        await xl_pci_attach(xs, 3, 0, D2, policy="relaxed")
        save(tmp_path, 3, saved_config("hvm", 4096, hvm={}, passthrough="enabled",
                                       pcidevs=[{"dev": 2, "rdm_policy": "relaxed"}]))
        await learned_again(xs, 3, generation)
        after = await read_tree(xs, answer_path(3))
        layout = ("lowmem_end", "highmem_end", "e820/0", "e820/1", "e820/2", "e820/3", "e820/4")
        assert [after.get(key) for key in layout] == [built.get(key) for key in layout]
        assert "e820/5" not in after and "region/0/range" not in after, after
        # Held all the same: another domain may not take it.
        await create_domain(xs, 7, {"memory": "1024"})
        await held_by(xs, 3, D2)


async def test_xl_pci_detach_of_the_last_device_frees_it_while_the_saved_configuration_still_lists_it(
        tmp_path: Path) -> None:
    # libxl's detach of a guest's last device removes its PCI backend first and takes the
    # device out of the saved configuration after (seen on Xen 4.17:
    # tests/xen/test_xen_hvm_layout.py, the "attach" guest).  The backend says what it holds.
    async with inprocess_daemon(tmp_path) as daemon:
        xs = daemon.xs
        built = await xl_creates(xs, tmp_path, 3, "hvm", 4096, hvm={}, passthrough="enabled")
        await xl_pci_attach(xs, 3, 0, D2, policy="relaxed")
        save(tmp_path, 3, saved_config("hvm", 4096, hvm={}, passthrough="enabled",
                                       pcidevs=[{"dev": 2, "rdm_policy": "relaxed"}]))
        await learned_again(xs, 3, built["generation"])
        await create_domain(xs, 7, {"memory": "1024"})
        await held_by(xs, 3, D2)
        plugged = (await read_answer(xs, 3)).generation
        await xs.rm(pci_backend_path(3).rsplit("/", 1)[0])
        await learned_again(xs, 3, plugged)
        assert (await read_answer(xs, 3)).generation == built["generation"]  # the domain as built: no device
        free = await check(xs, "free", f"op=hotplug domid=7 device={D2},rdm_policy=relaxed")
        assert "assigned to domain 3" not in free["reason"], free


async def test_xl_mem_max_does_not_move_a_learned_layout(tmp_path: Path) -> None:
    # libxl_domain_setmaxmem rewrites memory/static-max; the guest keeps the layout it
    # was built with, and so does its learned answer.
    async with inprocess_daemon(tmp_path) as daemon:
        xs = daemon.xs
        built = await xl_creates(xs, tmp_path, 3, "hvm", 4096, hvm={"rdm": {"strategy": "host"}},
                                 passthrough="enabled")
        assert built["lowmem_end"] == "0xa0000000", built  # below the GPU's region
        await xs.write("/local/domain/3/memory/static-max", str(8192 * 1024))
        await xl_pci_attach(xs, 3, 0, D1, policy="relaxed")  # a re-learn, seeing both
        await learned_again(xs, 3, built["generation"])
        after = await read_tree(xs, answer_path(3))
        layout = [key for key in built if key.startswith(("lowmem_end", "highmem_end", "e820/", "region/"))]
        assert [after.get(key) for key in layout] == [built[key] for key in layout], after


async def test_a_check_of_a_learned_domain_holds_nothing_until_libxl_attaches(tmp_path: Path) -> None:
    # rmrrd-xl pci-attach asks first, then xl attaches, or fails (on the real Xen,
    # tests/xen/test_xen_pci_attach.py): the backend says what the domain holds.
    async with inprocess_daemon(tmp_path) as daemon:
        xs = daemon.xs
        learned = await xl_creates(xs, tmp_path, 5, "pv", 128, passthrough="enabled")
        assert (await check(xs, "asked", f"op=hotplug domid=5 device={D1}"))["verdict"] == "ok"
        assert not await xs.exists(assigned_path(5))
        await create_domain(xs, 7, {"memory": "1024"})
        free = await check(xs, "free", f"op=hotplug domid=7 device={D1},rdm_policy=relaxed")
        assert "assigned to domain 5" not in free["reason"], free
        await xl_pci_attach(xs, 5, 0, D1)
        await learned_again(xs, 5, learned["generation"])
        await held_by(xs, 5, D1)


async def test_a_learned_guests_placements_outlive_an_attach(tmp_path: Path) -> None:
    # The guest runs on when a device is attached: what its hvmloader placed stays
    # placed (a new answer to a request is a new boot; a learned one is not).
    async with inprocess_daemon(tmp_path) as daemon:
        xs = daemon.xs
        built = await xl_creates(xs, tmp_path, 3, "hvm", 1024, hvm={}, passthrough="enabled")
        async with daemon.guest(3) as guest:
            first = (await guest_query(guest, 3, "a1", "alloc 0x1000000")).removeprefix("ok ")
            assert await xs.directory(allocated_path(3)), "the placement is recorded"
            await xl_pci_attach(xs, 3, 0, D1, policy="relaxed")
            await learned_again(xs, 3, built["generation"])
            assert await xs.directory(allocated_path(3)), "the placement is still recorded"
            second = (await guest_query(guest, 3, "a2", "alloc 0x1000000")).removeprefix("ok ")
            assert not parse_range(first).overlaps(parse_range(second)), (first, second)
            assert await guest_query(guest, 3, "c1", f"check {first}") == "ok overlaps allocated"


async def test_a_plain_pv_domain_takes_no_device_and_one_with_passthrough_takes_them_without_layout(
        tmp_path: Path) -> None:
    async with inprocess_daemon(tmp_path) as daemon:
        xs = daemon.xs
        answer = await xl_creates(xs, tmp_path, 4, "pv", 128)
        assert answer["status"] == "ready" and "lowmem_end" not in answer
        refused = await check(xs, "plain", f"op=hotplug domid=4 device={D2}")
        assert refused["verdict"] == "fail" and "created without passthrough" in refused["reason"], refused
        # passthrough="enabled": D1's region lies in a PV guest's address space
        # nowhere (the IOMMU maps it 1:1), so Xen takes it.
        await xl_creates(xs, tmp_path, 5, "pv", 128, passthrough="enabled")
        assert (await check(xs, "pv", f"op=hotplug domid=5 device={D1}"))["verdict"] == "ok"
        await xs.rm("/libxl/5")  # xl destroy: the learned answer goes like any other
        with trio.fail_after(WAIT):
            while await xs.exists(answer_path(5)):
                await trio.sleep(0.01)


async def test_a_saved_configuration_that_is_not_libxls_is_an_error_naming_the_file(tmp_path: Path) -> None:
    async with inprocess_daemon(tmp_path) as daemon:
        (tmp_path / f"userdata-d.8.{uuid(8)}.libxl-json").write_text('{"c_info": {"type": "pv"}, "b_info": [')
        await xl_builds(daemon.xs, 8, "pv", 128)
        answer = await wait_answer(daemon.xs, 8, "status", "error")
        assert answer["origin"] == "learned" and answer["error"].startswith(f"{tmp_path}/userdata-d.8."), answer
        assert "not valid JSON" in answer["error"]


async def test_a_domain_the_toolstack_described_keeps_its_request(tmp_path: Path) -> None:
    async with inprocess_daemon(tmp_path) as daemon:
        xs = daemon.xs
        answered = await create_domain(xs, 6, {"memory": "4096", "mmio_hole": "1024"})
        await xl_builds(xs, 6, "hvm", 4096)
        await daemon_idle(daemon)
        assert await read_answer(xs, 6) == answered
        assert answered.origin is None


async def daemon_idle(daemon: InProcessDaemon) -> None:
    """Let the daemon's owners handle what they were sent."""
    await trio.sleep(0.2)
