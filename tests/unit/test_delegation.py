"""The delegated-proxy store (se.auth.delegation): what it takes, what it refuses, where it
keeps it.  Proxies are signed as davix's GRSTx509MakeProxyCert signs them (tests.pki)."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from se.auth import delegation
from se.auth.delegation import DelegationError, DelegationStore, default_id
from se.auth.x509 import X509Verifier
from se.tpc.remote import client_cert_context
from tests.pki import Pki, User, sign_proxy


@pytest.fixture
def store(pki: Pki, tmp_path: Path) -> DelegationStore:
    verifier = X509Verifier(str(pki.ca_dir), str(pki.vomsdir), max_proxy_depth=3)
    return DelegationStore(tmp_path / "delegation", verifier)


@pytest.fixture(scope="module")
def alice(pki: Pki) -> User:
    return pki.user("alice")


@pytest.fixture(scope="module")
def alice_proxy(pki: Pki, alice: User) -> Path:
    return pki.proxy(alice, fqans=("/dteam",))


def answer(store: DelegationStore, dn: str, ident: str, signer: Path, **kw: object) -> str:
    csr = x509.load_pem_x509_csr(store.request(dn, ident).encode())
    return sign_proxy(signer, csr.public_key(), **kw).decode()  # type: ignore[arg-type]


def test_delegation_round_trip(store: DelegationStore, alice: User, alice_proxy: Path) -> None:
    chain = answer(store, alice.dn, "1234", alice_proxy)
    identity = store.put(alice.dn, "1234", chain)
    assert identity.dn == alice.dn and identity.proxy_depth == 2
    assert identity.fqans == ("/dteam",)
    found = store.usable(alice.dn)
    assert found is not None and found.identity == alice.dn
    assert found.path.stat().st_mode & 0o777 == 0o600
    assert found.path.parent.stat().st_mode & 0o777 == 0o700
    assert list(found.path.parent.glob("*.key")) == []  # the pending key became the proxy's
    certs = x509.load_pem_x509_certificates(found.path.read_bytes())
    assert len(certs) == 3 and b"PRIVATE KEY" in found.path.read_bytes()
    ends = min(c.not_valid_after_utc.timestamp() for c in certs)
    assert store.termination(alice.dn, "1234") == ends == found.not_after
    # The file is what an ssl client context takes as its certificate.
    assert isinstance(client_cert_context(False, "", str(found.path)), ssl.SSLContext)
    assert store.usable("/DC=org/DC=se-test/CN=Bob Tester") is None
    store.destroy(alice.dn, "1234")
    assert store.usable(alice.dn) is None
    with pytest.raises(DelegationError, match="no delegated proxy with ID '1234'"):
        store.termination(alice.dn, "1234")
    with pytest.raises(DelegationError, match="no delegation with ID '1234'"):
        store.destroy(alice.dn, "1234")


def test_put_without_a_request(store: DelegationStore, alice: User, alice_proxy: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    chain = sign_proxy(alice_proxy, key.public_key()).decode()
    with pytest.raises(DelegationError, match="no pending request for delegation ID 'x'"):
        store.put(alice.dn, "x", chain)


def test_put_of_another_key(store: DelegationStore, alice: User, alice_proxy: Path) -> None:
    store.request(alice.dn, "x")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    chain = sign_proxy(alice_proxy, key.public_key()).decode()
    with pytest.raises(DelegationError, match="does not carry the key of this server's request"):
        store.put(alice.dn, "x", chain)
    assert store.usable(alice.dn) is None


def test_proxy_of_someone_else(
    store: DelegationStore, pki: Pki, alice: User, alice_proxy: Path
) -> None:
    bob = pki.user("bob")
    chain = answer(store, bob.dn, "x", alice_proxy)
    with pytest.raises(DelegationError, match=f"is of {alice.dn}, not of the caller {bob.dn}"):
        store.put(bob.dn, "x", chain)
    assert store.usable(bob.dn) is None and store.usable(alice.dn) is None


@pytest.mark.parametrize("case", ["no-chain", "rogue", "expired", "garbage", "huge"])
def test_untrusted_proxies_are_refused(
    store: DelegationStore, pki: Pki, alice: User, alice_proxy: Path, case: str
) -> None:
    if case == "no-chain":
        chain = answer(store, alice.dn, "x", alice_proxy, signer_chain=False)
        reason = "holds proxies but not the certificate they were made from"
    elif case == "rogue":
        rogue = pki.user("mallory", rogue=True)
        chain = answer(store, rogue.dn, "x", pki.proxy(rogue, vo=None))
        alice_dn = rogue.dn
        reason = "delegated proxy refused: .*(not trusted|issuer)"
    elif case == "expired":
        chain = answer(store, alice.dn, "x", alice_proxy, hours=-0.05)
        reason = "delegated proxy refused: .*expired"
    elif case == "garbage":
        store.request(alice.dn, "x")
        chain, reason = "-----BEGIN CERTIFICATE-----\nAAAA\n", "not a PEM certificate chain"
    else:
        store.request(alice.dn, "x")
        chain, reason = "A" * (delegation.MAX_CHAIN_BYTES + 1), "larger than"
    dn = alice_dn if case == "rogue" else alice.dn
    with pytest.raises(DelegationError, match=reason):
        store.put(dn, "x", chain)
    assert store.usable(dn) is None


def test_short_lived_proxies_are_refused(
    store: DelegationStore, alice: User, alice_proxy: Path
) -> None:
    chain = answer(store, alice.dn, "x", alice_proxy, hours=1 / 60)
    with pytest.raises(DelegationError, match="less than 120 s of life left"):
        store.put(alice.dn, "x", chain)


def test_ids_and_limits(store: DelegationStore, alice: User, alice_proxy: Path) -> None:
    for bad in ("", "a b", "x" * 129, "\u00e9"):
        with pytest.raises(DelegationError, match="invalid delegation ID"):
            store.request(alice.dn, bad)
    assert default_id(alice.dn) == default_id(alice.dn) != default_id(alice.dn + "x")
    for i in range(delegation.MAX_PER_DN):
        store.request(alice.dn, f"id-{i}")
    with pytest.raises(DelegationError, match="too many delegations"):
        store.request(alice.dn, "one-more")
    store.request(alice.dn, "id-0")  # a renewal of a known ID is not one more
    store.destroy(alice.dn, "id-0")
    store.request(alice.dn, "one-more")


def test_stale_requests_and_expired_proxies_are_swept(
    store: DelegationStore, alice: User, alice_proxy: Path
) -> None:
    chain = answer(store, alice.dn, "kept", alice_proxy)
    store.put(alice.dn, "kept", chain)
    store.request(alice.dn, "stale")
    folder = next(store.directory.iterdir())
    (stale,) = folder.glob("*.key")
    old = time.time() - delegation.PENDING_SECONDS - 10
    os.utime(stale, (old, old))
    (folder / ".tmp-1-x.pem").write_bytes(b"half")
    for i in range(delegation.MAX_PER_DN - 1):
        store.request(alice.dn, f"n{i}")  # the stale request and the temp file were swept
    assert not stale.exists() and not (folder / ".tmp-1-x.pem").exists()
    assert store.usable(alice.dn) is not None
    assert store.usable(alice.dn, min_left=1e9) is None
