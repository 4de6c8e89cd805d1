"""Unit tests for se.storage.checksums (RFC 3230 / RFC 9530 / RFC 1864 codecs, hashers)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from se.errors import BadRequest
from se.storage.checksums import (
    ALGORITHMS,
    DIGEST_SIZES,
    MultiHasher,
    compute,
    describe_mismatch,
    expected_digests,
    format_digest,
    format_digest_value,
    format_repr_digest,
    new_hasher,
    parse_content_md5,
    parse_digest,
    parse_repr_digest,
    parse_want_digest,
    parse_want_repr_digest,
)

# (data, algorithm, RFC 3230 value)
KNOWN_ANSWERS = [
    (b"", "adler32", "00000001"),
    (b"Wikipedia", "adler32", "11e60398"),
    (b"123456789", "adler32", "091e01de"),
    (b"", "crc32c", "00000000"),
    (b"123456789", "crc32c", "e3069283"),
    # crc32 in base64 (davix decodes it so); cbf43926 is the IEEE CRC-32 check value.
    (b"", "crc32", "AAAAAA=="),
    (b"123456789", "crc32", "y/Q5Jg=="),
    (b"", "md5", "1B2M2Y8AsgTpgAmY7PhCfg=="),
    (b"123456789", "md5", "JfnnlDI7RTiF9RgfG2JNCw=="),
    (b"", "sha1", "2jmj7l5rSw0yVb/vlWAYkK/YBwk="),
    (b"", "sha256", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
    (
        b"",
        "sha512",
        "z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg==",
    ),
]


@pytest.mark.parametrize(("data", "alg", "value"), KNOWN_ANSWERS)
def test_known_answers(data: bytes, alg: str, value: str) -> None:
    raw = compute(data, alg)
    assert len(raw) == DIGEST_SIZES[alg]
    assert format_digest_value(alg, raw) == value


def test_crc32_read_in_hex_and_base64() -> None:
    raw = bytes.fromhex("cbf43926")
    assert parse_digest("crc32=CBF43926") == {"crc32": raw}
    assert parse_digest("crc32=y/Q5Jg==") == {"crc32": raw}
    with pytest.raises(BadRequest):
        parse_digest("crc32=y/Q5JgAA")  # base64 of 6 bytes


def test_algorithms_tuple() -> None:
    assert ALGORITHMS == ("adler32", "crc32", "crc32c", "md5", "sha1", "sha256", "sha512")
    assert set(DIGEST_SIZES) == set(ALGORITHMS)


def test_format_digest_tokens() -> None:
    assert format_digest("adler32", bytes.fromhex("0a1b2c3d")) == "adler32=0a1b2c3d"
    assert format_digest("crc32c", bytes.fromhex("00000abc")) == "crc32c=00000abc"
    assert format_digest("sha1", compute(b"", "sha1")) == "sha=2jmj7l5rSw0yVb/vlWAYkK/YBwk="
    assert format_digest("sha256", compute(b"", "sha256")).startswith("sha-256=47DEQ")
    assert format_digest("sha512", compute(b"", "sha512")).startswith("sha-512=z4Ph")


def test_format_repr_digest() -> None:
    assert format_repr_digest("adler32", bytes.fromhex("11e60398")) == "adler=:EeYDmA==:"
    assert format_repr_digest("crc32c", bytes.fromhex("e3069283")) == "crc32c=:4waSgw==:"
    assert (
        format_repr_digest("sha256", compute(b"", "sha256"))
        == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    )
    assert format_repr_digest("sha1", compute(b"", "sha1")).startswith("sha=:")
    assert format_repr_digest("md5", compute(b"", "md5")).startswith("md5=:")


def test_format_rejects_wrong_length_and_unknown() -> None:
    with pytest.raises(BadRequest):
        format_digest_value("adler32", b"\x00\x01")
    with pytest.raises(BadRequest):
        format_digest("crc64", b"\x00\x00\x00\x00")
    with pytest.raises(BadRequest):
        format_repr_digest("md5", b"")


@given(st.lists(st.binary(max_size=300), max_size=8))
def test_incremental_equals_oneshot(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    multi = MultiHasher(ALGORITHMS)
    for chunk in chunks:
        multi.update(memoryview(chunk))
    digests = multi.digests()
    assert digests["adler32"] == zlib.adler32(data).to_bytes(4, "big")
    assert digests["md5"] == hashlib.md5(data).digest()
    assert digests["sha256"] == hashlib.sha256(data).digest()
    for alg in ALGORITHMS:
        assert digests[alg] == compute(data, alg)


def test_multihasher_dedupes_and_aliases() -> None:
    multi = MultiHasher(["adler32", "ADLER", "sha-256", "md5"])
    assert multi.algorithms == ("adler32", "sha256", "md5")
    multi.update(b"Wikipedia")
    assert multi.digests()["adler32"].hex() == "11e60398"


def test_new_hasher_unknown() -> None:
    with pytest.raises(BadRequest):
        new_hasher("crc64")
    assert new_hasher("SHA-512").name == "sha512"


def test_digest_can_be_read_twice() -> None:
    hasher = new_hasher("adler32")
    hasher.update(b"Wiki")
    assert hasher.digest() == hasher.digest()
    hasher.update(b"pedia")
    assert hasher.digest().hex() == "11e60398"


# ---------------------------------------------------------------- Want-Digest


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("adler32;q=1, md5;q=0.5", ["adler32", "md5"]),
        ("md5;q=0.5, adler32", ["adler32", "md5"]),
        ("ADLER32", ["adler32"]),
        ("MD5", ["md5"]),
        ("adler", ["adler32"]),
        ("sha-256, sha, sha-512, crc32c", ["sha256", "sha1", "sha512", "crc32c"]),
        ("md5;q=0, adler32;q=0.1", ["adler32"]),
        ("unixcksum, crc64, adler32;q=0.3", ["adler32"]),
        ("unixcksum, CRC32, adler32;q=0.3", ["crc32", "adler32"]),
        ("md5;q=abc, adler32", ["adler32"]),
        ("md5;q=1.5, sha-256;q=0.999", ["sha256"]),
        ("md5 ; Q=0.2 , sha-512 ; q=0.7", ["sha512", "md5"]),
        ("md5, md5;q=0.1", ["md5"]),
        ("", []),
        (",,,", []),
        ("=;;=,", []),
    ],
)
def test_parse_want_digest(header: str, expected: list[str]) -> None:
    assert parse_want_digest(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("sha-256=10, adler=3", ["sha256", "adler32"]),
        ("adler=3, sha-256=10", ["sha256", "adler32"]),
        ("adler32=5, md5=5", ["adler32", "md5"]),
        ("sha-512=0, md5=1", ["md5"]),
        ("sha-256=11, md5=2", ["md5"]),
        ("sha-256=-1, md5=x", []),
        ("sha-256", ["sha256"]),
        ("sha-256=4;foo=bar, unixsum=9", ["sha256"]),
        ("", []),
    ],
)
def test_parse_want_repr_digest(header: str, expected: list[str]) -> None:
    assert parse_want_repr_digest(header) == expected


@given(st.text())
def test_want_parsers_never_raise(text: str) -> None:
    for result in (parse_want_digest(text), parse_want_repr_digest(text)):
        assert all(alg in ALGORITHMS for alg in result)
        assert len(set(result)) == len(result)


# ---------------------------------------------------------------- Digest / Repr-Digest


def test_parse_digest_examples() -> None:
    md5 = compute(b"", "md5")
    parsed = parse_digest(f"adler32=03da0195, md5={base64.b64encode(md5).decode()}")
    assert parsed == {"adler32": bytes.fromhex("03da0195"), "md5": md5}
    assert parse_digest("ADLER32=3DA0195") == {"adler32": bytes.fromhex("03da0195")}
    assert parse_digest("adler=1") == {"adler32": bytes.fromhex("00000001")}
    assert parse_digest("crc32c=E3069283") == {"crc32c": bytes.fromhex("e3069283")}
    assert parse_digest(f"MD5={md5.hex()}") == {"md5": md5}
    assert parse_digest("unixcksum=123, sha-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=") == {
        "sha256": compute(b"", "sha256")
    }
    assert parse_digest("") == {}


@pytest.mark.parametrize(
    "header",
    [
        "adler32=",
        "adler32",
        "adler32=123456789",
        "adler32=xyz",
        "crc32c=0x1234",
        "md5=abc",
        "md5=" + "g" * 32,
        "sha-256=" + base64.b64encode(b"x" * 31).decode(),
        "sha=" + base64.b64encode(b"x" * 32).decode(),
        "sha-512=!!!!",
        "adler32=00000001, adler32=00000002",
    ],
)
def test_parse_digest_malformed(header: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_digest(header)
    assert "Digest" in info.value.reason


def test_parse_repr_digest() -> None:
    sha = compute(b"", "sha256")
    value = f"sha-256=:{base64.b64encode(sha).decode()}:, adler=:EeYDmA==:;p=1, unixsum=:AA==:"
    assert parse_repr_digest(value) == {"sha256": sha, "adler32": bytes.fromhex("11e60398")}
    assert parse_repr_digest("adler32=:AAAAAQ==:") == {"adler32": bytes.fromhex("00000001")}
    with pytest.raises(BadRequest, match="Content-Digest"):
        parse_repr_digest("md5=:AAAA:", "Content-Digest")
    with pytest.raises(BadRequest):
        parse_repr_digest("sha-256=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
    with pytest.raises(BadRequest):
        parse_repr_digest("adler=:!!:")


@given(st.sampled_from(ALGORITHMS), st.binary(max_size=200))
def test_round_trips(alg: str, data: bytes) -> None:
    raw = compute(data, alg)
    assert parse_digest(format_digest(alg, raw)) == {alg: raw}
    assert parse_repr_digest(format_repr_digest(alg, raw)) == {alg: raw}
    both = f"{format_digest(alg, raw)}, {format_digest('md5', compute(data, 'md5'))}"
    assert parse_digest(both)[alg] == raw


@given(st.text())
def test_digest_parsers_raise_only_bad_request(text: str) -> None:
    for parser in (parse_digest, parse_repr_digest, parse_content_md5):
        with contextlib.suppress(BadRequest):
            parser(text)


@given(st.text(alphabet="adlerms-h3256:=,; ABCDEF0123456789+/", max_size=60))
def test_digest_parsers_raise_only_bad_request_focused(text: str) -> None:
    for parser in (parse_digest, parse_repr_digest, parse_content_md5):
        with contextlib.suppress(BadRequest):
            parser(text)


# ---------------------------------------------------------------- Content-MD5


def test_parse_content_md5() -> None:
    md5 = compute(b"123456789", "md5")
    assert parse_content_md5("JfnnlDI7RTiF9RgfG2JNCw==") == md5
    assert parse_content_md5(" 25F9E794323B453885F5181F1B624D0B ") == md5
    for bad in ("", "JfnnlDI7RTiF9RgfG2JNCw", "25f9e794323b453885f5181f1b624d0", "x" * 24):
        with pytest.raises(BadRequest, match="Content-MD5"):
            parse_content_md5(bad)


# ---------------------------------------------------------------- expected_digests


def _headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def test_expected_digests_merges() -> None:
    md5 = compute(b"123456789", "md5")
    headers = _headers(
        digest="ADLER32=091e01de",
        repr_digest=format_repr_digest("sha256", compute(b"123456789", "sha256")),
        content_digest="crc32c=:4waSgw==:",
        content_md5=md5.hex(),
    )
    assert expected_digests(headers) == {
        "adler32": bytes.fromhex("091e01de"),
        "sha256": compute(b"123456789", "sha256"),
        "crc32c": bytes.fromhex("e3069283"),
        "md5": md5,
    }
    assert expected_digests(_headers()) == {}
    assert expected_digests({"Content-MD5": base64.b64encode(md5).decode()}) == {"md5": md5}


def test_expected_digests_agreeing_duplicates() -> None:
    md5 = compute(b"", "md5")
    headers = _headers(
        digest=format_digest("md5", md5),
        repr_digest=format_repr_digest("md5", md5),
        content_md5=md5.hex(),
    )
    assert expected_digests(headers) == {"md5": md5}


def test_expected_digests_conflict() -> None:
    headers = _headers(digest="md5=" + compute(b"a", "md5").hex(), content_md5="0" * 32)
    with pytest.raises(BadRequest, match="md5"):
        expected_digests(headers)
    with pytest.raises(BadRequest):
        expected_digests(_headers(digest="adler32=1", repr_digest="adler=:AAAAAg==:"))


def test_expected_digests_malformed() -> None:
    with pytest.raises(BadRequest, match="Content-MD5"):
        expected_digests(_headers(content_md5="nope"))


def test_describe_mismatch() -> None:
    message = describe_mismatch("adler32", bytes.fromhex("0000abcd"), bytes.fromhex("03da0195"))
    assert message == "adler32 mismatch: client declared 0000abcd, received data has 03da0195"
    md5 = describe_mismatch("md5", compute(b"", "md5"), compute(b"123456789", "md5"))
    assert md5 == (
        "md5 mismatch: client declared 1B2M2Y8AsgTpgAmY7PhCfg==, "
        "received data has JfnnlDI7RTiF9RgfG2JNCw=="
    )
    assert "\n" not in describe_mismatch("sha256", b"\x00", b"\x01")
