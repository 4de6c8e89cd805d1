"""Hostile PROPPATCH (issue 12, finding 8): thousands of updates, no room for them, and
files whose xattrs cannot take their checksums.

In process (tests/inproc.py: the real application behind pytest-aiohttp's client, in this
test's event loop), so that "the event loop is held" is observable as an order of events,
not a timing: a GET sent while a PROPPATCH is being applied must complete first.  The data
directory is on the test's filesystem (ext4 here: all xattrs of an inode share one 4 KiB
block, which :func:`fill_xattrs` fills so that the next xattr gets ENOSPC).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from se.storage import xattrs
from tests.inproc import InProcessSE, MakeInProcessSE, inproc, inproc_factory

__all__ = ["inproc", "inproc_factory"]  # the fixtures

D = "{DAV:}"
NS = "urn:test:hostile"


def propertyupdate(*parts: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<D:propertyupdate xmlns:D="DAV:" xmlns:t="{NS}">{"".join(parts)}</D:propertyupdate>'
    ).encode()


def set_(name: str, value: str) -> str:
    return f"<D:set><D:prop><t:{name}>{value}</t:{name}></D:prop></D:set>"


def remove(name: str) -> str:
    return f"<D:remove><D:prop><t:{name}/></D:prop></D:remove>"


def statuses(body: bytes) -> dict[str, int]:
    """``{property local name: status}`` of a PROPPATCH multistatus."""
    out: dict[str, int] = {}
    for propstat in ET.fromstring(body).iter(f"{D}propstat"):
        status = int((propstat.findtext(f"{D}status") or "").split()[1])
        for prop in propstat.iter(f"{D}prop"):
            for item in prop:
                out[item.tag.rsplit("}", 1)[-1]] = status
    return out


def dead_props(path: Path) -> list[bytes]:
    return sorted(xattrs.get_dead_props(str(path)))


def fill_xattrs(path: Path) -> None:
    """Use up the xattr space of ``path``: afterwards no further user xattr fits."""
    for size in (1000, 100, 10, 1):
        for i in range(10_000):
            try:
                os.setxattr(path, f"user.f{size}.{i}", b"x" * size)
            except OSError as exc:
                if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    pytest.skip("no user xattrs on the test filesystem")
                assert exc.errno in (errno.ENOSPC, errno.E2BIG), exc
                break
    with pytest.raises(OSError):
        os.setxattr(path, "user.se.checksum.adler32", b"00000000;1;1")


def write(root: Path, rel: str, data: bytes = b"data") -> Path:
    path = root / rel
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- the event loop


async def test_get_is_answered_while_a_large_proppatch_is_applied(
    inproc: InProcessSE, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4000 removals, each xattr call slowed down: a GET sent once the first one has
    started completes before the PROPPATCH does (the loop is not held)."""
    write(inproc.root, "target")
    write(inproc.root, "other", b"other data")
    started = threading.Event()

    def slowed(real: Any) -> Any:
        def call(target: Any, name: str, *args: Any) -> Any:
            if name.startswith(xattrs.PROP_PREFIX):
                started.set()
                time.sleep(0.00025)
            return real(target, name, *args)

        return call

    for fn in ("getxattr", "setxattr", "removexattr"):
        monkeypatch.setattr(os, fn, slowed(getattr(os, fn)))
    body = propertyupdate(*(remove(f"p{i}") for i in range(4000)))
    done: list[str] = []

    async def proppatch() -> int:
        resp = await inproc.client.request("PROPPATCH", "/target", data=body)
        await resp.read()
        done.append("PROPPATCH")
        return resp.status

    async def get() -> int:
        resp = await inproc.client.get("/other")
        assert await resp.read() == b"other data"
        done.append("GET")
        return resp.status

    patch = asyncio.ensure_future(proppatch())
    assert await asyncio.to_thread(started.wait, 10)
    assert not patch.done()
    assert await get() == 200
    assert await patch == 207
    assert done == ["GET", "PROPPATCH"], done


# --------------------------------------------------------------------------- all or nothing


async def test_proppatch_without_room_keeps_nothing(
    inproc: InProcessSE, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(inproc.root, "atomic")
    resp = await inproc.client.request(
        "PROPPATCH", "/atomic", data=propertyupdate(set_("keep", "old value"))
    )
    assert resp.status == 207 and statuses(await resp.read()) == {"keep": 200}
    before = dead_props(path)
    assert len(before) == 1
    big = "v" * 2000
    update = propertyupdate(
        set_("first", "small"),
        remove("keep"),
        set_("second", "small too"),
        *(set_(f"big{i}", big) for i in range(20)),  # no room for these on ext4
    )
    caplog.set_level(logging.INFO)
    resp = await inproc.client.request("PROPPATCH", "/atomic", data=update)
    got = statuses(await resp.read())
    assert resp.status == 207
    refused = [name for name, status in got.items() if status != 424]
    assert len(refused) == 1 and refused[0].startswith("big"), got
    assert got[refused[0]] == 507, got
    assert set(got) == {"first", "keep", "second", *(f"big{i}" for i in range(20))}
    assert dead_props(path) == before  # nothing set, nothing removed
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # one line per request
    # A PROPFIND shows the old state.
    resp = await inproc.client.request("PROPFIND", "/atomic", headers={"Depth": "0"})
    text = (await resp.read()).decode()
    assert "old value" in text and "small" not in text


async def test_proppatch_limits(inproc_factory: MakeInProcessSE) -> None:
    se = await inproc_factory(webdav={"max_proppatch_ops": 10, "max_property_size": 100})
    path = write(se.root, "limited")
    resp = await se.client.request(
        "PROPPATCH", "/limited", data=propertyupdate(*(set_(f"p{i}", "x") for i in range(11)))
    )
    text = await resp.text()
    assert resp.status == 413, text
    assert "11 property updates" in text and "webdav.max_proppatch_ops" in text, text
    resp = await se.client.request(
        "PROPPATCH", "/limited", data=propertyupdate(set_("ok", "x"), set_("big", "y" * 200))
    )
    text = await resp.text()
    assert resp.status == 413, text
    assert "webdav.max_property_size" in text, text
    assert dead_props(path) == []
    resp = await se.client.request(
        "PROPPATCH", "/limited", data=propertyupdate(*(set_(f"p{i}", "x") for i in range(10)))
    )
    assert resp.status == 207
    assert set(statuses(await resp.read()).values()) == {200}
    assert len(dead_props(path)) == 10


def test_patch_dead_props_rolls_back_in_order(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"")
    xattrs.patch_dead_props(str(path), [("{u}a", b"<a>1</a>"), ("{u}b", b"<b>1</b>")])
    updates: list[tuple[str, bytes | None]] = [
        ("{u}a", b"<a>2</a>"),  # changed ...
        ("{u}b", None),  # ... removed ...
        ("{u}a", b"<a>3</a>"),  # ... changed again ...
        ("{u}gone", None),  # ... absent (fine) ...
        ("{u}big", b"x" * 100_000),  # ... then no room
    ]
    with pytest.raises(xattrs.PatchRefused) as info:
        xattrs.patch_dead_props(str(path), updates)
    assert info.value.index == 4 and info.value.no_room
    assert dead_props(path) == [b"<a>1</a>", b"<b>1</b>"]


# --------------------------------------------------------------------------- checksums


async def test_checksum_of_a_file_with_full_xattrs_is_computed_once(
    inproc: InProcessSE, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(inproc.root, "full", b"some file data")
    fill_xattrs(path)
    caplog.set_level(logging.INFO)
    digests = set()
    for _ in range(3):
        resp = await inproc.client.get("/full", headers={"Want-Digest": "adler32"})
        assert await resp.read() == b"some file data"
        digests.add(resp.headers.get("Digest"))
    assert len(digests) == 1 and None not in digests, digests
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    st = path.stat()
    # Kept in memory, keyed on what identifies the bytes: found while the file is unchanged.
    assert "adler32" in xattrs.read_checksums(str(path), st.st_size, st.st_mtime_ns)
    path.write_bytes(b"other data, same inode")
    st = path.stat()
    assert xattrs.read_checksums(str(path), st.st_size, st.st_mtime_ns) == {}
