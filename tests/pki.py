"""A throwaway grid PKI for the X.509/VOMS tests: a CA in a hashed CA directory (with a CRL
once something is revoked), a rogue CA nobody trusts, a host certificate for localhost,
users, VOMS server certificates with their ``.lsc`` files, and proxies.

VOMS proxies are made by Debian's ``voms-proxy-fake`` (voms-clients), so their bytes are what
real VOMS clients send; the cases it cannot make (a tampered AC in a validly signed proxy) are
made with ``cryptography`` from one of its proxies.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["VOMS_HOST", "VOMS_PORT", "Pki", "User", "build_pki", "dn_of"]

VOMS_HOST = "voms.se-test.org"
VOMS_PORT = 15000
_VOMS_OID = x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
_DAY = dt.timedelta(days=1)


def dn_of(*cns: str, org: str = "se-test") -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"),
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, org),
    ]
    attrs += [x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns]
    return x509.Name(attrs)


def _slash(name: x509.Name) -> str:
    short = {NameOID.DOMAIN_COMPONENT: "DC", NameOID.COMMON_NAME: "CN"}
    return "".join(f"/{short[a.oid]}={a.value!s}" for a in name)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class _Authority:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    def issue(
        self,
        subject: x509.Name,
        key: rsa.RSAPrivateKey,
        *,
        server: str | None = None,
        client: bool = True,
        expired: bool = False,
        serial: int | None = None,
    ) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        start, end = (now - 30 * _DAY, now - _DAY) if expired else (now - _DAY, now + 365 * _DAY)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(server),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("::1")),
                    ]
                ),
                critical=False,
            )
        return builder.sign(self.key, hashes.SHA256())


def _make_ca(subject: x509.Name) -> _Authority:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 3650 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return _Authority(cert, key)


def _subject_hash(pem: Path) -> str:
    res = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pem)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return res.stdout.strip()


@dataclass(frozen=True)
class User:
    name: str
    cert: Path
    key: Path
    dn: str  # slash form
    serial: int


@dataclass
class Pki:
    root: Path
    ca_dir: Path
    vomsdir: Path
    host_cert: Path
    host_key: Path
    ca_cert: Path
    rogue_ca_dir: Path
    _ca: _Authority
    _rogue: _Authority
    _voms: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    _users: dict[str, User] = field(default_factory=dict)
    _revoked: set[int] = field(default_factory=set)
    _count: int = 0

    # -- people ------------------------------------------------------------------------

    def user(self, name: str, *, rogue: bool = False, expired: bool = False) -> User:
        """A user certificate (created once per name) issued by the CA (or the rogue one)."""
        known = self._users.get(name)
        if known is not None:
            return known
        folder = self.root / "users" / name
        folder.mkdir(parents=True)
        key = _key()
        subject = dn_of(f"{name.title()} Tester")
        cert = (self._rogue if rogue else self._ca).issue(subject, key, expired=expired)
        (folder / "usercert.pem").write_bytes(_pem(cert))
        _write_key(folder / "userkey.pem", key)
        user = User(
            name,
            folder / "usercert.pem",
            folder / "userkey.pem",
            _slash(subject),
            cert.serial_number,
        )
        self._users[name] = user
        return user

    def revoke(self, user: User) -> None:
        """(Re)write the CA's CRL in the CA directory, listing ``user`` too."""
        self._revoked.add(user.serial)
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._ca.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + 7 * _DAY)
        )
        for serial in sorted(self._revoked):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - dt.timedelta(minutes=5))
                .build()
            )
        crl = builder.sign(self._ca.key, hashes.SHA256())
        target = self.ca_dir / f"{_subject_hash(self.ca_cert)}.r0"
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, target)  # as fetch-crl does

    # -- proxies -----------------------------------------------------------------------

    def proxy(
        self,
        user: User,
        *,
        vo: str | None = "dteam",
        fqans: Sequence[str] = ("/dteam",),
        hours: float = 12,
        ac_hours: float = 12,
        expired: bool = False,
        ac_expired: bool = False,
        voms: str = "good",
        rfc: bool = True,
        limited: bool = False,
        depth: int = 1,
        tamper_ac: bool = False,
    ) -> Path:
        """A proxy file as X509_USER_PROXY holds it (proxy cert, its key, the chain down to
        the user certificate).  ``vo=None``: no VOMS attributes.  ``voms``: "good", or
        "unlisted" (a VOMS server of the CA that no .lsc names), or "rogue" (the good
        server's name, certified by the rogue CA).  ``depth`` > 1: proxies of the proxy."""
        self._count += 1
        out = self.root / "proxies" / f"{user.name}-{self._count}.pem"
        out.parent.mkdir(exist_ok=True)
        args = [
            "voms-proxy-fake",
            "-q",
            "-cert",
            str(user.cert),
            "-key",
            str(user.key),
            "-certdir",
            str(self.ca_dir),
            "-out",
            str(out),
            "-hours",
            str(max(1, round(hours))),
            "-bits",
            "2048",
        ]
        if rfc:
            args.append("-rfc")
        if limited:
            args.append("-limited")
        if depth > 1:
            # voms-proxy-fake writes a path length constraint of 1 unless told otherwise.
            args += ["-path-length", str(depth)]
        if expired:
            args += ["-hours", "1", "-pastproxy", "2:00"]
        if vo is not None:
            host_cert, host_key = self._voms_cert(voms)
            args += ["-voms", vo, "-uri", f"{VOMS_HOST}:{VOMS_PORT}"]
            args += ["-hostcert", str(host_cert), "-hostkey", str(host_key)]
            args += ["-vomslife", str(max(1, round(ac_hours)))]
            for fqan in fqans:
                args += ["-fqan", fqan]
            if ac_expired:
                args += ["-vomslife", "1", "-pastac", "2:00"]
        _run(args)
        if tamper_ac:
            _tamper_ac(out, user)
        for level in range(1, depth):
            deeper = out.with_name(f"{out.stem}-d{level + 1}.pem")
            _delegate(out, deeper)
            out = deeper
        out.chmod(0o600)
        return out

    def _voms_cert(self, kind: str) -> tuple[Path, Path]:
        """The certificate and key of a VOMS server: "good" (listed in the .lsc), "unlisted",
        "rogue" (the good name, issued by the rogue CA)."""
        known = self._voms.get(kind)
        if known is not None:
            return known
        folder = self.root / "voms" / kind
        folder.mkdir(parents=True)
        key = _key()
        name = VOMS_HOST if kind != "unlisted" else "voms-unlisted.se-test.org"
        authority = self._rogue if kind == "rogue" else self._ca
        cert = authority.issue(dn_of(name), key, server=name, client=False)
        (folder / "hostcert.pem").write_bytes(_pem(cert))
        _write_key(folder / "hostkey.pem", key)
        self._voms[kind] = (folder / "hostcert.pem", folder / "hostkey.pem")
        return self._voms[kind]


def _run(args: list[str]) -> None:
    res = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {res.returncode}: {res.stdout} {res.stderr}")


def _tamper_ac(path: Path, user: User) -> None:
    """Change one FQAN byte inside the proxy's AC and sign the proxy again with the user's
    key: a proxy the TLS layer accepts whose AC signature no longer verifies."""
    data = path.read_bytes()
    certs = x509.load_pem_x509_certificates(data)
    proxy = certs[0]
    proxy_key = serialization.load_pem_private_key(data, password=None)
    ext = proxy.extensions.get_extension_for_oid(_VOMS_OID)
    raw = ext.value.value  # type: ignore[attr-defined]
    index = raw.find(b"/dteam")
    assert index >= 0, "no FQAN to tamper with"
    changed = raw[: index + 1] + b"D" + raw[index + 2 :]
    builder = (
        x509.CertificateBuilder()
        .subject_name(proxy.subject)
        .issuer_name(proxy.issuer)
        .public_key(proxy.public_key())
        .serial_number(proxy.serial_number)
        .not_valid_before(proxy.not_valid_before_utc)
        .not_valid_after(proxy.not_valid_after_utc)
    )
    for extension in proxy.extensions:
        value = extension.value
        if extension.oid == _VOMS_OID:
            value = x509.UnrecognizedExtension(_VOMS_OID, changed)
        builder = builder.add_extension(value, extension.critical)
    user_key = serialization.load_pem_private_key(user.key.read_bytes(), password=None)
    signed = builder.sign(user_key, hashes.SHA256())  # type: ignore[arg-type]
    key_pem = proxy_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path.write_bytes(_pem(signed) + key_pem + b"".join(_pem(c) for c in certs[1:]))


# ProxyCertInfo (RFC 3820) with the inherit-all policy and no path length limit.
_PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
_INHERIT_ALL = bytes.fromhex("300c300a06082b06010505071501")


def _delegate(signer_file: Path, out: Path) -> None:
    """A proxy of the proxy in ``signer_file`` (as a delegation to a service makes one)."""
    data = signer_file.read_bytes()
    chain = x509.load_pem_x509_certificates(data)
    signer_key = serialization.load_pem_private_key(data, password=None)
    signer = chain[0]
    key = _key()
    serial = x509.random_serial_number() >> 128
    subject = x509.Name([*signer.subject, x509.NameAttribute(NameOID.COMMON_NAME, str(serial))])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(hours=6), signer.not_valid_after_utc))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.UnrecognizedExtension(_PROXY_CERT_INFO, _INHERIT_ALL), critical=True)
        .sign(signer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    out.write_bytes(_pem(cert) + key_pem + b"".join(_pem(c) for c in chain))
    out.chmod(0o600)


def _hashed_dir(folder: Path, ca: _Authority) -> Path:
    folder.mkdir(parents=True)
    pem = folder / "ca.pem.tmp"
    pem.write_bytes(_pem(ca.cert))
    shutil.move(pem, folder / f"{_subject_hash(pem)}.0")
    return folder


def build_pki(root: Path) -> Pki:
    """The CA, the rogue CA, the host certificate and the vomsdir, under ``root``."""
    ca = _make_ca(dn_of("se-test CA"))
    rogue = _make_ca(dn_of("se-test CA", org="rogue"))
    ca_cert = root / "ca.pem"
    ca_cert.write_bytes(_pem(ca.cert))
    ca_dir = _hashed_dir(root / "certificates", ca)
    rogue_dir = _hashed_dir(root / "rogue-certificates", rogue)
    host_key = _key()
    host = ca.issue(dn_of("localhost"), host_key, server="localhost")
    (root / "host").mkdir()
    (root / "host" / "hostcert.pem").write_bytes(_pem(host))
    _write_key(root / "host" / "hostkey.pem", host_key)
    vomsdir = root / "vomsdir"
    lsc = f"{_slash(dn_of(VOMS_HOST))}\n{_slash(ca.cert.subject)}\n"
    for vo in ("dteam", "atlas"):
        (vomsdir / vo).mkdir(parents=True)
        (vomsdir / vo / f"{VOMS_HOST}.lsc").write_text(lsc)
    return Pki(
        root=root,
        ca_dir=ca_dir,
        vomsdir=vomsdir,
        host_cert=root / "host" / "hostcert.pem",
        host_key=root / "host" / "hostkey.pem",
        ca_cert=ca_cert,
        rogue_ca_dir=rogue_dir,
        _ca=ca,
        _rogue=rogue,
    )
