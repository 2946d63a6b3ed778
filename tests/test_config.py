"""The configuration file: defaults, the example file, and every error naming file:line: key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rmrrd.edges.config import (
    DEFAULT_METRICS_PORT,
    Config,
    ConfigError,
    default_config,
    load_config,
    parse_config_text,
)
from rmrrd.errors import InputError

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "rmrrd.yaml"
SOURCE = Path("/etc/rmrrd/rmrrd.yaml")


def parse(text: str) -> Config:
    return parse_config_text(text, SOURCE, environ={}, hostname="node-a")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert isinstance(info.value, InputError)
    return info.value.problems


def test_defaults_without_a_file() -> None:
    config = default_config(environ={}, hostname="node-a")
    assert str(config.xenstore.path) == "/run/xenstored/socket"
    assert config.xenstore.embedded is False and config.xenstore.persist is None
    assert config.host.name == "node-a"
    assert config.host.sources == ("dmar", "ivrs")
    assert config.peers == ()
    assert config.defaults.rdm == "policy=relaxed"
    assert (config.defaults.rdm_mem_boundary, config.defaults.mmio_hole) == (2048, 256)
    assert config.defaults.seabios_size == 128
    assert config.metrics.listen == f"127.0.0.1:{DEFAULT_METRICS_PORT}"
    assert config.log.level == "info"
    assert config.source is None


def test_xenstored_path_from_environment() -> None:
    config = default_config(environ={"XENSTORED_PATH": "/tmp/xs.sock"}, hostname="h")
    assert config.xenstore.path == Path("/tmp/xs.sock")


def test_example_file_is_valid_and_states_the_defaults() -> None:
    """etc/rmrrd.yaml documents every default: loading it changes nothing but source."""
    loaded = load_config(EXAMPLE, environ={}, hostname="node-a")
    defaults = default_config(environ={}, hostname="node-a")
    assert loaded.source == EXAMPLE
    assert loaded.xenstore == defaults.xenstore
    assert (loaded.host.sources, loaded.host.sysfs_root) == (defaults.host.sources, defaults.host.sysfs_root)
    for name in ("peers", "defaults", "metrics", "limits", "log"):
        assert getattr(loaded, name) == getattr(defaults, name), name


def test_example_file_mentions_every_key() -> None:
    from rmrrd.edges.config import _SCHEMA

    text = EXAMPLE.read_text()
    for section, keys in _SCHEMA.items():
        assert f"\n{section}:" in text
        for key in keys:
            assert f"  {key}:" in text or f"  # {key}:" in text, f"{section}.{key}"


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "rmrrd.yaml"
    path.parent.mkdir()
    path.write_text(
        "xenstore: {path: run/xs, embedded: true, persist: xs.tree}\n"
        "host: {name: n, sources: [dmar, inv/a.yaml, /abs/b.yaml], sysfs_root: fake}\n"
        "peers: [peers, http://node-b:8407]\n"
    )
    config = load_config(path, environ={})
    assert config.xenstore.path == path.parent / "run/xs"
    assert config.xenstore.persist == path.parent / "xs.tree"
    assert config.host.sources == ("dmar", path.parent / "inv/a.yaml", Path("/abs/b.yaml"))
    assert config.host.sysfs_root == path.parent / "fake"
    assert config.peers == (path.parent / "peers", "http://node-b:8407")


def test_error_names_file_line_and_key() -> None:
    text = "log:\n  level: info\nlimits:\n  query_rate: fast\n"
    assert problems(text) == [
        "/etc/rmrrd/rmrrd.yaml:4: limits.query_rate: expected a positive integer, got 'fast'"
    ]


def test_every_problem_is_listed_at_once() -> None:
    text = (
        "xenstore:\n  embedded: maybe\n"  # 2
        "limits:\n  bogus: 1\n  max_allocations: 0\n"  # 4, 5
        "peers: [ftp://x]\n"  # 6
        "metrics: {listen: localhost}\n"  # 7
        "defaults: {rdm: 'strategy=all'}\n"  # 8
        "lgo: {}\n"  # 9
    )
    found = problems(text)
    assert [p.split(":")[1] for p in found] == ["2", "4", "5", "6", "7", "8", "9"]
    assert "xenstore.embedded: expected true or false, got 'maybe'" in found[0]
    assert "limits.bogus: unknown key" in found[1]
    assert "limits.max_allocations: expected an integer from 1 to 4096, got 0" in found[2]
    assert "peers[0]:" in found[3]
    assert "metrics.listen:" in found[4]
    assert "defaults.rdm: expected an xl.cfg rdm= string" in found[5] and "'all'" in found[5]
    assert "lgo: unknown key" in found[6]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[1, 2]\n", "expected a mapping"),
        ("limits: 3\n", "limits: expected a mapping"),
        ("limits:\n  query_rate: 1\n  query_rate: 2\n", ":3: limits.query_rate: given twice"),
        ("host: {sources: []}\n", "host.sources: expected at least one item"),
        ("host: {sources: dmar}\n", "host.sources: expected a list, got 'dmar'"),
        ("host:\n  sources:\n    - dmar\n    - {a: 1}\n", ":4: host.sources[1]: expected a single value, got a mapping"),
        ("host: {name: ''}\n", "host.name: expected a non-empty string"),
        ("limits: {query_rate: true}\n", "expected a positive integer, got True"),
        ("limits: {query_rate: 2.5}\n", "expected a positive integer, got 2.5"),
        ("limits: {shutdown_grace_seconds: 0}\n", "expected more than 0"),
        ("limits: {max_query_length: 8192}\n", "from 16 to 4096"),
        ("defaults: {mmio_hole: 128}\n", "defaults.mmio_hole: expected an integer from 256 to 3840, got 128"),
        ("defaults: {seabios_size: 300}\n", "defaults.seabios_size: expected KiB of the SeaBIOS image: size 300 KiB"),
        ("defaults: {seabios_size: 130}\n", "not a multiple of 4 KiB from 4 to 256 KiB"),
        ("defaults: {rdm: 'policy=strict,policy=relaxed'}\n", "defaults.rdm: expected an xl.cfg rdm= string"),
        ("metrics: {listen: '127.0.0.1:70000'}\n", "metrics.listen"),
        ("log: {level: loud}\n", "log.level: expected one of debug, info, warning, error"),
        ("xenstore: {path: }\n", "xenstore.path: expected a non-empty string, got nothing"),
        ("a: [\n", ":2: not valid YAML"),
        ("log: {level: !!python/object:os.system x}\n", "log.level: cannot read 'x' as YAML tag"),
        ("limits: {query_rate: !!int x}\n", "limits.query_rate: cannot read 'x' as YAML tag"),
    ],
)
def test_invalid_values(text: str, fragment: str) -> None:
    found = problems(text)
    assert len(found) == 1 and found[0].startswith(str(SOURCE)), found
    assert fragment in found[0], found


def test_empty_sections_mean_defaults() -> None:
    config = parse("limits:\nlog:\n")
    assert config.limits == default_config(environ={}, hostname="x").limits


def test_ipv6_listen_and_rdm_forms() -> None:
    config = parse("metrics: {listen: '[::1]:9999'}\ndefaults: {rdm: 'strategy=host,policy=strict'}\n")
    assert (config.metrics.host, config.metrics.port, config.metrics.listen) == ("::1", 9999, "[::1]:9999")
    assert config.defaults.rdm == "strategy=host,policy=strict"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "missing.yaml")


@given(st.text(max_size=200))
@example("=")  # found by hypothesis: a bare value-tag scalar as the whole file
@example("limits: =")
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    """Whatever is in the file, the result is a Config or a ConfigError, never a trace."""
    try:
        result = parse(text)
    except ConfigError as exc:
        assert exc.problems and all(p.startswith(str(SOURCE)) for p in exc.problems)
    else:
        assert isinstance(result, Config)


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 100_000) | st.floats(allow_nan=False)
    | st.sampled_from(["dmar", "ivrs", "info", "127.0.0.1:1", "http://h:1", "policy=strict", "x", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _sections() -> st.SearchStrategy[dict[str, object]]:
    from rmrrd.edges.config import _SCHEMA

    keys = st.sampled_from([f"{s}.{k}" for s, ks in _SCHEMA.items() for k in ks] + ["peers", "bogus.key"])
    return st.dictionaries(keys, _VALUES, max_size=6)


@given(_sections())
def test_any_structured_file_parses_or_lists_problems_with_lines(flat: dict[str, object]) -> None:
    """Well-formed YAML with real key names and arbitrary values: Config or ConfigError."""
    import yaml

    tree: dict[str, object] = {}
    for dotted, item in flat.items():
        section, _, key = dotted.partition(".")
        if key:
            existing = tree.setdefault(section, {})
            if isinstance(existing, dict):
                existing[key] = item
        else:
            tree[section] = item
    try:
        parse(yaml.safe_dump(tree))
    except ConfigError as exc:
        assert all(re.match(r"/etc/rmrrd/rmrrd\.yaml:\d+: ", p) for p in exc.problems), exc.problems
