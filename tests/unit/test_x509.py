"""Client chains to identities (se.auth.x509): X509Verifier.identify on proxies made by
voms-proxy-fake and on hand-made broken ones, and the TLS side (configure_server_context,
peer_chain) over real TLS connections from Python's ssl client and curl."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from se.auth.voms import VOMS_EXTENSION_OID, parse_voms_extension, voms_extension
from se.auth.x509 import (
    X509Error,
    X509Identity,
    X509Verifier,
    configure_server_context,
    peer_chain,
)
from tests.pki import Pki, User, delegate, dn_of, make_ca

PCI = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
INHERIT_ALL = bytes.fromhex("300c300a06082b06010505071501")
INDEPENDENT = bytes.fromhex("300c300a06082b06010505071502")
PATH_LEN_0 = bytes.fromhex("300f020100300a06082b06010505071501")
UNKNOWN_POLICY = bytes.fromhex("3007300506032a0304")
ALICE = "/DC=org/DC=se-test/CN=Alice Tester"


def der_chain(pem_file: Path) -> list[bytes]:
    """The certificates of a proxy (or certificate) file as DER, in file order."""
    certs = x509.load_pem_x509_certificates(pem_file.read_bytes())
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


def certs_of(pem_file: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem_file.read_bytes())


def user_key(user: User) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(user.key.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@cache
def spare_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_proxy(
    issuer: x509.Certificate,
    signer: rsa.RSAPrivateKey,
    *,
    subject: x509.Name | None = None,
    pci: bytes | None = INHERIT_ALL,
    pci_critical: bool = True,
    ca: bool = False,
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.Certificate:
    """A proxy of ``issuer`` signed with ``signer`` (its key unless a test says otherwise)."""
    now = dt.datetime.now(dt.UTC)
    name = subject or x509.Name([*issuer.subject, x509.NameAttribute(NameOID.COMMON_NAME, "4242")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject)
        .public_key(spare_key().public_key())
        .serial_number(4242)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if pci is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(PCI, pci), pci_critical)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signer, hashes.SHA256())


def der(*certs: x509.Certificate) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


@pytest.fixture(scope="module")
def verifier(pki: Pki) -> X509Verifier:
    return X509Verifier(str(pki.ca_dir), str(pki.vomsdir), host_names=("localhost",))


@pytest.fixture(scope="module")
def alice(pki: Pki) -> User:
    return pki.user("alice")


@pytest.fixture(scope="module")
def alice_cert(alice: User) -> x509.Certificate:
    return x509.load_pem_x509_certificate(alice.cert.read_bytes())


# ----------------------------------------------------------------------------- identify


def test_the_end_entity_certificate_alone(
    pki: Pki, verifier: X509Verifier, alice: User, alice_cert: x509.Certificate
) -> None:
    identity = verifier.identify(der_chain(alice.cert))
    assert identity == X509Identity(
        dn=ALICE,
        dn_rfc4514="CN=Alice Tester,DC=se-test,DC=org",
        issuer_dn="/DC=org/DC=se-test/CN=se-test CA",
        serial=alice_cert.serial_number,
        proxy_depth=0,
        vo="",
        fqans=(),
        ac_problem="",
        not_after=alice_cert.not_valid_after_utc.timestamp(),
    )
    # The trust anchor at the end of the chain (as TLS layers give it) changes nothing.
    assert verifier.identify(der_chain(alice.cert) + der_chain(pki.ca_cert)) == identity


def test_rfc_proxy_with_voms_attributes(
    pki: Pki, verifier: X509Verifier, alice: User, alice_cert: x509.Certificate
) -> None:
    fqans = ("/dteam/Role=production", "/dteam", "/dteam/higgs")
    proxy = pki.proxy(alice, fqans=fqans, hours=12, ac_hours=6)
    identity = verifier.identify(der_chain(proxy))
    assert identity.dn == ALICE  # the user's, not the proxy's
    assert identity.serial == alice_cert.serial_number
    assert (identity.proxy_depth, identity.vo, identity.fqans) == (1, "dteam", fqans)
    assert identity.ac_problem == ""
    value = voms_extension(certs_of(proxy)[0])
    assert value is not None
    # The AC ends before the proxy: it bounds the identity.
    assert identity.not_after == parse_voms_extension(value)[0].not_after
    assert identity.not_after < certs_of(proxy)[0].not_valid_after_utc.timestamp()


@pytest.mark.parametrize(
    ("kwargs", "last_cn"),
    [
        ({"rfc": False}, "proxy"),
        ({"rfc": False, "limited": True}, "limited proxy"),
        ({"proxyver": 3}, None),  # pre-RFC draft ProxyCertInfo
        ({"limited": True}, None),  # RFC proxy with Globus' limited policy
    ],
    ids=["legacy", "legacy-limited", "draft", "rfc-limited"],
)
def test_other_kinds_of_proxy(
    pki: Pki, verifier: X509Verifier, alice: User, kwargs: dict[str, Any], last_cn: str | None
) -> None:
    proxy = pki.proxy(alice, **kwargs)
    subject = certs_of(proxy)[0].subject
    if last_cn is not None:
        assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[-1].value == last_cn
    identity = verifier.identify(der_chain(proxy))
    assert (identity.dn, identity.proxy_depth, identity.fqans) == (ALICE, 1, ("/dteam",))


@pytest.mark.parametrize("depth", [2, 3])
def test_proxies_of_proxies(pki: Pki, verifier: X509Verifier, alice: User, depth: int) -> None:
    proxy = pki.proxy(alice, fqans=("/dteam", "/dteam/Role=production"), depth=depth)
    chain = certs_of(proxy)
    assert len(chain) == depth + 1
    identity = verifier.identify(der_chain(proxy))
    assert (identity.dn, identity.proxy_depth) == (ALICE, depth)
    # The AC sits in the first proxy, below the delegated ones: still found.
    assert identity.fqans == ("/dteam", "/dteam/Role=production")
    assert identity.not_after == min(c.not_valid_after_utc.timestamp() for c in chain)


def test_max_proxy_depth(pki: Pki, alice: User) -> None:
    deep = der_chain(pki.proxy(alice, depth=3))
    strict = X509Verifier(str(pki.ca_dir), str(pki.vomsdir), max_proxy_depth=2)
    with pytest.raises(X509Error, match=f"^3 proxies above {ALICE}, more than the 2 allowed$"):
        strict.identify(deep)
    assert X509Verifier(str(pki.ca_dir), str(pki.vomsdir), max_proxy_depth=3).identify(deep)
    with pytest.raises(X509Error, match="1 proxies above"):
        X509Verifier(str(pki.ca_dir), str(pki.vomsdir), max_proxy_depth=0).identify(deep[2:])


def test_proxy_path_length_constraint(
    pki: Pki, verifier: X509Verifier, alice: User, tmp_path: Path
) -> None:
    # voms-proxy-fake writes a path length of 1: one proxy below it is fine, two are not.
    first = pki.proxy(alice, vo=None)
    second, third = tmp_path / "second.pem", tmp_path / "third.pem"
    delegate(first, second)
    delegate(second, third)
    assert verifier.identify(der_chain(second)).proxy_depth == 2
    with pytest.raises(X509Error, match=r"allows 1 proxies below it, the chain has 2$"):
        verifier.identify(der_chain(third))
    # A path length of 0: no proxy below at all.
    top = make_proxy(certs_of(alice.cert)[0], user_key(alice), pci=PATH_LEN_0)
    below = make_proxy(top, spare_key())
    with pytest.raises(X509Error, match="allows 0 proxies below it, the chain has 1"):
        verifier.identify(der(below, top, *certs_of(alice.cert)))


def test_expired_proxy_names_itself(pki: Pki, verifier: X509Verifier, alice: User) -> None:
    proxy = pki.proxy(alice, expired=True)
    end = certs_of(proxy)[0].not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    with pytest.raises(X509Error, match=rf"^proxy {ALICE}/CN=\d+ expired at {end}$"):
        verifier.identify(der_chain(proxy))
    # Judged at a time the proxy was valid, it is fine.
    start = certs_of(proxy)[0].not_valid_before_utc.timestamp()
    assert verifier.identify(der_chain(proxy), now=start + 60).dn == ALICE


def test_expired_user_certificate(pki: Pki, verifier: X509Verifier) -> None:
    olga = pki.user("olga", expired=True)
    with pytest.raises(X509Error, match=r"^client certificate .*CN=Olga Tester expired at 20"):
        verifier.identify(der_chain(olga.cert))


def test_revoked_user_is_refused_once_the_crl_is_there(pki: Pki) -> None:
    rex = pki.user("rex")
    proxy = der_chain(pki.proxy(rex, vo=None))
    fresh = X509Verifier(str(pki.ca_dir), str(pki.vomsdir), check_interval=0)
    assert fresh.identify(proxy).dn == rex.dn
    pki.revoke(rex)
    with pytest.raises(X509Error, match=f"^certificate {rex.dn} revoked by its CA$"):
        fresh.identify(proxy)
    with pytest.raises(X509Error, match="revoked"):
        fresh.identify(der_chain(rex.cert))
    assert fresh.identify(der_chain(pki.user("alice").cert)).dn == ALICE


def test_rogue_user_is_refused(pki: Pki, verifier: X509Verifier) -> None:
    mallory = pki.user("mallory", rogue=True)
    reason = "issuer /DC=org/DC=rogue/CN=se-test CA is not a trusted CA"
    with pytest.raises(X509Error, match=reason):
        verifier.identify(der_chain(pki.proxy(mallory, vo=None)))
    with pytest.raises(X509Error, match="self-signed and not a trusted CA"):
        verifier.identify(der_chain(mallory.cert) + der(pki.rogue.cert))


def test_broken_proxy_signature(
    pki: Pki, verifier: X509Verifier, alice: User, alice_cert: x509.Certificate
) -> None:
    forged = make_proxy(alice_cert, user_key(pki.user("bob")))
    with pytest.raises(X509Error, match=f"^signature of proxy {ALICE}/CN=4242 does not verify$"):
        verifier.identify(der(forged, alice_cert))
    # The same proxy signed by Alice is fine: only the signature was wrong.
    assert verifier.identify(der(make_proxy(alice_cert, user_key(alice)), alice_cert)).dn == ALICE


@pytest.mark.parametrize(
    "subject",
    [
        dn_of("Alice Tester", "1", "2"),  # two RDNs more
        dn_of("Bob Tester", "1"),  # another user's name
        dn_of("Alice Tester"),  # no RDN more (and not a legacy proxy name either)
        x509.Name([*dn_of("Alice Tester"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "1")]),
    ],
    ids=["two-more", "other-base", "same", "not-cn"],
)
def test_wrong_proxy_subject(
    verifier: X509Verifier,
    alice: User,
    alice_cert: x509.Certificate,
    subject: x509.Name,
) -> None:
    proxy = make_proxy(alice_cert, user_key(alice), subject=subject)
    with pytest.raises(X509Error, match=r"is not named after its issuer plus one CN$"):
        verifier.identify(der(proxy, alice_cert))


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"pci": INDEPENDENT}, "has policy language 1.3.6.1.5.5.7.21.2, not one that inherits"),
        ({"pci": UNKNOWN_POLICY}, "has policy language 1.2.3.4"),
        ({"pci_critical": False}, "ProxyCertInfo is not marked critical"),
        ({"pci": b"\x30\x03\x02\x01\x01"}, "malformed ProxyCertInfo"),
        ({"ca": True}, "claims to be a CA"),
    ],
    ids=["independent", "unknown-policy", "not-critical", "malformed", "ca"],
)
def test_proxy_cert_info_and_constraints(
    verifier: X509Verifier,
    alice: User,
    alice_cert: x509.Certificate,
    options: dict[str, Any],
    reason: str,
) -> None:
    proxy = make_proxy(alice_cert, user_key(alice), **options)
    with pytest.raises(X509Error, match=reason):
        verifier.identify(der(proxy, alice_cert))


def test_issuer_key_usage_must_allow_signing(pki: Pki, verifier: X509Verifier) -> None:
    key = spare_key()
    now = dt.datetime.now(dt.UTC)
    no_sign = (
        x509.CertificateBuilder()
        .subject_name(dn_of("Nosign Tester"))
        .issuer_name(pki.ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.KeyUsage(False, False, True, False, False, False, False, False, False), True
        )
        .sign(pki.ca.key, hashes.SHA256())
    )
    assert verifier.identify(der(no_sign)).dn == "/DC=org/DC=se-test/CN=Nosign Tester"
    with pytest.raises(X509Error, match="Nosign Tester may not sign proxies"):
        verifier.identify(der(make_proxy(no_sign, key), no_sign))


def test_chains_that_are_no_client_chains(
    pki: Pki, verifier: X509Verifier, alice: User, alice_cert: x509.Certificate
) -> None:
    with pytest.raises(X509Error, match=r"^no client certificate$"):
        verifier.identify([])
    with pytest.raises(X509Error, match="cannot be read"):
        verifier.identify([b"\x30\x03\x02\x01\x01"])
    with pytest.raises(X509Error, match="/DC=org/DC=se-test/CN=se-test CA is a CA certificate"):
        verifier.identify(der(pki.ca.cert))
    proxy = certs_of(pki.proxy(alice, vo=None))[0]
    with pytest.raises(X509Error, match=f"chain of {ALICE}/CN=\\d+ holds proxies but not"):
        verifier.identify(der(proxy))
    # A proxy whose issuer is missing from the chain (the next one is someone else).
    bob = certs_of(pki.user("bob").cert)[0]
    with pytest.raises(X509Error, match="not named after its issuer"):
        verifier.identify(der(proxy, bob))


def test_a_malformed_extension_is_refused(
    verifier: X509Verifier, alice: User, alice_cert: x509.Certificate
) -> None:
    junk = x509.UnrecognizedExtension(x509.KeyUsage.oid, b"junk")
    proxy = make_proxy(alice_cert, user_key(alice), extensions=[junk])
    with pytest.raises(X509Error, match=f"certificate {ALICE}/CN=4242 has malformed extensions"):
        verifier.identify(der(proxy, alice_cert))


def test_intermediate_ca_sent_by_the_client(pki: Pki, verifier: X509Verifier) -> None:
    sub = make_ca(dn_of("se-test Sub CA"), pki.ca)
    key = spare_key()
    ivy = sub.issue(dn_of("Ivy Tester"), key)
    proxy = make_proxy(ivy, key)
    identity = verifier.identify(der(proxy, ivy, sub.cert, pki.ca.cert))
    assert (identity.dn, identity.issuer_dn) == (
        "/DC=org/DC=se-test/CN=Ivy Tester",
        "/DC=org/DC=se-test/CN=se-test Sub CA",
    )
    with pytest.raises(X509Error, match="Sub CA is not a trusted CA"):
        verifier.identify(der(proxy, ivy))


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"ac_expired": True}, "VOMS attributes expired at"),
        ({"tamper_ac": True}, "AC signature does not verify"),
        ({"voms": "unlisted"}, "is not listed in"),
        ({"voms": "rogue"}, "is not a trusted CA"),
        ({"targets": ("elsewhere.example.org",)}, "restricted to other hosts"),
    ],
    ids=["expired", "tampered", "unlisted", "rogue", "targets"],
)
def test_a_bad_ac_leaves_the_dn_without_fqans(
    pki: Pki, verifier: X509Verifier, alice: User, kwargs: dict[str, Any], problem: str
) -> None:
    proxy = pki.proxy(alice, fqans=("/dteam/Role=production",), **kwargs)
    identity = verifier.identify(der_chain(proxy))
    assert (identity.dn, identity.proxy_depth, identity.vo, identity.fqans) == (ALICE, 1, "", ())
    assert problem in identity.ac_problem
    # The identity ends with the proxy, not with an AC that was not used.
    assert identity.not_after == certs_of(proxy)[0].not_valid_after_utc.timestamp()


def test_an_ac_of_another_user_is_not_taken(pki: Pki, verifier: X509Verifier, alice: User) -> None:
    identity = verifier.identify(der_chain(pki.proxy(alice, ac_of=pki.user("bob"))))
    assert identity.dn == ALICE and identity.fqans == ()
    assert "issued to another certificate than" in identity.ac_problem


def test_targets_naming_this_server(pki: Pki, verifier: X509Verifier, alice: User) -> None:
    proxy = pki.proxy(alice, targets=("se.example.org", "localhost"))
    assert verifier.identify(der_chain(proxy)).fqans == ("/dteam",)


def test_a_malformed_voms_extension_is_an_ac_problem(
    verifier: X509Verifier, alice: User, alice_cert: x509.Certificate
) -> None:
    junk = x509.UnrecognizedExtension(VOMS_EXTENSION_OID, b"\x30\x03\x02\x01\x01")
    proxy = make_proxy(alice_cert, user_key(alice), extensions=[junk])
    identity = verifier.identify(der(proxy, alice_cert))
    assert identity.dn == ALICE and identity.fqans == ()
    assert identity.ac_problem.startswith("malformed VOMS extension")


def test_the_leaf_most_ac_counts(pki: Pki, verifier: X509Verifier, alice: User) -> None:
    atlas_value = voms_extension(certs_of(pki.proxy(alice, vo="atlas", fqans=("/atlas",)))[0])
    assert atlas_value is not None
    # A proxy of a dteam proxy carrying an atlas AC (as voms-proxy-init on a proxy makes).
    top_file = pki.proxy(alice, fqans=("/dteam",))
    top_key = serialization.load_pem_private_key(top_file.read_bytes(), password=None)
    assert isinstance(top_key, rsa.RSAPrivateKey)
    top, eec = certs_of(top_file)
    leaf = make_proxy(
        top, top_key, extensions=[x509.UnrecognizedExtension(VOMS_EXTENSION_OID, atlas_value)]
    )
    identity = verifier.identify(der(leaf, top, eec))
    assert (identity.proxy_depth, identity.vo, identity.fqans) == (2, "atlas", ("/atlas",))
    # Without it, the dteam AC below is found.
    assert verifier.identify(der(make_proxy(top, top_key), top, eec)).vo == "dteam"


def test_an_ac_in_the_end_entity_certificate(
    pki: Pki, verifier: X509Verifier, tmp_path: Path
) -> None:
    """The AC may sit in the user certificate itself (holder: its issuer and serial)."""
    dora = pki.user("dora")
    value = voms_extension(certs_of(pki.proxy(dora, fqans=("/dteam", "/dteam/eec")))[0])
    assert value is not None
    original = certs_of(dora.cert)[0]
    builder = (
        x509.CertificateBuilder()
        .subject_name(original.subject)
        .issuer_name(original.issuer)
        .public_key(original.public_key())
        .serial_number(original.serial_number)
        .not_valid_before(original.not_valid_before_utc)
        .not_valid_after(original.not_valid_after_utc)
        .add_extension(x509.UnrecognizedExtension(VOMS_EXTENSION_OID, value), critical=False)
    )
    for extension in original.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    with_ac = builder.sign(pki.ca.key, hashes.SHA256())
    identity = verifier.identify(der(with_ac))
    assert (identity.dn, identity.proxy_depth) == (dora.dn, 0)
    assert identity.fqans == ("/dteam", "/dteam/eec")


def test_constructor_checks(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="crl_mode"):
        X509Verifier(str(pki.ca_dir), str(pki.vomsdir), crl_mode="sometimes")
    with pytest.raises(FileNotFoundError):
        X509Verifier(str(tmp_path / "nowhere"), str(pki.vomsdir))
    ca_dir = tmp_path / "certificates"
    shutil.copytree(pki.ca_dir, ca_dir, ignore=shutil.ignore_patterns("*.r0"))
    strict = X509Verifier(str(ca_dir), str(pki.vomsdir), crl_mode="require")
    with pytest.raises(X509Error, match="no CRL of CA"):
        strict.identify(der_chain(pki.user("alice").cert))


# ----------------------------------------------------------------------------- TLS


def test_configure_server_context_flags(pki: Pki) -> None:
    for mode, verify_mode in (("optional", ssl.CERT_OPTIONAL), ("required", ssl.CERT_REQUIRED)):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
        configure_server_context(ctx, str(pki.ca_dir), mode)
        assert ctx.verify_mode == verify_mode
        assert ctx.verify_flags & ssl.VERIFY_ALLOW_PROXY_CERTS
        assert ctx.verify_flags & 0x200000  # X509_V_FLAG_NO_CHECK_TIME
        assert not ctx.verify_flags & (ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT)
        assert ctx.options & ssl.OP_NO_TICKET and ctx.num_tickets == 1
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    configure_server_context(plain, str(pki.ca_dir), "none")
    assert plain.verify_mode == ssl.CERT_NONE and plain.num_tickets == 2  # untouched
    with pytest.raises(ValueError, match="not none, optional or required"):
        configure_server_context(plain, str(pki.ca_dir), "yes")
    with pytest.raises(ValueError, match="PROTOCOL_TLS_SERVER context"):
        configure_server_context(
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), str(pki.ca_dir), "optional"
        )
    assert peer_chain(None) == []


class TlsServer:
    """An asyncio TLS server on 127.0.0.1 in a thread; for every connection it reads one
    HTTP request and answers with JSON of what the server side saw: the peer chain's
    length, whether the session was resumed, and the identity (or the X509Error)."""

    def __init__(self, ctx: ssl.SSLContext, verifier: X509Verifier) -> None:
        self.ctx = ctx
        self.verifier = verifier
        self.records: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        start = asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ctx)
        self.server = self.loop.run_until_complete(start)
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            ssl_object = writer.get_extra_info("ssl_object")
            chain = peer_chain(ssl_object)
            record: dict[str, Any] = {
                "chain": len(chain),
                "reused": ssl_object.session_reused,
                "version": ssl_object.version(),
            }
            if chain:
                try:
                    identity = self.verifier.identify(chain)
                except X509Error as exc:
                    record["error"] = str(exc)
                else:
                    record.update(
                        dn=identity.dn, fqans=list(identity.fqans), depth=identity.proxy_depth
                    )
            self.records.append(record)
            body = json.dumps(record).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            writer.close()

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def tls_server(pki: Pki, verifier: X509Verifier) -> Iterator[Callable[..., TlsServer]]:
    """TLS servers by client_certs mode (one each, made when first asked for)."""
    servers: dict[tuple[str, bool], TlsServer] = {}

    def get(mode: str, *, tickets: bool = False) -> TlsServer:
        if (mode, tickets) not in servers:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(pki.host_cert, pki.host_key)
            configure_server_context(ctx, str(pki.ca_dir), mode)
            if tickets:  # undo the resumption decision, to show why it was taken
                ctx.options &= ~ssl.OP_NO_TICKET
                ctx.num_tickets = 2
            servers[mode, tickets] = TlsServer(ctx, verifier)
        return servers[mode, tickets]

    yield get
    for server in servers.values():
        server.stop()


def client_context(
    pki: Pki, cert: Path | None = None, key: Path | None = None, version: str | None = None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=pki.ca_cert)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    if version is not None:
        ctx.maximum_version = ctx.minimum_version = ssl.TLSVersion[version]
    return ctx


def fetch(
    server: TlsServer, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[dict[str, Any], ssl.SSLSession | None, bool]:
    """One request: the server's JSON answer, the client's session and whether it was
    resumed.  A connection closed without an answer raises ConnectionError."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        new_session, reused = tls.session, bool(tls.session_reused)
    if not data:
        raise ConnectionError("closed without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    answer: dict[str, Any] = json.loads(body)
    return answer, new_session, reused


def test_tls_proxy_from_python_ssl(
    pki: Pki, tls_server: Callable[..., TlsServer], alice: User
) -> None:
    proxy = pki.proxy(alice, fqans=("/dteam/Role=production", "/dteam"))
    for mode in ("optional", "required"):
        answer, *_ = fetch(tls_server(mode), client_context(pki, proxy))
        # The verified chain: proxy, user certificate, and the CA from the directory.
        assert answer["chain"] == 3
        assert (answer["dn"], answer["depth"]) == (ALICE, 1)
        assert answer["fqans"] == ["/dteam/Role=production", "/dteam"]


def test_tls_user_certificate_and_deeper_proxies(
    pki: Pki, tls_server: Callable[..., TlsServer], alice: User
) -> None:
    server = tls_server("optional")
    answer, *_ = fetch(server, client_context(pki, alice.cert, alice.key))
    assert (answer["chain"], answer["dn"], answer["depth"], answer["fqans"]) == (2, ALICE, 0, [])
    answer, *_ = fetch(server, client_context(pki, pki.proxy(alice, depth=2)))
    assert (answer["chain"], answer["depth"], answer["fqans"]) == (4, 2, ["/dteam"])


def test_tls_proxy_from_curl(pki: Pki, tls_server: Callable[..., TlsServer], alice: User) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    server = tls_server("optional")

    def curl(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "20", "--cacert", str(pki.ca_cert)]
            + ["--resolve", f"localhost:{server.port}:127.0.0.1"]
            + [str(a) for a in args]
            + [f"https://localhost:{server.port}/"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    proxy = pki.proxy(alice, fqans=("/dteam", "/dteam/Role=production"))
    res = curl("--cert", proxy, "--key", proxy)
    assert res.returncode == 0, res.stderr
    answer = json.loads(res.stdout)
    assert (answer["dn"], answer["fqans"]) == (ALICE, ["/dteam", "/dteam/Role=production"])
    # An expired proxy gets through the handshake and is refused with its reason.
    expired = pki.proxy(alice, expired=True)
    res = curl("--cert", expired, "--key", expired)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["error"].startswith(f"proxy {ALICE}/CN=")
    # No certificate at all.
    res = curl()
    assert res.returncode == 0 and json.loads(res.stdout)["chain"] == 0


def handshake_refused(server: TlsServer, ctx: ssl.SSLContext) -> None:
    # TLS 1.3 clients learn of the refusal at their first read, after their handshake.
    before = len(server.records)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(server, ctx)
    assert len(server.records) == before  # no request was handled


def test_tls_rogue_user_is_refused_at_the_handshake(
    pki: Pki, tls_server: Callable[..., TlsServer]
) -> None:
    mallory = pki.user("mallory", rogue=True)
    handshake_refused(tls_server("optional"), client_context(pki, mallory.cert, mallory.key))
    proxy = pki.proxy(mallory, vo=None)
    handshake_refused(tls_server("optional"), client_context(pki, proxy))


def test_tls_legacy_and_draft_proxies_are_refused_by_openssl(
    pki: Pki, tls_server: Callable[..., TlsServer], alice: User
) -> None:
    """OpenSSL knows only RFC 3820 proxies (identify takes the others, see its docstring)."""
    for kind in ({"rfc": False}, {"proxyver": 3}):
        proxy = pki.proxy(alice, vo=None, **kind)
        handshake_refused(tls_server("optional"), client_context(pki, proxy))


def test_tls_expired_proxy_reaches_identify(
    pki: Pki, tls_server: Callable[..., TlsServer], alice: User
) -> None:
    answer, *_ = fetch(tls_server("required"), client_context(pki, pki.proxy(alice, expired=True)))
    assert answer["chain"] == 3
    assert answer["error"].startswith(f"proxy {ALICE}/CN=") and "expired at" in answer["error"]


def test_tls_without_a_client_certificate(
    pki: Pki, tls_server: Callable[..., TlsServer], alice: User
) -> None:
    answer, *_ = fetch(tls_server("optional"), client_context(pki))
    assert (answer["chain"], "dn" in answer) == (0, False)
    handshake_refused(tls_server("required"), client_context(pki))
    # With "none" the server never asks, so a client's certificate is not sent.
    answer, *_ = fetch(tls_server("none"), client_context(pki, alice.cert, alice.key))
    assert answer["chain"] == 0


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls_every_connection_has_the_chain_resumed_or_not(
    pki: Pki, tls_server: Callable[..., TlsServer], alice: User, version: str
) -> None:
    """Stateful tickets: TLS 1.2 (session ID) and TLS 1.3 (a ticket naming a cached
    session) resume from the server's session cache, whose session keeps the certificates
    the client sent (not the CA from the directory that the verified chain ends with)."""
    server = tls_server("optional")
    ctx = client_context(pki, pki.proxy(alice, depth=2), version=version)
    first, session, _ = fetch(server, ctx)
    second, _, reused = fetch(server, ctx, session=session)
    assert first["version"] == second["version"] == version.replace("_", ".")
    assert first["chain"] == 4 and not first["reused"]
    assert reused and second["reused"] and second["chain"] == 3
    assert (second["dn"], second["depth"], second["fqans"]) == (ALICE, 2, ["/dteam"])


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls_why_resumption_is_off(
    pki: Pki, tls_server: Callable[..., TlsServer], alice: User, version: str
) -> None:
    """With stateless session tickets (Python's default) a resumed session has lost the
    proxy chain: at most the leaf is left, and a proxy alone identifies nobody."""
    server = tls_server("optional", tickets=True)
    ctx = client_context(pki, pki.proxy(alice, depth=2), version=version)
    first, session, _ = fetch(server, ctx)
    second, _, reused = fetch(server, ctx, session=session)
    assert first["chain"] == 4 and not first["reused"]
    assert reused and second["reused"]
    assert second["chain"] <= 1 and "dn" not in second
