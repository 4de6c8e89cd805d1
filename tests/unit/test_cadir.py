"""The CA directory (se.auth.cadir): DN text forms, trust paths, reloads and CRL policy,
against the test PKI (tests/pki.py) and, for DN text, OpenSSL's own output."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from se.auth.cadir import (
    TrustError,
    TrustStore,
    iso_time,
    normalise_dn,
    openssl_dn,
    rfc4514_dn,
    validity_problem,
)
from tests.pki import Authority, Pki, crl_pem, dn_of, install_ca, make_ca, subject_hash

NOW = time.time


def _rdn(*attrs: tuple[x509.ObjectIdentifier, str]) -> x509.RelativeDistinguishedName:
    return x509.RelativeDistinguishedName([x509.NameAttribute(oid, value) for oid, value in attrs])


# A name with everything the slash form has to escape or spell out: a multi-valued RDN
# with a "+" in a value, a "/" in a CN, quotes, commas, a backslash, non-ASCII text, an
# attribute OpenSSL calls emailAddress and one it only knows by its OID.
AWKWARD = x509.Name(
    [
        _rdn((NameOID.DOMAIN_COMPONENT, "org")),
        _rdn((NameOID.DOMAIN_COMPONENT, "se-test")),
        _rdn((NameOID.ORGANIZATIONAL_UNIT_NAME, "a+b"), (NameOID.USER_ID, "u1")),
        _rdn((NameOID.COMMON_NAME, 'host/se.example.org, "x"=y\\z é')),
        _rdn((NameOID.EMAIL_ADDRESS, "alice@example.org")),
        _rdn((x509.ObjectIdentifier("1.2.3.4"), "odd")),
    ]
)
PLAIN = dn_of("Alice Tester")


def _self_signed(name: x509.Name) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _openssl_subject(cert: x509.Certificate, tmp_path: Path) -> str:
    pem = tmp_path / "subject.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "compat", "-in", str(pem)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out.startswith("subject=")
    return out.removeprefix("subject=")


# ----------------------------------------------------------------------------- DN text


@pytest.mark.parametrize("name", [PLAIN, AWKWARD], ids=["plain", "awkward"])
def test_slash_form_is_what_openssl_prints(name: x509.Name, tmp_path: Path) -> None:
    assert openssl_dn(name) == _openssl_subject(_self_signed(name), tmp_path)


def test_slash_and_rfc4514_forms_of_an_awkward_name() -> None:
    assert openssl_dn(AWKWARD) == (
        "/DC=org/DC=se-test/OU=a\\+b+UID=u1"
        '/CN=host\\/se.example.org, "x"=y\\z \\xC3\\xA9'
        "/emailAddress=alice@example.org/1.2.3.4=odd"
    )
    assert rfc4514_dn(AWKWARD) == (
        "1.2.3.4=odd,emailAddress=alice@example.org,"
        'CN=host/se.example.org\\, \\"x\\"=y\\\\z é,OU=a\\+b+UID=u1,DC=se-test,DC=org'
    )
    assert rfc4514_dn(PLAIN) == "CN=Alice Tester,DC=se-test,DC=org"


@pytest.mark.parametrize("name", [PLAIN, AWKWARD], ids=["plain", "awkward"])
def test_normalise_dn_round_trips(name: x509.Name) -> None:
    slash = openssl_dn(name)
    assert normalise_dn(slash) == slash
    assert normalise_dn(rfc4514_dn(name)) == slash
    assert normalise_dn(f"  {slash}\n") == slash


def test_unescaped_slash_in_a_value_stays_in_that_value() -> None:
    # grid-mapfiles and .lsc files write host DNs without escaping the "/".
    host = x509.Name([*dn_of(), x509.NameAttribute(NameOID.COMMON_NAME, "host/se.example.org")])
    given = "/DC=org/DC=se-test/CN=host/se.example.org"
    assert normalise_dn(given) == openssl_dn(host) == "/DC=org/DC=se-test/CN=host\\/se.example.org"
    # ... while "/TYPE=" starts the next RDN, and "+TYPE=" the next value of a multi-valued one.
    assert normalise_dn("/DC=org/CN=a+UID=u/CN=b=c") == "/DC=org/CN=a+UID=u/CN=b=c"


@pytest.mark.parametrize(
    ("text", "slash"),
    [
        ("CN=Alice Tester, DC=se-test ,DC=org", "/DC=org/DC=se-test/CN=Alice Tester"),
        ("cn=Alice;dc=org", "/DC=org/CN=Alice"),
        ("/dc=org/commonName=Alice/E=a@b.c", "/DC=org/CN=Alice/emailAddress=a@b.c"),
        ("/DC=org/2.5.4.3=Alice/0.9.2342.19200300.100.1.1=u7", "/DC=org/CN=Alice/UID=u7"),
        ('CN="Tester, Alice",O=Example', "/O=Example/CN=Tester, Alice"),
        ("CN=Alice\\2C Tester,O=Ex\\+ample", "/O=Ex\\+ample/CN=Alice, Tester"),
        ("CN=#0c05416c696365,DC=org", "/DC=org/CN=Alice"),  # a BER-encoded UTF8String
        ("CN=\\ lead\\ ,DC=org", "/DC=org/CN= lead "),
        ("/CN=caf\\xC3\\xA9", "/CN=caf\\xC3\\xA9"),
        ("CN=café", "/CN=caf\\xC3\\xA9"),
        ("", ""),
    ],
)
def test_normalise_dn_forms(text: str, slash: str) -> None:
    assert normalise_dn(text) == slash


@pytest.mark.parametrize("text", ["Alice", "no dn here", "/no equals sign", "CN"])
def test_normalise_dn_refuses_text_that_is_no_dn(text: str) -> None:
    with pytest.raises(ValueError, match="not a DN"):
        normalise_dn(text)


def test_a_multi_valued_rdn_matches_in_either_order(tmp_path: Path) -> None:
    # Built in the "wrong" order: the certificate's DER sorts each SET OF (CN before UID,
    # the shorter OU before the longer), and OpenSSL's RFC 2253 output reverses them again.
    name = x509.Name(
        [
            _rdn((NameOID.DOMAIN_COMPONENT, "org")),
            _rdn((NameOID.ORGANIZATIONAL_UNIT_NAME, "bb"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "a")),
            _rdn((NameOID.USER_ID, "jdoe"), (NameOID.COMMON_NAME, "John Doe")),
        ]
    )
    der = _self_signed(name).public_bytes(serialization.Encoding.DER)
    cert = x509.load_der_x509_certificate(der)  # as a client's certificate is read
    slash = "/DC=org/OU=a+OU=bb/CN=John Doe+UID=jdoe"
    assert openssl_dn(cert.subject) == _openssl_subject(cert, tmp_path) == slash
    rfc2253 = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"],
        input=cert.public_bytes(serialization.Encoding.PEM),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert rfc2253.strip() == "subject=UID=jdoe+CN=John Doe,OU=bb+OU=a,DC=org"
    for given in (
        rfc2253.strip().removeprefix("subject="),
        "CN=John Doe+UID=jdoe,OU=a+OU=bb,DC=org",
        "/DC=org/OU=bb+OU=a/UID=jdoe+CN=John Doe",
        slash,
    ):
        assert normalise_dn(given) == slash, given


def test_an_escaped_space_ending_rfc4514_text_is_kept() -> None:
    name = x509.Name([_rdn((NameOID.DOMAIN_COMPONENT, "org ")), _rdn((NameOID.COMMON_NAME, "x"))])
    assert rfc4514_dn(name) == "CN=x,DC=org\\ "
    assert normalise_dn(rfc4514_dn(name)) == openssl_dn(name) == "/DC=org /CN=x"
    assert normalise_dn(" CN=x,DC=org\\ \n") == "/DC=org /CN=x"
    # An escaped backslash before the space: the space was not escaped, and goes.
    assert normalise_dn("CN=x,DC=org\\\\ ") == "/DC=org\\/CN=x"


def test_times_and_validity_reasons(pki: Pki) -> None:
    assert iso_time(0) == "1970-01-01T00:00:00Z"
    assert iso_time(dt.datetime(2026, 12, 7, 5, tzinfo=dt.UTC)) == "2026-12-07T05:00:00Z"
    cert = x509.load_pem_x509_certificate(pki.user("alice").cert.read_bytes())
    start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    assert validity_problem(cert, start + 1, "client certificate") == ""
    late = validity_problem(cert, end + 1, "client certificate")
    assert late == f"client certificate {pki.user('alice').dn} expired at {iso_time(end)}"
    early = validity_problem(cert, start - 1, "proxy")
    assert early == f"proxy {pki.user('alice').dn} not yet valid (until {iso_time(start)})"


# ----------------------------------------------------------------------------- trust


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ca_dir(pki: Pki, tmp_path: Path) -> Path:
    """A private copy of the PKI's CA directory (without any CRL), free to change."""
    folder = tmp_path / "certificates"
    folder.mkdir()
    for item in pki.ca_dir.iterdir():
        if item.name.endswith(".0"):
            shutil.copy(item, folder / item.name)
    return folder


def test_hashed_names_are_openssls(pki: Pki) -> None:
    names = sorted(p.name for p in pki.ca_dir.iterdir() if not p.name.endswith(".r0"))
    assert names == [f"{subject_hash(pki.ca_cert)}.0"]
    # OpenSSL itself finds the CA through the directory (as a capath lookup does).
    res = subprocess.run(
        ["openssl", "verify", "-CApath", str(pki.ca_dir), str(pki.host_cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_user_chains_to_the_ca(pki: Pki, ca_dir: Path) -> None:
    store = TrustStore(ca_dir)
    user = _cert(pki.user("alice").cert)
    ca = _cert(pki.ca_cert)
    assert store.certificates == (ca,)
    assert store.is_anchor(ca) and not store.is_anchor(user)
    assert store.issuer_of(user) == ca
    assert store.verify_path(user, [], NOW()) == [user, ca]
    # The anchor sent along by the client changes nothing.
    assert store.verify_path(user, [ca], NOW()) == [user, ca]
    assert not store.revoked(user)


def test_rogue_and_self_signed_certificates_are_refused(pki: Pki, ca_dir: Path) -> None:
    store = TrustStore(ca_dir)
    rogue = _cert(pki.user("mallory", rogue=True).cert)
    assert store.issuer_of(rogue) is None
    with pytest.raises(TrustError, match="issuer /DC=org/DC=rogue/CN=se-test CA is not a trusted"):
        store.verify_path(rogue, [], NOW(), what="client certificate")
    # Sending the rogue root along does not make it an anchor.
    with pytest.raises(TrustError, match="CA certificate /DC=org/DC=rogue/CN=se-test CA is self"):
        store.verify_path(rogue, [pki.rogue.cert], NOW())
    with pytest.raises(TrustError, match="client certificate /DC=org/DC=se-test/CN=Alice Tester"):
        store.verify_path(_self_signed(PLAIN), [], NOW(), what="client certificate")


def test_a_ca_with_the_trusted_name_but_another_key_is_refused(pki: Pki, ca_dir: Path) -> None:
    store = TrustStore(ca_dir)
    spoof = make_ca(pki.ca.cert.subject)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    victim = spoof.issue(dn_of("Eve Tester"), key)
    assert store.issuer_of(victim) is None
    with pytest.raises(TrustError, match="does not verify with the key of CA /DC=org/DC=se-test"):
        store.verify_path(victim, [], NOW())
    with pytest.raises(TrustError, match="se-test CA is not the trusted CA of that name"):
        store.verify_path(victim, [spoof.cert], NOW())


def test_expired_user_and_expired_ca(pki: Pki) -> None:
    store = TrustStore(pki.ca_dir)
    old = _cert(pki.user("olga", expired=True).cert)
    with pytest.raises(TrustError, match=r"client certificate .*CN=Olga Tester expired at 20"):
        store.verify_path(old, [], NOW(), what="client certificate")
    # A CA past its end refuses everything it issued.
    user = _cert(pki.user("alice").cert)
    later = pki.ca.cert.not_valid_after_utc.timestamp() + 10
    with pytest.raises(TrustError):
        store.verify_path(user, [], later)


def _intermediate(pki: Pki, name: str, path_length: int | None = None) -> Authority:
    return make_ca(dn_of(name), pki.ca, path_length=path_length)


def _user_of(authority: Authority, cn: str) -> x509.Certificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return authority.issue(dn_of(cn), key)


def test_intermediate_cas_from_the_chain_or_the_directory(pki: Pki, ca_dir: Path) -> None:
    store = TrustStore(ca_dir, check_interval=0)
    sub = _intermediate(pki, "se-test Sub CA")
    user = _user_of(sub, "Ivy Tester")
    assert store.verify_path(user, [sub.cert], NOW()) == [user, sub.cert, pki.ca.cert]
    with pytest.raises(TrustError, match="issuer /DC=org/DC=se-test/CN=se-test Sub CA is not"):
        store.verify_path(user, [], NOW())
    # A non-CA certificate offered as the issuer is not taken.
    with pytest.raises(TrustError, match="is not a trusted CA"):
        store.verify_path(user, [_user_of(pki.ca, "se-test Sub CA")], NOW())
    # Installed in the directory, the intermediate needs not be sent.
    install_ca(ca_dir, sub.cert)
    assert store.verify_path(user, [], NOW()) == [user, sub.cert, pki.ca.cert]


def test_a_user_certificate_cannot_act_as_a_ca(pki: Pki, ca_dir: Path) -> None:
    """basicConstraints (and key usage): a certificate signed with a user's key is not
    trusted, even with the user's certificate in the chain or installed in the directory."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    user = (  # no key usage extension: only basicConstraints says it is no CA
        x509.CertificateBuilder()
        .subject_name(dn_of("Plain Tester"))
        .issuer_name(pki.ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(pki.ca.key, hashes.SHA256())
    )
    alice = pki.user("alice")
    alice_key = serialization.load_pem_private_key(alice.key.read_bytes(), password=None)
    assert isinstance(alice_key, rsa.RSAPrivateKey)
    for issuer, issuer_key in ((user, key), (_cert(alice.cert), alice_key)):
        victim = Authority(issuer, issuer_key).issue(dn_of("Fake Tester"), key)
        store = TrustStore(ca_dir, check_interval=0)
        with pytest.raises(TrustError, match="Tester is not a trusted CA"):
            store.verify_path(victim, [issuer], NOW())
        install_ca(ca_dir, issuer)
        with pytest.raises(TrustError, match=r"does not verify with the key of CA .* Tester$"):
            store.verify_path(victim, [], NOW())


def test_ca_path_length_constraints_hold(pki: Pki, ca_dir: Path) -> None:
    store = TrustStore(ca_dir)
    upper = _intermediate(pki, "se-test Upper CA", path_length=0)
    lower = make_ca(dn_of("se-test Lower CA"), upper)
    user = _user_of(lower, "Len Tester")
    with pytest.raises(TrustError, match="Upper CA allows 0 CAs below it"):
        store.verify_path(user, [lower.cert, upper.cert], NOW())
    assert store.verify_path(_user_of(upper, "Len Tester"), [upper.cert], NOW())[1] == upper.cert


def test_directory_changes_are_seen_within_the_interval(pki: Pki, ca_dir: Path) -> None:
    rogue = _cert(pki.user("mallory", rogue=True).cert)
    slow = TrustStore(ca_dir, check_interval=3600)
    fast = TrustStore(ca_dir, check_interval=0)
    with pytest.raises(TrustError):
        fast.verify_path(rogue, [], NOW())
    added = install_ca(ca_dir, pki.rogue.cert)
    assert fast.verify_path(rogue, [], NOW()) == [rogue, pki.rogue.cert]
    with pytest.raises(TrustError):  # not looked at again yet
        slow.verify_path(rogue, [], NOW())
    assert slow.refresh() is True
    assert slow.refresh() is False  # nothing changed since
    assert slow.verify_path(rogue, [], NOW())[1] == pki.rogue.cert
    added.unlink()
    with pytest.raises(TrustError):
        fast.verify_path(rogue, [], NOW())


def test_files_that_are_no_certificates_are_skipped(
    pki: Pki, ca_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (ca_dir / "0badc0de.0").write_text("not a certificate\n")
    (ca_dir / "0badc0de.r0").write_text("not a CRL\n")
    (ca_dir / "README").write_text("ignored: not a hashed name\n")
    with caplog.at_level(logging.WARNING, logger="se.auth"):
        store = TrustStore(ca_dir)
    assert store.certificates == (pki.ca.cert,)
    assert "0badc0de.0 skipped" in caplog.text and "0badc0de.r0 skipped" in caplog.text
    assert "README" not in caplog.text
    with pytest.raises(FileNotFoundError):
        TrustStore(ca_dir / "missing")


# ----------------------------------------------------------------------------- CRLs


def _write_crl(
    ca_dir: Path, pki: Pki, serials: list[int], next_update: dt.timedelta = dt.timedelta(days=7)
) -> Path:
    target = ca_dir / f"{subject_hash(pki.ca_cert)}.r0"
    tmp = ca_dir / "crl.tmp"
    tmp.write_bytes(crl_pem(pki.ca, serials, next_update=next_update))
    os.replace(tmp, target)
    return target


def test_crl_if_present(pki: Pki, ca_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = TrustStore(ca_dir, check_interval=0)
    alice, bob = _cert(pki.user("alice").cert), _cert(pki.user("bob").cert)
    assert store.verify_path(alice, [], NOW())  # no CRL: nothing revoked
    _write_crl(ca_dir, pki, [alice.serial_number])
    with pytest.raises(TrustError, match="Alice Tester revoked by its CA"):
        store.verify_path(alice, [], NOW())
    assert store.revoked(alice) and not store.revoked(bob)
    assert store.verify_path(bob, [], NOW())
    # Past its nextUpdate the CRL still revokes what it lists (with a warning) and lets the
    # others in.
    _write_crl(ca_dir, pki, [alice.serial_number], next_update=-dt.timedelta(days=1))
    with caplog.at_level(logging.WARNING, logger="se.auth"):
        with pytest.raises(TrustError, match="revoked"):
            store.verify_path(alice, [], NOW())
        assert store.verify_path(bob, [], NOW())
    assert caplog.text.count("still honoured") == 1  # once per CRL version
    # A CRL rewritten without the serial lifts the revocation.
    _write_crl(ca_dir, pki, [])
    assert store.verify_path(alice, [], NOW())


def test_crl_require(pki: Pki, ca_dir: Path) -> None:
    store = TrustStore(ca_dir, check_interval=0, crl_mode="require")
    alice, bob = _cert(pki.user("alice").cert), _cert(pki.user("bob").cert)
    with pytest.raises(TrustError, match="no CRL of CA /DC=org/DC=se-test/CN=se-test CA"):
        store.verify_path(bob, [], NOW())
    _write_crl(ca_dir, pki, [alice.serial_number])
    assert store.verify_path(bob, [], NOW()) == [bob, pki.ca.cert]
    with pytest.raises(TrustError, match="revoked"):
        store.verify_path(alice, [], NOW())
    _write_crl(ca_dir, pki, [alice.serial_number], next_update=-dt.timedelta(hours=2))
    with pytest.raises(TrustError, match=r"CRL of CA .*se-test CA expired at 20"):
        store.verify_path(bob, [], NOW())
    with pytest.raises(TrustError, match="revoked"):  # revocation still wins
        store.verify_path(alice, [], NOW())


def test_a_crl_not_signed_by_the_ca_is_ignored(
    pki: Pki, ca_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice = _cert(pki.user("alice").cert)
    forged = make_ca(pki.ca.cert.subject)  # same name, other key
    target = ca_dir / f"{subject_hash(pki.ca_cert)}.r0"
    target.write_bytes(crl_pem(forged, [alice.serial_number]))
    with caplog.at_level(logging.WARNING, logger="se.auth"):
        store = TrustStore(ca_dir, crl_mode="require")
    assert "no CA here signed it" in caplog.text
    with pytest.raises(TrustError, match="no CRL of CA"):
        store.verify_path(alice, [], NOW())
    assert TrustStore(ca_dir).verify_path(alice, [], NOW())  # if_present: not revoked


def test_an_intermediate_revoked_by_the_root_refuses_its_users(pki: Pki, ca_dir: Path) -> None:
    store = TrustStore(ca_dir, check_interval=0)
    sub = _intermediate(pki, "se-test Revoked Sub CA")
    user = _user_of(sub, "Rita Tester")
    assert store.verify_path(user, [sub.cert], NOW())
    _write_crl(ca_dir, pki, [sub.cert.serial_number])
    with pytest.raises(TrustError, match="Revoked Sub CA revoked by its CA"):
        store.verify_path(user, [sub.cert], NOW())


def test_pki_revoke_writes_a_crl_openssl_honours(pki: Pki) -> None:
    """Pki.revoke's CRL is one OpenSSL's own CRL check reads from the hashed directory."""
    victim = pki.user("victor")
    pki.revoke(victim)
    crl_file = pki.ca_dir / f"{subject_hash(pki.ca_cert)}.r0"
    assert crl_file.exists()
    res = subprocess.run(
        ["openssl", "verify", "-crl_check", "-CApath", str(pki.ca_dir), str(victim.cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode != 0 and "revoked" in res.stdout + res.stderr
    assert TrustStore(pki.ca_dir).revoked(_cert(victim.cert))
