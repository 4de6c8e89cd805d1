"""PROPFIND and PROPPATCH bodies (RFC 4918 §9.1, §9.2, §14).  Pure.

Request bodies are untrusted XML and are parsed with defusedxml only.  Responses are built
as text directly (a listing of thousands of entries must stay cheap), with every value
XML-escaped and every href percent-encoded by the caller.  Property names are handled as
``(namespace, local name)`` pairs; dead properties travel as their serialised elements.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal
from xml.etree.ElementTree import Element, tostring

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from se.errors import BadRequest
from se.storage import checksums
from se.web.representation import http_date

__all__ = [
    "DAV",
    "DCACHE",
    "FILE_LOCALITY",
    "PatchOp",
    "PropRequest",
    "Resource",
    "parse_propfind",
    "parse_proppatch",
    "render_multistatus",
    "render_proppatch",
    "render_responses",
    "render_status_list",
    "wrap_multistatus",
]

DAV = "DAV:"
DCACHE = "http://www.dcache.org/2013/webdav"
SRM = "http://srm.lbl.gov/StorageResourceManager"
# The SRM-style locality of a file (ONLINE, NEARLINE, ONLINE_AND_NEARLINE...), as dCache
# answers it; only on request, since it needs the tape catalogue.
FILE_LOCALITY: tuple[str, str] = (SRM, "FileLocality")
PropName = tuple[str, str]

# Live properties answered for every resource (allprop) and the ones only on request.
_ALLPROP_LIVE: tuple[PropName, ...] = (
    (DAV, "creationdate"),
    (DAV, "displayname"),
    (DAV, "getcontentlength"),
    (DAV, "getcontenttype"),
    (DAV, "getetag"),
    (DAV, "getlastmodified"),
    (DAV, "resourcetype"),
    (DCACHE, "Checksums"),
)
_ON_REQUEST_LIVE: tuple[PropName, ...] = (
    (DAV, "quota-used-bytes"),
    (DAV, "quota-available-bytes"),
    (DAV, "iscollection"),
    (DAV, "supportedlock"),
    (DAV, "lockdiscovery"),
    FILE_LOCALITY,
)
LIVE = frozenset(_ALLPROP_LIVE + _ON_REQUEST_LIVE)


@dataclass(frozen=True, slots=True)
class PropRequest:
    kind: Literal["allprop", "propname", "prop"]
    names: tuple[PropName, ...] = ()


@dataclass(frozen=True, slots=True)
class PatchOp:
    action: Literal["set", "remove"]
    name: PropName
    element: bytes = b""  # the serialised property element for "set"

    @property
    def key(self) -> str:
        return "{{{}}}{}".format(*self.name)


@dataclass(slots=True)
class Resource:
    """What PROPFIND shows of one file or collection."""

    href: str
    name: str
    is_dir: bool
    size: int
    mtime: float
    ctime: float
    etag: str
    content_type: str = "application/octet-stream"
    checksums: dict[str, bytes] = field(default_factory=dict)
    dead: Sequence[bytes] = ()
    quota: tuple[int, int] | None = None  # (used, available) bytes, collections only
    locality: str | None = None  # SRM FileLocality, files only, when asked for


def _split(tag: str) -> PropName:
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _parse(body: bytes, root_name: str) -> Element:
    try:
        root: Element = DET.fromstring(body)
    except DefusedXmlException as exc:
        raise BadRequest(f"forbidden XML construct in {root_name} body") from exc
    except Exception as exc:  # ParseError and friends
        raise BadRequest(f"malformed XML in {root_name} body: {exc}") from None
    if root.tag != f"{{{DAV}}}{root_name}":
        raise BadRequest(f"request body is not a DAV:{root_name} element")
    return root


# Bodies up to this size are remembered with what they parse to: clients send the same few
# bodies (gfal2, davix and FTS one each) over and over, and parsing one costs more than the
# rest of a PROPFIND Depth 0 of a file.
_REMEMBERED_BODY = 2048


def parse_propfind(body: bytes) -> PropRequest:
    """An empty body means allprop (RFC 4918 §9.1)."""
    if len(body) <= _REMEMBERED_BODY:
        return _parse_propfind_small(body)
    return _parse_propfind(body)


@functools.lru_cache(maxsize=64)
def _parse_propfind_small(body: bytes) -> PropRequest:
    """:func:`_parse_propfind`, remembered (the result is immutable; a refusal is not kept)."""
    return _parse_propfind(body)


def _parse_propfind(body: bytes) -> PropRequest:
    if not body.strip():
        return PropRequest("allprop")
    root = _parse(body, "propfind")
    for child in root:
        tag = _split(child.tag)
        if tag == (DAV, "allprop"):
            return PropRequest("allprop")
        if tag == (DAV, "propname"):
            return PropRequest("propname")
        if tag == (DAV, "prop"):
            return PropRequest("prop", tuple(_split(p.tag) for p in child))
    raise BadRequest("propfind body names none of allprop, propname, prop")


def parse_proppatch(body: bytes) -> list[PatchOp]:
    root = _parse(body, "propertyupdate")
    ops: list[PatchOp] = []
    for instr in root:
        kind = _split(instr.tag)
        if kind not in ((DAV, "set"), (DAV, "remove")):
            continue
        for prop in instr:
            if _split(prop.tag) != (DAV, "prop"):
                continue
            for item in prop:
                name = _split(item.tag)
                if kind == (DAV, "set"):
                    item.tail = None
                    ops.append(
                        PatchOp(
                            "set", name, tostring(item, encoding="utf-8", xml_declaration=False)
                        )
                    )
                else:
                    ops.append(PatchOp("remove", name))
    if not ops:
        raise BadRequest("propertyupdate body has no property to set or remove")
    return ops


def dead_prop_name(element: bytes) -> PropName | None:
    try:
        return _split(DET.fromstring(element).tag)
    except Exception:
        return None


def xml_escape(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if not text.isprintable():  # rare: only then look for what XML 1.0 cannot carry
        text = _XML_UNSAFE.sub(_xml_char, text)
    return text


# A name made on disk may hold characters that XML 1.0 cannot carry even as references (C0
# controls but TAB and LF, U+FFFE/U+FFFF, surrogates from undecodable bytes) or that a parser
# would normalise away (CR): CR becomes a character reference, the others percent-encoded
# UTF-8 (surrogateescape'd bytes as themselves), as hrefs are.
_XML_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_char(m: re.Match[str]) -> str:
    ch = m.group()
    if ch == "\r":
        return "&#13;"
    try:
        data = ch.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        data = ch.encode("utf-8", "surrogatepass")
    return "".join(f"%{b:02X}" for b in data)


@functools.lru_cache(maxsize=8192)
def _iso_date_s(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_date(ts: float) -> str:
    return _iso_date_s(int(ts))


@functools.lru_cache(maxsize=1024)
def _open(name: PropName) -> tuple[str, str]:
    ns, local = name
    if ns == DAV:
        return f"<D:{local}>", f"</D:{local}>"
    if ns == DCACHE:
        return f"<C:{local}>", f"</C:{local}>"
    if ns == "":
        return f'<{local} xmlns="">', f"</{local}>"
    ns_attr = xml_escape(ns).replace('"', "&quot;")  # an attribute value: quotes too
    return f'<X:{local} xmlns:X="{ns_attr}">', f"</X:{local}>"


def _empty(name: PropName) -> str:
    start, _end = _open(name)
    return start[:-1] + "/>"


def _live_value(r: Resource, name: PropName) -> str | None:
    """The XML content of a live property, or None when the resource lacks it."""
    local = name[1] if name[0] == DAV else None
    if local == "resourcetype":
        return "<D:collection/>" if r.is_dir else ""
    if local == "getlastmodified":
        return http_date(r.mtime)
    if local == "creationdate":
        return _iso_date(r.ctime)
    if local == "displayname":
        return xml_escape(r.name)
    if local == "getetag":
        return xml_escape(r.etag)
    if local == "iscollection":
        return "1" if r.is_dir else "0"
    if local == "supportedlock" or local == "lockdiscovery":
        return ""
    if r.is_dir:
        if r.quota is not None and local == "quota-used-bytes":
            return str(r.quota[0])
        if r.quota is not None and local == "quota-available-bytes":
            return str(r.quota[1])
        return None
    if local == "getcontentlength":
        return str(r.size)
    if local == "getcontenttype":
        return xml_escape(r.content_type)
    if name == (DCACHE, "Checksums") and r.checksums:
        return ",".join(checksums.format_digest(a, v) for a, v in sorted(r.checksums.items()))
    if name == FILE_LOCALITY:
        return r.locality
    return None


def _allprop_response(r: Resource) -> str:
    """The common case (empty PROPFIND body, as rclone sends), built in one go."""
    extra = ""
    if r.is_dir:
        kind = "<D:resourcetype><D:collection/></D:resourcetype>"
    else:
        kind = (
            f"<D:getcontentlength>{r.size}</D:getcontentlength>"
            f"<D:getcontenttype>{xml_escape(r.content_type)}</D:getcontenttype><D:resourcetype/>"
        )
        if r.checksums:
            extra = (
                "<C:Checksums>"
                + ",".join(checksums.format_digest(a, v) for a, v in sorted(r.checksums.items()))
                + "</C:Checksums>"
            )
    if r.dead:
        extra += "".join(el.decode("utf-8") for el in r.dead)
    return (
        f"<D:response><D:href>{r.href}</D:href><D:propstat><D:prop>"
        f"<D:creationdate>{_iso_date_s(int(r.ctime))}</D:creationdate>"
        f"<D:displayname>{xml_escape(r.name)}</D:displayname>{kind}"
        f"<D:getetag>{xml_escape(r.etag)}</D:getetag>"
        f"<D:getlastmodified>{http_date(r.mtime)}</D:getlastmodified>{extra}"
        "</D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>"
    )


def _response(r: Resource, req: PropRequest) -> str:
    ok: list[str] = []
    missing: list[str] = []
    if req.kind == "propname":
        names = [n for n in _ALLPROP_LIVE if _live_value(r, n) is not None]
        ok = [_empty(n) for n in names]
        for el in r.dead:
            dn = dead_prop_name(el)
            if dn is not None:
                ok.append(_empty(dn))
    elif req.kind == "allprop":
        return _allprop_response(r)
    else:
        dead = {dead_prop_name(el): el for el in r.dead} if r.dead else {}
        for n in req.names:
            v = _live_value(r, n) if n in LIVE else None
            if v is not None:
                s, e = _open(n)
                ok.append(f"{s}{v}{e}")
            elif n in dead:
                ok.append(dead[n].decode("utf-8"))
            else:
                missing.append(_empty(n))
    parts = [f"<D:response><D:href>{r.href}</D:href>"]
    if ok or not missing:
        parts.append(
            f"<D:propstat><D:prop>{''.join(ok)}</D:prop>"
            "<D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
        )
    if missing:
        parts.append(
            f"<D:propstat><D:prop>{''.join(missing)}</D:prop>"
            "<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>"
        )
    parts.append("</D:response>")
    return "".join(parts)


_HEAD = f'<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:" xmlns:C="{DCACHE}">'
_TAIL = "</D:multistatus>\n"


def render_multistatus(resources: Iterable[Resource], req: PropRequest) -> bytes:
    return wrap_multistatus(render_responses(resources, req))


def render_responses(resources: Iterable[Resource], req: PropRequest) -> bytes:
    """The ``<D:response>`` elements alone, so that parts can be rendered (and kept) apart."""
    return "".join(_response(r, req) for r in resources).encode("utf-8")


_HEAD_B = _HEAD.encode("utf-8")
_TAIL_B = _TAIL.encode("utf-8")


def wrap_multistatus(*parts: bytes) -> bytes:
    return b"".join(multistatus_parts(*parts))


def multistatus_parts(*parts: bytes) -> tuple[bytes, ...]:
    """The pieces of a multistatus document, for sending without joining them first."""
    return (_HEAD_B, *parts, _TAIL_B)


_REASONS = {
    200: "OK",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    423: "Locked",
    424: "Failed Dependency",
    500: "Internal Server Error",
    507: "Insufficient Storage",
}


def render_proppatch(href: str, results: Sequence[tuple[PropName, int]]) -> bytes:
    body = [_HEAD, f"<D:response><D:href>{href}</D:href>"]
    for name, status in results:
        body.append(
            f"<D:propstat><D:prop>{_empty(name)}</D:prop>"
            f"<D:status>HTTP/1.1 {status} {_REASONS.get(status, '')}</D:status>"
            "</D:propstat>"
        )
    body.append("</D:response>" + _TAIL)
    return "".join(body).encode("utf-8")


def render_status_list(items: Iterable[tuple[str, int, str]]) -> bytes:
    """207 body for a partly failed DELETE/COPY/MOVE: (href, status, reason) per member."""
    body = [_HEAD]
    for href, status, reason in items:
        body.append(
            f"<D:response><D:href>{href}</D:href>"
            f"<D:status>HTTP/1.1 {status} {_REASONS.get(status, '')}</D:status>"
            f"<D:responsedescription>{xml_escape(reason)}</D:responsedescription>"
            "</D:response>"
        )
    body.append(_TAIL)
    return "".join(body).encode("utf-8")
