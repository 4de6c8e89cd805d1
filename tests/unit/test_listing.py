"""Unit tests for se.dav.listing: Accept negotiation, HTML escaping, JSON round trip."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from se.dav.listing import preferred_format, render_html, render_json
from se.storage.paths import DavPath
from se.storage.types import DirEntry, Stat

ADLER = bytes.fromhex("0a1b2c3d")
MTIME_NS = 1_335_839_533_000_000_000


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        ("", "html"),
        ("*/*", "html"),
        ("text/html", "html"),
        ("application/json", "json"),
        ("APPLICATION/JSON", "json"),
        ("application/json; charset=utf-8", "json"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "html"),
        ("application/json;q=0.5, text/html", "html"),
        ("text/html;q=0.1, application/json", "json"),
        ("text/html; q=0.2, application/json; q=0.9", "json"),
        ("text/plain, application/json;q=0.3", "json"),
        ("application/json;q=0", "html"),  # q=0 means "not acceptable"
        ("application/json;q=bogus", "html"),
        ("image/png", "html"),
        (",,;;=,", "html"),
    ],
)
def test_preferred_format(accept: str, fmt: str) -> None:
    assert preferred_format(accept) == fmt


@given(st.text(max_size=200))
def test_preferred_format_never_raises(accept: str) -> None:
    assert preferred_format(accept) in ("html", "json")


def _file(parent: DavPath, name: str, size: int, cks: dict[str, bytes] | None = None) -> DirEntry:
    return DirEntry(parent.child(name), Stat(False, size, MTIME_NS, MTIME_NS, 7, 1), cks or {})


def _dir(parent: DavPath, name: str) -> DirEntry:
    return DirEntry(parent.child(name), Stat(True, 4096, MTIME_NS, MTIME_NS, 8, 1))


class _Links(HTMLParser):
    """Collects (href, text) of every link, and every tag name, as a browser would see them."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self._href = dict(attrs).get("href") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._href = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._href is not None:
            self.links.append((self._href, data))


NASTY = [
    "<script>alert(1)</script>",
    "a&b",
    "a&amp;b",
    "x&lt;y",
    'q"uote',
    "it's",
    "sp ace",
    "caf\u00e9",
    "100%",
    "h#ash?q",
]


def test_render_html_escapes_names_and_links_them_correctly() -> None:
    parent = DavPath(("dir",))
    entries = [_file(parent, n, 10 + i) for i, n in enumerate(NASTY)] + [_dir(parent, "<b>sub")]
    page = render_html(parent, entries)
    assert "<script>" not in page
    assert "<b>sub" not in page
    p = _Links()
    p.feed(page)
    p.close()
    assert "script" not in p.tags
    assert "b" not in p.tags
    links = dict((text, href) for href, text in p.links)
    assert links["../"] == "/"
    for name in NASTY:
        assert name in links, name
        # The href, once the browser has decoded the HTML, is the percent-encoded path.
        assert unquote(links[name]) == f"/dir/{name}", name
    assert unquote(links["<b>sub/"]) == "/dir/<b>sub/"


def test_render_html_shows_sizes_dates_and_checksums() -> None:
    root = DavPath(())
    entries = [
        _file(root, "small", 512, {"adler32": ADLER}),
        _file(root, "big", 5 * 1024 * 1024, {"adler32": ADLER, "md5": bytes(16)}),
        _dir(root, "sub"),
    ]
    page = render_html(root, entries)
    assert "Index of /" in page
    assert "../" not in page  # no parent link on the root
    assert "512 B" in page
    assert "5.0 MiB" in page
    assert "adler32=0a1b2c3d" in page
    assert "md5=AAAAAAAAAAAAAAAAAAAAAA==" in page
    assert "2012-05-01 02:32:13 UTC" in page
    p = _Links()
    p.feed(page)
    p.close()
    assert [t for _h, t in p.links] == ["small", "big", "sub/"]


def test_render_json_round_trips() -> None:
    parent = DavPath(("d", "e f"))
    entries = [
        _file(parent, "a&b <c>", 3, {"adler32": ADLER, "md5": bytes(range(16))}),
        _file(parent, "caf\u00e9", 0),
        _dir(parent, "sub"),
    ]
    doc = json.loads(render_json(parent, entries))
    assert doc == {
        "path": "/d/e f",
        "entries": [
            {
                "name": "a&b <c>",
                "type": "file",
                "size": 3,
                "mtime": MTIME_NS / 1e9,
                "checksums": {"adler32": "0a1b2c3d", "md5": "AAECAwQFBgcICQoLDA0ODw=="},
            },
            {
                "name": "caf\u00e9",
                "type": "file",
                "size": 0,
                "mtime": MTIME_NS / 1e9,
                "checksums": {},
            },
            {
                "name": "sub",
                "type": "collection",
                "size": 4096,
                "mtime": MTIME_NS / 1e9,
                "checksums": {},
            },
        ],
    }


@given(st.lists(st.text(min_size=1, max_size=30), max_size=10, unique=True))
def test_render_json_names_survive(names: list[str]) -> None:
    root = DavPath(())
    doc = json.loads(render_json(root, [_file(root, n, len(n)) for n in names]))
    assert [e["name"] for e in doc["entries"]] == names
    assert [e["size"] for e in doc["entries"]] == [len(n) for n in names]


@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=10, unique=True))
def test_render_html_never_leaks_markup(names: list[str]) -> None:
    root = DavPath(())
    page = render_html(root, [_file(root, n, 1) for n in names])
    p = _Links()
    p.feed(page)
    p.close()
    assert [t for _h, t in p.links] == [n for n in names]
