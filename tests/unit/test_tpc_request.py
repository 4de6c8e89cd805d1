"""Unit tests for se.tpc.request (classifying a COPY and parsing its HTTP-TPC headers)."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict

from se.errors import BadRequest
from se.tpc.request import (
    FORBIDDEN_FORWARD,
    Mode,
    TransferSpec,
    forwarded_headers,
    parse_copy,
)

HOST = "se.example.org"
LOCAL = ("se.example.org", "alias.example.org:8443")
SRC = "https://source.example.org:2880/store/file"
DST = "https://dest.example.org:2880/store/file"

ADLER = bytes.fromhex("0a1b2c3d")
ADLER_HEX = "0a1b2c3d"
ADLER_B64 = base64.b64encode(ADLER).decode()
MD5 = hashlib.md5(b"data", usedforsecurity=False).digest()
MD5_B64 = base64.b64encode(MD5).decode()
SHA256 = hashlib.sha256(b"data").digest()
SHA256_B64 = base64.b64encode(SHA256).decode()


def _copy(*pairs: tuple[str, str]) -> TransferSpec | None:
    headers: CIMultiDict[str] = CIMultiDict(pairs)
    return parse_copy(headers, list(headers.items()), HOST, LOCAL)


def _spec(*pairs: tuple[str, str]) -> TransferSpec:
    spec = _copy(*pairs)
    assert spec is not None
    return spec


def _pull(*pairs: tuple[str, str]) -> TransferSpec:
    return _spec(("Source", SRC), *pairs)


def _bad(*pairs: tuple[str, str]) -> str:
    with pytest.raises(BadRequest) as info:
        _copy(*pairs)
    assert info.value.status == 400
    assert "\n" not in info.value.reason
    return info.value.reason


# --------------------------------------------------------------------------- classification


def test_pull() -> None:
    spec = _spec(("Source", SRC))
    assert spec.mode is Mode.PULL
    assert spec.remote == SRC
    assert spec.overwrite is True
    assert spec.require_checksum is None
    assert spec.streams == 1
    assert spec.headers == ()
    assert spec.scitag is None
    assert spec.want_digest == ()
    assert spec.expected == {}
    assert spec.client_info == ""


def test_push() -> None:
    spec = _spec(("Destination", DST))
    assert spec.mode is Mode.PUSH
    assert spec.remote == DST


@pytest.mark.parametrize(
    "destination",
    [
        "https://se.example.org/store/copy",
        "https://SE.example.org:443/store/copy",
        "https://alias.example.org:8443/store/copy",
        "/store/copy",
        "/store/copy?x=1",
    ],
)
def test_local_copy_is_none(destination: str) -> None:
    assert _copy(("Destination", destination)) is None


def test_pull_from_this_server_is_still_a_pull() -> None:
    spec = _spec(("Source", "https://se.example.org/store/a"))
    assert spec.mode is Mode.PULL


def test_header_names_case_insensitive() -> None:
    spec = _spec(("source", SRC), ("x-number-of-streams", "4"), ("OVERWRITE", "F"))
    assert (spec.mode, spec.streams, spec.overwrite) == (Mode.PULL, 4, False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("davs://source.example.org:2880/a", "https://source.example.org:2880/a"),
        ("dav://source.example.org/a", "http://source.example.org/a"),
        ("DAVS://Source.Example.org/a", "https://source.example.org/a"),
        ("http://192.0.2.1:8080/a", "http://192.0.2.1:8080/a"),
        ("https://[2001:db8::1]:2880/a", "https://[2001:db8::1]:2880/a"),
    ],
)
def test_dav_schemes_mapped(value: str, expected: str) -> None:
    assert _spec(("Source", value)).remote == expected
    assert _spec(("Destination", value)).remote == expected


def test_query_kept() -> None:
    url = SRC + "?X-Amz-Signature=abc%2Fdef&authz=tok"
    assert _spec(("Source", url)).remote == url
    assert _spec(("Destination", "davs://dest.example.org/f?a=1&b=2")).remote == (
        "https://dest.example.org/f?a=1&b=2"
    )


# --------------------------------------------------------------------------- 400s


def test_both_source_and_destination() -> None:
    reason = _bad(("Source", SRC), ("Destination", DST))
    assert "Source" in reason and "Destination" in reason


def test_both_even_when_destination_is_local() -> None:
    reason = _bad(("Source", SRC), ("Destination", "/store/copy"))
    assert "Source" in reason and "Destination" in reason


def test_neither_source_nor_destination() -> None:
    reason = _bad(("Overwrite", "T"))
    assert "Destination" in reason and "Source" in reason


@pytest.mark.parametrize("header", ["Source", "Destination"])
@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("ftp://remote.example.org/f", "scheme"),
        ("root://remote.example.org//f", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("s3://bucket/key", "scheme"),
        ("https:///no/host", "no host"),
        ("https://user:secret@remote.example.org/f", "credentials"),
        ("https://token@remote.example.org/f", "credentials"),
        ("remote.example.org/f", "absolute URL"),
        ("", "missing"),
        ("https://remote.example.org/f#frag", "fragment"),
        ("https://remote.example.org/f\r\nX: y", "control"),
        ("https://remote.example.org:99999/f", "bad host"),
    ],
)
def test_bad_remote_url(header: str, value: str, words: str) -> None:
    reason = _bad((header, value))
    assert header in reason
    assert words in reason
    assert "secret" not in reason


def test_pull_source_must_be_absolute() -> None:
    reason = _bad(("Source", "/store/file"))
    assert "Source" in reason


@pytest.mark.parametrize("value", ["oidc", "", "nonesuch", "none,gridsite", "gridsite2"])
def test_credential_other_than_none_or_gridsite(value: str) -> None:
    reason = _bad(("Source", SRC), ("Credential", value))
    assert "Credential" in reason
    reason = _bad(("Destination", DST), ("Credential", value))
    assert "Credential" in reason


@pytest.mark.parametrize("value", ["none", "None", "NONE", " none "])
def test_credential_none(value: str) -> None:
    spec = _pull(("Credential", value))
    assert spec.mode is Mode.PULL and not spec.delegated


@pytest.mark.parametrize("value", ["gridsite", "GridSite", " gridsite "])
def test_credential_gridsite_asks_for_the_delegated_proxy(value: str) -> None:
    assert _pull(("Credential", value)).delegated
    assert not _pull().delegated


def test_credential_absent() -> None:
    assert _pull().mode is Mode.PULL


@pytest.mark.parametrize(
    ("value", "streams"),
    [("0", 1), ("1", 1), ("4", 4), (" 16 ", 16), ("100", 100), ("", 1), ("007", 7)],
)
def test_streams(value: str, streams: int) -> None:
    assert _pull(("X-Number-Of-Streams", value)).streams == streams


@pytest.mark.parametrize("value", ["101", "1000", "-1", "+1", "1.5", "four", "1 2", "0x10"])
def test_streams_invalid(value: str) -> None:
    assert "X-Number-Of-Streams" in _bad(("Source", SRC), ("X-Number-Of-Streams", value))


@pytest.mark.parametrize(
    "value", ["\u00b2", "1" * 5000, "0" * 4301], ids=["superscript-2", "5000-ones", "4301-zeros"]
)
def test_streams_odd_digits_are_bad_request(value: str) -> None:
    with contextlib.suppress(BadRequest):
        _pull(("X-Number-Of-Streams", value))


@pytest.mark.parametrize(("value", "expected"), [("T", True), ("F", False), ("t", True)])
def test_overwrite(value: str, expected: bool) -> None:
    assert _pull(("Overwrite", value)).overwrite is expected
    assert _spec(("Destination", DST), ("Overwrite", value)).overwrite is expected


@pytest.mark.parametrize("value", ["", "true", "yes", "TF", "0"])
def test_overwrite_invalid(value: str) -> None:
    assert "Overwrite" in _bad(("Source", SRC), ("Overwrite", value))


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("True", True), (" false ", False), ("FALSE", False)],
)
def test_require_checksum(value: str, expected: bool) -> None:
    assert _pull(("RequireChecksumVerification", value)).require_checksum is expected


def test_require_checksum_absent_is_none() -> None:
    assert _pull().require_checksum is None
    assert _spec(("Destination", DST)).require_checksum is None


@pytest.mark.parametrize("value", ["", "yes", "1", "T"])
def test_require_checksum_invalid(value: str) -> None:
    reason = _bad(("Source", SRC), ("RequireChecksumVerification", value))
    assert "RequireChecksumVerification" in reason


def test_client_info_kept_and_bounded() -> None:
    assert _pull(("ClientInfo", "job-id=1;file-id=2")).client_info == "job-id=1;file-id=2"
    assert len(_pull(("ClientInfo", "x" * 5000)).client_info) == 200


# --------------------------------------------------------------------------- TransferHeader


def test_forwarded_headers() -> None:
    items = [
        ("TransferHeaderAuthorization", "Bearer remote-token"),
        ("Authorization", "Bearer local-token"),
        ("transferheaderX-Custom", "1"),
        ("TRANSFERHEADERCookie", "c=1"),
        ("TransferHeaderContent-Length", "5"),
        ("TransferHeaderHost", "evil.example.org"),
        ("TransferHeader", "no name"),
        ("TransferHeader ", "blank name"),
        ("TransferHeaderSciTag", "77"),
        ("X-TransferHeaderFoo", "not a prefix"),
        ("TransferHeaderX-Custom", "2"),
    ]
    assert forwarded_headers(items) == (
        ("Authorization", "Bearer remote-token"),
        ("X-Custom", "1"),
        ("Cookie", "c=1"),
        ("SciTag", "77"),  # the passive party marks its side with it
        ("X-Custom", "2"),
    )


def test_transfer_header_authorization_through_parse_copy() -> None:
    spec = _pull(
        ("Credential", "none"),
        ("TransferHeaderAuthorization", "Bearer abc"),
        ("Authorization", "Bearer mine"),
    )
    assert spec.headers == (("Authorization", "Bearer abc"),)


@pytest.mark.parametrize("name", sorted(FORBIDDEN_FORWARD))
def test_unsafe_names_dropped(name: str) -> None:
    for variant in (name, name.upper(), name.title(), f" {name} "):
        assert forwarded_headers([(f"TransferHeader{variant}", "x")]) == ()


@pytest.mark.parametrize(
    "name",
    ["Content-Length", "Transfer-Encoding", "Host", "Range", "Expect", "Connection", "TE"],
)
def test_framing_headers_never_forwarded(name: str) -> None:
    assert forwarded_headers([(f"TransferHeader{name}", "1")]) == ()


@given(st.lists(st.tuples(st.text(max_size=30), st.text(max_size=30)), max_size=10))
def test_forwarded_headers_property(items: list[tuple[str, str]]) -> None:
    out = forwarded_headers(items)
    for name, _ in out:
        assert name and name == name.strip()
        assert name.lower() not in FORBIDDEN_FORWARD
    assert len(out) <= sum(1 for k, _ in items if k.lower().startswith("transferheader"))


def test_scitag_header() -> None:
    assert _pull(("SciTag", " 65 ")).scitag == "65"
    assert _pull(("SciTag", "65"), ("TransferHeaderSciTag", "77")).scitag == "65"
    assert _pull(("TransferHeaderSciTag", "77"), ("SciTag", "65")).scitag == "65"
    assert _pull(("TransferHeaderSciTag", "77")).scitag == "77"
    assert _pull(("transferheaderscitag", "78")).scitag == "78"
    assert _pull().scitag is None
    # forwarded to the passive party as SciTag; the COPY's own SciTag is not
    assert _pull(("TransferHeaderSciTag", "77")).headers == (("SciTag", "77"),)
    assert _pull(("SciTag", "65")).headers == ()


# --------------------------------------------------------------------------- digests


def test_want_digest() -> None:
    spec = _pull(("Want-Digest", "ADLER32, md5;q=0.5, foo"), ("Want-Repr-Digest", "sha-256=3"))
    assert spec.want_digest == ("adler32", "md5", "sha256")
    spec = _pull(("Want-Digest", "md5;q=0.1, adler32;q=0.9"), ("Want-Repr-Digest", "md5=5"))
    assert spec.want_digest == ("adler32", "md5")


def test_expected_digest_rfc3230() -> None:
    spec = _pull(("Digest", f"adler32={ADLER_HEX},md5={MD5_B64}"))
    assert spec.expected == {"adler32": ADLER, "md5": MD5}


def test_expected_repr_digest() -> None:
    spec = _pull(("Repr-Digest", f"sha-256=:{SHA256_B64}:"))
    assert spec.expected == {"sha256": SHA256}


def test_expected_merged() -> None:
    spec = _pull(
        ("Repr-Digest", f"adler=:{ADLER_B64}:, sha-256=:{SHA256_B64}:"),
        ("Digest", f"ADLER32={ADLER_HEX.upper()}, md5={MD5_B64}"),
    )
    assert spec.expected == {"adler32": ADLER, "sha256": SHA256, "md5": MD5}


def test_expected_contradiction() -> None:
    reason = _bad(
        ("Source", SRC),
        ("Repr-Digest", f"adler=:{ADLER_B64}:"),
        ("Digest", "adler32=00000001"),
    )
    assert "Repr-Digest" in reason and "Digest" in reason and "adler32" in reason


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Digest", "adler32=nothex"),
        ("Digest", "md5=short"),
        ("Digest", "adler32=01,adler32=02"),
        ("Repr-Digest", "sha-256=:AAAA:"),
        ("Repr-Digest", f"adler={ADLER_HEX}"),
    ],
)
def test_expected_malformed(header: str, value: str) -> None:
    assert header in _bad(("Source", SRC), (header, value))


def test_expected_on_push_too() -> None:
    spec = _spec(("Destination", DST), ("Digest", f"adler32={ADLER_HEX}"))
    assert spec.expected == {"adler32": ADLER}


# --------------------------------------------------------------------------- robustness

_HEADER_NAMES = [
    "Overwrite",
    "Credential",
    "X-Number-Of-Streams",
    "RequireChecksumVerification",
    "SciTag",
    "TransferHeaderSciTag",
    "TransferHeaderAuthorization",
    "TransferHeaderContent-Length",
    "Want-Digest",
    "Want-Repr-Digest",
    "Repr-Digest",
    "Digest",
    "ClientInfo",
]
# Any str a server may hand over, lone surrogates included (undecodable bytes).
_ANY = st.text(st.characters(codec=None, exclude_categories=()), max_size=60)
_URLISH = st.one_of(
    _ANY,
    st.sampled_from([SRC, DST, "/store/x", "https://se.example.org/x", "davs://h/x?y=1"]),
    st.builds(
        lambda scheme, host, path: f"{scheme}://{host}{path}",
        st.sampled_from(["http", "https", "dav", "davs", "ftp", "HTTPS"]),
        _ANY,
        _ANY,
    ),
)


@given(
    st.one_of(st.none(), _URLISH),
    st.one_of(st.none(), _URLISH),
    st.dictionaries(st.sampled_from(_HEADER_NAMES), _ANY, max_size=len(_HEADER_NAMES)),
)
@example(SRC, None, {"Digest": "adler32=" + "f" * 9, "Repr-Digest": "adler=:" + "A" * 200 + ":"})
@example(SRC, None, {"Want-Digest": "md5;q=" + "9" * 500, "Want-Repr-Digest": "md5=99999"})
def test_parse_copy_only_raises_bad_request(
    source: str | None, destination: str | None, extra: dict[str, str]
) -> None:
    pairs = [(k, v) for k, v in extra.items()]
    if source is not None:
        pairs.append(("Source", source))
    if destination is not None:
        pairs.append(("Destination", destination))
    try:
        spec = _copy(*pairs)
    except BadRequest as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    if spec is not None:
        assert spec.remote.startswith(("http://", "https://"))
        assert 1 <= spec.streams <= 100


@given(
    st.sampled_from([("Source", SRC), ("Destination", DST)]),
    st.dictionaries(st.sampled_from(_HEADER_NAMES), _ANY, max_size=len(_HEADER_NAMES)),
)
def test_tpc_options_only_raise_bad_request(remote: tuple[str, str], extra: dict[str, str]) -> None:
    with contextlib.suppress(BadRequest):
        spec = _spec(remote, *extra.items())
        assert spec.remote == remote[1]
        assert all(k.lower() not in FORBIDDEN_FORWARD for k, _ in spec.headers)
