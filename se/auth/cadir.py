"""Trust anchors and CRLs of a hashed CA directory, and the DN forms grid files use.

A grid CA directory (``/etc/grid-security/certificates``) holds the trusted CA certificates
as PEM ``<subject-hash>.0`` .. ``.9`` and their CRLs as ``<hash>.r0`` .. ``.r9`` (written by
``fetch-crl``, in place or by rename).  :class:`TrustStore` reads every such file (other
names are ignored, unreadable files are skipped with one log line), keeps the result as an
immutable snapshot that readers use without locking, and re-reads the directory when it
changed: at most every ``check_interval`` seconds it stats the directory and its files
(size, inode, mtime, ctime) and re-parses only files whose stat changed.

Names are compared as :class:`cryptography.x509.Name` values (attribute types and values,
RDN by RDN); an issuer is only taken for a certificate once its key verifies the
certificate's signature.

Revocation policy (``crl_mode``):

* ``"if_present"`` (the default, like OpenSSL without ``X509_V_FLAG_CRL_CHECK`` and canl's
  IF_VALID): a CA without a CRL revokes nothing.  A CRL whose ``nextUpdate`` has passed is
  still consulted -- a listed serial stays revoked, revocation being permanent -- and a
  warning is logged once per CRL file version, so a broken ``fetch-crl`` neither locks every
  user out nor silently forgets revocations.
* ``"require"`` (like OpenSSL with CRL checking): a CA without a signature-valid CRL, or with
  an expired one (past ``nextUpdate``), refuses every certificate it issued.

A CRL is used only if its signature verifies with the key of a CA of the directory whose
subject is the CRL's issuer; delta and indirect CRLs are not supported.

The DN helpers live here because the CA directory, ``.lsc`` files and identities all speak
the OpenSSL "slash" form; :mod:`se.auth.x509` re-exports them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from asn1crypto import core  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

__all__ = [
    "CrlMode",
    "TrustError",
    "TrustStore",
    "iso_time",
    "normalise_dn",
    "openssl_dn",
    "rfc4514_dn",
    "validity_problem",
]

log = logging.getLogger("se.auth")

CrlMode = Literal["if_present", "require"]

_CERT_FILE = re.compile(r"[0-9a-f]{8}\.[0-9]")
_CRL_FILE = re.compile(r"[0-9a-f]{8}\.r[0-9]")
_MAX_PATH = 10  # certificates from a leaf to its anchor; real grid chains have 2..4
_DER = Encoding.DER


class TrustError(Exception):
    """A certificate does not chain to a trust anchor of the store; the message says why."""


def iso_time(when: float | dt.datetime) -> str:
    """UTC time as ``2026-12-07T05:00:00Z``: the one time format of every reason text."""
    if isinstance(when, dt.datetime):
        when = when.timestamp()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


# --------------------------------------------------------------------------------------
# Distinguished names
#
# The slash form is what OpenSSL's X509_NAME_oneline() prints (and `openssl x509 -subject
# -nameopt compat`): the RDNs in certificate order, each "/TYPE=value", the values of a
# multi-valued RDN joined with "+", OpenSSL short names, unknown types as dotted OIDs.  As
# OpenSSL 3 does, "/" and "+" inside a value are written "\/" and "\+", and bytes outside
# printable ASCII as "\xHH" (of the UTF-8 encoding; a backslash itself is not escaped).
# OpenSSL prints BMPString/UniversalString values with non-ASCII characters as their raw
# UCS-2/UCS-4 bytes; here every value is UTF-8 first (no grid CA issues such names).
#
# Parsing (normalise_dn) also takes the unescaped form older OpenSSL releases printed and
# every grid-mapfile, .lsc file and config carries: a "/" or "+" starts a new attribute only
# where "TYPE=" follows it, so "/CN=host/se.example.org" is one CN.  (A value that itself
# contains "/TYPE=" can only be given escaped.)
# --------------------------------------------------------------------------------------

_SHORT_NAMES: dict[str, str] = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.13": "description",
    "2.5.4.15": "businessCategory",
    "2.5.4.17": "postalCode",
    "2.5.4.41": "name",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.45": "x500UniqueIdentifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym",
    "2.5.4.97": "organizationIdentifier",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
    "1.2.840.113549.1.9.2": "unstructuredName",
    "1.3.6.1.4.1.311.60.2.1.1": "jurisdictionL",
    "1.3.6.1.4.1.311.60.2.1.2": "jurisdictionST",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
}
_OID_OF_SHORT = {short: oid for oid, short in _SHORT_NAMES.items()}
# Attribute type spellings accepted when parsing (case-insensitive) -> OpenSSL short name.
_ALIASES: dict[str, str] = {short.lower(): short for short in _SHORT_NAMES.values()} | {
    "commonname": "CN",
    "countryname": "C",
    "localityname": "L",
    "s": "ST",
    "stateorprovincename": "ST",
    "streetaddress": "street",
    "organizationname": "O",
    "organizationalunitname": "OU",
    "domaincomponent": "DC",
    "userid": "UID",
    "e": "emailAddress",
    "email": "emailAddress",
    "surname": "SN",
    "givenname": "GN",
}
# RFC 4514 output: cryptography's standard keywords, OpenSSL short names for the others.
_RFC4514_NAMES = {
    x509.ObjectIdentifier(oid): short
    for oid, short in _SHORT_NAMES.items()
    if oid
    not in {
        NameOID.COMMON_NAME.dotted_string,
        NameOID.COUNTRY_NAME.dotted_string,
        NameOID.LOCALITY_NAME.dotted_string,
        NameOID.STATE_OR_PROVINCE_NAME.dotted_string,
        NameOID.STREET_ADDRESS.dotted_string,
        NameOID.ORGANIZATION_NAME.dotted_string,
        NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string,
        NameOID.DOMAIN_COMPONENT.dotted_string,
        NameOID.USER_ID.dotted_string,
    }
}
_TYPE = r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)"
_TYPE_EQ = re.compile(_TYPE + r"=")
_OID_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)+")

# One RDN: its attributes as (type, value) with the value as UTF-8 bytes.
_Rdns = list[list[tuple[str, bytes]]]


def _canonical_type(text: str) -> str:
    if _OID_TEXT.fullmatch(text):
        return _SHORT_NAMES.get(text, text)
    return _ALIASES.get(text.lower(), text)


def _value_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def _format_slash(rdns: _Rdns) -> str:
    out: list[str] = []
    for rdn in rdns:
        parts = []
        for kind, value in rdn:
            text = []
            for byte in value:
                if byte in (0x2F, 0x2B):  # "/" "+"
                    text.append("\\" + chr(byte))
                elif 0x20 <= byte <= 0x7E:
                    text.append(chr(byte))
                else:
                    text.append(f"\\x{byte:02X}")
            parts.append(f"{kind}={''.join(text)}")
        out.append("/" + "+".join(parts))
    return "".join(out)


def _name_rdns(name: x509.Name) -> _Rdns:
    return [
        [(_canonical_type(attr.oid.dotted_string), _value_bytes(attr.value)) for attr in rdn]
        for rdn in name.rdns
    ]


def openssl_dn(name: x509.Name) -> str:
    """``/DC=org/DC=test/CN=Alice Tester``: the form grid tools, .lsc and gridmap files use."""
    return _format_slash(_name_rdns(name))


def rfc4514_dn(name: x509.Name) -> str:
    """RFC 4514 string (last RDN first), OpenSSL short names for non-standard keywords."""
    return name.rfc4514_string(_RFC4514_NAMES)


def _parse_slash(text: str) -> _Rdns:
    rdns: _Rdns = []
    kind = ""
    value = bytearray()

    def flush() -> None:
        if kind:
            rdns[-1].append((kind, bytes(value)))

    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and text[i + 1 : i + 2] in ("/", "+"):
            value += text[i + 1].encode()
            i += 2
            continue
        if char == "\\" and re.fullmatch(r"x[0-9A-Fa-f]{2}", text[i + 1 : i + 4]):
            value.append(int(text[i + 2 : i + 4], 16))
            i += 4
            continue
        if char in "/+":
            match = _TYPE_EQ.match(text, i + 1)
            if match is not None and (char == "/" or kind):
                flush()
                if char == "/":
                    rdns.append([])
                kind = _canonical_type(match.group()[:-1])
                value = bytearray()
                i = match.end()
                continue
            if not kind:
                raise ValueError(f"not a DN: {text!r}")
        value += char.encode("utf-8", "surrogatepass")
        i += 1
    flush()
    if not rdns:
        raise ValueError(f"not a DN: {text!r}")
    return rdns


def _split_unescaped(text: str, separators: str) -> list[str]:
    parts, current, quoted, i = [], [], False, 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char in separators and not quoted:
            parts.append("".join(current))
            current = []
            i += 1
            continue
        current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def _rfc4514_value(raw: str) -> bytes:
    raw = raw.lstrip(" ")
    stripped = raw.rstrip(" ")
    escapes = len(stripped) - len(stripped.rstrip("\\"))
    raw = stripped + " " if escapes % 2 and len(stripped) < len(raw) else stripped
    if raw.startswith("#"):
        # A BER-encoded value: the string inside, or the bytes as they are.
        encoded = bytes.fromhex(raw[1:])
        native = core.Asn1Value.load(encoded).native
        return _value_bytes(native) if isinstance(native, str | bytes) else encoded
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':  # RFC 2253 quoted value
        raw = raw[1:-1]
    out = bytearray()
    i = 0
    while i < len(raw):
        char = raw[i]
        if char == "\\" and re.fullmatch(r"[0-9A-Fa-f]{2}", raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        elif char == "\\" and i + 1 < len(raw):
            out += raw[i + 1].encode("utf-8", "surrogatepass")
            i += 2
        else:
            out += char.encode("utf-8", "surrogatepass")
            i += 1
    return bytes(out)


def _parse_rfc4514(text: str) -> _Rdns:
    rdns: _Rdns = []
    for rdn_text in _split_unescaped(text, ",;"):
        rdn: list[tuple[str, bytes]] = []
        for ava in _split_unescaped(rdn_text, "+"):
            kind, sep, raw = ava.partition("=")
            kind = kind.strip()
            if not sep or not re.fullmatch(_TYPE, kind):
                raise ValueError(f"not a DN: {text!r}")
            rdn.append((_canonical_type(kind), _rfc4514_value(raw)))
        rdns.append(rdn)
    rdns.reverse()
    return rdns


def _der_length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _ava_order(ava: tuple[str, bytes]) -> tuple[int, bytes]:
    """The place of an attribute in a multi-valued RDN: a SET OF, which DER orders by the
    encodings of its AttributeTypeAndValues (here with the value as a UTF8String; the
    string type cannot decide between attributes of different types).  Types without an
    OID (no certificate has them) go last."""
    kind, value = ava
    oid = _OID_OF_SHORT.get(kind, kind)
    if not _OID_TEXT.fullmatch(oid):
        return 1, kind.encode() + b"=" + value
    body = core.ObjectIdentifier(oid).dump() + b"\x0c" + _der_length(len(value)) + value
    return 0, b"\x30" + _der_length(len(body)) + body


def normalise_dn(text: str) -> str:
    """The slash form of a DN given in slash or RFC 4514 form (config rules take either).

    Attribute types are matched without regard to case and known aliases (``E``,
    ``Email``, ``userid``, long names) become OpenSSL's short names; the attributes of a
    multi-valued RDN are put in the order a certificate has them (DER's), so that either
    order matches (OpenSSL's RFC 2253 output reverses them); whitespace around the whole
    text is dropped, but for an escaped space ending an RFC 4514 value (``CN=x\\ ``).
    ``""`` stays ``""``; text of neither form raises ``ValueError``.
    """
    stripped = text.strip()
    if not stripped:
        return ""
    if stripped.startswith("/"):
        rdns = _parse_slash(stripped)
    else:
        end = len(text) - len(text.lstrip()) + len(stripped)
        if end < len(text) and (len(stripped) - len(stripped.rstrip("\\"))) % 2:
            stripped += text[end]  # the escaped space the strip cut off
        rdns = _parse_rfc4514(stripped)
    return _format_slash([sorted(rdn, key=_ava_order) if len(rdn) > 1 else rdn for rdn in rdns])


# --------------------------------------------------------------------------------------
# The CA directory
# --------------------------------------------------------------------------------------


def _fingerprint(cert: x509.Certificate) -> bytes:
    return hashlib.sha256(cert.public_bytes(_DER)).digest()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _may_issue(cert: x509.Certificate) -> bool:
    """A CA certificate whose key usage (if given) allows signing certificates."""
    if not _is_ca(cert):
        return False
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return usage.key_cert_sign


def _path_length(cert: x509.Certificate) -> int | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def validity_problem(cert: x509.Certificate, now: float, what: str) -> str:
    """Why ``cert`` is not valid at ``now`` (``what`` names it), or ``""``."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start.timestamp():
        return f"{what} {openssl_dn(cert.subject)} not yet valid (until {iso_time(start)})"
    if now > end.timestamp():
        return f"{what} {openssl_dn(cert.subject)} expired at {iso_time(end)}"
    return ""


@dataclass(frozen=True)
class _Crl:
    """A parsed CRL file; ``issuer_fp`` names the CA certificate whose key signed it."""

    path: str
    issuer_fp: bytes
    revoked: frozenset[int]
    this_update: float
    next_update: float | None


@dataclass(frozen=True)
class _Snapshot:
    certs: tuple[x509.Certificate, ...] = ()
    by_subject: dict[x509.Name, tuple[x509.Certificate, ...]] = field(default_factory=dict)
    fingerprints: frozenset[bytes] = frozenset()
    crls: dict[bytes, tuple[_Crl, ...]] = field(default_factory=dict)


# A file's identity for the change check: (inode, size, mtime_ns, ctime_ns).
_StatKey = tuple[int, int, int, int]


class TrustStore:
    """The trust anchors and CRLs of one CA directory, re-read when it changes.

    ``now`` arguments are Unix times; reads are safe from any thread (a reload builds a new
    snapshot and swaps it in; the thread that notices a change does the reload while others
    keep using the previous snapshot).
    """

    def __init__(
        self,
        ca_dir: str | os.PathLike[str],
        *,
        check_interval: float = 5.0,
        crl_mode: CrlMode = "if_present",
    ) -> None:
        self.path = Path(ca_dir)
        self.check_interval = check_interval
        self.crl_mode: CrlMode = crl_mode
        self._lock = threading.Lock()
        self._snapshot = _Snapshot()
        self._dir_key: tuple[int, tuple[tuple[str, _StatKey], ...]] | None = None
        self._parsed_certs: dict[str, tuple[_StatKey, tuple[x509.Certificate, ...]]] = {}
        self._parsed_crls: dict[
            str, tuple[_StatKey, tuple[x509.CertificateRevocationList, ...]]
        ] = {}
        self._crl_serials: dict[tuple[str, _StatKey, int], frozenset[int]] = {}
        self._warned: set[tuple[str, float]] = set()
        self._next_check = 0.0
        if not self.path.is_dir():
            raise FileNotFoundError(f"CA directory {self.path} is not a directory")
        self.refresh(force=True)

    # -- loading -------------------------------------------------------------------

    def refresh(self, force: bool = False) -> bool:
        """Re-read the directory if its contents changed (or ``force``); True if re-read."""
        with self._lock:
            self._next_check = time.monotonic() + self.check_interval
            try:
                key = self._directory_key()
            except OSError as exc:
                log.warning("CA directory %s unreadable, keeping what was read: %s", self.path, exc)
                return False
            if key == self._dir_key and not force:
                return False
            self._snapshot = self._load(key)
            self._dir_key = key
            return True

    def _directory_key(self) -> tuple[int, tuple[tuple[str, _StatKey], ...]]:
        entries = []
        with os.scandir(self.path) as it:
            for entry in it:
                if not (_CERT_FILE.fullmatch(entry.name) or _CRL_FILE.fullmatch(entry.name)):
                    continue
                try:
                    st = entry.stat()  # follows symlinks, as a capath lookup does
                except OSError:
                    continue
                entries.append(
                    (entry.name, (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
                )
        return os.stat(self.path).st_mtime_ns, tuple(sorted(entries))

    def _load(self, key: tuple[int, tuple[tuple[str, _StatKey], ...]]) -> _Snapshot:
        names = dict(key[1])
        certs: list[x509.Certificate] = []
        seen: set[bytes] = set()
        for name, stat_key in key[1]:
            if not _CERT_FILE.fullmatch(name):
                continue
            for cert in self._read_certs(name, stat_key):
                fp = _fingerprint(cert)
                if fp not in seen:
                    seen.add(fp)
                    certs.append(cert)
        by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        for cert in certs:
            by_subject.setdefault(cert.subject, []).append(cert)
        crls: dict[bytes, list[_Crl]] = {}
        for name, stat_key in key[1]:
            if not _CRL_FILE.fullmatch(name):
                continue
            for index, crl in enumerate(self._read_crls(name, stat_key)):
                signer = next(
                    (ca for ca in by_subject.get(crl.issuer, []) if _crl_signed_by(crl, ca)),
                    None,
                )
                if signer is None:
                    log.warning(
                        "CA directory %s: CRL %s skipped: no CA here signed it (issuer %s)",
                        self.path,
                        name,
                        openssl_dn(crl.issuer),
                    )
                    continue
                serials_key = (name, stat_key, index)
                serials = self._crl_serials.get(serials_key)
                if serials is None:
                    serials = frozenset(entry.serial_number for entry in crl)
                self._crl_serials[serials_key] = serials
                next_update = crl.next_update_utc
                crls.setdefault(_fingerprint(signer), []).append(
                    _Crl(
                        path=str(self.path / name),
                        issuer_fp=_fingerprint(signer),
                        revoked=serials,
                        this_update=crl.last_update_utc.timestamp(),
                        next_update=next_update.timestamp() if next_update else None,
                    )
                )
        # Forget parsed files that are gone.
        for cache in (self._parsed_certs, self._parsed_crls):
            for gone in set(cache) - set(names):
                del cache[gone]
        self._crl_serials = {k: v for k, v in self._crl_serials.items() if names.get(k[0]) == k[1]}
        return _Snapshot(
            certs=tuple(certs),
            by_subject={subject: tuple(cas) for subject, cas in by_subject.items()},
            fingerprints=frozenset(seen),
            crls={fp: tuple(entries) for fp, entries in crls.items()},
        )

    def _read_certs(self, name: str, stat_key: _StatKey) -> tuple[x509.Certificate, ...]:
        cached = self._parsed_certs.get(name)
        if cached is not None and cached[0] == stat_key:
            return cached[1]
        try:
            data = (self.path / name).read_bytes()
            certs = tuple(
                x509.load_pem_x509_certificates(data)
                if b"-----BEGIN" in data
                else [x509.load_der_x509_certificate(data)]
            )
        except (OSError, ValueError) as exc:
            log.warning("CA directory %s: %s skipped: %s", self.path, name, exc)
            certs = ()
        self._parsed_certs[name] = (stat_key, certs)
        return certs

    def _read_crls(
        self, name: str, stat_key: _StatKey
    ) -> tuple[x509.CertificateRevocationList, ...]:
        cached = self._parsed_crls.get(name)
        if cached is not None and cached[0] == stat_key:
            return cached[1]
        try:
            data = (self.path / name).read_bytes()
            if b"-----BEGIN" in data:
                crls = tuple(
                    x509.load_pem_x509_crl(block)
                    for block in re.findall(
                        rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", data, re.S
                    )
                )
                if not crls:
                    raise ValueError("no PEM CRL in the file")
            else:
                crls = (x509.load_der_x509_crl(data),)
        except (OSError, ValueError) as exc:
            log.warning("CA directory %s: %s skipped: %s", self.path, name, exc)
            crls = ()
        self._parsed_crls[name] = (stat_key, crls)
        return crls

    def _current(self) -> _Snapshot:
        if time.monotonic() >= self._next_check and not self._lock.locked():
            self.refresh()
        return self._snapshot

    # -- queries -------------------------------------------------------------------

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        """Every CA certificate of the directory."""
        return self._current().certs

    def is_anchor(self, cert: x509.Certificate) -> bool:
        """Whether this exact certificate is one of the directory's."""
        return _fingerprint(cert) in self._current().fingerprints

    def issuer_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        """The CA of the directory that issued ``cert`` (name match and signature verified)."""
        for ca in self._current().by_subject.get(cert.issuer, ()):
            if _issued_by(cert, ca):
                return ca
        return None

    def revocation_problem(
        self, cert: x509.Certificate, issuer: x509.Certificate, now: float
    ) -> str:
        """Why ``cert`` (issued by ``issuer``) counts as revoked, or ``""``; see the policy."""
        crls = self._current().crls.get(_fingerprint(issuer), ())
        for crl in crls:
            if cert.serial_number in crl.revoked:
                return f"certificate {openssl_dn(cert.subject)} revoked by its CA"
        fresh = [c for c in crls if c.next_update is None or now <= c.next_update]
        if self.crl_mode == "require":
            if not crls:
                return f"no CRL of CA {openssl_dn(issuer.subject)}"
            if not fresh:
                latest = max(c.next_update or 0.0 for c in crls)
                return f"CRL of CA {openssl_dn(issuer.subject)} expired at {iso_time(latest)}"
        elif crls and not fresh:
            for crl in crls:
                if (crl.path, crl.this_update) not in self._warned:
                    self._warned.add((crl.path, crl.this_update))
                    log.warning(
                        "CRL %s expired at %s; still honoured (is fetch-crl running?)",
                        crl.path,
                        iso_time(crl.next_update or 0.0),
                    )
        return ""

    def revoked(self, cert: x509.Certificate, now: float | None = None) -> bool:
        """Whether ``cert``'s issuer (a CA of the directory) revoked it, per ``crl_mode``.

        A certificate whose issuer is not in the directory is not judged here (False).
        """
        issuer = self.issuer_of(cert)
        if issuer is None:
            return False
        when = time.time() if now is None else now
        return bool(self.revocation_problem(cert, issuer, when))

    def verify_path(
        self,
        cert: x509.Certificate,
        untrusted: Iterable[x509.Certificate],
        now: float,
        what: str = "certificate",
    ) -> list[x509.Certificate]:
        """The path from ``cert`` to a self-signed CA of the directory, checked.

        Issuers are taken from the directory first, then from ``untrusted`` (only CA
        certificates whose key usage allows certificate signing; each link's signature
        verified); every certificate of the path must be within its validity at ``now``, the
        CAs' path length constraints must hold, and none but the anchor may be revoked by its
        issuer's CRL.  The anchor is a self-signed certificate of the directory.  Raises
        :class:`TrustError` naming the first problem; ``what`` names ``cert`` in it.
        """
        snapshot = self._current()
        extra = [c for c in untrusted if _is_ca(c)]
        path = [cert]
        current = cert
        while True:
            name = what if current is cert else "CA certificate"
            problem = validity_problem(current, now, name)
            if problem:
                raise TrustError(problem)
            # CAs between the leaf and this one must be within this one's path length.
            limit = _path_length(current) if len(path) > 2 else None
            if limit is not None and len(path) - 2 > limit:
                raise TrustError(
                    f"CA certificate {openssl_dn(current.subject)} allows {limit} CAs below it, "
                    f"the chain of {openssl_dn(cert.subject)} has {len(path) - 2}"
                )
            self_signed = current.issuer == current.subject
            if self_signed and _fingerprint(current) in snapshot.fingerprints:
                return path
            if self_signed and _issued_by(current, current):
                if current.subject in snapshot.by_subject:
                    raise TrustError(
                        f"{name} {openssl_dn(current.subject)} is not the trusted CA of that "
                        "name (another key)"
                    )
                raise TrustError(
                    f"{name} {openssl_dn(current.subject)} is self-signed and not a trusted CA"
                )
            if len(path) >= _MAX_PATH:
                raise TrustError(f"chain of {openssl_dn(cert.subject)} too long")
            candidates = list(snapshot.by_subject.get(current.issuer, ()))
            candidates += [c for c in extra if c.subject == current.issuer and c not in candidates]
            issuer = next((c for c in candidates if _may_issue(c) and _issued_by(current, c)), None)
            if issuer is None:
                if candidates:
                    raise TrustError(
                        f"signature of {name} {openssl_dn(current.subject)} does not verify "
                        f"with the key of CA {openssl_dn(current.issuer)}"
                    )
                raise TrustError(
                    f"{name} {openssl_dn(current.subject)}: issuer "
                    f"{openssl_dn(current.issuer)} is not a trusted CA"
                )
            problem = self.revocation_problem(current, issuer, now)
            if problem:
                raise TrustError(problem)
            path.append(issuer)
            current = issuer


def _crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
