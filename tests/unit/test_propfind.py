"""Unit tests for se.dav.propfind: request parsing (untrusted XML) and 207 rendering."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from se.dav import propfind
from se.dav.propfind import (
    DAV,
    DCACHE,
    PatchOp,
    PropRequest,
    Resource,
    parse_propfind,
    parse_proppatch,
    render_multistatus,
    render_proppatch,
    render_status_list,
)
from se.errors import BadRequest

D = "{DAV:}"
XML_DECL = b'<?xml version="1.0" encoding="utf-8"?>\n'


# -- parse_propfind ------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"", b"   \r\n\t "])
def test_empty_body_is_allprop(body: bytes) -> None:
    assert parse_propfind(body) == PropRequest("allprop")


def test_allprop() -> None:
    body = XML_DECL + b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>'
    req = parse_propfind(body)
    assert req.kind == "allprop"
    assert req.names == ()


def test_allprop_with_default_namespace() -> None:
    assert parse_propfind(b'<propfind xmlns="DAV:"><allprop/></propfind>').kind == "allprop"


def test_propname() -> None:
    body = b'<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>'
    assert parse_propfind(body) == PropRequest("propname")


def test_prop_list_with_namespaces() -> None:
    # What davix sends for stat/listing (spec 4.2).
    body = (
        XML_DECL + b'<D:propfind xmlns:D="DAV:" xmlns:L="LCGDM:"><D:prop>'
        b"<D:displayname/><D:getlastmodified/><D:creationdate/><D:getcontentlength/>"
        b"<D:quota-used-bytes/><D:resourcetype/><L:mode/><D:owner/><D:group/>"
        b'<C:Checksums xmlns:C="http://www.dcache.org/2013/webdav"/>'
        b'<plain xmlns=""/>'
        b"</D:prop></D:propfind>"
    )
    req = parse_propfind(body)
    assert req.kind == "prop"
    assert req.names == (
        (DAV, "displayname"),
        (DAV, "getlastmodified"),
        (DAV, "creationdate"),
        (DAV, "getcontentlength"),
        (DAV, "quota-used-bytes"),
        (DAV, "resourcetype"),
        ("LCGDM:", "mode"),
        (DAV, "owner"),
        (DAV, "group"),
        (DCACHE, "Checksums"),
        ("", "plain"),
    )
    assert (DAV, "resourcetype") in req.names
    assert (DAV, "getetag") not in req.names


@pytest.mark.parametrize(
    "body",
    [
        b"<D:propfind xmlns:D='DAV:'><D:prop>",  # truncated
        b"not xml at all",
        b"<D:propfind><D:allprop/></D:propfind>",  # unbound prefix
        b"<?xml version='1.0'?><a></b>",
        b"\xff\xfe\x00<",
        b"<D:propfind xmlns:D='DAV:'><D:allprop/></D:propfind><extra/>",
    ],
)
def test_malformed_xml_is_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_propfind(body)
    assert "\n" not in info.value.reason


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&lol9;</D:displayname></D:prop></D:propfind>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<D:propfind xmlns:D="DAV:"><D:prop><D:x>&xxe;</D:x></D:prop></D:propfind>
"""

SINGLE_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY e "x">]>
<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&e;</D:displayname></D:prop></D:propfind>
"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY, SINGLE_ENTITY])
def test_entity_declarations_are_refused(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_propfind(body)
    assert "\n" not in info.value.reason
    assert "forbidden" in info.value.reason  # refused by defusedxml, not merely unparsable
    patch = body.replace(b"propfind", b"propertyupdate")
    patch = patch.replace(b"<D:prop>", b"<D:set><D:prop>").replace(
        b"</D:prop>", b"</D:prop></D:set>"
    )
    with pytest.raises(BadRequest):
        parse_proppatch(patch)


@pytest.mark.parametrize(
    "body",
    [
        b'<D:propertyupdate xmlns:D="DAV:"/>',
        b'<D:prop xmlns:D="DAV:"><D:getcontentlength/></D:prop>',
        b'<propfind xmlns="urn:not-dav"><allprop/></propfind>',
        b"<propfind><allprop/></propfind>",  # no namespace at all
        b'<D:propfind xmlns:D="DAV:"/>',  # none of allprop, propname, prop
        b'<D:propfind xmlns:D="DAV:"><D:include/></D:propfind>',
    ],
)
def test_wrong_root_or_content_is_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_propfind(body)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_bad_request(body: bytes) -> None:
    try:
        req = parse_propfind(body)
    except BadRequest as exc:
        assert "\n" not in exc.reason
        return
    assert req.kind in ("allprop", "propname", "prop")


_XMLISH = st.lists(
    st.sampled_from(
        [
            "<D:propfind xmlns:D='DAV:'>",
            "</D:propfind>",
            "<D:prop>",
            "</D:prop>",
            "<D:allprop/>",
            "<D:propname/>",
            "<D:getcontentlength/>",
            "<!DOCTYPE x [<!ENTITY a 'b'>]>",
            "&a;",
            "&amp;",
            "<![CDATA[x]]>",
            "<!-- c -->",
            "<?pi x?>",
            "<X:y xmlns:X='urn:\"q'/>",
            "\x00",
            "\udcff",
            " ",
        ]
    ),
    max_size=10,
).map(lambda parts: "".join(parts).encode("utf-8", "surrogateescape"))


@given(_XMLISH)
def test_xmlish_bytes_raise_only_bad_request(body: bytes) -> None:
    for parse in (parse_propfind, parse_proppatch):
        try:
            parse(body)
        except BadRequest:
            continue


# -- parse_proppatch -----------------------------------------------------------------------
def test_parse_proppatch_set_and_remove() -> None:
    body = (
        b'<D:propertyupdate xmlns:D="DAV:" xmlns:Z="urn:z">'
        b"<D:set><D:prop><Z:author>Ann &amp; Bob</Z:author><Z:n>1</Z:n></D:prop></D:set>"
        b"<D:remove><D:prop><Z:old/></D:prop></D:remove>"
        b"</D:propertyupdate>"
    )
    ops = parse_proppatch(body)
    assert [(o.action, o.name) for o in ops] == [
        ("set", ("urn:z", "author")),
        ("set", ("urn:z", "n")),
        ("remove", ("urn:z", "old")),
    ]
    assert ops[0].key == "{urn:z}author"
    # The stored element is standalone XML that keeps its namespace and escaped text.
    el = ET.fromstring(ops[0].element)
    assert el.tag == "{urn:z}author"
    assert el.text == "Ann & Bob"
    assert ops[2].element == b""


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<garbage",
        b'<D:propfind xmlns:D="DAV:"><D:allprop/></D:propfind>',
        b'<D:propertyupdate xmlns:D="DAV:"></D:propertyupdate>',
        b'<D:propertyupdate xmlns:D="DAV:"><D:set><D:prop/></D:set></D:propertyupdate>',
    ],
)
def test_parse_proppatch_refuses(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_proppatch(body)


@given(st.binary(max_size=512))
def test_proppatch_arbitrary_bytes_raise_only_bad_request(body: bytes) -> None:
    try:
        ops = parse_proppatch(body)
    except BadRequest:
        return
    assert all(isinstance(o, PatchOp) for o in ops)


# -- render_multistatus --------------------------------------------------------------------
ADLER = bytes.fromhex("0a1b2c3d")


def _dir(href: str = "http://se.example.org:8080/data/") -> Resource:
    return Resource(
        href=href,
        name="data",
        is_dir=True,
        size=4096,
        mtime=1335839533.0,
        ctime=1335839533.0,
        etag='"d-1"',
        content_type="",
        quota=(1000, 2000),
    )


def _file(href: str = "http://se.example.org:8080/data/f%20x.root", **kw: object) -> Resource:
    r = Resource(
        href=href,
        name="f x.root",
        is_dir=False,
        size=12345,
        mtime=1335839533.0,
        ctime=1335839533.0,
        etag='"f-1"',
        content_type="application/octet-stream",
        checksums={"adler32": ADLER},
    )
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def _parse(body: bytes) -> list[ET.Element]:
    assert body.startswith(b"<?xml")
    root = ET.fromstring(body)
    assert root.tag == D + "multistatus"
    responses = list(root)
    assert all(r.tag == D + "response" for r in responses)
    return responses


def _propstats(resp: ET.Element) -> list[tuple[str, ET.Element]]:
    out = []
    for ps in resp.findall(D + "propstat"):
        status = ps.findtext(D + "status")
        prop = ps.find(D + "prop")
        assert status is not None
        assert prop is not None
        out.append((status, prop))
    return out


def test_prop_request_orders_200_before_404() -> None:
    req = PropRequest(
        "prop",
        ((DAV, "getcontentlength"), ("LCGDM:", "mode"), (DAV, "resourcetype"), (DAV, "owner")),
    )
    responses = _parse(render_multistatus([_file()], req))
    assert len(responses) == 1
    (resp,) = responses
    assert resp[0].tag == D + "href"
    stats = _propstats(resp)
    assert [s for s, _ in stats] == ["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found"]
    ok, missing = stats[0][1], stats[1][1]
    assert ok.findtext(D + "getcontentlength") == "12345"
    rt = ok.find(D + "resourcetype")
    assert rt is not None
    assert len(rt) == 0
    assert {c.tag for c in missing} == {"{LCGDM:}mode", D + "owner"}
    assert all(len(c) == 0 and not (c.text or "").strip() for c in missing)


def test_prop_request_all_known_has_no_404() -> None:
    req = PropRequest("prop", ((DAV, "getcontentlength"),))
    (resp,) = _parse(render_multistatus([_file()], req))
    assert [s for s, _ in _propstats(resp)] == ["HTTP/1.1 200 OK"]


def test_prop_request_all_unknown_has_only_404() -> None:
    req = PropRequest("prop", (("urn:x", "nope"),))
    (resp,) = _parse(render_multistatus([_file()], req))
    stats = _propstats(resp)
    assert [s for s, _ in stats] == ["HTTP/1.1 404 Not Found"]
    assert stats[0][1][0].tag == "{urn:x}nope"


def test_collection_and_file_in_allprop() -> None:
    responses = _parse(render_multistatus([_dir(), _file()], PropRequest("allprop")))
    assert [r.findtext(D + "href") for r in responses] == [
        "http://se.example.org:8080/data/",
        "http://se.example.org:8080/data/f%20x.root",
    ]
    ((d_status, d_prop),) = _propstats(responses[0])
    assert d_status == "HTTP/1.1 200 OK"
    rt = d_prop.find(D + "resourcetype")
    assert rt is not None
    assert [c.tag for c in rt] == [D + "collection"]
    # Never a size or a quota on a collection in allprop (davix overwrites sizes with it).
    assert d_prop.find(D + "getcontentlength") is None
    assert d_prop.find(D + "quota-used-bytes") is None
    ((f_status, f_prop),) = _propstats(responses[1])
    assert f_status == "HTTP/1.1 200 OK"
    assert f_prop.findtext(D + "getcontentlength") == "12345"
    f_rt = f_prop.find(D + "resourcetype")
    assert f_rt is not None
    assert len(f_rt) == 0
    assert f_prop.findtext(D + "getlastmodified") == "Tue, 01 May 2012 02:32:13 GMT"
    assert f_prop.findtext(D + "creationdate") == "2012-05-01T02:32:13Z"
    assert f_prop.findtext(D + "displayname") == "f x.root"
    assert f_prop.findtext(D + "getetag") == '"f-1"'
    assert f_prop.findtext(f"{{{DCACHE}}}Checksums") == "adler32=0a1b2c3d"


def test_checksums_property_format() -> None:
    req = PropRequest("prop", ((DCACHE, "Checksums"),))
    md5 = bytes(range(16))
    r = _file(checksums={"md5": md5, "adler32": bytes.fromhex("00000001")})
    (resp,) = _parse(render_multistatus([r], req))
    ((status, prop),) = _propstats(resp)
    assert status == "HTTP/1.1 200 OK"
    value = prop.findtext(f"{{{DCACHE}}}Checksums")
    assert value == "adler32=00000001,md5=AAECAwQFBgcICQoLDA0ODw=="
    # Without any known checksum the property is a 404, not an empty value.
    (resp2,) = _parse(render_multistatus([_file(checksums={})], req))
    assert [s for s, _ in _propstats(resp2)] == ["HTTP/1.1 404 Not Found"]


def test_quota_only_on_collections() -> None:
    req = PropRequest("prop", ((DAV, "quota-used-bytes"), (DAV, "quota-available-bytes")))
    d_resp, f_resp = _parse(render_multistatus([_dir(), _file()], req))
    ((status, prop),) = _propstats(d_resp)
    assert status == "HTTP/1.1 200 OK"
    assert prop.findtext(D + "quota-used-bytes") == "1000"
    assert prop.findtext(D + "quota-available-bytes") == "2000"
    assert [s for s, _ in _propstats(f_resp)] == ["HTTP/1.1 404 Not Found"]


def test_propname_lists_names_without_values() -> None:
    (resp,) = _parse(render_multistatus([_file()], PropRequest("propname")))
    ((status, prop),) = _propstats(resp)
    assert status == "HTTP/1.1 200 OK"
    tags = {c.tag for c in prop}
    assert {D + "getcontentlength", D + "resourcetype", D + "getlastmodified"} <= tags
    assert all(len(c) == 0 and not (c.text or "").strip() for c in prop)


def test_dead_properties_rendered() -> None:
    dead = [b'<ns0:author xmlns:ns0="urn:z">Ann &amp; Bob</ns0:author>']
    r = _file(dead=dead)
    (resp,) = _parse(render_multistatus([r], PropRequest("allprop")))
    ((_s, prop),) = _propstats(resp)
    assert prop.findtext("{urn:z}author") == "Ann & Bob"
    req = PropRequest("prop", (("urn:z", "author"), ("urn:z", "other")))
    (resp2,) = _parse(render_multistatus([r], req))
    stats = _propstats(resp2)
    assert [s for s, _ in stats] == ["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found"]
    assert stats[0][1].findtext("{urn:z}author") == "Ann & Bob"


def test_special_characters_are_escaped() -> None:
    r = _file(
        href="http://se.example.org/a%26b",
        name="<script>&\"'",
        etag='"<&>"',
        content_type="text/x-<&>",
    )
    req = PropRequest("prop", ((DAV, "displayname"), (DAV, "getetag"), (DAV, "getcontenttype")))
    (resp,) = _parse(render_multistatus([r], req))
    ((_s, prop),) = _propstats(resp)
    assert prop.findtext(D + "displayname") == "<script>&\"'"
    assert prop.findtext(D + "getetag") == '"<&>"'
    assert prop.findtext(D + "getcontenttype") == "text/x-<&>"


@pytest.mark.parametrize("ns", ['urn:a"b', "urn:<x>&y", "urn:'q'"])
def test_odd_namespace_of_unknown_property_stays_well_formed(ns: str) -> None:
    req = PropRequest("prop", ((ns, "p"), (DAV, "getcontentlength")))
    (resp,) = _parse(render_multistatus([_file()], req))
    stats = _propstats(resp)
    assert stats[1][1][0].tag == f"{{{ns}}}p"


def test_many_resources_stay_in_order() -> None:
    files = [_file(href=f"http://h/d/{i}") for i in range(50)]
    responses = _parse(render_multistatus([_dir("http://h/d/"), *files], PropRequest("allprop")))
    assert [r.findtext(D + "href") for r in responses] == ["http://h/d/"] + [
        f"http://h/d/{i}" for i in range(50)
    ]


def test_render_proppatch_and_status_list() -> None:
    body = render_proppatch("http://h/f", [(("urn:z", "a"), 200), ((DAV, "getetag"), 403)])
    (resp,) = _parse(body)
    assert resp.findtext(D + "href") == "http://h/f"
    stats = _propstats(resp)
    assert [s for s, _ in stats] == ["HTTP/1.1 200 OK", "HTTP/1.1 403 Forbidden"]
    body = render_status_list([("http://h/d/x", 403, "permission <denied> & more")])
    (resp,) = _parse(body)
    assert resp.findtext(D + "status") == "HTTP/1.1 403 Forbidden"
    assert resp.findtext(D + "responsedescription") == "permission <denied> & more"


def test_remembered_bodies_parse_as_before_and_refusals_are_not_kept() -> None:
    """Small bodies are remembered with what they parse to (clients repeat theirs); a body
    refused is refused every time, and big bodies are parsed each time, to the same."""
    body = (
        b'<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/>'
        b"</D:prop></D:propfind>"
    )
    first = propfind.parse_propfind(body)
    assert propfind.parse_propfind(bytes(body)) == first
    assert first == propfind.PropRequest("prop", ((propfind.DAV, "getetag"),))
    bad = b"<D:propfind xmlns:D='DAV:'><D:prop>"
    for _ in range(2):
        with pytest.raises(BadRequest, match="malformed XML"):
            propfind.parse_propfind(bad)
    padding = b"<!--" + b"x" * 4096 + b"-->"
    big = body.replace(b"<D:prop>", padding + b"<D:prop>")
    assert len(big) > 4096 and propfind.parse_propfind(big) == first
