"""Client certificates and proxy chains turned into a verified identity.

A grid client presents, over TLS, either its end-entity certificate (EEC) or a proxy chain:
``proxy [-> proxy ...] -> EEC [-> intermediate CA ...]``.  The TLS layer has checked that
the client holds the leaf's key and (with ``VERIFY_ALLOW_PROXY_CERTS``) that the chain
verifies; :meth:`X509Verifier.identify` checks all of it again, independently of OpenSSL,
so that what it returns holds whatever the TLS layer was told (times are not checked there,
so that an expired proxy gets a 401 with its reason rather than a bare TLS alert):

* every proxy (RFC 3820, with the ProxyCertInfo extension; the pre-RFC draft one; or a
  legacy Globus proxy named ``CN=proxy``/``CN=limited proxy``) is signed by the next
  certificate, is named as its issuer plus one ``CN``, is not a CA, is within its validity,
  its issuer's key usage (if any) allows signing, and the path length constraints of the
  proxies above it hold; an RFC proxy's ProxyCertInfo is critical and its policy language
  inherits the issuer's rights (inheritAll or Globus' limited; independent proxies and
  application policies are refused); at most ``max_proxy_depth`` proxies;
* the EEC is not a CA and chains to a CA of the CA directory (signatures, validity, CRLs:
  :meth:`se.auth.cadir.TrustStore.verify_path`);
* the leaf-most certificate with a VOMS extension gives the attribute certificate, verified
  by :func:`se.auth.voms.verify_ac`; an AC that fails is left out (``ac_problem`` says why)
  and the identity keeps its DN.

The identity is the EEC's: its DN, not the proxy's.

Over TLS only RFC 3820 proxies get this far: OpenSSL (even with ``VERIFY_ALLOW_PROXY_CERTS``)
refuses legacy Globus proxies (an end-entity certificate as an issuer) and draft proxies (an
unknown critical extension) at the handshake.  :meth:`X509Verifier.identify` still takes
them, for chains that reach it otherwise.
"""

from __future__ import annotations

import ssl
import time
from _ssl import ENCODING_DER  # the encoding argument of the private certificate objects
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
# Policy languages of proxies that carry their issuer's rights: id-ppl-inheritAll (RFC 3820)
# and Globus' limited proxy.  id-ppl-independent (1.3.6.1.5.5.7.21.2) and application
# policies are refused: such a proxy does not speak for its end-entity certificate here.
_RIGHTS_POLICIES = {
    "1.3.6.1.5.5.7.21.1": "inheritAll",
    "1.3.6.1.4.1.3536.1.1.1.9": "limited",
}
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


def _proxy_cert_info(cert: x509.Certificate) -> int | None:
    """The path length constraint of an RFC 3820 proxy (None: unlimited; None for other
    proxies too), after checking its ProxyCertInfo: critical, well formed, and a policy
    language that inherits the issuer's rights."""
    try:
        ext = cert.extensions.get_extension_for_oid(PROXY_CERT_INFO)
    except x509.ExtensionNotFound:
        return None
    name = openssl_dn(cert.subject)
    if not ext.critical:
        raise X509Error(f"proxy {name}: ProxyCertInfo is not marked critical")
    value = ext.value
    try:
        if not isinstance(value, x509.UnrecognizedExtension):
            raise ValueError("not an extension value cryptography leaves undecoded")
        info = _ProxyCertInfo.load(value.value, strict=True)
        path_len = info["path_len"].native
        language = info["policy"]["policy_language"].dotted
    except (ValueError, TypeError, KeyError):
        raise X509Error(f"proxy {name}: malformed ProxyCertInfo") from None
    if language not in _RIGHTS_POLICIES:
        raise X509Error(f"proxy {name} has policy language {language}, not one that inherits")
    if path_len is not None and int(path_len) < 0:
        raise X509Error(f"proxy {name}: negative path length in ProxyCertInfo")
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
        for cert in certs:
            try:
                cert.extensions  # noqa: B018 - parsed on first use; refuse bad ones here
            except (ValueError, x509.DuplicateExtension) as exc:
                raise X509Error(
                    f"certificate {openssl_dn(cert.subject)} has malformed extensions: {exc}"
                ) from None
        proxies: list[x509.Certificate] = []
        for cert in certs:
            if not is_proxy(cert):
                break
            proxies.append(cert)
        if len(proxies) == len(certs):
            raise X509Error(
                f"the chain of {openssl_dn(certs[0].subject)} holds proxies but not the "
                "certificate they were made from"
            )
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
            limit = _proxy_cert_info(proxy)
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
        extension = next(
            (found for found in map(voms_extension, (*proxies, eec)) if found is not None), None
        )
        if extension is not None:
            try:
                ac = parse_voms_extension(extension)[0]
                attrs = verify_ac(
                    ac, eec, self.store, self.vomsdir, when, host_names=self.host_names
                )
            except VomsError as exc:
                problem = str(exc)
            except (ValueError, TypeError, KeyError, OverflowError) as exc:
                # Malformed content asn1crypto only notices when a part is first read.
                problem = f"malformed VOMS attribute certificate: {exc}"
            else:
                vo, fqans = attrs.vo, attrs.fqans
                not_after = min(not_after, attrs.not_after)
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
    """Set up a TLS server context to ask for client certificates.

    ``client_certs``: ``"none"`` (never asked for; nothing else changes), ``"optional"``
    (asked for; a client without one still connects) or ``"required"`` (a handshake without
    one fails).  A certificate a client does present must chain to the hashed CA directory
    ``ca_dir`` (RFC 3820 proxies allowed), or the handshake fails.

    Left to :meth:`X509Verifier.identify`: validity times (so that an expired proxy gets a
    401 saying so instead of a bare TLS alert), CRLs, strict RFC 5280 profile checks (old
    proxy tools leave out extensions OpenSSL's strict mode demands), and partial chains
    (only self-signed anchors are trusted, as there).

    Session resumption keeps the client's chain: a session restored from a stateless ticket
    (TLS 1.2 or 1.3) keeps none of the client's certificates but the leaf, so tickets are
    stateful (``OP_NO_TICKET``): TLS 1.2 resumes by session ID, TLS 1.3 by a ticket that
    names a session of OpenSSL's in-memory cache, and such a session keeps the certificates
    the client sent, which :func:`peer_chain` returns when no verification ran.  One TLS 1.3
    ticket is still sent after each handshake: without anything from the server after its
    Finished, a client without ``TCP_NODELAY`` waits a delayed ACK (~40 ms) before its
    request leaves.
    """
    if client_certs == "none":
        ctx.verify_mode = ssl.CERT_NONE
        return
    if client_certs not in ("optional", "required"):
        raise ValueError(f"client_certs {client_certs!r} is not none, optional or required")
    if ctx.protocol is not ssl.PROTOCOL_TLS_SERVER:
        raise ValueError("client certificates need a PROTOCOL_TLS_SERVER context")
    ctx.verify_mode = ssl.CERT_REQUIRED if client_certs == "required" else ssl.CERT_OPTIONAL
    ctx.load_verify_locations(capath=ca_dir)
    # As plain integers: "~" of a VerifyFlags value only spans the flags the ssl module
    # names, so it would clear NO_CHECK_TIME too.
    unwanted = int(
        ssl.VERIFY_CRL_CHECK_LEAF
        | ssl.VERIFY_CRL_CHECK_CHAIN
        | ssl.VERIFY_X509_STRICT
        | ssl.VERIFY_X509_PARTIAL_CHAIN
    )
    flags = (int(ctx.verify_flags) & ~unwanted) | int(ssl.VERIFY_ALLOW_PROXY_CERTS) | _NO_CHECK_TIME
    ctx.verify_flags = ssl.VerifyFlags(flags)
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 1


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> list[bytes]:
    """DER of the client's certificate chain, leaf first; [] without a client certificate.

    The chain OpenSSL verified (it ends with the trust anchor from the CA directory); if
    there is none although the client sent certificates (a resumed session, which
    :func:`configure_server_context` prevents), the certificates the client sent.  Either
    way :meth:`X509Verifier.identify` checks them all again.  Python 3.13 has public
    ``get_verified_chain``/``get_unverified_chain`` methods; before, the ``_sslobj`` behind
    an :class:`ssl.SSLObject` or :class:`ssl.SSLSocket` has them.
    """
    if ssl_object is None:
        return []
    chain = _chain(ssl_object, "get_verified_chain")
    return chain or _chain(ssl_object, "get_unverified_chain")


def _chain(ssl_object: ssl.SSLObject | ssl.SSLSocket, name: str) -> list[bytes]:
    method = getattr(ssl_object, name, None)
    if method is None:
        method = getattr(getattr(ssl_object, "_sslobj", None), name, None)
    if method is None:
        return []
    try:
        certs = method()
    except (ssl.SSLError, ValueError):  # no handshake yet, or the connection is gone
        return []
    # Without a client certificate the server side's chain is None, [] or [None]; the
    # public methods give DER bytes, the private ones certificate objects.
    return [
        cert if isinstance(cert, bytes) else cert.public_bytes(ENCODING_DER)
        for cert in certs or ()
        if cert is not None
    ]
