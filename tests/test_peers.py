"""Peer inventories from directories, files and peer rmrrd endpoints over real sockets.

HTTP peers are served in-test by the daemon's own listener (``serve_http``) with
``inventory_to_json``, or by raw trio listeners that misbehave on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from rmrrd.edges.host_inventory import table_inventory
from rmrrd.edges.http_server import Request, Route, serve_http
from rmrrd.core.inventory import Inventory
from rmrrd.core.inventory_yaml import dump_inventory_yaml, inventory_to_json, load_inventory_file
from rmrrd.edges.peers import inventory_url, load_peers
from support.firmware import CORPUS, is_dmar

HOST = "127.0.0.1"
ETC = Path(__file__).resolve().parent.parent / "etc" / "inventories"
NODE_A = load_inventory_file(ETC / "node-a.yaml")
NODE_B = load_inventory_file(ETC / "node-b.yaml")


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def inventory_route(inv: Inventory) -> Route:
    async def route(request: Request) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(inventory_to_json(inv)).encode()
    return route


def body_route(body: bytes) -> Route:
    async def route(request: Request) -> tuple[int, str, bytes]:
        return 200, "application/json", body
    return route


async def serve(nursery: trio.Nursery, routes: dict[str, Route]) -> str:
    """Start the daemon's listener with ``routes``; its base URL."""
    port: int = await nursery.start(serve_http, HOST, 0, routes)
    return f"http://{HOST}:{port}"


Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def serve_raw(nursery: trio.Nursery, handler: Handler) -> str:
    """A listener whose connections get ``handler``: for answers serve_http never gives."""
    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return f"http://{HOST}:{listeners[0].socket.getsockname()[1]}"


# --- files and directories ----------------------------------------------------------


async def test_directory_reads_every_yaml_file_and_reports_the_broken_one(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", dump_inventory_yaml(NODE_B))
    write(tmp_path, "a.yaml", dump_inventory_yaml(NODE_A))
    write(tmp_path, "c.yaml", "host: node-c\nregions:\n  - range: 0x1000-0x1fff\n    devices: [\"00:1f.9\"]\n")
    write(tmp_path, "notes.txt", "not an inventory")
    write(tmp_path, ".hidden.yaml", "not: [valid")
    load = await load_peers([tmp_path])
    assert load.peers == {"node-a": NODE_A, "node-b": NODE_B}
    assert list(load.peers) == ["node-a", "node-b"]  # files in sorted order
    assert len(load.problems) == 1
    # The file and the line of the bad device (function 9 does not exist).
    assert load.problems[0].startswith(f"{tmp_path / 'c.yaml'}:4: regions[0].devices[0]:")


async def test_directory_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "bad.yaml", "host: node-x\nregions:\n  - range: [0x1000\n")
    load = await load_peers([tmp_path])
    assert load.peers == {}
    assert len(load.problems) == 1 and load.problems[0].startswith(f"{tmp_path / 'bad.yaml'}:")
    assert "not valid YAML" in load.problems[0]


async def test_file_source_and_missing_sources(tmp_path: Path) -> None:
    file = write(tmp_path, "node-b.yaml", dump_inventory_yaml(NODE_B))
    missing_file = tmp_path / "gone.yaml"
    load = await load_peers([file, missing_file])
    assert load.peers == {"node-b": NODE_B}
    assert load.problems == (load.problems[0],) and str(missing_file) in load.problems[0]


async def test_empty_directory_and_no_sources(tmp_path: Path) -> None:
    assert await load_peers([tmp_path]) == await load_peers([])
    assert (await load_peers([])).problems == ()


# --- HTTP peers ---------------------------------------------------------------------


def fixture_inventories() -> list[Inventory]:
    """Real hosts' inventories from the firmware corpus (with unresolved scope paths,
    shared regions, warnings): what a peer daemon would serve."""
    return [table_inventory("dmar" if is_dmar(name) else "ivrs", path.read_bytes(), name, path, None)
            for name, path in sorted(CORPUS.tables.items())]


@pytest.mark.firmware
async def test_http_round_trip_of_real_inventories(nursery: trio.Nursery) -> None:
    inventories = [NODE_A, NODE_B, *fixture_inventories()]
    urls = [await serve(nursery, {"/inventory": inventory_route(inv)}) for inv in inventories]
    load = await load_peers(urls)
    assert load.problems == ()
    assert load.peers == {inv.host: inv for inv in inventories}


async def test_url_naming_inventory_is_used_as_is(nursery: trio.Nursery) -> None:
    base = await serve(nursery, {"/inventory": inventory_route(NODE_B)})
    load = await load_peers([base + "/inventory"])
    assert load.peers == {"node-b": NODE_B}
    assert (await load_peers([base + "/"])).peers == {"node-b": NODE_B}


def test_inventory_url() -> None:
    assert inventory_url("http://node-b:8407") == "http://node-b:8407/inventory"
    assert inventory_url("http://node-b:8407/") == "http://node-b:8407/inventory"
    assert inventory_url("http://node-b/rmrrd") == "http://node-b/rmrrd/inventory"
    assert inventory_url("http://node-b/inventory") == "http://node-b/inventory"
    assert inventory_url("http://node-b/inventory/") == "http://node-b/inventory"


async def test_404_is_a_problem_naming_the_url(nursery: trio.Nursery) -> None:
    base = await serve(nursery, {"/metrics": inventory_route(NODE_B)})
    load = await load_peers([base])
    assert load.peers == {}
    assert load.problems == (f"{base}/inventory: HTTP status 404",)


@pytest.mark.parametrize("body, expected", [
    (b"{\"host\": \"node-b\", ", "not valid JSON"),
    (b"\xff\xfe\xfa", "not valid JSON"),
    (b"[" * 100_000, "not valid JSON"),
    (b"{\"host\": \"node-b\"}", "missing key 'regions'"),
    (b"{\"host\": \"node-b\", \"regions\": [{\"range\": \"0x1-0x2\", \"devices\": []}]}", "regions[0].range"),
])
async def test_bad_json_is_a_problem(nursery: trio.Nursery, body: bytes, expected: str) -> None:
    base = await serve(nursery, {"/inventory": body_route(body)})
    load = await load_peers([base])
    assert load.peers == {}
    assert len(load.problems) == 1
    assert load.problems[0].startswith(f"{base}/inventory: ") and expected in load.problems[0]


async def test_server_that_never_answers_times_out_and_others_still_load(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    received = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        received.set()
        await trio.sleep_forever()

    silent_url = await serve_raw(nursery, silent)
    good_url = await serve(nursery, {"/inventory": inventory_route(NODE_A)})
    file = write(tmp_path, "node-b.yaml", dump_inventory_yaml(NODE_B))
    # The deadline applies to the good peer too: generous, so a busy machine still makes it.
    load = await load_peers([silent_url, good_url, file], timeout=2)
    assert received.is_set()
    assert load.peers == {"node-a": NODE_A, "node-b": NODE_B}
    assert load.problems == (f"{silent_url}/inventory: no complete answer within 2 s",)


async def test_answer_that_stalls_midway_times_out(nursery: trio.Nursery) -> None:
    async def trickle(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"host\"")
        await trio.sleep_forever()

    url = await serve_raw(nursery, trickle)
    load = await load_peers([url], timeout=0.5)
    assert load.problems == (f"{url}/inventory: no complete answer within 0.5 s",)


async def test_oversize_body_declared_is_refused_before_reading(nursery: trio.Nursery) -> None:
    async def huge(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        # Declares 16 MiB + 1 and sends none of it: refused on the header alone.
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 16777217\r\n\r\n")
        await trio.sleep_forever()

    url = await serve_raw(nursery, huge)
    load = await load_peers([url])
    assert load.problems == (f"{url}/inventory: answer body of 16777217 bytes, more than 16777216",)


async def test_oversize_body_without_length_is_cut_off(nursery: trio.Nursery) -> None:
    async def endless(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        # No Content-Length: the body runs until close, which never comes.
        await stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        chunk = b" " * 65536
        try:
            while True:
                await stream.send_all(chunk)
        except trio.BrokenResourceError:
            pass  # the client cut the body off and hung up, as it should (the end of this server)

    url = await serve_raw(nursery, endless)
    load = await load_peers([url], timeout=30)
    assert load.problems == (f"{url}/inventory: answer body larger than 16777216 bytes",)


async def test_unreachable_and_malformed_answers(nursery: trio.Nursery) -> None:
    closed = trio.socket.socket()
    await closed.bind((HOST, 0))
    refused_url = f"http://{HOST}:{closed.getsockname()[1]}"
    closed.close()  # bound, never listened, now free: connections are refused

    async def garbage(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)
        await stream.send_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")

    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(4096)

    garbage_url = await serve_raw(nursery, garbage)
    hang_up_url = await serve_raw(nursery, hang_up)
    load = await load_peers([refused_url, garbage_url, hang_up_url, "ftp://node-b/"])
    assert load.peers == {}
    refused, bad, closed_early, ftp = load.problems
    assert refused.startswith(f"{refused_url}/inventory: cannot connect: ")
    assert bad.startswith(f"{garbage_url}/inventory: invalid HTTP answer: ")
    assert closed_early.startswith(f"{hang_up_url}/inventory: invalid HTTP answer: ")
    assert ftp == "ftp://node-b/inventory: only http:// URLs are supported"


# --- merging ------------------------------------------------------------------------


async def test_duplicate_hosts_keep_the_first_configured(nursery: trio.Nursery, tmp_path: Path) -> None:
    other_b = Inventory("node-b", NODE_A.regions)
    url = await serve(nursery, {"/inventory": inventory_route(other_b)})
    first = write(tmp_path, "first.yaml", dump_inventory_yaml(NODE_B))
    directory = tmp_path / "dir"
    directory.mkdir()
    write(directory, "again.yaml", dump_inventory_yaml(NODE_B))
    # The URL is configured first: it wins, whichever source finishes first.
    load = await load_peers([f"{url}/inventory", first, directory])
    assert load.peers == {"node-b": other_b}
    assert load.problems == (
        f"{first}: host 'node-b' already read from {url}/inventory: skipped",
        f"{directory / 'again.yaml'}: host 'node-b' already read from {url}/inventory: skipped",
    )


async def test_this_host_is_excluded(tmp_path: Path) -> None:
    write(tmp_path, "node-a.yaml", dump_inventory_yaml(NODE_A))
    write(tmp_path, "node-b.yaml", dump_inventory_yaml(NODE_B))
    load = await load_peers([tmp_path], exclude="node-a")
    assert load.peers == {"node-b": NODE_B}
    assert load.problems == (f"{tmp_path / 'node-a.yaml'}: host 'node-a' is this host, not a peer: skipped",)


async def test_aliases_travel_over_http_and_stay_unique(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A peer's aliases come with its /inventory; an alias two hosts claim stays with the first."""
    named_b = Inventory("node-b", NODE_B.regions, aliases=("node-b.example", "10.0.0.2"))
    url = await serve(nursery, {"/inventory": inventory_route(named_b)})
    clash = write(tmp_path, "node-c.yaml", "host: node-c\naliases: [node-b.example, nc, node-d]\nregions: []\n")
    later = write(tmp_path, "node-d.yaml", "host: node-d\nregions: []\n")
    load = await load_peers([url, clash, later], exclude="node-a")
    assert load.peers["node-b"] == named_b
    assert load.peers["node-c"].aliases == ("nc",)
    assert load.problems == (
        f"{clash}: alias 'node-b.example' of host 'node-c' already names another host: dropped",
        f"{clash}: alias 'node-d' of host 'node-c' is the name of another peer: dropped",
    )
