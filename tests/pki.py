"""A throwaway grid PKI for the X.509/VOMS tests: a CA in a hashed CA directory (with a CRL
once something is revoked), a rogue CA nobody trusts, a host certificate for localhost,
users, VOMS server certificates with their ``.lsc`` files, and proxies.

VOMS proxies are made by Debian's ``voms-proxy-fake`` (voms-clients), so their bytes are what
real VOMS clients send.  What it cannot make is made with ``cryptography``/``asn1crypto``
from one of its proxies: proxies of proxies (``depth``), a tampered AC in a validly signed
proxy, an AC transplanted from another user's proxy, and an AC with a targeting extension
(``voms-proxy-fake -target`` crashes), re-signed by the VOMS server's key.

Notes on voms-proxy-fake: proxies start 5 minutes in the past, ACs now; ``-hours`` and
``-vomslife`` take whole hours (given here as at least 1); ``-pastproxy``/``-pastac H:MM``
move the start back, which with a lifetime of one hour gives an expired proxy or AC;
without ``-rfc`` it still makes RFC proxies unless ``-proxyver 2`` (legacy Globus,
``CN=proxy``) or ``3`` (pre-RFC draft) is given; its RFC proxies carry a path length
constraint of 1 unless ``-path-length`` says otherwise.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from asn1crypto import cms, core  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "VOMS_HOST",
    "VOMS_PORT",
    "Authority",
    "HostTLS",
    "Pki",
    "User",
    "build_pki",
    "crl_pem",
    "delegate",
    "dn_of",
    "install_ca",
    "make_ca",
    "subject_hash",
]

VOMS_HOST = "voms.se-test.org"
VOMS_PORT = 15000
_VOMS_OID = x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
_PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
# ProxyCertInfo (RFC 3820): no path length constraint, policy language id-ppl-inheritAll.
_INHERIT_ALL = bytes.fromhex("300c300a06082b06010505071501")
_DAY = dt.timedelta(days=1)

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def dn_of(*cns: str, org: str = "se-test") -> x509.Name:
    """``/DC=org/DC=<org>/CN=...`` as a name."""
    attrs = [
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"),
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, org),
    ]
    attrs += [x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns]
    return x509.Name(attrs)


def _slash(name: x509.Name) -> str:
    # Written here independently of se.auth.cadir, for the simple names this PKI makes.
    short = {NameOID.DOMAIN_COMPONENT: "DC", NameOID.COMMON_NAME: "CN"}
    return "".join(f"/{short[a.oid]}={a.value!s}" for a in name)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write_key(path: Path, key: PrivateKey) -> None:
    path.write_bytes(_key_pem(key))
    path.chmod(0o600)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _usage(*, sign: bool, encipher: bool, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=encipher,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Authority:
    """A CA: its certificate and key."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey

    def issue(
        self,
        subject: x509.Name,
        key: PrivateKey,
        *,
        server: str | None = None,
        client: bool = True,
        expired: bool = False,
        serial: int | None = None,
    ) -> x509.Certificate:
        """An end-entity certificate for ``key`` (a host one with SANs if ``server``)."""
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
                _usage(sign=True, encipher=isinstance(key, rsa.RSAPrivateKey)), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )
        if server:
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


def make_ca(
    subject: x509.Name, parent: Authority | None = None, *, path_length: int | None = None
) -> Authority:
    """A self-signed root CA, or (``parent``) an intermediate CA issued by ``parent``."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    signer_key = parent.key if parent else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(parent.cert.subject if parent else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 3650 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_usage(sign=False, encipher=False, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if parent:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), False
        )
    return Authority(builder.sign(signer_key, hashes.SHA256()), key)


def subject_hash(pem: Path) -> str:
    """OpenSSL's subject hash of a PEM certificate: the name capath lookups use."""
    res = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(pem)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return res.stdout.strip()


def install_ca(folder: Path, cert: x509.Certificate) -> Path:
    """Put a CA certificate in a hashed CA directory as ``<hash>.N`` (the first free N)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "incoming.pem.tmp"
    tmp.write_bytes(_pem(cert))
    digest = subject_hash(tmp)
    index = 0
    while (folder / f"{digest}.{index}").exists():
        index += 1
    target = folder / f"{digest}.{index}"
    shutil.move(tmp, target)
    target.chmod(0o644)
    return target


def crl_pem(
    authority: Authority,
    serials: Sequence[int],
    *,
    next_update: dt.timedelta = 7 * _DAY,
    number: int = 1,
) -> bytes:
    """A CRL of ``authority`` listing ``serials`` (a past ``next_update`` gives an expired
    one), with the extensions fetch-crl'd CRLs carry."""
    now = dt.datetime.now(dt.UTC)
    this_update = min(now - dt.timedelta(minutes=5), now + next_update - dt.timedelta(hours=1))
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.cert.subject)
        .last_update(this_update)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), False
        )
    )
    for serial in sorted(serials):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(this_update)
            .build()
        )
    crl = builder.sign(authority.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class HostTLS:
    """The PKI's host certificate as :func:`tests.xrootd.start_xrootd` takes it."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path


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
    ca: Authority
    rogue: Authority
    _voms: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    _users: dict[str, User] = field(default_factory=dict)
    _revoked: set[int] = field(default_factory=set)
    _count: int = 0

    # -- people ------------------------------------------------------------------------

    def user(self, name: str, *, rogue: bool = False, expired: bool = False) -> User:
        """A user certificate (created once per name) issued by the CA (or the rogue one);
        its DN is ``/DC=org/DC=se-test/CN=<Name> Tester``."""
        known = self._users.get(name)
        if known is not None:
            return known
        folder = self.root / "users" / name
        folder.mkdir(parents=True)
        key = _key()
        subject = dn_of(f"{name.title()} Tester")
        cert = (self.rogue if rogue else self.ca).issue(subject, key, expired=expired)
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

    def host_tls(self) -> HostTLS:
        return HostTLS(self.ca_cert, self.host_cert, self.host_key)

    def se_config(self, rules: str = "", *, auth: str = "") -> str:
        """The ``[tls]`` and ``[auth]`` sections of an ``se`` that asks clients for
        certificates and trusts this PKI (anonymous: none), with ``auth`` (more ``[auth]``
        keys) and ``rules`` (``[[auth.x509]]`` and other tables) after them."""
        q = json.dumps
        return f"""
[tls]
cert = {q(str(self.host_cert))}
key = {q(str(self.host_key))}
ca_dir = {q(str(self.ca_dir))}
client_certs = "optional"

[auth]
anonymous = "none"
vomsdir = {q(str(self.vomsdir))}
{auth}
{rules}
"""

    def revoke(self, user: User) -> None:
        """(Re)write the CA's CRL ``<hash>.r0`` in the CA directory, listing ``user`` too
        (by rename, as fetch-crl does)."""
        self._revoked.add(user.serial)
        target = self.ca_dir / f"{subject_hash(self.ca_cert)}.r0"
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(crl_pem(self.ca, sorted(self._revoked), number=len(self._revoked)))
        tmp.chmod(0o644)
        os.replace(tmp, target)

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
        proxyver: int | None = None,
        targets: Sequence[str] = (),
        ac_of: User | None = None,
    ) -> Path:
        """A proxy file as X509_USER_PROXY holds it (proxy cert, its key, the chain down to
        the user certificate), mode 0600.

        ``vo=None``: no VOMS attributes.  ``voms``: "good", "unlisted" (a server of the CA
        that no .lsc names), "rogue" (the good server's name, certified by the rogue CA) or
        "ec" (the good name, an EC P-256 key).  ``rfc=False``: a legacy Globus proxy
        (``CN=proxy``); ``proxyver``: voms-proxy-fake's ``-proxyver`` (3: pre-RFC draft).
        ``depth`` > 1: proxies of the proxy.  ``tamper_ac``: one FQAN byte changed after
        signing; ``targets``: the AC re-signed with a targeting extension naming them;
        ``ac_of``: the AC of a proxy of that other user, in this user's proxy."""
        self._count += 1
        out = self.root / "proxies" / f"{user.name}-{self._count}.pem"
        out.parent.mkdir(exist_ok=True)
        args = ["voms-proxy-fake", "-q", "-cert", str(user.cert), "-key", str(user.key)]
        args += ["-certdir", str(self.ca_dir), "-out", str(out), "-bits", "2048"]
        if expired:
            args += ["-hours", "1", "-pastproxy", "2:00"]
        else:
            args += ["-hours", str(max(1, round(hours)))]
        if proxyver is not None:
            args += ["-proxyver", str(proxyver)]
        elif rfc:
            args.append("-rfc")
        else:
            args += ["-proxyver", "2"]
        if limited:
            args.append("-limited")
        if depth > 1:
            args += ["-path-length", str(depth)]
        if vo is not None:
            host_cert, host_key = self._voms_cert(voms)
            args += ["-voms", vo, "-uri", f"{VOMS_HOST}:{VOMS_PORT}"]
            args += ["-hostcert", str(host_cert), "-hostkey", str(host_key)]
            if ac_expired:
                args += ["-vomslife", "1", "-pastac", "2:00"]
            else:
                args += ["-vomslife", str(max(1, round(ac_hours)))]
            for fqan in fqans:
                args += ["-fqan", fqan]
        _run(args)
        if vo is not None and (tamper_ac or targets):
            value = _voms_value(out)
            if targets:
                value = _with_targets(value, targets, self._voms_cert(voms)[1])
            if tamper_ac:
                index = value.find(f"/{vo}".encode())
                assert index >= 0, "no FQAN to tamper with"
                value = value[: index + 1] + b"X" + value[index + 2 :]
            _replace_voms(out, user, value)
        if ac_of is not None:
            other = self.proxy(ac_of, vo=vo or "dteam", fqans=fqans, voms=voms)
            _replace_voms(out, user, _voms_value(other))
        for level in range(1, depth):
            deeper = out.with_name(f"{out.stem}-d{level + 1}.pem")
            delegate(out, deeper)
            out = deeper
        out.chmod(0o600)
        return out

    def _voms_cert(self, kind: str) -> tuple[Path, Path]:
        """The certificate and key of a VOMS server of that kind (see :meth:`proxy`)."""
        known = self._voms.get(kind)
        if known is not None:
            return known
        if kind not in ("good", "unlisted", "rogue", "ec"):
            raise ValueError(f"no VOMS server kind {kind!r}")
        folder = self.root / "voms" / kind
        folder.mkdir(parents=True)
        key: PrivateKey = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else _key()
        name = VOMS_HOST if kind != "unlisted" else "voms-unlisted.se-test.org"
        authority = self.rogue if kind == "rogue" else self.ca
        cert = authority.issue(dn_of(name), key, server=name, client=False)
        (folder / "hostcert.pem").write_bytes(_pem(cert))
        _write_key(folder / "hostkey.pem", key)
        self._voms[kind] = (folder / "hostcert.pem", folder / "hostkey.pem")
        return self._voms[kind]


def _run(args: list[str]) -> None:
    res = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {res.returncode}: {res.stdout} {res.stderr}")


def _load_proxy(path: Path) -> tuple[list[x509.Certificate], PrivateKey]:
    data = path.read_bytes()
    key = serialization.load_pem_private_key(data, password=None)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return x509.load_pem_x509_certificates(data), key


def _voms_value(path: Path) -> bytes:
    proxy = _load_proxy(path)[0][0]
    value = proxy.extensions.get_extension_for_oid(_VOMS_OID).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def _replace_voms(path: Path, user: User, value: bytes) -> None:
    """The proxy in ``path`` with its VOMS extension value replaced, signed again with the
    user's key: a proxy the TLS layer accepts, whatever its AC says."""
    certs, proxy_key = _load_proxy(path)
    proxy = certs[0]
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
        ext_value = extension.value
        if extension.oid == _VOMS_OID:
            ext_value = x509.UnrecognizedExtension(_VOMS_OID, value)
        builder = builder.add_extension(ext_value, extension.critical)
    user_key = serialization.load_pem_private_key(user.key.read_bytes(), password=None)
    assert isinstance(user_key, rsa.RSAPrivateKey)
    signed = builder.sign(user_key, hashes.SHA256())
    path.write_bytes(_pem(signed) + _key_pem(proxy_key) + b"".join(_pem(c) for c in certs[1:]))


class _ACs(core.SequenceOf):  # type: ignore[misc]
    _child_spec = cms.AttributeCertificateV2


class _ACLists(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _ACs


class _TargetChoice(core.Choice):  # type: ignore[misc]
    _alternatives: ClassVar[list[tuple[str, type, dict[str, int]]]] = [
        ("target_name", asn1_x509.GeneralName, {"explicit": 0}),
    ]


class _TargetSeq(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _TargetChoice


class _TargetInfo(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _TargetSeq


def _with_targets(value: bytes, targets: Sequence[str], voms_key_file: Path) -> bytes:
    """The VOMS extension value with its first AC restricted to ``targets`` (RFC 5755
    targeting, critical, names as URIs as the VOMS server writes them) and re-signed by
    the VOMS server's key."""
    lists = _ACLists.load(value)
    ac = lists[0][0]
    info = ac["ac_info"]
    names = [
        _TargetChoice(
            name="target_name",
            value=asn1_x509.GeneralName(name="uniform_resource_identifier", value=t),
        )
        for t in targets
    ]
    extension = asn1_x509.Extension(
        {
            "extn_id": "2.5.29.55",
            "critical": True,
            "extn_value": core.ParsableOctetString(_TargetInfo([_TargetSeq(names)]).dump()),
        }
    )
    info["extensions"] = asn1_x509.Extensions([*info["extensions"], extension])
    signed_part = info.dump(force=True)
    key = serialization.load_pem_private_key(voms_key_file.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert ac["signature_algorithm"].hash_algo == "sha256"
    ac["signature"] = key.sign(signed_part, padding.PKCS1v15(), hashes.SHA256())
    return bytes(lists.dump(force=True))


def sign_proxy(
    signer_file: Path,
    public_key: CertificatePublicKeyTypes,
    *,
    hours: float = 6,
    signer_chain: bool = True,
) -> bytes:
    """A proxy of the proxy in ``signer_file`` for ``public_key``, as a client answering a
    delegation request signs it: the new certificate, then (``signer_chain``) the signer's
    chain, PEM."""
    chain, signer_key = _load_proxy(signer_file)
    signer = chain[0]
    serial = secrets.randbelow(2**31 - 1) + 1
    subject = x509.Name([*signer.subject, x509.NameAttribute(NameOID.COMMON_NAME, str(serial))])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(hours=hours), signer.not_valid_after_utc))
        .add_extension(_usage(sign=True, encipher=True), critical=True)
        .add_extension(x509.UnrecognizedExtension(_PROXY_CERT_INFO, _INHERIT_ALL), critical=True)
        .sign(signer_key, hashes.SHA256())
    )
    return _pem(cert) + (b"".join(_pem(c) for c in chain) if signer_chain else b"")


def delegate(signer_file: Path, out: Path) -> None:
    """A proxy of the proxy in ``signer_file`` (as a delegation to a service makes one)."""
    key = _key()
    signed = sign_proxy(signer_file, key.public_key())
    first = signed.index(b"-----END CERTIFICATE-----\n") + len(b"-----END CERTIFICATE-----\n")
    out.write_bytes(signed[:first] + _key_pem(key) + signed[first:])
    out.chmod(0o600)


def build_pki(root: Path) -> Pki:
    """The CA, the rogue CA, the host certificate and the vomsdir, under ``root``.

    ``certificates/`` holds the CA as ``<hash>.0`` (no intermediates, no signing_policy);
    ``rogue-certificates/`` the rogue CA the same way; ``vomsdir/{dteam,atlas}/`` an .lsc
    for the VOMS server; ``host/`` the localhost certificate and key (0600).
    """
    ca = make_ca(dn_of("se-test CA"))
    rogue = make_ca(dn_of("se-test CA", org="rogue"))
    ca_cert = root / "ca.pem"
    ca_cert.write_bytes(_pem(ca.cert))
    ca_dir = root / "certificates"
    install_ca(ca_dir, ca.cert)
    rogue_dir = root / "rogue-certificates"
    install_ca(rogue_dir, rogue.cert)
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
        ca=ca,
        rogue=rogue,
    )
