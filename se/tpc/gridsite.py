"""The GridSite delegation service's SOAP messages (interfaces 1 and 2): pure.

:func:`parse_call` reads a SOAP 1.1 request (untrusted XML, through defusedxml) into the
operation and its arguments; :func:`response` and :func:`fault` write the answers.  The
binding is rpc/literal: the body's element is the operation in the interface's namespace,
its children (unqualified) the arguments, and the answer is ``<op>Response`` holding
``<op>Return``.  Which operation does what is :mod:`se.tpc.delegation`'s business.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from se.errors import BadRequest

__all__ = [
    "INTERFACES",
    "NS_V1",
    "NS_V2",
    "SOAP_ENV",
    "Call",
    "fault",
    "parse_call",
    "response",
    "xsd_datetime",
]

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
NS_V1 = "http://www.gridsite.org/namespaces/delegation-1"
NS_V2 = "http://www.gridsite.org/namespaces/delegation-2"
# The operations of each interface (namespace -> names).
INTERFACES: dict[str, frozenset[str]] = {
    NS_V1: frozenset({"getProxyReq", "putProxy"}),
    NS_V2: frozenset(
        {
            "getVersion",
            "getInterfaceVersion",
            "getServiceMetadata",
            "getProxyReq",
            "getNewProxyReq",
            "renewProxyReq",
            "putProxy",
            "getTerminationTime",
            "destroy",
        }
    ),
}
MAX_ARGUMENT = 64 << 10


@dataclass(frozen=True, slots=True)
class Call:
    namespace: str  # NS_V1 or NS_V2
    operation: str
    args: dict[str, str]  # argument name -> text ("" for an empty or nil element)


def _local(tag: object) -> tuple[str, str]:
    text = tag if isinstance(tag, str) else ""
    if text.startswith("{"):
        ns, _, name = text[1:].partition("}")
        return ns, name
    return "", text


def parse_call(body: bytes) -> Call:
    """The operation a SOAP request asks for; BadRequest with the reason otherwise."""
    try:
        root = SafeET.fromstring(body)
    except (SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        raise BadRequest(f"not a SOAP request: {str(exc)[:100]}") from None
    ns, name = _local(root.tag)
    if name != "Envelope" or ns not in (SOAP_ENV, SOAP12_ENV):
        raise BadRequest("not a SOAP request: no SOAP Envelope")
    bodies = [el for el in root if _local(el.tag) == (ns, "Body")]
    if len(bodies) != 1:
        raise BadRequest("SOAP Envelope without exactly one Body")
    calls = list(bodies[0])
    if len(calls) != 1:
        raise BadRequest("SOAP Body without exactly one operation")
    op_ns, operation = _local(calls[0].tag)
    if op_ns not in INTERFACES:
        raise BadRequest(f"SOAP operation of an unknown namespace {op_ns[:100]!r}")
    if operation not in INTERFACES[op_ns]:
        raise BadRequest(f"unknown delegation operation {operation[:60]!r}")
    args: dict[str, str] = {}
    for child in calls[0]:
        text = "".join(child.itertext()).strip()
        if len(text) > MAX_ARGUMENT:
            raise BadRequest(f"SOAP argument {_local(child.tag)[1][:40]!r} too large")
        args[_local(child.tag)[1]] = text
    return Call(op_ns, operation, args)


def _envelope(namespace: str, inner: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_ENV}" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xmlns:tns="{namespace}"><SOAP-ENV:Body>{inner}</SOAP-ENV:Body></SOAP-ENV:Envelope>\n'
    ).encode()


def response(call: Call, value: str | dict[str, str] | None) -> bytes:
    """``<op>Response``: with ``<op>Return`` holding ``value`` (text, or a structure's
    fields in order), or empty for ``None`` (putProxy, destroy)."""
    if value is None:
        inner = ""
    elif isinstance(value, str):
        inner = f"<{call.operation}Return>{escape(value)}</{call.operation}Return>"
    else:
        fields = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in value.items())
        inner = f"<{call.operation}Return>{fields}</{call.operation}Return>"
    return _envelope(
        call.namespace, f"<tns:{call.operation}Response>{inner}</tns:{call.operation}Response>"
    )


def fault(message: str, *, client: bool = True, namespace: str = NS_V2) -> bytes:
    """A SOAP fault with the delegation interface's ``DelegationException`` detail;
    ``client``: the caller's fault (else the server's)."""
    code = "SOAP-ENV:Client" if client else "SOAP-ENV:Server"
    text = escape(" ".join(message.split())[:500])
    return _envelope(
        namespace,
        f"<SOAP-ENV:Fault><faultcode>{code}</faultcode><faultstring>{text}</faultstring>"
        f"<detail><tns:DelegationException><msg>{text}</msg></tns:DelegationException>"
        "</detail></SOAP-ENV:Fault>",
    )


def xsd_datetime(when: float) -> str:
    """An ``xsd:dateTime`` in UTC (``2026-12-07T12:00:00Z``)."""
    return dt.datetime.fromtimestamp(int(when), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
