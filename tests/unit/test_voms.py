"""VOMS attribute certificates (se.auth.voms) as voms-proxy-fake writes them: parsed,
verified, and refused for each reason, against the test PKI (tests/pki.py)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from se.auth.cadir import TrustStore
from se.auth.voms import (
    AttributeCertificate,
    VomsError,
    _same_name,
    parse_voms_extension,
    read_lsc,
    verify_ac,
    voms_extension,
)
from tests.pki import VOMS_HOST, VOMS_PORT, Pki, crl_pem, subject_hash

VOMS_DN = f"/DC=org/DC=se-test/CN={VOMS_HOST}"
CA_DN = "/DC=org/DC=se-test/CN=se-test CA"


def chain_of(proxy: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(proxy.read_bytes())


def ac_of(proxy: Path) -> tuple[AttributeCertificate, x509.Certificate]:
    """The first AC of a proxy file and the user certificate (last in the file)."""
    certs = chain_of(proxy)
    value = voms_extension(certs[0])
    assert value is not None
    return parse_voms_extension(value)[0], certs[-1]


@pytest.fixture(scope="module")
def store(pki: Pki) -> TrustStore:
    return TrustStore(pki.ca_dir)


@pytest.fixture
def vomsdir(pki: Pki, tmp_path: Path) -> Path:
    """A private copy of the PKI's vomsdir, free to change."""
    return Path(shutil.copytree(pki.vomsdir, tmp_path / "vomsdir"))


def test_an_ac_of_voms_proxy_fake_verifies_with_every_fqan_in_order(
    pki: Pki, store: TrustStore
) -> None:
    fqans = (
        "/dteam/Role=production",
        "/dteam",
        "/dteam/analysis/Role=NULL/Capability=NULL",
        "/dteam/Role=lcgadmin",
    )
    before = time.time()
    ac, eec = ac_of(pki.proxy(pki.user("alice"), fqans=fqans, ac_hours=6))
    assert ac.holder_serial == eec.serial_number
    assert ac.issuer_dn == VOMS_DN
    assert [c.subject.rfc4514_string() for c in ac.certseq] == [f"CN={VOMS_HOST},DC=se-test,DC=org"]
    attrs = verify_ac(ac, eec, store, pki.vomsdir, time.time())
    assert attrs.vo == "dteam"
    assert attrs.fqans == fqans
    assert attrs.issuer_dn == VOMS_DN
    assert attrs.server == f"{VOMS_HOST}:{VOMS_PORT}"
    assert attrs.not_after - attrs.not_before == 6 * 3600
    assert before - 5 <= attrs.not_before <= time.time() + 1
    # The DER of the AC alone does as well.
    assert verify_ac(ac.der, eec, store, pki.vomsdir, time.time()) == attrs


def test_several_vos_and_an_ec_voms_server(pki: Pki, store: TrustStore) -> None:
    atlas, eec = ac_of(pki.proxy(pki.user("alice"), vo="atlas", fqans=("/atlas", "/atlas/x")))
    assert verify_ac(atlas, eec, store, pki.vomsdir, time.time()).fqans == ("/atlas", "/atlas/x")
    # voms-proxy-fake labels an EC server's signature as RSA (it copies the certificate's
    # algorithm identifier); the key decides.
    ec_ac, eec = ac_of(pki.proxy(pki.user("alice"), voms="ec"))
    assert ec_ac.signature_scheme == "rsassa_pkcs1v15"
    assert verify_ac(ec_ac, eec, store, pki.vomsdir, time.time()).fqans == ("/dteam",)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"ac_expired": True}, r"VOMS attributes expired at 20\d\d-"),
        ({"voms": "unlisted"}, "VOMS server /DC=org/DC=se-test/CN=voms-unlisted.se-test.org "),
        ({"voms": "rogue"}, "issuer /DC=org/DC=rogue/CN=se-test CA is not a trusted CA"),
        ({"tamper_ac": True}, f"AC signature does not verify with the key of {VOMS_DN}"),
        ({"targets": ("other.example.org",)}, r"restricted to other hosts \(other.example.org\)"),
        ({"fqans": ("/dteam", "/atlas")}, "AC of VO dteam carries a foreign FQAN /atlas"),
    ],
    ids=["expired", "unlisted", "rogue-ca", "tampered", "targets", "foreign-fqan"],
)
def test_each_failure_has_its_reason(
    pki: Pki, store: TrustStore, kwargs: dict[str, object], reason: str
) -> None:
    ac, eec = ac_of(pki.proxy(pki.user("alice"), **kwargs))  # type: ignore[arg-type]
    with pytest.raises(VomsError, match=reason):
        verify_ac(ac, eec, store, pki.vomsdir, time.time(), host_names=("localhost",))


def test_unlisted_server_names_the_lsc_file(pki: Pki, store: TrustStore) -> None:
    ac, eec = ac_of(pki.proxy(pki.user("alice"), voms="unlisted"))
    lsc = pki.vomsdir / "dteam" / f"{VOMS_HOST}.lsc"
    with pytest.raises(VomsError, match=f"\\(CA {CA_DN}\\) is not listed in {lsc}"):
        verify_ac(ac, eec, store, pki.vomsdir, time.time())


def test_an_ac_issued_to_another_certificate_is_refused(pki: Pki, store: TrustStore) -> None:
    bobs, _ = ac_of(pki.proxy(pki.user("bob")))
    alice = x509.load_pem_x509_certificate(pki.user("alice").cert.read_bytes())
    with pytest.raises(VomsError, match=r"issued to another certificate than .*Alice Tester's"):
        verify_ac(bobs, alice, store, pki.vomsdir, time.time())


def test_targets_naming_this_host_are_accepted(pki: Pki, store: TrustStore) -> None:
    ac, eec = ac_of(pki.proxy(pki.user("alice"), targets=("se.example.org", "LocalHost")))
    assert ac.targets == ("se.example.org", "LocalHost")
    assert verify_ac(ac, eec, store, pki.vomsdir, time.time(), host_names=("localhost",))
    with pytest.raises(VomsError, match="restricted to other hosts"):
        verify_ac(ac, eec, store, pki.vomsdir, time.time())


def test_validity_window_with_the_start_skew(pki: Pki, store: TrustStore) -> None:
    ac, eec = ac_of(pki.proxy(pki.user("alice")))
    assert verify_ac(ac, eec, store, pki.vomsdir, ac.not_before - 299)
    with pytest.raises(VomsError, match="VOMS attributes not yet valid"):
        verify_ac(ac, eec, store, pki.vomsdir, ac.not_before - 301)
    assert verify_ac(ac, eec, store, pki.vomsdir, ac.not_after)
    with pytest.raises(VomsError, match="expired"):
        verify_ac(ac, eec, store, pki.vomsdir, ac.not_after + 1)


def test_a_revoked_voms_server_is_refused(pki: Pki, tmp_path: Path) -> None:
    ca_dir = tmp_path / "certificates"
    ca_dir.mkdir()
    hashed = subject_hash(pki.ca_cert)
    shutil.copy(pki.ca_cert, ca_dir / f"{hashed}.0")
    ac, eec = ac_of(pki.proxy(pki.user("alice")))
    (ca_dir / f"{hashed}.r0").write_bytes(crl_pem(pki.ca, [ac.certseq[0].serial_number]))
    with pytest.raises(VomsError, match=f"certificate {VOMS_DN} revoked by its CA"):
        verify_ac(ac, eec, TrustStore(ca_dir), pki.vomsdir, time.time())


# ----------------------------------------------------------------------------- vomsdir


def test_read_lsc(tmp_path: Path) -> None:
    lsc = tmp_path / "x.lsc"
    lsc.write_text(
        "# the current certificate\n"
        f"  {VOMS_DN}  \n"
        f"{CA_DN}\n"
        "------ NEXT CHAIN ------\n"
        f"CN={VOMS_HOST}, DC=se-test, DC=org\n"
        "\n"
        "CN=Other CA,DC=org\n"
        "----\n"
        "not a DN at all\n"
        f"{CA_DN}\n"
    )
    assert read_lsc(lsc) == [
        [VOMS_DN, CA_DN],
        [VOMS_DN, "/DC=org/CN=Other CA"],
    ]
    with pytest.raises(OSError):
        read_lsc(tmp_path / "missing.lsc")


@pytest.mark.parametrize(
    ("lsc", "ok"),
    [
        (f"{VOMS_DN}\n{CA_DN}\n", True),
        (f"CN={VOMS_HOST},DC=se-test,DC=org\nCN=se-test CA,DC=se-test,DC=org\n", True),
        (f"{VOMS_DN}\n/DC=org/CN=Other CA\n-\n{VOMS_DN}\n{CA_DN}\n", True),  # second chain
        (f"{VOMS_DN}\n/DC=org/CN=Other CA\n", False),  # issued by another CA
        (f"{VOMS_DN}\n", False),  # no CA named
        (f"{VOMS_DN}\n{CA_DN}\n/DC=org/CN=Above the root\n", False),  # longer than the path
        ("", False),
    ],
    ids=["slash", "rfc4514", "second-chain", "other-ca", "server-only", "too-long", "empty"],
)
def test_lsc_must_list_the_server_and_its_ca(
    pki: Pki, store: TrustStore, vomsdir: Path, lsc: str, ok: bool
) -> None:
    (vomsdir / "dteam" / f"{VOMS_HOST}.lsc").write_text(lsc)
    ac, eec = ac_of(pki.proxy(pki.user("alice")))
    if ok:
        assert verify_ac(ac, eec, store, vomsdir, time.time()).vo == "dteam"
    else:
        with pytest.raises(VomsError, match="is not listed in"):
            verify_ac(ac, eec, store, vomsdir, time.time())


def test_without_lsc_only_an_installed_server_certificate_counts(
    pki: Pki, store: TrustStore, vomsdir: Path
) -> None:
    (vomsdir / "dteam" / f"{VOMS_HOST}.lsc").unlink()
    ac, eec = ac_of(pki.proxy(pki.user("alice")))
    with pytest.raises(VomsError, match=r"VO dteam has no .*voms.se-test.org.lsc"):
        verify_ac(ac, eec, store, vomsdir, time.time())
    pem = ac.certseq[0].public_bytes(serialization.Encoding.PEM)
    (vomsdir / "dteam" / "voms.pem").write_bytes(pem)
    assert verify_ac(ac, eec, store, vomsdir, time.time()).fqans == ("/dteam",)


def test_a_vo_unknown_to_the_vomsdir_is_refused(pki: Pki, store: TrustStore) -> None:
    ac, eec = ac_of(pki.proxy(pki.user("alice"), vo="cms", fqans=("/cms",)))
    with pytest.raises(VomsError, match="VO cms has no"):
        verify_ac(ac, eec, store, pki.vomsdir, time.time())


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("der", "reason"),
    [
        (b"", "malformed VOMS extension"),
        (b"\x04\x03abc", "malformed VOMS extension"),
        (b"\x30\x00", "holds no attribute certificate"),
        (b"\x30\x02\x30\x00", "holds no attribute certificate"),
        (b"\x30\x04\x30\x02\x30\x00", "malformed VOMS extension"),
    ],
)
def test_malformed_extensions(der: bytes, reason: str) -> None:
    with pytest.raises(VomsError, match=reason):
        parse_voms_extension(der)


def test_malformed_ac_der(pki: Pki, store: TrustStore) -> None:
    eec = x509.load_pem_x509_certificate(pki.user("alice").cert.read_bytes())
    with pytest.raises(VomsError, match="malformed AC"):
        verify_ac(b"\x30\x03\x02\x01\x01", eec, store, pki.vomsdir, time.time())


def test_certificates_without_the_extension(pki: Pki) -> None:
    assert voms_extension(chain_of(pki.proxy(pki.user("alice"), vo=None))[0]) is None
    assert voms_extension(x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())) is None


def test_names_compare_as_rfc_5280_says() -> None:
    """Encodings differing in string type and case still name the same server/holder."""
    ours = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Alice  Tester")])
    printable = asn1_x509.Name.build({"common_name": "alice tester"}, use_printable=True)
    assert _same_name([ours], printable)
    assert _same_name([ours], asn1_x509.Name.load(ours.public_bytes()))
    other = asn1_x509.Name.build({"common_name": "Bob Tester"})
    assert not _same_name([ours], other)
    assert _same_name([x509.Name([]), ours], printable)
