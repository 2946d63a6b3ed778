"""``rmrrd run`` in a real Xen dom0, against the real C xenstored, with real guests.

One daemon serves the whole module (its tests run in order): the seed scenario played
through ``xenstore-write`` and ``rmrrd check``, its metrics, PV guests created and
destroyed with ``xl`` that ask rmrrd from inside through their own xenstore
connection, what ``xl create`` does to a domid rmrrd answered, domains ``xl create``
makes learned from libxl, SIGHUP, a restart (C xenstored cannot restart, so rmrrd
does: the reconcile a reconnect runs is the same), and SIGTERM.
"""

from __future__ import annotations

import concurrent.futures
import re
import shlex
from collections.abc import Iterator

import pytest

from support import D1, D2, D3, SEED_DOMAIN
from support.prometheus import promtool_check_metrics, tools_available
from xen.daemon import CONFIG, STATUS, Rmrrd, running
from xen.testbed import CommandFailed, Dom0, Guest

SEED_DOMID = 900
"""The seed scenario's domain, numbered where ``xl create`` never reaches in a session."""
CONFIG_TEXT = """\
xenstore:
  path: /run/xenstored/socket
host:
  name: node-a
  sources: [dmar, ivrs, /opt/rmrrd/etc/inventories/node-a.yaml]
peers: [{peers}]
metrics:
  listen: 127.0.0.1:8407
"""
NODE_B = "/opt/rmrrd/etc/inventories/node-b.yaml"
NO_RMRR = "0000:00:1f.0"
"""A device of node-a with no reserved region."""
NODE_C = "/etc/rmrrd/inventories/node-c.yaml"
EARLY = "/tool/testbed/early"
"""A node given to the guests before they existed."""
EARLY_DOMIDS = range(1, 400)
"""Domids a guest of this session may take (Xen gives them in turn); the permission
list fits one xenstore payload."""


@pytest.fixture(scope="module")
def rmrrd(dom0: Dom0) -> Iterator[Rmrrd]:
    with running(dom0, CONFIG_TEXT.format(peers=NODE_B)) as daemon:
        yield daemon


def write_request(dom0: Dom0, domid: int, keys: dict[str, str], generation: str = "1") -> dict[str, str]:
    """The toolstack's side: the keys and ``request`` in one xenstore-write; the answer."""
    pairs = [item for key, value in {**keys, "request": generation}.items()
             for item in (f"/libxl/{domid}/rdm/{key}", value)]
    dom0.run(["xenstore-write", *pairs])
    dom0.xs_wait(f"/local/domain/{domid}/rmrr/generation", generation)
    return dom0.xs_ls(f"/local/domain/{domid}/rmrr")


def check(dom0: Dom0, req_id: str, request: str) -> dict[str, str]:
    """A toolstack check through xenstore-write; its result."""
    dom0.run(["xenstore-write", f"/tool/rmrrd/request/{req_id}", request])
    dom0.xs_wait(f"/tool/rmrrd/result/{req_id}/verdict")
    return dom0.xs_ls(f"/tool/rmrrd/result/{req_id}")


def metrics(dom0: Dom0) -> str:
    return dom0.run(["wget", "-q", "-O", "-", "http://127.0.0.1:8407/metrics"]).text


def sample(text: str, name: str) -> float:
    """One sample's value (``name`` with its labels as exposed), 0 when absent."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_rmrrd_starts_and_reads_the_dmar_as_xen_left_it(rmrrd: Rmrrd, dom0: Dom0) -> None:
    log = rmrrd.log()
    # QEMU's DMAR (VT-d, no RMRR) is RMAD in this dom0; the default `dmar` source finds it.
    assert "host node-a: /sys/firmware/acpi/tables/RMAD: 0 reserved regions" in log
    assert "no DMAR table" not in log
    assert re.search(r"rmrrd \S+ ready: serving 0 domains; host node-a with 2 regions, 1 peers", log), log
    assert dom0.xs_read("/tool/rmrrd/pid") == str(rmrrd.pid)


def test_seed_setup_through_xenstore_write(rmrrd: Rmrrd, dom0: Dom0) -> None:
    answer = write_request(dom0, SEED_DOMID, SEED_DOMAIN)
    assert (answer["status"], answer["lowmem_end"], answer["highmem_end"]) == ("ready", "0xa0000000", "0x160000000")
    regions = {answer[f"region/{n}/range"]: (answer[f"region/{n}/conflict"], answer[f"region/{n}/action"])
               for n in range(3)}
    assert regions == {"0xa0000000-0xa37fffff": ("none", "avoided"), "0x40000000-0x40003fff": ("ram", "warned"),
                       "0xe0000-0xeffff": ("bios", "warned")}
    # The answer's permissions, as real Xen keeps them: dom0 owns it, the domain may read
    # it and write its query node (the domain does not exist: C xenstored keeps the
    # entry, marked to grant nothing to a domain created later with this id).
    perms = dom0.run(["xenstore-ls", "-p", f"/local/domain/{SEED_DOMID}"]).text
    assert re.search(rf'^rmrr = ""[ .]+\(n0,r{SEED_DOMID}\)$', perms, re.MULTILINE), perms
    assert re.search(rf'^ query = ""[ .]+\(n0,b{SEED_DOMID}\)$', perms, re.MULTILINE), perms


def test_seed_checks_through_xenstore_write_and_rmrrd_check(rmrrd: Rmrrd, dom0: Dom0) -> None:
    d = SEED_DOMID
    assert check(dom0, "assign-d2", f"op=assign domid={d} device={D2}")["verdict"] == "ok"
    hotplug = check(dom0, "hotplug-d1", f"op=hotplug domid={d} device={D1}")
    assert (hotplug["verdict"], hotplug["conflict/0"]) == ("fail", f"0xe0000-0xeffff bios {D1}")
    migrate = check(dom0, "migrate-d3", f"op=migrate domid={d} target=node-b device={D3}")
    assert (migrate["verdict"], migrate["conflict/0"]) == ("fail", f"0x40000000-0x40003fff ram {D3}")
    relaxed = dom0.rmrrd("check", "hotplug", "--domid", str(d), "--device", f"{D1},rdm_policy=relaxed", check=False)
    assert relaxed.rc == 3, relaxed.describe()  # warn
    assert dom0.rmrrd("check", "migrate", "--domid", str(d), "--target", "node-b", "--device", D3,
                      check=False).rc == 1


@pytest.mark.skipif(not tools_available(), reason="prometheus (promtool) not installed")
def test_metrics_are_clean_prometheus_text_and_count_the_seed(rmrrd: Rmrrd, dom0: Dom0) -> None:
    text = metrics(dom0)
    assert promtool_check_metrics(text.encode()) == []
    assert sample(text, "rmrrd_domains") == 1
    assert sample(text, 'rmrrd_setups_total{status="ready"}') == 1
    assert sample(text, 'rmrrd_requests_total{op="hotplug",verdict="fail"}') == 1
    assert sample(text, 'rmrrd_requests_total{op="hotplug",verdict="warn"}') == 1
    assert sample(text, 'rmrrd_host_regions{host="node-a"}') == 2


@pytest.fixture(scope="module")
def guests(rmrrd: Rmrrd, dom0: Dom0) -> Iterator[list[Guest]]:
    """Two PV guests, booted side by side, each with its rmrrd answer (written once the
    domain exists, as a toolstack must: docs/toolstack.md).  PV, not PVH: under
    emulation a running PVH guest makes the whole machine several times slower (every
    world switch of the emulated SVM flushes QEMU's TLB), and rmrrd meets both kinds
    only through xenstore.

    Before they exist, a node outside their homes is given to the domids they may
    take, as a toolstack asking rmrrd before it creates a domain gives it its answer
    (xl wipes ``/local/domain/<domid>`` on create, so an answer cannot be written
    early here)."""
    # Every domid the guests may take (no domain holds one now: dom0 is alone).
    dom0.run(["xenstore-write", EARLY, "granted before the domain existed"])
    dom0.run(["xenstore-chmod", EARLY, "n0", *(f"r{domid}" for domid in EARLY_DOMIDS)])
    created = [dom0.create_guest("pv-1", kind="pv"), dom0.create_guest("pv-2", kind="pv")]
    with concurrent.futures.ThreadPoolExecutor() as pool:
        list(pool.map(lambda guest: guest.wait_ready(), created))
    for guest in created:
        assert write_request(dom0, guest.domid, {"memory": "128", "pci/0": D2})["status"] == "ready"
    yield created
    for guest in created:  # those a test has not destroyed
        dom0.run(["xl", "destroy", guest.name], check=False)


def ask(guest: Guest, queries: dict[str, str]) -> dict[str, str]:
    """Queries from inside the guest, through its own xenstore connection, written in
    one go (every exchange with a guest costs seconds under emulation); the replies."""
    pairs = " ".join(f"rmrr/query/{name} {shlex.quote(query)}" for name, query in queries.items())
    script = f"xenstore-write {pairs} || exit 1\n" + "".join(
        f"for i in $(seq 100); do r=$(xenstore-read rmrr/reply/{name} 2>/dev/null) && break; sleep 0.1; done; "
        f"echo \"{name} $r\"\n" for name in queries)
    replies = dict(line.split(" ", 1) for line in guest.run(script).text.splitlines())
    assert set(replies) == set(queries), replies
    return replies


def run_each(guest: Guest, commands: list[str]) -> list[tuple[int, str]]:
    """Several commands in one exchange with the guest: each one's status and output."""
    script = "\n".join(f"out=$({command} 2>&1); printf '@@@ %s %s\\n' $? \"$out\"" for command in commands)
    results = [part.split(" ", 1) for part in guest.run(script).text.split("@@@ ")[1:]]
    assert len(results) == len(commands), results
    return [(int(rc), output.rstrip("\n")) for rc, output in results]


def test_a_guest_asks_through_its_own_connection(guests: list[Guest], dom0: Dom0) -> None:
    for guest in guests:
        assert run_each(guest, ["xenstore-read domid", "xenstore-read rmrr/status"]) == [
            (0, str(guest.domid)), (0, "ready")]
        answer = dom0.xs_ls(f"{guest.home}/rmrr")
        e820 = ",".join(answer[f"e820/{n}"] for n in range(len([key for key in answer if key.startswith("e820/")])))
        replies = ask(guest, {"q1": "e820", "q2": "regions", "q3": "check 0xa0000000-0xa0000fff",
                              "q4": "bogus query"})
        assert replies["q1"] == f"ok {e820}"
        assert replies["q2"] == "ok 0xa0000000-0xa37fffff"
        assert replies["q3"].startswith("ok overlaps")
        assert replies["q4"].startswith("error EINVAL")
        assert dom0.xs_read(f"{guest.home}/rmrr/query/q4") is None  # answered and removed


def test_a_guest_cannot_touch_what_is_not_its_own(guests: list[Guest]) -> None:
    # Real Xen's permissions, enforced by C xenstored on the guest's ring.
    guest, other = guests
    denied = {
        "xenstore-ls /local/domain/0": "Permission denied",
        f"xenstore-ls /libxl/{guest.domid}": "Permission denied",
        f"xenstore-ls /local/domain/{other.domid}/rmrr": "Permission denied",
        f"xenstore-ls /local/domain/{SEED_DOMID}/rmrr": "Permission denied",
        "xenstore-write rmrr/status forged": "could not write path",
        "xenstore-write rmrr/reply/q9 forged": "could not write path",
        f"xenstore-write /local/domain/{other.domid}/rmrr/query/q9 e820": "could not write path",
        "xenstore-write /tool/rmrrd/request/evil 'op=assign domid=0 device=00:02.0'": "could not write path",
        "xenstore-rm rmrr": "could not remove path",
    }
    results = run_each(guest, [*denied, "xenstore-read rmrr/status"])
    for (command, message), (rc, output) in zip(denied.items(), results):
        assert rc == 1 and message in output, f"{command}: exit {rc}: {output}"
    assert results[-1] == (0, "ready")  # nothing above changed it


def test_c_xenstored_grants_nothing_to_a_domain_younger_than_the_permission(
        guests: list[Guest], dom0: Dom0, rmrrd: Rmrrd) -> None:
    # What rmrrd answers for on @introduceDomain (it sets its answer's permissions
    # again): C xenstored marks an entry for a domain that does not exist to be ignored.
    guest = guests[0]
    assert guest.domid in EARLY_DOMIDS
    assert run_each(guest, [f"xenstore-read {EARLY}"]) == [(1, f"xenstore-read: couldn't read path {EARLY}")]
    dom0.run(["xenstore-chmod", EARLY, "n0", f"r{guest.domid}"])  # set again, the domain existing
    assert run_each(guest, [f"xenstore-read {EARLY}"]) == [(0, "granted before the domain existed")]
    # rmrrd did the same for each guest's answer once it saw the guest introduced.
    for each in guests:
        rmrrd.wait_for_log(f"domain {each.domid}: introduced; permissions of its ", timeout=10)


def test_rmrrd_follows_guests_as_xl_destroys_them(rmrrd: Rmrrd, guests: list[Guest], dom0: Dom0) -> None:
    before = metrics(dom0)
    for guest in guests:
        guest.destroy()
    for guest in guests:
        dom0.wait_until(f"! xenstore-exists /local/domain/{guest.domid}/rmrr", 30)
        rmrrd.wait_for_log(f"domain {guest.domid}: (released|removed from /libxl)", regex=True)
    after = metrics(dom0)
    assert sample(after, "rmrrd_domains") == sample(before, "rmrrd_domains") - 2
    assert sample(after, 'rmrrd_xenstore_watch_events_total{watch="release"}') > sample(
        before, 'rmrrd_xenstore_watch_events_total{watch="release"}')
    log = rmrrd.log()
    for guest in guests:
        assert re.search(rf"domain {guest.domid}: (released|removed from /libxl); answer removed", log), log


def test_xl_create_on_a_domid_rmrrd_answered(rmrrd: Rmrrd, dom0: Dom0) -> None:
    # A request written before the domain exists, on the domid xl will take: the seed
    # layout, and a device accepted for hotplug.  Then xl create, as an operator would.
    domid = dom0.next_domid()
    assert write_request(dom0, domid, SEED_DOMAIN)["lowmem_end"] == "0xa0000000"
    assert check(dom0, "wipe-hotplug", f"op=hotplug domid={domid} device={NO_RMRR}")["verdict"] == "ok"
    assert dom0.xs_ls(f"/tool/rmrrd/assigned/{domid}")
    guest = dom0.create_guest("reuse-1", memory_mib=256, paused=True)
    assert guest.domid == domid
    try:
        # xl wiped the request and the answer; rmrrd says so once and drops the old
        # layout, then learns the domain xl built (a PV guest: no layout).
        dom0.wait_until(f"! xenstore-exists /tool/rmrrd/assigned/{domid}", 30)
        rmrrd.wait_for_log(f"domain {domid}: request and answer gone, /libxl/{domid} still there "
                           "(domain re-created on this domid?)")
        assert rmrrd.log().count("re-created on this domid") == 1
        assert dom0.xs_wait(f"/local/domain/{domid}/rmrr/origin") == "learned"
        assert dom0.xs_read(f"/local/domain/{domid}/rmrr/type") == "pv"
        refused = check(dom0, "wipe-migrate-1", f"op=migrate domid={domid} target=node-b device={D3}")
        assert refused["verdict"] == "fail" and "created without passthrough" in refused["reason"], refused
        # The toolstack asks again for the domain xl built, and gets its own answer.
        answer = write_request(dom0, domid, {"memory": "256", "migrate/0": "node-b"})
        assert (answer["status"], answer["lowmem_end"], "origin" in answer) == ("ready", "0x10000000", False)
        assert check(dom0, "wipe-migrate-2", f"op=migrate domid={domid} target=node-b device={D3}")["verdict"] == "ok"
    finally:
        guest.destroy()


def test_domains_xl_creates_are_learned_from_libxl(rmrrd: Rmrrd, dom0: Dom0) -> None:
    # Plain `xl create`, nothing written for rmrrd: learned from libxl's keys and the
    # configuration it saved under /var/lib/xen.  Paused: rmrrd only needs xenstore.
    plain = dom0.create_guest("learn-plain", paused=True)
    open_ = dom0.create_guest("learn-pt", paused=True, config=['passthrough = "enabled"'])
    try:
        for guest in (plain, open_):
            assert dom0.xs_wait(f"{guest.home}/rmrr/origin") == "learned"
            dom0.run(["sh", "-c", f"ls /var/lib/xen/userdata-d.{guest.domid}.*.libxl-json"])  # where libxl saves
            rmrrd.wait_for_log(f"domain {guest.domid}: learned from libxl (pv, its saved configuration read) "
                               "ready: no layout (pv guest")
        answer = dom0.xs_ls(f"{plain.home}/rmrr")
        assert (answer["status"], answer["type"], answer["generation"][:8]) == ("ready", "pv", "learned-")
        # The verdicts of Xen 4.17 for these domains: no device at all for a domain
        # created without passthrough (EOPNOTSUPP), which the other one takes.
        for guest, rc, says in ((plain, 1, "created without passthrough"), (open_, 0, "no reserved regions")):
            verdict = dom0.rmrrd("check", "hotplug", "--domid", str(guest.domid), "--device", NO_RMRR, check=False)
            assert verdict.rc == rc and says in verdict.text, verdict.describe()
    finally:
        for guest in (plain, open_):
            guest.destroy()
    for guest in (plain, open_):
        dom0.wait_until(f"! xenstore-exists {guest.home}/rmrr", 30)


def test_sighup_reloads_the_configuration(rmrrd: Rmrrd, dom0: Dom0) -> None:
    dom0.write_file(NODE_C, "host: node-c\nregions:\n  - range: 0x50000000-0x50000fff\n    devices: [\"0000:04:00.0\"]\n")
    dom0.write_file(CONFIG, CONFIG_TEXT.format(peers=f"{NODE_B}, {NODE_C}"))
    rmrrd.signal("HUP")
    rmrrd.wait_for_log(f"reload done from {CONFIG}")
    assert "reload: peer node-c added (1 regions)" in rmrrd.log()
    assert sample(metrics(dom0), 'rmrrd_host_regions{host="node-c"}') == 1
    dom0.write_file(CONFIG, "host: [not, a, mapping\n")
    rmrrd.signal("HUP")
    rmrrd.wait_for_log("reload failed, keeping the running configuration")
    assert dom0.xs_read(STATUS) == "ready"


def test_a_restarted_rmrrd_relearns_what_the_real_xenstored_kept(rmrrd: Rmrrd, dom0: Dom0) -> None:
    # C xenstored cannot restart and keep its domains, so the reconnect path is shown by
    # restarting rmrrd: a reconnect runs the same reconcile from the watches' initial events.
    dom0.write_file(CONFIG, CONFIG_TEXT.format(peers=NODE_B))
    stopped = rmrrd.stop()
    assert stopped.rc == 0, stopped.describe()
    assert dom0.xs_read(STATUS) == "stopped"
    rmrrd.start()
    rmrrd.wait_for_log("reconciled: 1 domains answered")
    assert dom0.xs_read(f"/local/domain/{SEED_DOMID}/rmrr/generation") == "1"  # kept, not rewritten
    hotplug = check(dom0, "after-restart", f"op=hotplug domid={SEED_DOMID} device={D1}")
    assert (hotplug["verdict"], hotplug["conflict/0"]) == ("fail", f"0xe0000-0xeffff bios {D1}")


def test_sigterm_stops_it_cleanly(rmrrd: Rmrrd, dom0: Dom0) -> None:
    stopped = rmrrd.stop()
    assert stopped.rc == 0, stopped.describe()
    assert dom0.xs_read(STATUS) == "stopped"
    log = rmrrd.log()
    assert "signal SIGTERM: stopping within" in log and log.rstrip().endswith("rmrrd stopped")
    assert "Traceback" not in log
    with pytest.raises(CommandFailed):
        metrics(dom0)  # the listener went with it
