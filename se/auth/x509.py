"""Client certificates and proxy chains turned into a verified identity.

A grid client presents, over TLS, either its end-entity certificate (EEC) or a proxy chain:
``proxy [-> proxy ...] -> EEC [-> intermediate CA ...]``.  The TLS layer has checked that
the client holds the leaf's key and (with ``VERIFY_ALLOW_PROXY_CERTS``) that the chain
verifies; :meth:`X509Verifier.identify` checks all of it again, independently of OpenSSL,
so that what it returns holds whatever the TLS layer was told (times are not checked there,
so that an expired proxy gets a 401 with its reason rather than a bare TLS alert):

* every proxy (RFC 3820, with the ProxyCertInfo extension; the pre-RFC draft one; or a
  legacy Globus proxy named ``CN=proxy``/``CN=limited proxy``) is signed by the next
  certificate, is named as its issuer plus one ``CN``, is within its validity, its issuer's
  key usage (if any) allows signing, and the path length constraints of the proxies above
  it hold; at most ``max_proxy_depth`` proxies;
* the EEC is not a CA and chains to a CA of the CA directory (signatures, validity, CRLs:
  :meth:`se.auth.cadir.TrustStore.verify_path`);
* the leaf-most certificate with a VOMS extension gives the attribute certificate, verified
  by :func:`se.auth.voms.verify_ac`; an AC that fails is left out (``ac_problem`` says why)
  and the identity keeps its DN.

The identity is the EEC's: its DN, not the proxy's.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from asn1crypto import core  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from se.auth.cadir import (
    CrlMode,
    TrustError,
    TrustStore,
    openssl_dn,
    rfc4514_dn,
    validity_problem,
)
from se.auth.voms import VomsError, parse_voms_extension, verify_ac, voms_extension

__all__ = [
    "X509Error",
    "X509Identity",
    "X509Verifier",
    "configure_server_context",
    "is_proxy",
    "peer_chain",
]

PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
_DRAFT_PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.4.1.3536.1.222")
_LEGACY_PROXY_CNS = ("proxy", "limited proxy")
# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: validity is judged here, with a reason for the client.
_NO_CHECK_TIME = 0x200000


class X509Error(Exception):
    """A client certificate or chain that cannot be used; the message is the reason."""


@dataclass(frozen=True, slots=True)
class X509Identity:
    dn: str  # end-entity certificate subject, slash form
    dn_rfc4514: str
    issuer_dn: str  # end-entity certificate issuer, slash form
    serial: int
    proxy_depth: int  # proxies above the end-entity certificate (0: the EEC itself)
    vo: str  # "" when no AC was trusted
    fqans: tuple[str, ...]  # the trusted AC's FQANs in order
    ac_problem: str  # why the AC was left out, or ""
    not_after: float  # Unix time the identity stops being valid


class _ProxyPolicy(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[tuple[str, type]]] = [
        ("policy_language", core.ObjectIdentifier),
        ("policy", core.OctetString, {"optional": True}),  # type: ignore[list-item]
    ]


class _ProxyCertInfo(core.Sequence):  # type: ignore[misc]
    _fields: ClassVar[list[tuple[str, type]]] = [
        ("path_len", core.Integer, {"optional": True}),  # type: ignore[list-item]
        ("policy", _ProxyPolicy),
    ]


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> Any:
    try:
        return cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def _path_len(cert: x509.Certificate) -> int | None:
    """The ProxyCertInfo path length constraint of an RFC proxy (None: unlimited)."""
    value = _extension(cert, PROXY_CERT_INFO)
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    try:
        info = _ProxyCertInfo.load(value.value, strict=True)
        path_len = info["path_len"].native
    except (ValueError, TypeError, KeyError) as exc:
        raise X509Error(f"proxy {openssl_dn(cert.subject)}: malformed ProxyCertInfo") from exc
    return None if path_len is None else int(path_len)


def _is_legacy_proxy(cert: x509.Certificate) -> bool:
    rdns = cert.subject.rdns
    if len(rdns) < 2 or len(rdns[-1]) != 1:
        return False
    (last,) = rdns[-1]
    return (
        last.oid == NameOID.COMMON_NAME
        and last.value in _LEGACY_PROXY_CNS
        and x509.Name(rdns[:-1]) == cert.issuer
    )


def is_proxy(cert: x509.Certificate) -> bool:
    """Whether a certificate is a proxy (RFC 3820, pre-RFC draft, or legacy Globus)."""
    if _extension(cert, PROXY_CERT_INFO) is not None:
        return True
    if _extension(cert, _DRAFT_PROXY_CERT_INFO) is not None:
        return True
    return _is_legacy_proxy(cert)


def _is_ca(cert: x509.Certificate) -> bool:
    constraints = _extension(cert, x509.BasicConstraints.oid)
    return isinstance(constraints, x509.BasicConstraints) and constraints.ca


def _check_proxy(proxy: x509.Certificate, issuer: x509.Certificate, now: float) -> None:
    name = openssl_dn(proxy.subject)
    rdns = proxy.subject.rdns
    if (
        proxy.issuer != issuer.subject
        or len(rdns) != len(issuer.subject.rdns) + 1
        or x509.Name(rdns[:-1]) != issuer.subject
        or len(rdns[-1]) != 1
        or next(iter(rdns[-1])).oid != NameOID.COMMON_NAME
    ):
        raise X509Error(f"proxy {name} is not named after its issuer plus one CN")
    try:
        proxy.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise X509Error(f"signature of proxy {name} does not verify") from None
    usage = _extension(issuer, x509.KeyUsage.oid)
    if isinstance(usage, x509.KeyUsage) and not usage.digital_signature:
        raise X509Error(f"certificate {openssl_dn(issuer.subject)} may not sign proxies")
    if _is_ca(proxy):
        raise X509Error(f"proxy {name} claims to be a CA")
    problem = validity_problem(proxy, now, "proxy")
    if problem:
        raise X509Error(problem)


class X509Verifier:
    """Verifies client chains against one CA directory and one vomsdir; thread-safe."""

    def __init__(
        self,
        ca_dir: str,
        vomsdir: str,
        *,
        max_proxy_depth: int = 10,
        crl_mode: str = "if_present",
        host_names: Collection[str] = (),
        check_interval: float = 5.0,
    ) -> None:
        if crl_mode not in ("if_present", "require"):
            raise ValueError(f"crl_mode {crl_mode!r} is not if_present or require")
        mode: CrlMode = "require" if crl_mode == "require" else "if_present"
        self.store = TrustStore(ca_dir, check_interval=check_interval, crl_mode=mode)
        self.vomsdir = vomsdir
        self.max_proxy_depth = max_proxy_depth
        self.host_names = tuple(host_names)

    def identify(self, chain_der: Sequence[bytes], now: float | None = None) -> X509Identity:
        """The identity of a chain (DER, leaf first); raises :class:`X509Error`."""
        when = time.time() if now is None else now
        if not chain_der:
            raise X509Error("no client certificate")
        try:
            certs = [x509.load_der_x509_certificate(der) for der in chain_der]
        except ValueError:
            raise X509Error("a certificate of the chain cannot be read") from None
        proxies: list[x509.Certificate] = []
        for cert in certs:
            if not is_proxy(cert):
                break
            proxies.append(cert)
        if len(proxies) == len(certs):
            raise X509Error("the chain holds proxies but not the certificate they were made from")
        eec = certs[len(proxies)]
        if len(proxies) > self.max_proxy_depth:
            raise X509Error(
                f"{len(proxies)} proxies above {openssl_dn(eec.subject)}, "
                f"more than the {self.max_proxy_depth} allowed"
            )
        if _is_ca(eec):
            raise X509Error(f"{openssl_dn(eec.subject)} is a CA certificate, not a client's")
        for index, proxy in enumerate(proxies):
            issuer = proxies[index + 1] if index + 1 < len(proxies) else eec
            _check_proxy(proxy, issuer, when)
            # The proxies below this one (closer to the leaf) count against its limit.
            limit = _path_len(proxy)
            if limit is not None and index > limit:
                raise X509Error(
                    f"proxy {openssl_dn(proxy.subject)} allows {limit} proxies below it, "
                    f"the chain has {index}"
                )
        try:
            path = self.store.verify_path(
                eec, certs[len(proxies) + 1 :], when, what="client certificate"
            )
        except TrustError as exc:
            raise X509Error(str(exc)) from None
        not_after = min(c.not_valid_after_utc.timestamp() for c in (*proxies, *path))
        vo, problem = "", ""
        fqans: tuple[str, ...] = ()
        for cert in (*proxies, eec):
            extension = voms_extension(cert)
            if extension is None:
                continue
            try:
                ac = parse_voms_extension(extension)[0]
                attrs = verify_ac(
                    ac, eec, self.store, self.vomsdir, when, host_names=self.host_names
                )
            except VomsError as exc:
                problem = str(exc)
            else:
                vo, fqans = attrs.vo, attrs.fqans
                not_after = min(not_after, attrs.not_after)
            break
        return X509Identity(
            dn=openssl_dn(eec.subject),
            dn_rfc4514=rfc4514_dn(eec.subject),
            issuer_dn=openssl_dn(eec.issuer),
            serial=eec.serial_number,
            proxy_depth=len(proxies),
            vo=vo,
            fqans=tuple(fqans),
            ac_problem=problem,
            not_after=not_after,
        )


def configure_server_context(ctx: ssl.SSLContext, ca_dir: str, client_certs: str) -> None:
    """Ask TLS clients for a certificate (``"optional"`` or ``"required"``), trusting the
    hashed CA directory, proxies allowed.

    Times are left to :meth:`X509Verifier.identify` (an expired proxy gets a 401 that says
    so), and so are CRLs.  Resumed sessions must still show the client's chain: TLS 1.3
    tickets and TLS 1.2 tickets carry the session without it, so neither is issued; a
    TLS 1.2 client may still resume from the server's in-memory session cache, whose
    sessions keep the chain they were verified with (:func:`peer_chain`).
    """
    if client_certs == "none":
        return
    ctx.verify_mode = ssl.CERT_REQUIRED if client_certs == "required" else ssl.CERT_OPTIONAL
    ctx.load_verify_locations(capath=ca_dir)
    # (Clearing first: an IntFlag complement would drop the bit ssl has no name for.)
    ctx.verify_flags &= ~(ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_CRL_CHECK_CHAIN)
    ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS | _NO_CHECK_TIME
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0


def _der_chain(certs: Any) -> list[bytes]:
    import _ssl

    # Without a client certificate the server side's unverified chain is [None].
    return [cert.public_bytes(_ssl.ENCODING_DER) for cert in certs or () if cert is not None]


def peer_chain(ssl_object: ssl.SSLObject | None) -> list[bytes]:
    """DER of the client's chain, leaf first; [] without a client certificate.

    The chain OpenSSL verified when there is one; on a resumed session (no verification
    ran) the chain the session was verified with.  Either way :meth:`X509Verifier.identify`
    checks it again.  Python 3.13 has these as public methods; before, the ``_sslobj``
    behind an :class:`ssl.SSLObject` has them.
    """
    if ssl_object is None:
        return []
    chain = _call(ssl_object, "get_verified_chain")
    if not chain:
        chain = _call(ssl_object, "get_unverified_chain")
    return _der_chain(chain)


def _call(ssl_object: ssl.SSLObject, name: str) -> Any:
    method = getattr(ssl_object, name, None)
    if method is None:
        method = getattr(getattr(ssl_object, "_sslobj", None), name, None)
    if method is None:
        return None
    with contextlib.suppress(ssl.SSLError, ValueError):
        return method()
    return None
