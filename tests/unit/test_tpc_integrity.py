"""Unit tests for se.tpc.integrity (checksums asked for, declared and compared in a TPC)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from se.storage import checksums
from se.tpc.integrity import declared_digests, digest_headers, verify, want_digest
from se.tpc.remote import TransferFailed

DATA = b"the data of the file\n"
ADLER = checksums.compute(DATA, "adler32")
OTHER_ADLER = bytes.fromhex("0a1b2c3d")
MD5 = hashlib.md5(DATA, usedforsecurity=False).digest()
OTHER_MD5 = hashlib.md5(b"other", usedforsecurity=False).digest()
SHA256 = hashlib.sha256(DATA).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


# --------------------------------------------------------------------------- want_digest


def test_want_digest_default_order() -> None:
    assert want_digest([], ()) == (
        "adler32, crc32c;q=0.9, md5;q=0.8, sha-256;q=0.7, sha-512;q=0.6, sha;q=0.5, crc32;q=0.4"
    )


def test_want_digest_client_first_then_configured() -> None:
    assert want_digest(["sha256"], ["md5"]) == (
        "sha-256, md5;q=0.9, adler32;q=0.8, crc32c;q=0.7, sha-512;q=0.6, sha;q=0.5, crc32;q=0.4"
    )


def test_want_digest_aliases_unknown_and_duplicates() -> None:
    assert want_digest(["foo", "ADLER32", "adler"], ["md5", "MD5", "sha-1"]) == (
        "adler32, md5;q=0.9, sha;q=0.8, crc32c;q=0.7, sha-256;q=0.6, sha-512;q=0.5, crc32;q=0.4"
    )


_ALG_NAMES = st.sampled_from(
    [
        "adler32",
        "adler",
        "ADLER32",
        "crc32c",
        "md5",
        "MD5",
        "sha",
        "sha1",
        "sha-256",
        "sha256",
        "SHA-512",
        "sha512",
        "unknown",
        "",
        "crc32",
    ]
)


@given(st.lists(_ALG_NAMES, max_size=8), st.lists(_ALG_NAMES, max_size=8))
def test_want_digest_property(first: list[str], configured: list[str]) -> None:
    value = want_digest(first, configured)
    members = [m.strip() for m in value.split(",")]
    assert len(members) == len(checksums.DIGEST_SIZES)  # every known algorithm, once
    qs = [1.0] + [float(m.split(";q=")[1]) for m in members[1:]]
    assert ";" not in members[0]
    assert all(a > b for a, b in itertools.pairwise(qs))
    assert all(0 < q <= 1 for q in qs)
    # A server honouring q-values sees the order we meant: the client's names first.
    parsed = checksums.parse_want_digest(value)
    known = [c for c in (checksums.canonical_algorithm(a) for a in first) if c]
    assert parsed[: len(dict.fromkeys(known))] == list(dict.fromkeys(known))
    assert len(parsed) == len(members)


# --------------------------------------------------------------------------- declared


def test_declared_digest_adler32_hex() -> None:
    assert declared_digests(_headers(("Digest", f"adler32={ADLER.hex()}")), 200) == {
        "adler32": ADLER
    }
    # short and upper-case hex, left-padded
    assert declared_digests(_headers(("digest", "ADLER32=A1B2C3")), 200) == {
        "adler32": bytes.fromhex("00a1b2c3")
    }


def test_declared_digest_md5_base64_and_several() -> None:
    got = declared_digests(_headers(("Digest", f"md5={b64(MD5)}, adler32={ADLER.hex()}")), 200)
    assert got == {"md5": MD5, "adler32": ADLER}


def test_declared_repr_digest_sha256() -> None:
    got = declared_digests(_headers(("Repr-Digest", f"sha-256=:{b64(SHA256)}:")), 200)
    assert got == {"sha256": SHA256}


def test_declared_both_headers_merged() -> None:
    got = declared_digests(
        _headers(
            ("Digest", f"adler32={ADLER.hex()}"),
            ("Repr-Digest", f"sha-256=:{b64(SHA256)}:, adler=:{b64(ADLER)}:"),
        ),
        206,  # both describe the whole file, even on a partial answer
    )
    assert got == {"adler32": ADLER, "sha256": SHA256}


def test_declared_content_md5_only_on_200() -> None:
    for value in (b64(MD5), MD5.hex()):
        assert declared_digests(_headers(("Content-MD5", value)), 200) == {"md5": MD5}
        assert declared_digests(_headers(("Content-MD5", value)), 206) == {}
        assert declared_digests(_headers(("Content-MD5", value)), 201) == {}


def test_declared_digest_md5_wins_over_content_md5() -> None:
    got = declared_digests(
        _headers(("Digest", f"md5={b64(MD5)}"), ("Content-MD5", b64(OTHER_MD5))), 200
    )
    assert got == {"md5": MD5}


@pytest.mark.parametrize(
    "pairs",
    [
        (("Digest", "adler32=xyz"),),
        (("Digest", "md5=tooshort"),),
        (("Digest", "adler32=01,adler32=02"),),
        (("Repr-Digest", "sha-256=:AAAA:"),),
        (("Repr-Digest", f"adler={ADLER.hex()}"),),
        (("Content-MD5", "not-md5"),),
        (("Content-MD5", ""),),
        (("Digest", ""),),
        (("Digest", "unknownalg=123"),),
    ],
)
def test_declared_malformed_ignored(
    pairs: tuple[tuple[str, str], ...], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="se.tpc"):
        assert declared_digests(_headers(*pairs), 200) == {}


def test_declared_malformed_header_does_not_hide_the_other() -> None:
    got = declared_digests(
        _headers(("Digest", "adler32=zz"), ("Repr-Digest", f"adler=:{b64(ADLER)}:")), 200
    )
    assert got == {"adler32": ADLER}
    got = declared_digests(
        _headers(("Digest", f"adler32={ADLER.hex()}"), ("Repr-Digest", "adler=:%%:")), 200
    )
    assert got == {"adler32": ADLER}


def test_declared_malformed_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="se.tpc"):
        declared_digests(_headers(("Digest", "adler32=xyz")), 200)
    assert any("Digest" in r.getMessage() for r in caplog.records)


@given(st.dictionaries(st.sampled_from(["Digest", "Repr-Digest", "Content-MD5"]), st.text()))
def test_declared_never_raises(values: dict[str, str]) -> None:
    got = declared_digests(_headers(*values.items()), 200)
    for alg, raw in got.items():
        assert len(raw) == checksums.DIGEST_SIZES[alg]


# --------------------------------------------------------------------------- verify


def test_verify_match() -> None:
    local = {"adler32": ADLER, "md5": MD5}
    assert verify(local, {"adler32": ADLER}, {}, True, "source") == ["adler32"]
    assert verify(local, {"adler32": ADLER, "md5": MD5}, {}, False, "source") == [
        "adler32",
        "md5",
    ]


def test_verify_adler32_mismatch_message() -> None:
    with pytest.raises(TransferFailed) as info:
        verify({"adler32": ADLER}, {"adler32": OTHER_ADLER}, {}, False, "source")
    message = str(info.value)
    assert message == (
        f"adler32 mismatch: source declared 0a1b2c3d, received data has {ADLER.hex()}"
    )
    assert info.value.status is None


def test_verify_md5_mismatch_message_base64() -> None:
    with pytest.raises(TransferFailed) as info:
        verify({"md5": MD5}, {"md5": OTHER_MD5}, {}, False, "destination", local_name="our copy")
    assert str(info.value) == (
        f"md5 mismatch: destination declared {b64(OTHER_MD5)}, our copy has {b64(MD5)}"
    )


def test_verify_mismatch_raises_even_when_not_required_and_another_matches() -> None:
    with pytest.raises(TransferFailed, match="md5 mismatch"):
        verify({"adler32": ADLER, "md5": MD5}, {"adler32": ADLER, "md5": OTHER_MD5}, {}, False, "s")


def test_verify_wrong_length_value_shown_in_hex() -> None:
    with pytest.raises(TransferFailed) as info:
        verify({"adler32": ADLER}, {"adler32": b"\x01\x02"}, {}, False, "source")
    assert "declared 0102," in str(info.value)


def test_verify_required_nothing_in_common() -> None:
    with pytest.raises(TransferFailed) as info:
        verify({"adler32": ADLER}, {"md5": MD5, "sha256": SHA256}, {}, True, "source")
    message = str(info.value)
    assert "required" in message
    assert "source" in message
    assert "md5, sha256" in message


def test_verify_required_nothing_offered() -> None:
    with pytest.raises(TransferFailed, match=r"offered: none"):
        verify({"adler32": ADLER}, {}, {}, True, "source")


def test_verify_not_required_nothing_in_common() -> None:
    assert verify({"adler32": ADLER}, {"md5": MD5}, {}, False, "source") == []
    assert verify({}, {}, {}, False, "source") == []


def test_verify_client_expectation_compared() -> None:
    assert verify({"adler32": ADLER}, {}, {"adler32": ADLER}, True, "source") == ["adler32"]
    with pytest.raises(TransferFailed) as info:
        verify({"adler32": ADLER}, {}, {"adler32": OTHER_ADLER}, False, "source")
    assert str(info.value) == (
        f"adler32 mismatch: the client declared 0a1b2c3d, received data has {ADLER.hex()}"
    )


def test_verify_client_checked_even_when_remote_matches() -> None:
    with pytest.raises(TransferFailed, match="the client declared"):
        verify({"adler32": ADLER}, {"adler32": ADLER}, {"adler32": OTHER_ADLER}, False, "source")


def test_verify_client_offer_counts_for_required_message() -> None:
    with pytest.raises(TransferFailed, match=r"offered: md5, sha256"):
        verify({"adler32": ADLER}, {"md5": MD5}, {"sha256": SHA256}, True, "source")


# --------------------------------------------------------------------------- digest_headers


def test_digest_headers_empty() -> None:
    assert digest_headers({}) == []


def test_digest_headers_format() -> None:
    assert digest_headers({"adler32": OTHER_ADLER, "md5": MD5}) == [
        ("Digest", f"adler32=0a1b2c3d,md5={b64(MD5)}"),
        ("Repr-Digest", f"adler=:{b64(OTHER_ADLER)}:,md5=:{b64(MD5)}:"),
    ]
    assert digest_headers({"sha256": SHA256}) == [
        ("Digest", f"sha-256={b64(SHA256)}"),
        ("Repr-Digest", f"sha-256=:{b64(SHA256)}:"),
    ]


@st.composite
def digest_sets(draw: st.DrawFn) -> dict[str, bytes]:
    algs = draw(st.lists(st.sampled_from(sorted(checksums.DIGEST_SIZES)), unique=True))
    digests: dict[str, bytes] = {}
    for alg in algs:
        size = checksums.DIGEST_SIZES[alg]
        digests[alg] = draw(st.binary(min_size=size, max_size=size))
    return digests


@given(digest_sets())
def test_digest_headers_round_trip(digests: dict[str, bytes]) -> None:
    lines = dict(digest_headers(digests))
    if not digests:
        assert lines == {}
        return
    assert checksums.parse_digest(lines["Digest"]) == digests
    assert checksums.parse_repr_digest(lines["Repr-Digest"]) == digests
    assert declared_digests(CIMultiDict(lines), 200) == digests
