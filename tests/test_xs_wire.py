"""The xenstore codec: op table held against xs_wire.h, framing, limits, paths, perms."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmrrd.errors import RmrrdError
from rmrrd.xenstore.wire import (
    ABS_PATH_MAX,
    HEADER,
    PAYLOAD_MAX,
    REL_PATH_MAX,
    XS_ERRORS,
    Again,
    Decoder,
    LocalProtocolError,
    NoEntry,
    Op,
    Packet,
    Perm,
    PermissionDenied,
    RemoteProtocolError,
    XenstoreError,
    encode,
    error_for,
    error_packet,
    format_perms,
    join_args,
    parse_perms,
    split_args,
    validate_path,
)

pytestmark = pytest.mark.unit

# The enum and error table of xen/include/public/io/xs_wire.h (xen-project/xen,
# with the 2023 addition of GET/SET_FEATURE and GET/SET_QUOTA, and EPERM), copied
# as the header spells them so the test parses C, not our own Python.
XS_WIRE_H = """
enum xsd_sockmsg_type
{
    XS_CONTROL,
#define XS_DEBUG XS_CONTROL
    XS_DIRECTORY,
    XS_READ,
    XS_GET_PERMS,
    XS_WATCH,
    XS_UNWATCH,
    XS_TRANSACTION_START,
    XS_TRANSACTION_END,
    XS_INTRODUCE,
    XS_RELEASE,
    XS_GET_DOMAIN_PATH,
    XS_WRITE,
    XS_MKDIR,
    XS_RM,
    XS_SET_PERMS,
    XS_WATCH_EVENT,
    XS_ERROR,
    XS_IS_DOMAIN_INTRODUCED,
    XS_RESUME,
    XS_SET_TARGET,
    /* XS_RESTRICT has been removed */
    XS_RESET_WATCHES = XS_SET_TARGET + 2,
    XS_DIRECTORY_PART,
    XS_GET_FEATURE,
    XS_SET_FEATURE,
    XS_GET_QUOTA,
    XS_SET_QUOTA,

    XS_TYPE_COUNT,      /* Number of valid types. */

    XS_INVALID = 0xffff /* Guaranteed to remain an invalid type */
};
static struct xsd_errors xsd_errors[] = {
    XSD_ERROR(EINVAL), XSD_ERROR(EACCES), XSD_ERROR(EEXIST), XSD_ERROR(EISDIR),
    XSD_ERROR(ENOENT), XSD_ERROR(ENOMEM), XSD_ERROR(ENOSPC), XSD_ERROR(EIO),
    XSD_ERROR(ENOTEMPTY), XSD_ERROR(ENOSYS), XSD_ERROR(EROFS), XSD_ERROR(EBUSY),
    XSD_ERROR(EAGAIN), XSD_ERROR(EISCONN), XSD_ERROR(E2BIG), XSD_ERROR(EPERM),
};
#define XENSTORE_PAYLOAD_MAX 4096
#define XENSTORE_ABS_PATH_MAX 3072
#define XENSTORE_REL_PATH_MAX 2048
"""


def header_enum() -> dict[str, int]:
    """Number the enum body as a C compiler does (implicit +1, explicit `= X + n`)."""
    body = XS_WIRE_H[XS_WIRE_H.index("{") + 1 : XS_WIRE_H.index("};")]
    body = re.sub(r"/\*.*?\*/|#define.*", "", body)
    numbers: dict[str, int] = {}
    value = -1
    for entry in filter(None, (e.strip() for e in body.split(","))):
        name, _, expr = (part.strip() for part in entry.partition("="))
        if expr:
            base, _, plus = expr.partition("+")
            value = int(base, 0) if base.strip()[0].isdigit() else numbers[base.strip()] + int(plus or 0)
        else:
            value += 1
        numbers[name] = value
    return {name.removeprefix("XS_"): number for name, number in numbers.items()}


def test_op_table_matches_header() -> None:
    numbers = header_enum()
    del numbers["TYPE_COUNT"], numbers["INVALID"]
    assert {op.name: op.value for op in Op} == numbers
    assert Op["DEBUG"] is Op.CONTROL
    assert 20 not in {op.value for op in Op}  # XS_RESTRICT's old slot


def test_errors_and_limits_match_header() -> None:
    assert XS_ERRORS == tuple(re.findall(r"XSD_ERROR\((\w+)\)", XS_WIRE_H))
    defines = dict(re.findall(r"#define XENSTORE_(\w+) (\d+)", XS_WIRE_H))
    assert (PAYLOAD_MAX, ABS_PATH_MAX, REL_PATH_MAX) == tuple(
        int(defines[k]) for k in ("PAYLOAD_MAX", "ABS_PATH_MAX", "REL_PATH_MAX")
    )


def test_every_errno_has_its_own_exception() -> None:
    classes = {type(error_for(name)) for name in XS_ERRORS}
    assert len(classes) == len(XS_ERRORS)
    assert all(error_for(name).errno_name == name for name in XS_ERRORS)
    assert isinstance(error_for("ENOENT", "/x"), NoEntry)
    assert isinstance(error_for("EACCES"), PermissionDenied)
    assert isinstance(error_for("EAGAIN"), Again)
    odd = error_for("EWHATEVER", "new server")
    assert type(odd) is XenstoreError and odd.errno_name == "EWHATEVER"


def test_encode_layout_is_little_endian_header_then_payload() -> None:
    data = encode(Packet(Op.READ, 0x01020304, 7, b"/a\0"))
    assert data == bytes([2, 0, 0, 0, 4, 3, 2, 1, 7, 0, 0, 0, 3, 0, 0, 0]) + b"/a\0"


def test_encode_refuses_oversized_payload_and_bad_ids() -> None:
    encode(Packet(Op.WRITE, 1, 0, b"x" * PAYLOAD_MAX))
    with pytest.raises(LocalProtocolError) as info:
        encode(Packet(Op.WRITE, 1, 0, b"x" * (PAYLOAD_MAX + 1)))
    assert info.value.errno_name == "E2BIG" and "WRITE" in str(info.value)
    # rmrrd's own misuse of the protocol is a bug, not input to refuse.
    assert not isinstance(info.value, RmrrdError)
    with pytest.raises(LocalProtocolError, match="req_id"):
        encode(Packet(Op.READ, 1 << 32, 0, b""))


def test_decoder_waits_for_whole_payload() -> None:
    data = encode(Packet(Op.READ, 5, 0, b"value"))
    decoder = Decoder()
    decoder.feed(data[:16])
    assert decoder.next_packet() is None
    assert decoder.buffered == 16  # header not consumed while the payload is missing
    decoder.feed(data[16:])
    assert decoder.next_packet() == Packet(Op.READ, 5, 0, b"value")
    assert decoder.next_packet() is None and decoder.buffered == 0


def test_decoder_rejects_unknown_type_and_long_payload() -> None:
    decoder = Decoder()
    decoder.feed(HEADER.pack(20, 1, 0, 0))
    with pytest.raises(RemoteProtocolError, match="unknown message type 20"):
        decoder.next_packet()
    decoder = Decoder()
    decoder.feed(HEADER.pack(Op.READ, 1, 0, PAYLOAD_MAX + 1))
    with pytest.raises(RemoteProtocolError, match="4097-byte") as info:
        decoder.packets()
    assert info.value.errno_name == "E2BIG"


def test_packets_drains_good_packets_before_garbage() -> None:
    good = [Packet(Op.WRITE, i, 0, b"p\0v") for i in range(3)]
    decoder = Decoder()
    decoder.feed(b"".join(map(encode, good)))
    assert decoder.packets() == good
    decoder.feed(encode(good[0]) + HEADER.pack(99, 0, 0, 0))
    with pytest.raises(RemoteProtocolError):
        decoder.packets()


packets = st.builds(
    Packet,
    st.sampled_from(list(Op)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=PAYLOAD_MAX),
)


@given(st.lists(packets, max_size=8), st.lists(st.integers(0, 40000), max_size=10))
def test_roundtrip_whatever_the_split(sent: list[Packet], cuts: list[int]) -> None:
    stream = b"".join(map(encode, sent))
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    decoder = Decoder()
    received: list[Packet] = []
    for start, end in zip(bounds, bounds[1:]):
        decoder.feed(stream[start:end])
        received += decoder.packets()
    assert received == sent and decoder.buffered == 0


@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=6))
def test_garbage_gives_packets_or_remote_error(stream: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    decoder = Decoder()
    try:
        for start, end in zip(bounds, bounds[1:]):
            decoder.feed(stream[start:end])
            for packet in decoder.packets():
                assert isinstance(packet, Packet) and len(packet.payload) <= PAYLOAD_MAX
    except RemoteProtocolError:
        return
    assert decoder.buffered < 16 + PAYLOAD_MAX


def test_split_and_join_args() -> None:
    assert split_args(b"") == []
    assert split_args(b"a\0b\0") == [b"a", b"b"]
    assert split_args(b"a\0b") == [b"a", b"b"]  # last NUL optional, as get_strings
    assert split_args(b"\0") == [b""]
    assert join_args(b"a", b"b") == b"a\0b\0"
    assert join_args() == b""
    assert join_args(b"/p", b"v\0w", trailing_nul=False) == b"/p\0v\0w"
    with pytest.raises(LocalProtocolError, match="NUL"):
        join_args(b"a\0", b"b")


@given(st.lists(st.binary(max_size=20).filter(lambda b: b"\0" not in b), max_size=6))
def test_split_inverts_join(args: list[bytes]) -> None:
    assert split_args(join_args(*args)) == args


@pytest.mark.parametrize("path", ["/", "/local/domain/5", "/a-b_c@d", "data/x", "x", "@releaseDomain"])
def test_valid_paths(path: str) -> None:
    validate_path(path, special_ok=True)


@pytest.mark.parametrize(
    "path",
    ["", "//", "/a//b", "/a/", "a/", "/a b", "/a.b", "/a\n", "/\u00e9", "/a\0b", "/" + "x" * ABS_PATH_MAX,
     "x" * (REL_PATH_MAX + 1)],
)
def test_invalid_paths_name_the_path(path: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        validate_path(path, special_ok=True)
    assert info.value.errno_name == "EINVAL" and repr(path[:20])[:-1] in str(info.value)


def test_special_paths_only_where_allowed() -> None:
    validate_path("@introduceDomain", special_ok=True)
    with pytest.raises(LocalProtocolError, match="no special path"):
        validate_path("@introduceDomain", special_ok=False)
    with pytest.raises(LocalProtocolError, match="@releaseDomain"):
        validate_path("@other", special_ok=True)
    validate_path("/" + "x" * (ABS_PATH_MAX - 1), special_ok=False)


def test_perms_roundtrip_and_errors() -> None:
    perms = parse_perms([b"n0", b"r5", b"b65535", b"w12"])
    assert perms == [Perm(0, "n"), Perm(5, "r"), Perm(65535, "b"), Perm(12, "w")]
    assert format_perms(perms) == [b"n0", b"r5", b"b65535", b"w12"]
    for bad in ([], [b"x1"], [b"r"], [b"r-1"], [b"r65536"], [b"r5 "], [b"R5"]):
        with pytest.raises(XenstoreError) as info:
            parse_perms(bad)
        assert info.value.errno_name == "EINVAL"
    with pytest.raises(XenstoreError, match="owner"):
        format_perms([])
    with pytest.raises(XenstoreError, match="letter"):
        Perm(1, "rw")


def test_error_packet() -> None:
    assert error_packet(9, 3, "ENOENT") == Packet(Op.ERROR, 9, 3, b"ENOENT\0")
