"""Delegated proxies: what a client leaves here (GridSite delegation) so that this server
can act as the client in a third-party copy where the other side issues no token.

A delegation has two steps, both over a TLS connection with the client's certificate:
the server makes a key pair and answers a certificate request for it (:meth:`request`);
the client signs that request with its own proxy and puts back the new proxy with its
chain (:meth:`put`).  The chain must verify as the caller's (same end-entity DN, trusted
CA, proxies valid, through :class:`~se.auth.x509.X509Verifier`) and the new certificate
must carry the key this server made.  The result is a proxy file (certificate, key,
chain; 0600) under the state directory, keyed by the DN and the client's delegation ID,
so that every worker of the server finds it.  Nothing is trusted until ``put`` accepts it.

Blocking (key generation, files): call it from a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from se.auth.x509 import X509Error, X509Identity, X509Verifier

__all__ = ["Delegated", "DelegationError", "DelegationStore", "default_id"]

KEY_BITS = 2048
MAX_CHAIN_BYTES = 64 << 10  # a proxy chain is a few KiB
MAX_CHAIN_CERTS = 12
MAX_PER_DN = 16  # delegations (pending or done) one DN may hold at once
PENDING_SECONDS = 3600.0  # a certificate request not answered within this is forgotten
MIN_LIFETIME = 120.0  # a delegated proxy with less left than this is refused or not used
_ID = re.compile(r"[\x21-\x7e]{1,128}")


class DelegationError(Exception):
    """A delegation call that cannot be served; the message is the one-line reason."""


def default_id(dn: str) -> str:
    """The delegation ID of a DN's default delegation (when the client names none)."""
    return hashlib.sha256(dn.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Delegated:
    """A usable delegated proxy: the file to present as a TLS client certificate."""

    path: Path
    not_after: float
    identity: str  # the DN it acts for


def _check_id(delegation_id: str) -> str:
    if _ID.fullmatch(delegation_id) is None:
        raise DelegationError("invalid delegation ID (1 to 128 printable ASCII characters)")
    return delegation_id


def _name(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class DelegationStore:
    """The delegations of all clients, under ``<state dir>/delegation``."""

    def __init__(self, directory: Path, verifier: X509Verifier) -> None:
        self.directory = directory
        self.verifier = verifier

    def _dir(self, dn: str) -> Path:
        return self.directory / _name(dn)

    def _files(self, dn: str, delegation_id: str) -> tuple[Path, Path]:
        stem = self._dir(dn) / _name(_check_id(delegation_id))
        return stem.with_suffix(".key"), stem.with_suffix(".pem")

    def _sweep(self, folder: Path, now: float) -> int:
        """Drop expired proxies and stale requests of one DN; the count of what remains."""
        left = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                path = Path(entry.path)
                try:
                    if entry.name.endswith(".key"):
                        stale = now - entry.stat().st_mtime > PENDING_SECONDS
                    elif entry.name.endswith(".pem"):
                        stale = _not_after(path) < now
                    else:
                        stale = entry.name.startswith(".tmp-")
                except (OSError, ValueError):
                    stale = True
                if stale:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                else:
                    left += 1
        return left

    def request(self, dn: str, delegation_id: str) -> str:
        """A new key pair for (dn, ID): the PEM certificate request the client signs."""
        key_file, proxy_file = self._files(dn, delegation_id)
        folder = key_file.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        new = not key_file.exists() and not proxy_file.exists()
        if new and self._sweep(folder, time.time()) >= MAX_PER_DN:
            raise DelegationError(
                f"too many delegations for {dn} (at most {MAX_PER_DN}); destroy one first"
            )
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxy")]))
            .sign(key, hashes.SHA256())
        )
        _write_private(
            key_file,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ),
        )
        return csr.public_bytes(serialization.Encoding.PEM).decode()

    def put(self, dn: str, delegation_id: str, chain_pem: str) -> X509Identity:
        """Accept the signed proxy (PEM, new certificate first, then its chain)."""
        key_file, proxy_file = self._files(dn, delegation_id)
        raw = chain_pem.encode("ascii", "replace")
        if len(raw) > MAX_CHAIN_BYTES:
            raise DelegationError(f"proxy chain larger than {MAX_CHAIN_BYTES} bytes")
        try:
            key_pem = key_file.read_bytes()
        except FileNotFoundError:
            raise DelegationError(
                f"no pending request for delegation ID {delegation_id!r}; get one first"
            ) from None
        try:
            certs = x509.load_pem_x509_certificates(raw)
        except ValueError:
            raise DelegationError("the proxy is not a PEM certificate chain") from None
        if len(certs) > MAX_CHAIN_CERTS:
            raise DelegationError(f"proxy chain of more than {MAX_CHAIN_CERTS} certificates")
        key = serialization.load_pem_private_key(key_pem, password=None)
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if certs[0].public_key().public_bytes(der, public) != key.public_key().public_bytes(
            der, public
        ):
            raise DelegationError("the proxy does not carry the key of this server's request")
        try:
            identity = self.verifier.identify([c.public_bytes(der) for c in certs])
        except X509Error as exc:
            raise DelegationError(f"delegated proxy refused: {exc}") from None
        if identity.proxy_depth < 1:
            raise DelegationError("the delegated certificate is not a proxy")
        if identity.dn != dn:
            raise DelegationError(
                f"the delegated proxy is of {identity.dn}, not of the caller {dn}"
            )
        if identity.not_after - time.time() < MIN_LIFETIME:
            raise DelegationError(
                f"the delegated proxy has less than {MIN_LIFETIME:g} s of life left"
            )
        pem = serialization.Encoding.PEM
        chain = b"".join(c.public_bytes(pem) for c in certs[1:])
        body = certs[0].public_bytes(pem) + key_pem + chain
        _write_private(proxy_file, body)
        with contextlib.suppress(FileNotFoundError):
            key_file.unlink()
        return identity

    def termination(self, dn: str, delegation_id: str) -> float:
        """When the delegated proxy (dn, ID) ends; DelegationError when there is none."""
        _, proxy_file = self._files(dn, delegation_id)
        try:
            not_after = _not_after(proxy_file)
        except (FileNotFoundError, ValueError):
            raise DelegationError(f"no delegated proxy with ID {delegation_id!r}") from None
        if not_after < time.time():
            raise DelegationError(f"the delegated proxy with ID {delegation_id!r} has expired")
        return not_after

    def destroy(self, dn: str, delegation_id: str) -> None:
        found = False
        for path in self._files(dn, delegation_id):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                found = True
        if not found:
            raise DelegationError(f"no delegation with ID {delegation_id!r}")

    def usable(self, dn: str, min_left: float = MIN_LIFETIME) -> Delegated | None:
        """The DN's delegated proxy that lasts longest, if one has ``min_left`` seconds."""
        best: Delegated | None = None
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._dir(dn)):
                if not entry.name.endswith(".pem"):
                    continue
                try:
                    not_after = _not_after(Path(entry.path))
                except (OSError, ValueError):
                    continue
                if not_after - now >= min_left and (best is None or not_after > best.not_after):
                    best = Delegated(Path(entry.path), not_after, dn)
        return best


def _not_after(proxy_file: Path) -> float:
    """The end of a stored proxy: the earliest end of the certificates in the file."""
    certs = x509.load_pem_x509_certificates(proxy_file.read_bytes())
    return min(c.not_valid_after_utc.timestamp() for c in certs)


def _write_private(path: Path, data: bytes) -> None:
    """Write a 0600 file atomically (temporary name, fsync, rename)."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
