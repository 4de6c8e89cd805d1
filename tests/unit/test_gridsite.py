"""The GridSite delegation SOAP messages (se.tpc.gridsite): parsing and answers, as davix's
gSOAP client sends and reads them."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from se.errors import BadRequest
from se.tpc import gridsite
from se.tpc.gridsite import NS_V1, NS_V2, SOAP_ENV, Call

# What gSOAP (davix 0.8) puts on the wire for getProxyReq, prefixes and all.
GSOAP_GET_PROXY_REQ = f"""<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_ENV}"
 xmlns:SOAP-ENC="http://schemas.xmlsoap.org/soap/encoding/"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
 xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:tns="{NS_V1}" xmlns:tns2="{NS_V2}">
<SOAP-ENV:Body><tns2:getProxyReq><delegationID>1234</delegationID></tns2:getProxyReq>
</SOAP-ENV:Body></SOAP-ENV:Envelope>""".encode()


def envelope(inner: str, env: str = SOAP_ENV) -> bytes:
    return (
        f'<e:Envelope xmlns:e="{env}" xmlns:d="{NS_V2}" xmlns:d1="{NS_V1}">'
        f"<e:Body>{inner}</e:Body></e:Envelope>"
    ).encode()


def test_parse_gsoap_request() -> None:
    call = gridsite.parse_call(GSOAP_GET_PROXY_REQ)
    assert call == Call(NS_V2, "getProxyReq", {"delegationID": "1234"})


def test_parse_arguments_and_interface_1() -> None:
    call = gridsite.parse_call(
        envelope("<d1:putProxy><delegationID>x</delegationID><proxy> PEM </proxy></d1:putProxy>")
    )
    assert call == Call(NS_V1, "putProxy", {"delegationID": "x", "proxy": "PEM"})
    nil = '<delegationID xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:nil="true"/>'
    assert gridsite.parse_call(envelope(f"<d:destroy>{nil}</d:destroy>")).args == {
        "delegationID": ""
    }
    assert gridsite.parse_call(envelope("<d:getVersion/>")).args == {}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not a SOAP request"),
        (b"<x/>", "no SOAP Envelope"),
        (b"\xff\xfe<", "not a SOAP request"),
        (envelope("<d:getVersion/><d:getVersion/>"), "exactly one operation"),
        (envelope(""), "exactly one operation"),
        (envelope("<d:stealKeys/>"), "unknown delegation operation 'stealKeys'"),
        (envelope("<d1:destroy/>"), "unknown delegation operation 'destroy'"),  # not in v1
        (envelope('<o:getVersion xmlns:o="urn:other"/>'), "unknown namespace"),
        (
            f'<e:Envelope xmlns:e="{SOAP_ENV}"><e:Body/><e:Body/></e:Envelope>'.encode(),
            "exactly one Body",
        ),
        (
            b'<!DOCTYPE x [<!ENTITY a "aaaa">]><e:Envelope xmlns:e="'
            + SOAP_ENV.encode()
            + b'"><e:Body>&a;</e:Body></e:Envelope>',
            "not a SOAP request",
        ),
        (
            envelope(
                f"<d:putProxy><proxy>{'A' * (gridsite.MAX_ARGUMENT + 1)}</proxy></d:putProxy>"
            ),
            "too large",
        ),
    ],
)
def test_refused_requests(body: bytes, reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        gridsite.parse_call(body)


def _body_of(answer: bytes) -> ET.Element:
    root = ET.fromstring(answer)
    assert root.tag == f"{{{SOAP_ENV}}}Envelope"
    body = root.find(f"{{{SOAP_ENV}}}Body")
    assert body is not None and len(body) == 1
    return body[0]


def test_responses_are_rpc_literal() -> None:
    call = Call(NS_V2, "getProxyReq", {})
    element = _body_of(gridsite.response(call, "-----BEGIN CERTIFICATE REQUEST-----\n<&>"))
    assert element.tag == f"{{{NS_V2}}}getProxyReqResponse"
    assert [(c.tag, c.text) for c in element] == [
        ("getProxyReqReturn", "-----BEGIN CERTIFICATE REQUEST-----\n<&>")
    ]
    new = _body_of(
        gridsite.response(
            Call(NS_V2, "getNewProxyReq", {}), {"proxyRequest": "R", "delegationID": "i"}
        )
    )
    ret = new.find("getNewProxyReqReturn")
    assert ret is not None and [(c.tag, c.text) for c in ret] == [
        ("proxyRequest", "R"),
        ("delegationID", "i"),
    ]
    empty = _body_of(gridsite.response(Call(NS_V1, "putProxy", {}), None))
    assert empty.tag == f"{{{NS_V1}}}putProxyResponse" and len(empty) == 0


def test_fault_carries_the_reason_once_escaped() -> None:
    element = _body_of(gridsite.fault("no delegated proxy <with ID>\nx", client=False))
    assert element.tag == f"{{{SOAP_ENV}}}Fault"
    assert element.findtext("faultcode") == "SOAP-ENV:Server"
    assert element.findtext("faultstring") == "no delegated proxy <with ID> x"
    assert element.findtext(f"detail/{{{NS_V2}}}DelegationException/msg") == (
        "no delegated proxy <with ID> x"
    )
    assert _body_of(gridsite.fault("x")).findtext("faultcode") == "SOAP-ENV:Client"


def test_xsd_datetime() -> None:
    assert gridsite.xsd_datetime(0) == "1970-01-01T00:00:00Z"
    assert gridsite.xsd_datetime(1796558400.9) == "2026-12-06T12:00:00Z"
