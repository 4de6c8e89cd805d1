"""VOMS attribute certificates (RFC 5755 ACs inside grid proxies): parsed, then verified.

A VOMS proxy carries, in the extension 1.3.6.1.4.1.8005.100.100.5, a SEQUENCE OF SEQUENCE
OF AttributeCertificate (one AC per VO asked for).  An AC names its holder (the user's
end-entity certificate, by issuer and serial), its issuer (the VOMS server's DN), a
validity window, the VO's attributes (1.3.6.1.4.1.8005.100.100.4: IetfAttrSyntax with the
policy authority ``<vo>://<host>:<port>`` and the FQANs, in order) and, in the extension
1.3.6.1.4.1.8005.100.100.10, the VOMS server's certificate chain.

:func:`verify_ac` trusts an AC only if all of these hold, and says which failed:

1. its signature verifies with the key of a VOMS server certificate named by the AC's
   issuer, found in the AC's certificate chain or, for old set-ups, as a PEM file in
   ``<vomsdir>/<vo>/`` (or ``<vomsdir>/``).  RSA (PKCS#1 v1.5) and ECDSA, with SHA-1/224/
   256/384/512 as the AC's algorithm says; the scheme is the key's own (voms-proxy-fake and
   the C VOMS server copy the server certificate's algorithm identifier, which names RSA
   even for an EC key -- a label that cannot weaken the check, the key admitting one scheme);
2. that certificate chains to a CA of the :class:`TrustStore`, all of it valid now and
   not revoked;
3. ``<vomsdir>/<vo>/<host>.lsc`` lists the server: one of its chains (lines of DNs, chains
   separated by a line of dashes) matches the server certificate's subject, its issuer and,
   if listed, the issuers above; without an ``.lsc`` only a server certificate installed
   as a PEM file in the vomsdir is accepted (the pre-.lsc layout);
4. its validity covers ``now`` (300 s of clock skew allowed at the start, as libvomsapi);
5. its holder is the end-entity certificate: holder serial == its serial, and holder
   issuer == its issuer (RFC 5755) or its subject (the legacy VOMS format, which
   voms-proxy-fake writes unless ``-newformat`` and libvomsapi accepts; the serial still
   binds the AC to that certificate);
6. the AC is well formed for VOMS: version 2, one VOMS attribute with one policy authority,
   a VO name and host usable as path components, every FQAN inside ``/<vo>``, no unknown
   critical extension, and an AC targeting extension only if it names one of this server's
   host names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from asn1crypto import cms, core  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from se.auth.cadir import TrustError, TrustStore, iso_time, normalise_dn, openssl_dn

__all__ = [
    "VOMS_EXTENSION_OID",
    "AttributeCertificate",
    "VomsAttributes",
    "VomsError",
    "parse_voms_extension",
    "read_lsc",
    "verify_ac",
    "voms_extension",
]

VOMS_EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
_FQAN_ATTRIBUTE = "1.3.6.1.4.1.8005.100.100.4"
_CERTSEQ = "1.3.6.1.4.1.8005.100.100.10"
_TARGETS = "2.5.29.55"
_START_SKEW = 300.0
_VO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class VomsError(Exception):
    """An AC that must not be trusted; the message is the one-line reason."""


@dataclass(frozen=True)
class VomsAttributes:
    """What a verified AC asserts (times are Unix times)."""

    vo: str
    fqans: tuple[str, ...]
    issuer_dn: str
    server: str
    not_before: float
    not_after: float


class _ACList(core.SequenceOf):  # type: ignore[misc]
    _child_spec = cms.AttributeCertificateV2


class _VomsExtension(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _ACList


class _CertList(core.SequenceOf):  # type: ignore[misc]
    _child_spec = core.Any


class _CertSeq(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[tuple[str, type]]] = [("certs", _CertList)]


class _Target(core.Choice):  # type: ignore[misc]
    _alternatives: ClassVar[list[tuple[str, type, dict[str, int]]]] = [
        ("target_name", asn1_x509.GeneralName, {"explicit": 0}),
        ("target_group", asn1_x509.GeneralName, {"explicit": 1}),
        ("target_cert", core.Any, {"implicit": 2}),
    ]


class _Targets(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _Target


class _TargetInformation(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _Targets


@dataclass(frozen=True)
class AttributeCertificate:
    """One AC, parsed but not verified.  Names are asn1crypto ``Name`` values, compared
    as RFC 5280 says (case-insensitive, whitespace-folded), as OpenSSL compares them."""

    der: bytes
    signed_part: bytes
    signature: bytes
    hash_name: str
    signature_scheme: str
    holder_issuers: tuple[asn1_x509.Name, ...]
    holder_serial: int | None
    issuer: asn1_x509.Name
    not_before: float
    not_after: float
    vo: str
    server: str
    fqans: tuple[str, ...]
    certseq: tuple[x509.Certificate, ...]
    targets: tuple[str, ...] | None
    unknown_critical: tuple[str, ...]

    @property
    def issuer_dn(self) -> str:
        """The VOMS server's DN in slash form."""
        return openssl_dn(_crypto_name(self.issuer))


def _crypto_name(name: asn1_x509.Name) -> x509.Name:
    rdns = []
    for rdn in name.chosen:
        attrs = []
        for ava in rdn:
            value = ava["value"].native
            if not isinstance(value, str):
                value = str(value)
            attrs.append(x509.NameAttribute(x509.ObjectIdentifier(ava["type"].dotted), value))
        rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)


def _same_name(names: Iterable[x509.Name], other: asn1_x509.Name) -> bool:
    """Whether one of ``names`` is ``other`` (RFC 5280 comparison); identical encodings,
    the usual case, decide without asn1crypto's string preparation."""
    encoded = [name.public_bytes() for name in names]
    for der in encoded:
        header = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
        # ``contents``: the encoding inside the SEQUENCE header (and any tag around it).
        if der[header:] == other.contents:
            return True
    return any(asn1_x509.Name.load(der) == other for der in encoded)


def voms_extension(cert: x509.Certificate) -> bytes | None:
    """The DER value of a certificate's VOMS extension, or None."""
    try:
        ext = cert.extensions.get_extension_for_oid(VOMS_EXTENSION_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def parse_voms_extension(der: bytes) -> list[AttributeCertificate]:
    """The ACs of a VOMS extension value, in order (raises :class:`VomsError`)."""
    try:
        outer = _VomsExtension.load(der, strict=True)
        acs = [_parse_ac(ac) for inner in outer for ac in inner]
    except VomsError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise VomsError(f"malformed VOMS extension: {exc}") from None
    if not acs:
        raise VomsError("VOMS extension holds no attribute certificate")
    return acs


def _seconds(value: object) -> float:
    if not hasattr(value, "timestamp"):
        raise VomsError("AC validity is not a GeneralizedTime")
    stamp: float = value.timestamp()
    return stamp


def _parse_ac(ac: cms.AttributeCertificateV2) -> AttributeCertificate:
    info = ac["ac_info"]
    if info["version"].native != "v2":
        raise VomsError(f"AC version {info['version'].native} is not v2")
    if info["signature"].dump() != ac["signature_algorithm"].dump():
        raise VomsError("AC signature algorithms inside and outside the signed part differ")
    algorithm = ac["signature_algorithm"]
    try:
        hash_name, scheme = algorithm.hash_algo, algorithm.signature_algo
    except ValueError:
        raise VomsError(
            f"unsupported AC signature algorithm {algorithm['algorithm'].dotted}"
        ) from None

    holder = info["holder"]
    base = holder["base_certificate_id"]
    holder_issuers: tuple[asn1_x509.Name, ...] = ()
    holder_serial = None
    if base.native is not None:
        holder_issuers = tuple(gn.chosen for gn in base["issuer"] if gn.name == "directory_name")
        holder_serial = int(base["serial"].native)

    issuer = info["issuer"]
    issuer_names = issuer.chosen if issuer.name == "v1_form" else issuer.chosen["issuer_name"]
    directory = [gn.chosen for gn in issuer_names or () if gn.name == "directory_name"]
    if len(directory) != 1:
        raise VomsError("AC issuer is not one directory name")

    period = info["att_cert_validity_period"]
    not_before = _seconds(period["not_before_time"].native)
    not_after = _seconds(period["not_after_time"].native)

    voms_attrs = [a for a in info["attributes"] if a["type"].dotted == _FQAN_ATTRIBUTE]
    if len(voms_attrs) != 1 or len(voms_attrs[0]["values"]) != 1:
        raise VomsError("AC has not exactly one VOMS attribute")
    syntax = cms.IetfAttrSyntax.load(voms_attrs[0]["values"][0].dump())
    authorities = syntax["policy_authority"]
    if authorities.native is None or len(authorities) != 1:
        raise VomsError("AC VOMS attribute has not exactly one policy authority")
    vo, server = _policy_authority(str(authorities[0].native))
    fqans = []
    for value in syntax["values"]:
        if value.name != "octets":
            raise VomsError("AC FQAN is not an octet string")
        try:
            fqans.append(value.chosen.native.decode("utf-8"))
        except UnicodeDecodeError:
            raise VomsError("AC FQAN is not UTF-8") from None

    certseq: tuple[x509.Certificate, ...] = ()
    targets: tuple[str, ...] | None = None
    unknown_critical = []
    for ext in info["extensions"] or ():
        oid = ext["extn_id"].dotted
        raw = ext["extn_value"].contents
        if oid == _CERTSEQ:
            certseq = tuple(
                x509.load_der_x509_certificate(cert.dump()) for cert in _CertSeq.load(raw)["certs"]
            )
        elif oid == _TARGETS:
            targets = tuple(
                str(target.chosen.native)
                for group in _TargetInformation.load(raw)
                for target in group
                if target.name == "target_name"
            )
        elif ext["critical"].native:
            unknown_critical.append(oid)

    return AttributeCertificate(
        der=ac.dump(),
        signed_part=info.dump(),
        signature=ac["signature"].native,
        hash_name=hash_name,
        signature_scheme=scheme,
        holder_issuers=holder_issuers,
        holder_serial=holder_serial,
        issuer=directory[0],
        not_before=not_before,
        not_after=not_after,
        vo=vo,
        server=server,
        fqans=tuple(fqans),
        certseq=certseq,
        targets=targets,
        unknown_critical=tuple(unknown_critical),
    )


def _policy_authority(text: str) -> tuple[str, str]:
    """``dteam://voms.test:15000`` (or ``dteam:voms.test:15000``) -> VO, ``host:port``."""
    vo, sep, server = text.partition("://")
    if not sep:
        vo, sep, server = text.partition(":")
    if not sep or not _VO_NAME.fullmatch(vo):
        raise VomsError(f"AC policy authority {text!r} names no usable VO")
    host, _, port = server.rpartition(":") if ":" in server else (server, "", "")
    if not _HOST.fullmatch(host) or (port and not port.isdigit()):
        raise VomsError(f"AC policy authority {text!r} names no usable VOMS host")
    return vo, server


def _verifies(ac: AttributeCertificate, cert: x509.Certificate) -> bool:
    key = cert.public_key()
    algorithm = _HASHES[ac.hash_name]()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(ac.signature, ac.signed_part, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(ac.signature, ac.signed_part, ec.ECDSA(algorithm))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def _local_certs(vomsdir: Path, vo: str) -> list[x509.Certificate]:
    """VOMS server certificates installed as PEM files (the layout before .lsc files)."""
    found: list[x509.Certificate] = []
    for folder in (vomsdir / vo, vomsdir):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            path = folder / name
            if name.endswith(".lsc") or not path.is_file():
                continue
            try:
                data = path.read_bytes()
                if b"-----BEGIN CERTIFICATE-----" in data:
                    found.extend(x509.load_pem_x509_certificates(data))
            except (OSError, ValueError):
                continue
    return found


def read_lsc(path: str | os.PathLike[str]) -> list[list[str]]:
    """The DN chains of an .lsc file, each normalised to slash form (raises OSError).

    Blank lines and ``#`` comments are skipped; a line starting with ``-`` ends a chain.
    A chain with a DN that cannot be parsed is dropped (it can match nothing).
    """
    chains: list[list[str]] = [[]]
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            chains.append([])
            continue
        chains[-1].append(line)
    result = []
    for chain in chains:
        try:
            result.append([normalise_dn(dn) for dn in chain])
        except ValueError:
            continue
    return [chain for chain in result if chain]


def _lsc_matches(chains: list[list[str]], path: list[x509.Certificate]) -> bool:
    # path[i + 1] is the issuer of path[i]: its subject is the DN the .lsc lists next.
    dns = [openssl_dn(cert.subject) for cert in path]
    return any(2 <= len(chain) <= len(dns) and chain == dns[: len(chain)] for chain in chains)


def verify_ac(
    ac: AttributeCertificate | bytes,
    holder: x509.Certificate,
    store: TrustStore,
    vomsdir: str | os.PathLike[str],
    now: float,
    *,
    host_names: Collection[str] = (),
) -> VomsAttributes:
    """The attributes of an AC issued to ``holder`` (the end-entity certificate), verified.

    ``ac`` is a parsed AC or the DER of one AttributeCertificate.  ``host_names`` are this
    server's names, for ACs restricted to targets.  Raises :class:`VomsError`.
    """
    if isinstance(ac, bytes):
        try:
            ac = _parse_ac(cms.AttributeCertificateV2.load(ac, strict=True))
        except VomsError:
            raise
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise VomsError(f"malformed AC: {exc}") from None
    folder = Path(vomsdir)
    issuer_dn = ac.issuer_dn

    # 1. The signature, by a certificate named by the AC's issuer.
    if ac.hash_name not in _HASHES or ac.signature_scheme not in ("rsassa_pkcs1v15", "ecdsa"):
        raise VomsError(f"AC signature algorithm {ac.hash_name}/{ac.signature_scheme} refused")
    local = _local_certs(folder, ac.vo)
    named = [c for c in (*ac.certseq, *local) if _same_name([c.subject], ac.issuer)]
    if not named:
        raise VomsError(f"no certificate of VOMS server {issuer_dn} in the AC nor in the vomsdir")
    signer = next((c for c in named if _verifies(ac, c)), None)
    if signer is None:
        raise VomsError(f"AC signature does not verify with the key of {issuer_dn}")

    # 2. The server certificate chains to a trusted CA.
    others = [c for c in ac.certseq if c != signer]
    try:
        path = store.verify_path(signer, others, now, what="VOMS server certificate")
    except TrustError as exc:
        raise VomsError(str(exc)) from None

    # 3. The vomsdir lists this server for this VO.
    host = ac.server.rpartition(":")[0] if ":" in ac.server else ac.server
    lsc = folder / ac.vo / f"{host}.lsc"
    try:
        chains: list[list[str]] | None = read_lsc(lsc)
    except FileNotFoundError:
        chains = None
    except OSError as exc:
        raise VomsError(f"cannot read {lsc}: {exc.strerror}") from None
    if chains is not None:
        if not _lsc_matches(chains, path):
            raise VomsError(
                f"VOMS server {issuer_dn} (CA {openssl_dn(signer.issuer)}) is not listed in {lsc}"
            )
    elif signer not in local:
        raise VomsError(f"VO {ac.vo} has no {lsc} (nor a local copy of {issuer_dn})")

    # 4. Validity.
    if now < ac.not_before - _START_SKEW:
        raise VomsError(f"VOMS attributes not yet valid (until {iso_time(ac.not_before)})")
    if now > ac.not_after:
        raise VomsError(f"VOMS attributes expired at {iso_time(ac.not_after)}")

    # 5. The holder.
    if ac.holder_serial is None or len(ac.holder_issuers) != 1:
        raise VomsError("AC holder is not given as one issuer name and a serial")
    if ac.holder_serial != holder.serial_number or not _same_name(
        (holder.issuer, holder.subject), ac.holder_issuers[0]
    ):
        raise VomsError(f"AC was issued to another certificate than {openssl_dn(holder.subject)}'s")

    # 6. VOMS semantics.
    if ac.unknown_critical:
        raise VomsError(f"AC has an unsupported critical extension {ac.unknown_critical[0]}")
    if ac.targets is not None:
        names = {name.lower() for name in host_names}
        if not any(target.lower() in names for target in ac.targets):
            raise VomsError(f"AC is restricted to other hosts ({', '.join(ac.targets) or 'none'})")
    if not ac.fqans:
        raise VomsError("AC carries no FQAN")
    top = f"/{ac.vo}"
    for fqan in ac.fqans:
        if fqan != top and not fqan.startswith(top + "/"):
            raise VomsError(f"AC of VO {ac.vo} carries a foreign FQAN {fqan}")
    return VomsAttributes(
        vo=ac.vo,
        fqans=ac.fqans,
        issuer_dn=issuer_dn,
        server=ac.server,
        not_before=ac.not_before,
        not_after=ac.not_after,
    )
