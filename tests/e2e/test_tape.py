"""The WLCG Tape REST API of a real ``se`` server, spoken raw over HTTP with aiohttp (and curl).

Every test starts its own server with ``[tape] enabled = true`` and one tape pool, ``/tape``,
in a fast configuration (``time_scale = 1000``: a recall takes a fraction of a second).  New
files are only flushed to tape when a test asks for it (``archive_min_age`` is huge and
``POST /.well-known/se/tape {"flush": true}`` forces the flush), so each test controls the
localities it sees: PUT -> DISK, flush -> DISK_AND_TAPE, evict -> TAPE.

Covered: discovery, the STAGE life cycle (submit, poll shapes, recall from tape, files on disk,
per-file errors, duplicates, percent-encoded paths), malformed requests (400/413/429/404),
cancel, DELETE, release (with a request id and gfal2's placeholder id), ARCHIVEINFO localities,
the failure switches, persistence over a clean restart and over SIGKILL, the WebDAV namespace
operations the catalogue follows (MOVE, overwrite, DELETE), and WLCG token scopes.  The tests
at the end pin down bugs found (and fixed) in the server, then, with ``--workers 2``: ARCHIVEINFO
of a file whose PUT or TPC pull is in progress (DISK), after an aborted or crashed upload, during
an overwrite; a stage of on-disk files during a large GET; targetedMetadata kept in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from yarl import URL

from se.tape.stores import open_store
from tests.conftest import BASE_CONFIG, need
from tests.e2e.clients import run_ok
from tests.e2e.jwt_issuer import JWTIssuer
from tests.e2e.tpc_remote import Remote
from tests.support import SEProcess, poll_async, temp_files

pytestmark = [pytest.mark.timeout(60)]

API = "/api/v1"
DISCOVERY = "/.well-known/wlcg-tape-rest-api"
ADMIN = "/.well-known/se/tape"
PROBLEM = "application/problem+json"
SITENAME = "se-e2e-tape"
RETRY_AFTER = 7
ISSUER = "https://tape-issuer.example.org/"  # never fetched: its keys are a jwks_file

# Error texts of se/tape (http.py and simulator.py), as the API reports them.
ERR_MISSING = "USER ERROR: file does not exist or is not accessible to you"
ERR_DIRECTORY = "USER ERROR: path is a directory"
ERR_NOT_TAPE = "USER ERROR: file is not on a tape-backed path"
ERR_EMPTY = "zero-length file: never written to tape"
ERR_LOST = "file is lost on tape"
ERR_UNAVAILABLE = "tape unavailable"
ERR_UNREACHABLE = "Tape backend is unreachable"

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
FAST: dict[str, Any] = {
    "time_scale": 1000.0,
    "sync_interval": 0.1,
    "min_request_age": 5.0,
    "archive_min_age": 1e9,  # never by age: tests flush explicitly
    "retry_after": RETRY_AFTER,
}
# A library that never mounts a tape while a test runs: stage requests stay SUBMITTED.
STUCK: dict[str, Any] = {**FAST, "time_scale": 1.0, "min_request_age": 1e7}


# --------------------------------------------------------------------------- configuration


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return json.dumps(str(value))


def tape_config(tape: Mapping[str, object] | None = None, extra: str = "") -> str:
    """BASE_CONFIG plus ``[tape]`` (FAST unless overridden) with the pool ``/tape``."""
    settings = {"enabled": True, "sitename": SITENAME, **FAST, **(tape or {})}
    lines = [f"{key} = {_toml(value)}" for key, value in settings.items()]
    return (
        BASE_CONFIG
        + "\n[tape]\n"
        + "\n".join(lines)
        + '\n\n[[tape.pools]]\npath = "/tape"\n'
        + extra
    )


def auth_config(jwks: Path, issuer: str = ISSUER) -> str:
    """Tokens only (no anonymous access): the issuer's scopes are namespace paths."""
    return f"""
[auth]
anonymous = "none"

[[auth.issuers]]
issuer = {json.dumps(issuer)}
base_path = "/"
jwks_file = {json.dumps(str(jwks))}
"""


Start = Callable[..., SEProcess]


def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for sub in ("tape", "other"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def start(se_factory: Callable[..., SEProcess], tmp_path: Path) -> Start:
    """Start a tape-enabled server on ``tmp_path/data`` (the same one on every call)."""

    def go(config: str | None = None, **tape: object) -> SEProcess:
        return se_factory(config or tape_config(tape), root=data_root(tmp_path))

    return go


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        return json.loads(self.body)

    def problem(self, status: int) -> dict[str, Any]:
        """Assert an RFC 7807 answer with this status; its members."""
        assert self.status == status, (self.status, self.body[:300])
        assert self.content_type == PROBLEM, self.headers
        doc = self.json()
        assert isinstance(doc, dict), doc
        assert doc["status"] == status
        assert isinstance(doc["title"], str) and doc["title"]
        assert isinstance(doc.get("detail", ""), str)
        return doc


_NO_BODY = object()


class Tape:
    """A raw HTTP client of one server's tape API (and of its WebDAV, for setup)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str | None = None):
        self.session = session
        self.url = url
        self.token = token

    def with_token(self, token: str | None) -> Tape:
        return Tape(self.session, self.url, token)

    async def call(
        self,
        method: str,
        path: str,
        body: object = _NO_BODY,
        *,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        encoded: bool = False,
    ) -> Reply:
        all_headers = dict(headers or {})
        if self.token is not None:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if body is not _NO_BODY:
            data = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        url = URL(self.url + path, encoded=encoded)
        async with self.session.request(method, url, data=data, headers=all_headers) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    # -- WebDAV

    async def put(self, path: str, data: bytes) -> None:
        reply = await self.call("PUT", path, data=data)
        assert reply.status in (201, 204), (path, reply.status, reply.body[:300])

    async def get(self, path: str) -> Reply:
        return await self.call("GET", path)

    # -- the admin endpoint

    async def admin(self, switches: Mapping[str, object] | None = None) -> dict[str, Any]:
        reply = await (
            self.call("GET", ADMIN) if switches is None else self.call("POST", ADMIN, switches)
        )
        assert reply.status == 200, (reply.status, reply.body[:300])
        status = reply.json()
        assert isinstance(status, dict)
        return status

    async def wait_queued(self, files: int, timeout: float = 10.0) -> None:
        """Until the library's recall queues hold ``files`` files (stage queues them in the
        background, cancel and DELETE take them out)."""
        queued = (await self.admin())["queued_files"]
        for _ in range(int(timeout / 0.05)):
            if queued == files:
                return
            await asyncio.sleep(0.05)
            queued = (await self.admin())["queued_files"]
        assert queued == files

    async def flush(self) -> None:
        await self.admin({"flush": True})

    async def evict(self) -> None:
        await self.admin({"evict": True})

    # -- the tape API

    async def stage_reply(self, *paths: str, **extra: object) -> Reply:
        return await self.call(
            "POST", f"{API}/stage", {"files": [{"path": p} for p in paths], **extra}
        )

    async def stage(self, *paths: str) -> str:
        reply = await self.stage_reply(*paths)
        assert reply.status == 201, (reply.status, reply.body[:300])
        rid = reply.json()["requestId"]
        assert isinstance(rid, str) and rid
        return rid

    async def poll(self, rid: str) -> dict[str, Any]:
        reply = await self.call("GET", f"{API}/stage/{rid}")
        assert reply.status == 200, (reply.status, reply.body[:300])
        assert reply.content_type == "application/json"
        doc = reply.json()
        check_request_shape(doc, rid)
        assert isinstance(doc, dict)
        return doc

    async def wait_done(self, rid: str, timeout: float = 15.0) -> dict[str, Any]:
        """Poll until every file is terminal (``completedAt`` set); the last answer."""
        deadline = time.monotonic() + timeout
        doc = await self.poll(rid)
        for _ in range(int(timeout / 0.05) + 1):
            if "completedAt" in doc or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
            doc = await self.poll(rid)
        assert "completedAt" in doc, f"request {rid} not done after {timeout}s: {doc}"
        return doc

    async def archiveinfo_reply(self, *paths: str) -> Reply:
        return await self.call("POST", f"{API}/archiveinfo", {"paths": list(paths)})

    async def archiveinfo(self, *paths: str) -> list[dict[str, Any]]:
        reply = await self.archiveinfo_reply(*paths)
        assert reply.status == 200, (reply.status, reply.body[:300])
        assert reply.content_type == "application/json"
        items = reply.json()
        assert isinstance(items, list), items
        assert [item["path"] for item in items] == list(paths)
        for item in items:
            assert set(item) <= {"path", "locality", "error"}, item
        return items

    async def locality(self, path: str) -> str | None:
        (item,) = await self.archiveinfo(path)
        locality = item.get("locality")
        assert locality is None or isinstance(locality, str)
        return locality

    async def wait_locality(self, path: str, wanted: str, timeout: float = 10.0) -> None:
        seen = await self.locality(path)
        for _ in range(int(timeout / 0.05)):
            if seen == wanted:
                return
            await asyncio.sleep(0.05)
            seen = await self.locality(path)
        assert seen == wanted, (path, seen)

    async def release(self, rid: str, *paths: str) -> Reply:
        return await self.call("POST", f"{API}/release/{rid}", {"paths": list(paths)})

    async def cancel(self, rid: str, *paths: str) -> Reply:
        return await self.call("POST", f"{API}/stage/{rid}/cancel", {"paths": list(paths)})

    # -- composite set-ups

    async def on_tape(self, files: Mapping[str, bytes]) -> None:
        """Write the files, flush them to tape and evict them: TAPE only."""
        for path, data in files.items():
            await self.put(path, data)
        await self.flush()
        await self.evict()
        for path in files:
            assert await self.locality(path) == "TAPE", path


def check_request_shape(doc: Any, rid: str) -> None:
    """What the spec (section 4.2) and gfal2 require of a poll answer."""
    assert isinstance(doc, dict), doc
    assert doc["id"] == rid
    for key in ("createdAt", "startedAt"):
        assert isinstance(doc[key], int) and not isinstance(doc[key], bool), doc
    assert doc["startedAt"] >= doc["createdAt"]
    assert isinstance(doc["files"], list) and doc["files"]
    assert set(doc) <= {"id", "createdAt", "startedAt", "completedAt", "files"}, doc
    paths = [f["path"] for f in doc["files"]]
    assert len(paths) == len(set(paths)), paths
    terminal = True
    for f in doc["files"]:
        assert set(f) <= {"path", "state", "startedAt", "finishedAt", "error"}, f
        assert "onDisk" not in f
        state = f["state"]
        assert state in ("SUBMITTED", "STARTED", *TERMINAL), f
        terminal = terminal and state in TERMINAL
        if state == "SUBMITTED":
            assert "finishedAt" not in f and "error" not in f, f
        if state == "STARTED":
            assert isinstance(f["startedAt"], int), f
            assert "finishedAt" not in f and "error" not in f, f
        if state in TERMINAL:
            assert isinstance(f["finishedAt"], int), f
            assert f["finishedAt"] >= f.get("startedAt", doc["createdAt"]), f
        if state == "COMPLETED":
            assert "error" not in f, f  # gfal2 counts any error as a failure
        if state == "FAILED":
            assert isinstance(f["error"], str) and f["error"], f
    if terminal:
        assert isinstance(doc["completedAt"], int), doc
        assert doc["completedAt"] >= doc["startedAt"]
    else:
        assert "completedAt" not in doc, doc


def by_path(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in doc["files"]}


def states(doc: Mapping[str, Any]) -> dict[str, str]:
    return {f["path"]: f["state"] for f in doc["files"]}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as s:
        yield s


def uid() -> str:
    return uuid.uuid4().hex[:8]


# --------------------------------------------------------------------------- discovery


async def test_discovery(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    reply = await tape.call("GET", DISCOVERY)
    assert reply.status == 200
    assert reply.content_type == "application/json"
    doc = reply.json()
    assert doc["sitename"] == SITENAME
    assert isinstance(doc.get("description", ""), str)
    assert doc["endpoints"] == [{"uri": srv.url + API, "version": "v1", "metadata": {}}]
    # Another method: 405 with problem details and an Allow header.
    for method in ("POST", "PUT", "DELETE"):
        refused = await tape.call(method, DISCOVERY, data=b"{}")
        refused.problem(405)
        assert "GET" in refused.headers.get("Allow", "")
    head = await tape.call("HEAD", DISCOVERY)
    assert head.status == 200
    # curl (a client that knows nothing of the API) gets the same document.
    need("curl")
    res = run_ok(["curl", "-sS", "--fail", srv.url + DISCOVERY], timeout=30)
    assert json.loads(res.stdout) == doc


async def test_discovery_endpoint_override(start: Start, session: aiohttp.ClientSession) -> None:
    endpoint = "https://tape.example.org:8443/api/v1"
    srv = start(endpoint=endpoint)
    tape = Tape(session, srv.url)
    doc = (await tape.call("GET", DISCOVERY)).json()
    assert doc["endpoints"] == [{"uri": endpoint, "version": "v1", "metadata": {}}]
    # The API itself is still served here, and Location points to the published base.
    await tape.put("/tape/f", b"data")
    reply = await tape.stage_reply("/tape/f")
    assert reply.status == 201
    rid = reply.json()["requestId"]
    assert reply.headers["Location"] == f"{endpoint}/stage/{rid}"


# --------------------------------------------------------------------------- stage and poll


async def test_stage_files_on_disk_complete_at_once(
    start: Start, session: aiohttp.ClientSession
) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.put("/tape/archived", b"on disk and tape")
    await tape.flush()
    await tape.put("/tape/new", b"only on disk")
    assert await tape.locality("/tape/new") == "DISK"
    assert await tape.locality("/tape/archived") == "DISK_AND_TAPE"
    before = int(time.time())
    reply = await tape.stage_reply(
        "/tape/new",
        "/tape/archived",
        # Fields the server does not know never make it refuse a request.
        unknownTopLevel={"x": 1},
    )
    assert reply.status == 201, reply.body
    assert reply.content_type == "application/json"
    rid = reply.json()["requestId"]
    assert reply.json() == {"requestId": rid}
    assert 0 < len(rid) <= 64 and rid.isascii()
    assert reply.headers["Location"] == f"{srv.url}{API}/stage/{rid}"
    doc = await tape.poll(rid)  # the shape is checked by poll()
    assert states(doc) == {"/tape/new": "COMPLETED", "/tape/archived": "COMPLETED"}
    assert before - 1 <= doc["createdAt"] <= int(time.time()) + 1
    assert doc["completedAt"] - doc["createdAt"] <= 2
    for f in doc["files"]:
        assert abs(f["startedAt"] - doc["createdAt"]) <= 2, f
        assert abs(f["finishedAt"] - doc["createdAt"]) <= 2, f
    # Location is where the request is polled.
    located = await tape.call("GET", URL(reply.headers["Location"]).path)
    assert located.status == 200 and located.json() == doc


async def test_recall_from_tape(start: Start, session: aiohttp.ClientSession) -> None:
    # Slower than FAST, so that a recall is seen in progress: most of a second.
    srv = start(time_scale=50.0)
    tape = Tape(session, srv.url)
    files = {f"/tape/r{i}": f"recalled file {i}\n".encode() * (i + 1) for i in range(3)}
    await tape.on_tape(files)
    # On tape only: GET is refused with 503, a Retry-After and a one-line reason; HEAD works.
    for path, data in files.items():
        refused = await tape.get(path)
        assert refused.status == 503, (path, refused.status)
        assert refused.headers["Retry-After"] == str(RETRY_AFTER)
        assert refused.content_type == "text/plain"
        reason = refused.body.decode().strip()
        assert reason and "\n" not in reason, reason
        assert data not in refused.body
        head = await tape.call("HEAD", path)
        assert head.status == 200
        assert head.headers["Content-Length"] == str(len(data))
    rid = await tape.stage(*files)
    first = await tape.poll(rid)
    assert set(states(first).values()) <= {"SUBMITTED", "STARTED"}, first
    seen: dict[str, list[str]] = {p: [] for p in files}
    doc = first
    deadline = time.monotonic() + 20
    for _ in range(1000):
        for path, state in states(doc).items():
            if not seen[path] or seen[path][-1] != state:
                seen[path].append(state)
        if "completedAt" in doc or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
        doc = await tape.poll(rid)
    assert "completedAt" in doc, doc
    order = ["SUBMITTED", "STARTED", "COMPLETED"]
    for path, history in seen.items():
        assert history[-1] == "COMPLETED", (path, history)
        assert history == sorted(history, key=order.index), (path, history)
    for f in doc["files"]:
        assert doc["createdAt"] <= f["startedAt"] <= f["finishedAt"] <= doc["completedAt"], doc
    # Recalled: on disk and on tape, readable again.
    for path, data in files.items():
        assert await tape.locality(path) == "DISK_AND_TAPE"
        got = await tape.get(path)
        assert got.status == 200 and got.body == data
    status = await tape.admin()
    assert status["files_recalled"] == len(files)


async def test_stage_per_file_errors(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.put("/tape/good", b"good")
    await tape.put("/tape/empty", b"")
    (srv.root / "tape" / "dir").mkdir()
    await tape.put("/other/elsewhere", b"not tape-backed")
    reply = await tape.stage_reply(
        "/tape/good", "/tape/missing", "/tape/dir", "/other/elsewhere", "/tape/empty"
    )
    assert reply.status == 201, reply.body  # never refused for per-file problems
    doc = await tape.wait_done(reply.json()["requestId"])
    files = by_path(doc)
    assert files["/tape/good"]["state"] == "COMPLETED"
    expected = {
        "/tape/missing": ERR_MISSING,
        "/tape/dir": ERR_DIRECTORY,
        "/other/elsewhere": ERR_NOT_TAPE,
        "/tape/empty": ERR_EMPTY,
    }
    for path, error in expected.items():
        assert files[path]["state"] == "FAILED", files[path]
        assert files[path]["error"] == error, files[path]


async def test_stage_drops_duplicates(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.put("/tape/a", b"a")
    await tape.put("/tape/b", b"b")
    reply = await tape.stage_reply(
        "/tape/a",
        "/tape/a",
        "//tape/./a",
        "/tape/x/../a",
        "/tape/%61",  # the same file, percent-encoded
        "/tape/b",
        f"{srv.url}/tape/b",  # a full URL names the same path
    )
    assert reply.status == 201
    doc = await tape.poll(reply.json()["requestId"])
    assert states(doc) == {"/tape/a": "COMPLETED", "/tape/b": "COMPLETED"}


async def test_paths_echoed_as_sent(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    reply = await tape.call("PUT", "/tape/with%20space%2Bplus", data=b"odd name", encoded=True)
    assert reply.status == 201
    assert (srv.root / "tape" / "with space+plus").read_bytes() == b"odd name"
    encoded = "/tape/with%20space%2Bplus"
    rid = await tape.stage(encoded, "//tape/./plain/../with space+plus")
    doc = await tape.poll(rid)
    # Found under its encoded spelling (decoded once), echoed exactly as sent; the second
    # spelling names the same file, so it is dropped.
    assert states(doc) == {encoded: "COMPLETED"}
    (item,) = await tape.archiveinfo(encoded)
    assert item == {"path": encoded, "locality": "DISK"}
    # Sanitised spellings are echoed sanitised (slashes collapsed, dot segments resolved).
    await tape.put("/tape/plain", b"plain")
    rid = await tape.stage("//tape/./x/../plain")
    assert states(await tape.poll(rid)) == {"/tape/plain": "COMPLETED"}


async def test_malformed_requests(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.put("/tape/f", b"f")
    rid = await tape.stage("/tape/f")
    stage_bodies: list[bytes] = [
        b"{not json",
        b"",
        b"[]",
        b'"files"',
        b"{}",
        b'{"files": []}',
        b'{"files": {"path": "/tape/f"}}',
        b'{"files": ["/tape/f"]}',
        b'{"files": [{}]}',
        b'{"files": [{"path": 5}]}',
        b'{"files": [{"path": null}]}',
        b'{"files": [{"path": "relative/path"}]}',
        b'{"files": [{"path": "/../etc/passwd"}]}',
        b'{"files": [{"path": "/tape/f", "diskLifetime": "one hour"}]}',
    ]
    for body in stage_bodies:
        reply = await tape.call(
            "POST", f"{API}/stage", data=body, headers={"Content-Type": "application/json"}
        )
        reply.problem(400)
    paths_bodies: list[bytes] = [
        b"{not json",
        b"{}",
        b'{"paths": []}',
        b'{"paths": "/tape/f"}',
        b'{"paths": [7]}',
        b'{"paths": [null]}',
    ]
    for route in (f"{API}/archiveinfo", f"{API}/stage/{rid}/cancel", f"{API}/release/{rid}"):
        for body in paths_bodies:
            reply = await tape.call("POST", route, data=body)
            reply.problem(400)
    # Nothing was created by the refused requests; the good one is untouched.
    assert states(await tape.poll(rid)) == {"/tape/f": "COMPLETED"}
    # Wrong methods on known routes: 405 problem+json.
    for method, route in (
        ("GET", f"{API}/stage"),
        ("POST", f"{API}/stage/{rid}"),
        ("GET", f"{API}/archiveinfo"),
        ("GET", f"{API}/release/{rid}"),
        ("GET", f"{API}/stage/{rid}/cancel"),
    ):
        (await tape.call(method, route)).problem(405)
    # A content type other than JSON is accepted.
    reply = await tape.call(
        "POST",
        f"{API}/archiveinfo",
        data=b'{"paths": ["/tape/f"]}',
        headers={"Content-Type": "text/plain"},
    )
    assert reply.status == 200 and reply.json()[0]["locality"] == "DISK"


async def test_too_many_files_is_413(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start(max_files_per_request=3)
    tape = Tape(session, srv.url)
    for i in range(4):
        await tape.put(f"/tape/f{i}", b"x")
    (await tape.stage_reply(*(f"/tape/f{i}" for i in range(4)))).problem(413)
    # Duplicates do not count.
    rid = await tape.stage("/tape/f0", "/tape/f1", "/tape/f2", "/tape/f0", "//tape/f1")
    assert len((await tape.poll(rid))["files"]) == 3


async def test_too_many_active_requests_is_429(
    start: Start, session: aiohttp.ClientSession
) -> None:
    srv = start(max_active_requests=2, **STUCK)
    tape = Tape(session, srv.url)
    await tape.on_tape({"/tape/a": b"a", "/tape/b": b"b", "/tape/c": b"c"})
    await tape.put("/tape/disk", b"on disk")
    first = await tape.stage("/tape/a")
    await tape.stage("/tape/b")
    (await tape.stage_reply("/tape/c")).problem(429)
    (await tape.stage_reply("/tape/disk")).problem(429)
    # A deleted request no longer counts.
    assert (await tape.call("DELETE", f"{API}/stage/{first}")).status == 200
    third = await tape.stage("/tape/c")
    assert set(states(await tape.poll(third)).values()) == {"SUBMITTED"}


async def test_unknown_request_is_404(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.put("/tape/f", b"f")
    for rid in (str(uuid.uuid4()), "x" * 65, "no-such-request"):
        (await tape.call("GET", f"{API}/stage/{rid}")).problem(404)
        (await tape.call("DELETE", f"{API}/stage/{rid}")).problem(404)
        (await tape.cancel(rid, "/tape/f")).problem(404)


# --------------------------------------------------------------------------- cancel, delete


async def test_cancel(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start(**STUCK)
    tape = Tape(session, srv.url)
    await tape.on_tape({"/tape/a": b"a", "/tape/b": b"b"})
    rid = await tape.stage("/tape/a", "/tape/b")
    assert states(await tape.poll(rid)) == {"/tape/a": "SUBMITTED", "/tape/b": "SUBMITTED"}
    await tape.wait_queued(2)
    # A path that is not part of the request: 400, and nothing changes.
    doc = (await tape.cancel(rid, "/tape/a", "/tape/not-in-request")).problem(400)
    assert "/tape/not-in-request" in doc.get("detail", "")
    assert states(await tape.poll(rid)) == {"/tape/a": "SUBMITTED", "/tape/b": "SUBMITTED"}
    # Cancel one file (spelled differently): it is CANCELLED, the other keeps waiting.
    reply = await tape.cancel(rid, "//tape/./a")
    assert reply.status == 200, reply.body
    doc = await tape.poll(rid)
    assert states(doc) == {"/tape/a": "CANCELLED", "/tape/b": "SUBMITTED"}
    assert "completedAt" not in doc
    assert (await tape.cancel(rid, "/tape/b")).status == 200
    doc = await tape.poll(rid)
    assert states(doc) == {"/tape/a": "CANCELLED", "/tape/b": "CANCELLED"}
    assert "completedAt" in doc
    # Nothing was recalled.
    assert await tape.locality("/tape/a") == "TAPE"
    await tape.wait_queued(0)


async def test_delete_forgets_request_and_drops_pins(
    start: Start, session: aiohttp.ClientSession
) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.put("/tape/pinned", b"pinned")
    await tape.flush()
    rid = await tape.stage("/tape/pinned")  # on disk: COMPLETED with a pin
    assert states(await tape.poll(rid)) == {"/tape/pinned": "COMPLETED"}
    await tape.evict()
    assert await tape.locality("/tape/pinned") == "DISK_AND_TAPE"  # the pin holds it
    reply = await tape.call("DELETE", f"{API}/stage/{rid}")
    assert reply.status == 200
    (await tape.call("GET", f"{API}/stage/{rid}")).problem(404)
    (await tape.call("DELETE", f"{API}/stage/{rid}")).problem(404)
    await tape.evict()
    assert await tape.locality("/tape/pinned") == "TAPE"


async def test_delete_of_pending_request(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start(**STUCK)
    tape = Tape(session, srv.url)
    await tape.on_tape({"/tape/p": b"pending"})
    rid = await tape.stage("/tape/p")
    await tape.wait_queued(1)
    assert (await tape.call("DELETE", f"{API}/stage/{rid}")).status == 200
    (await tape.call("GET", f"{API}/stage/{rid}")).problem(404)
    await tape.wait_queued(0)


# --------------------------------------------------------------------------- release


async def test_release(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    files = {"/tape/by-id": b"1", "/tape/by-placeholder": b"2", "/tape/kept": b"3"}
    for path, data in files.items():
        await tape.put(path, data)
    await tape.flush()
    rid = await tape.stage("/tape/by-id", "/tape/kept")
    other = await tape.stage("/tape/by-placeholder")
    for r in (rid, other):
        assert set(states(await tape.wait_done(r)).values()) == {"COMPLETED"}
    # Pinned files survive an eviction.
    await tape.evict()
    for path in files:
        assert await tape.locality(path) == "DISK_AND_TAPE", path
    # Release with the request id: that pin is gone (paths not in the request are ignored).
    reply = await tape.release(rid, "/tape/by-id", "/tape/not-in-request")
    assert reply.status == 200, reply.body
    # gfal-evict without a token: gfal2's placeholder id releases the caller's pins.
    reply = await tape.release("gfal2-placeholder-id", "/tape/by-placeholder")
    assert reply.status == 200, reply.body
    await tape.evict()
    assert await tape.locality("/tape/by-id") == "TAPE"
    assert await tape.locality("/tape/by-placeholder") == "TAPE"
    assert await tape.locality("/tape/kept") == "DISK_AND_TAPE"
    # A released request still answers polls; releasing twice is harmless.
    assert states(await tape.poll(rid))["/tape/by-id"] == "COMPLETED"
    assert (await tape.release(rid, "/tape/by-id")).status == 200
    assert (await tape.release("gfal2-placeholder-id", "/tape/never-staged")).status == 200


async def test_pins_of_several_requests(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.put("/tape/shared", b"wanted twice")
    await tape.flush()
    first = await tape.stage("/tape/shared")
    second = await tape.stage("/tape/shared")
    assert (await tape.release(first, "/tape/shared")).status == 200
    await tape.evict()
    assert await tape.locality("/tape/shared") == "DISK_AND_TAPE"  # the second pin holds
    # Cancelling a COMPLETED file keeps its state and drops the request's pin.
    assert (await tape.cancel(second, "/tape/shared")).status == 200
    assert states(await tape.poll(second)) == {"/tape/shared": "COMPLETED"}
    await tape.evict()
    assert await tape.locality("/tape/shared") == "TAPE"


# --------------------------------------------------------------------------- archiveinfo


async def test_archiveinfo_localities(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.put("/tape/data", b"some data")
    await tape.put("/tape/empty", b"")
    (srv.root / "tape" / "sub").mkdir()
    paths = ("/tape/data", "/tape/empty", "/tape/missing", "/tape/sub")
    items = await tape.archiveinfo(*paths)
    assert items[0] == {"path": "/tape/data", "locality": "DISK"}
    assert items[1] == {"path": "/tape/empty", "locality": "NONE"}
    assert items[2] == {"path": "/tape/missing", "error": ERR_MISSING}  # no locality
    assert items[3] == {"path": "/tape/sub", "error": ERR_DIRECTORY}
    await tape.flush()
    items = await tape.archiveinfo(*paths)
    assert items[0] == {"path": "/tape/data", "locality": "DISK_AND_TAPE"}
    assert items[1] == {"path": "/tape/empty", "locality": "NONE"}  # never written to tape
    await tape.evict()
    items = await tape.archiveinfo(*paths)
    assert items[0] == {"path": "/tape/data", "locality": "TAPE"}
    assert items[1] == {"path": "/tape/empty", "locality": "NONE"}
    # Duplicates are answered once; outside the pools: on disk, never going to tape.
    await tape.put("/other/x", b"x")
    reply = await tape.archiveinfo_reply("/tape/data", "//tape/data", "/other/x")
    assert reply.json() == [
        {"path": "/tape/data", "locality": "TAPE"},
        {"path": "/other/x", "locality": "DISK"},  # no error: gfal2 2.21 needs none
    ]
    status = await tape.admin()
    assert status["localities"]["TAPE"]["files"] == 1
    assert status["localities"]["NONE"]["files"] == 1


async def test_archiveinfo_of_a_disabled_cartridge(
    start: Start, session: aiohttp.ClientSession
) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.on_tape({"/tape/f": b"on a cartridge"})
    cartridges = (await tape.admin())["cartridges"]
    assert len(cartridges) == 1, cartridges  # one pool, one small file: one cartridge
    (vid,) = cartridges
    assert cartridges[vid] == "ACTIVE"
    status = await tape.admin({"cartridges": {vid: "DISABLED"}})
    assert status["cartridges"][vid] == "DISABLED"
    assert await tape.locality("/tape/f") == "UNAVAILABLE"
    refused = await tape.get("/tape/f")
    assert refused.status == 503 and "Retry-After" in refused.headers
    doc = await tape.wait_done(await tape.stage("/tape/f"))
    assert by_path(doc)["/tape/f"]["state"] == "FAILED"
    assert by_path(doc)["/tape/f"]["error"] == ERR_UNAVAILABLE
    await tape.admin({"cartridges": {vid: "ACTIVE"}})
    assert await tape.locality("/tape/f") == "TAPE"
    doc = await tape.wait_done(await tape.stage("/tape/f"))
    assert states(doc) == {"/tape/f": "COMPLETED"}
    # Unknown states are refused.
    reply = await tape.call("POST", ADMIN, {"cartridges": {vid: "MELTED"}})
    assert reply.status == 400


# --------------------------------------------------------------------------- failures


async def test_unreachable_backend(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.on_tape({"/tape/far": b"far away"})
    await tape.put("/tape/near", b"on disk")
    status = await tape.admin({"unreachable": True})
    assert status["settings"].get("unreachable") is True
    doc = await tape.wait_done(await tape.stage("/tape/far", "/tape/near"))
    files = by_path(doc)
    assert files["/tape/far"]["state"] == "FAILED"
    assert files["/tape/far"]["error"] == ERR_UNREACHABLE
    assert files["/tape/near"]["state"] == "COMPLETED"  # needs no tape
    await tape.admin({"unreachable": False})
    doc = await tape.wait_done(await tape.stage("/tape/far"))
    assert states(doc) == {"/tape/far": "COMPLETED"}


async def test_unreachable_fails_queued_files(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start(**STUCK)
    tape = Tape(session, srv.url)
    await tape.on_tape({"/tape/q": b"queued"})
    rid = await tape.stage("/tape/q")
    assert states(await tape.poll(rid)) == {"/tape/q": "SUBMITTED"}
    await tape.wait_queued(1)
    await tape.admin({"unreachable": True})
    doc = await tape.wait_done(rid)
    assert by_path(doc)["/tape/q"]["error"] == ERR_UNREACHABLE


async def test_bad_file_becomes_lost(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.on_tape({"/tape/bad": b"unreadable"})
    await tape.admin({"bad_file_probability": 1.0})
    doc = await tape.wait_done(await tape.stage("/tape/bad"))
    assert by_path(doc)["/tape/bad"]["state"] == "FAILED"
    assert by_path(doc)["/tape/bad"]["error"]
    assert await tape.locality("/tape/bad") == "LOST"
    refused = await tape.get("/tape/bad")
    assert refused.status == 503
    # Staging a lost file again fails at once.
    await tape.admin({"bad_file_probability": None})
    doc = await tape.poll(await tape.stage("/tape/bad"))
    assert by_path(doc)["/tape/bad"]["state"] == "FAILED"
    assert by_path(doc)["/tape/bad"]["error"] == ERR_LOST
    assert (await tape.admin())["files_failed"] >= 1


async def test_admin_switches_are_validated(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    bodies: list[object] = [
        {"bad_file_probability": 2.0},
        {"unreachable": "yes"},
        {"no_such_switch": True},
        {},
        [],
    ]
    for body in bodies:
        reply = await tape.call("POST", ADMIN, body)
        assert reply.status == 400, (body, reply.status)
    assert (await tape.call("DELETE", ADMIN)).status == 405


# --------------------------------------------------------------------------- persistence


async def test_locality_survives_restart(
    start: Start, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.on_tape({"/tape/cold": b"cold"})
    await tape.put("/tape/warm", b"warm")
    await tape.flush()
    await tape.put("/tape/fresh", b"fresh")
    rid = await tape.stage("/tape/warm")
    srv.stop()
    srv = start()
    tape = Tape(session, srv.url)
    assert await tape.locality("/tape/cold") == "TAPE"
    assert await tape.locality("/tape/warm") == "DISK_AND_TAPE"
    assert await tape.locality("/tape/fresh") == "DISK"
    assert (await tape.get("/tape/cold")).status == 503
    # The request and its pin survived too.
    assert states(await tape.poll(rid)) == {"/tape/warm": "COMPLETED"}
    await tape.evict()
    assert await tape.locality("/tape/warm") == "DISK_AND_TAPE"


async def test_stage_request_survives_sigkill(start: Start, session: aiohttp.ClientSession) -> None:
    srv = start(**STUCK)
    tape = Tape(session, srv.url)
    files = {f"/tape/k{i}": f"killed {i}".encode() for i in range(3)}
    await tape.on_tape(files)
    rid = await tape.stage(*files)
    assert set(states(await tape.poll(rid)).values()) == {"SUBMITTED"}
    srv.kill()
    srv = start()  # FAST: the resumed recall finishes quickly
    tape = Tape(session, srv.url)
    doc = await tape.wait_done(rid)
    assert set(states(doc).values()) == {"COMPLETED"}, doc
    for path, data in files.items():
        got = await tape.get(path)
        assert got.status == 200 and got.body == data


# --------------------------------------------------------------------------- namespace


async def test_namespace_changes_follow_the_catalogue(
    start: Start, session: aiohttp.ClientSession
) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.put("/tape/a", b"archived")
    await tape.flush()
    assert await tape.locality("/tape/a") == "DISK_AND_TAPE"
    # MOVE keeps the tape copy.
    moved = await tape.call("MOVE", "/tape/a", headers={"Destination": srv.url + "/tape/b"})
    assert moved.status in (201, 204), moved.body
    (gone, kept) = await tape.archiveinfo("/tape/a", "/tape/b")
    assert gone == {"path": "/tape/a", "error": ERR_MISSING}
    assert kept == {"path": "/tape/b", "locality": "DISK_AND_TAPE"}
    await tape.evict()
    assert await tape.locality("/tape/b") == "TAPE"
    # Overwriting an archived file: the new data is on disk only.
    await tape.put("/tape/b", b"new data")
    assert await tape.locality("/tape/b") == "DISK"
    got = await tape.get("/tape/b")
    assert got.status == 200 and got.body == b"new data"
    await tape.flush()
    assert await tape.locality("/tape/b") == "DISK_AND_TAPE"
    # DELETE forgets it: a file placed at that path later (behind the server's back) is
    # adopted as new, not taken for the old tape copy.
    deleted = await tape.call("DELETE", "/tape/b")
    assert deleted.status in (200, 204)
    assert (await tape.admin())["localities"] == {}
    (srv.root / "tape" / "b").write_bytes(b"placed")
    assert await tape.locality("/tape/b") == "DISK"
    # MOVE out of the pools: no longer tape-backed.
    await tape.flush()
    moved = await tape.call("MOVE", "/tape/b", headers={"Destination": srv.url + "/other/b"})
    assert moved.status in (201, 204), moved.body
    (item,) = await tape.archiveinfo("/other/b")
    assert item == {"path": "/other/b", "locality": "DISK"}


# --------------------------------------------------------------------------- tokens


@dataclass
class TokenSetup:
    srv: SEProcess
    issuer: JWTIssuer
    session: aiohttp.ClientSession

    def client(self, scope: str | None, sub: str = "alice") -> Tape:
        token = None if scope is None else self.issuer.mint(scope, sub=sub)
        return Tape(self.session, self.srv.url, token)

    @property
    def admin(self) -> Tape:
        return self.client("storage.modify:/ storage.read:/", sub="admin")


@pytest.fixture
async def tokens(
    start: Start, session: aiohttp.ClientSession, tmp_path: Path
) -> AsyncIterator[TokenSetup]:
    issuer = JWTIssuer(tmp_path / "issuer", issuer=ISSUER)
    jwks = issuer.write_jwks()
    srv = start(tape_config(extra=auth_config(jwks)))
    setup = TokenSetup(srv, issuer, session)
    yield setup


async def test_token_stage_scope_may_stage_but_not_read(tokens: TokenSetup) -> None:
    admin = tokens.admin
    await admin.on_tape({"/tape/t": b"token data"})
    stager = tokens.client("storage.stage:/tape")
    rid = await stager.stage("/tape/t")
    doc = await stager.wait_done(rid)
    assert states(doc) == {"/tape/t": "COMPLETED"}
    # Profile 1.3: stage does not imply read.
    assert (await stager.get("/tape/t")).status == 403
    got = await admin.get("/tape/t")
    assert got.status == 200 and got.body == b"token data"
    # storage.stage allows archiveinfo, release and cancel of its own request too.
    assert await stager.locality("/tape/t") == "DISK_AND_TAPE"
    assert (await stager.release(rid, "/tape/t")).status == 200
    assert (await stager.cancel(rid, "/tape/t")).status == 200
    # A stage scope elsewhere does not reach /tape.
    elsewhere = tokens.client("storage.stage:/other")
    (await elsewhere.stage_reply("/tape/t")).problem(403)


async def test_token_read_only_may_not_stage(tokens: TokenSetup) -> None:
    admin = tokens.admin
    await admin.on_tape({"/tape/r": b"read only"})
    reader = tokens.client("storage.read:/tape")
    (await reader.stage_reply("/tape/r")).problem(403)
    # archiveinfo only needs read (stat).
    items = await reader.archiveinfo("/tape/r", "/tape/missing")
    assert items == [
        {"path": "/tape/r", "locality": "TAPE"},
        {"path": "/tape/missing", "error": ERR_MISSING},
    ]
    # No token at all: 401 problem+json for every route.
    anonymous = tokens.client(None)
    (await anonymous.stage_reply("/tape/r")).problem(401)
    (await anonymous.archiveinfo_reply("/tape/r")).problem(401)
    # The discovery document stays public.
    assert (await anonymous.call("GET", DISCOVERY)).status == 200


async def test_token_mixed_permissions_fail_per_file(tokens: TokenSetup) -> None:
    admin = tokens.admin
    await admin.on_tape({"/tape/in": b"in"})
    await admin.put("/other/out", b"out")
    stager = tokens.client("storage.stage:/tape")
    doc = await stager.wait_done(await stager.stage("/tape/in", "/other/out"))
    files = by_path(doc)
    assert files["/tape/in"]["state"] == "COMPLETED"
    assert files["/other/out"]["state"] == "FAILED"
    assert files["/other/out"]["error"] == "Permission denied"


async def test_token_poll_by_another_subject(tokens: TokenSetup) -> None:
    admin = tokens.admin
    await admin.on_tape({"/tape/p": b"polled"})
    owner = tokens.client("storage.stage:/tape", sub="alice")
    rid = await owner.stage("/tape/p")
    # FTS polls with a wide storage.poll token of its own.
    poller = tokens.client("storage.poll:/tape", sub="fts")
    assert (await poller.poll(rid))["id"] == rid
    # storage.poll is not enough to cancel, delete or release someone else's request.
    (await poller.cancel(rid, "/tape/p")).problem(404)
    (await poller.call("DELETE", f"{API}/stage/{rid}")).problem(404)
    # Another subject with stage rights on every path may poll and cancel.
    colleague = tokens.client("storage.stage:/", sub="bob")
    assert (await colleague.poll(rid))["id"] == rid
    # Without poll or stage rights (or with them elsewhere), the request does not exist.
    for scope in ("storage.read:/tape", "storage.poll:/other", "storage.create:/tape"):
        stranger = tokens.client(scope, sub="mallory")
        (await stranger.call("GET", f"{API}/stage/{rid}")).problem(404)
        (await stranger.call("DELETE", f"{API}/stage/{rid}")).problem(404)
    assert (await owner.wait_done(rid))["id"] == rid


async def test_token_release_by_another_subject(tokens: TokenSetup) -> None:
    admin = tokens.admin
    await admin.put("/tape/r", b"released by a colleague")
    await admin.flush()
    owner = tokens.client("storage.stage:/tape", sub="alice")
    rid = await owner.stage("/tape/r")
    assert states(await owner.poll(rid)) == {"/tape/r": "COMPLETED"}
    # Stage rights elsewhere: refused, the pin stays.
    stranger = tokens.client("storage.stage:/other", sub="mallory")
    assert (await stranger.release(rid, "/tape/r")).status in (403, 404)
    await admin.evict()
    assert await admin.locality("/tape/r") == "DISK_AND_TAPE"
    # Stage rights on every path of the request: allowed.
    colleague = tokens.client("storage.stage:/tape", sub="bob")
    assert (await colleague.release(rid, "/tape/r")).status == 200
    await admin.evict()
    assert await admin.locality("/tape/r") == "TAPE"


async def test_token_admin_endpoint_needs_modify_on_root(tokens: TokenSetup) -> None:
    for scope in ("storage.stage:/tape", "storage.modify:/tape", "storage.read:/"):
        client = tokens.client(scope)
        assert (await client.call("GET", ADMIN)).status == 403, scope
        assert (await client.call("POST", ADMIN, {"evict": True})).status == 403, scope
    assert (await tokens.client(None).call("GET", ADMIN)).status == 401
    assert (await tokens.admin.call("GET", ADMIN)).status == 200


# --------------------------------------------------------------------------- more limits


async def test_disk_lifetime_and_targeted_metadata(
    start: Start, session: aiohttp.ClientSession
) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.put("/tape/short", b"short pin")
    await tape.put("/tape/meta", b"metadata")
    await tape.flush()
    # diskLifetime bounds the pin; targetedMetadata (ours and other sites') never refuses.
    reply = await tape.call(
        "POST",
        f"{API}/stage",
        {
            "files": [
                {"path": "/tape/short", "diskLifetime": "PT3S"},
                {
                    "path": "/tape/meta",
                    "targetedMetadata": {
                        SITENAME: {"activity": "exper_t0_daq"},
                        "another-site": {"x": [1, 2]},
                        "third": "not an object",
                    },
                },
            ]
        },
    )
    assert reply.status == 201, reply.body
    rid = reply.json()["requestId"]
    assert set(states(await tape.poll(rid)).values()) == {"COMPLETED"}
    await tape.evict()
    assert await tape.locality("/tape/short") == "DISK_AND_TAPE"
    await asyncio.sleep(4.1)
    await tape.evict()
    assert await tape.locality("/tape/short") == "TAPE"
    assert await tape.locality("/tape/meta") == "DISK_AND_TAPE"  # the default pin: a day


async def test_archiveinfo_truncates_and_body_limit(
    start: Start, session: aiohttp.ClientSession
) -> None:
    srv = start(max_archiveinfo_paths=2, max_body_bytes=1024)
    tape = Tape(session, srv.url)
    for name in ("a", "b", "c"):
        await tape.put(f"/tape/{name}", b"x")
    # Too many paths never fail: the first ones are answered.
    reply = await tape.archiveinfo_reply("/tape/a", "/tape/b", "/tape/c")
    assert reply.status == 200
    assert [item["path"] for item in reply.json()] == ["/tape/a", "/tape/b"]
    big = {"paths": [f"/tape/{'x' * 100}{i}" for i in range(10)]}
    (await tape.call("POST", f"{API}/archiveinfo", big)).problem(413)
    (await tape.stage_reply(*big["paths"])).problem(413)


# --------------------------------------------------------------------------- regressions


async def test_routes_with_trailing_slash_as_gfal2_sends_them(
    start: Start, session: aiohttp.ClientSession
) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.put("/tape/f", b"f")
    info = await tape.call("POST", f"{API}/archiveinfo/", {"paths": ["/tape/f"]})
    assert info.status == 200, (info.status, info.body[:200])
    assert info.json() == [{"path": "/tape/f", "locality": "DISK"}]
    staged = await tape.call("POST", f"{API}/stage/", {"files": [{"path": "/tape/f"}]})
    assert staged.status == 201, (staged.status, staged.body[:200])
    assert states(await tape.poll(staged.json()["requestId"])) == {"/tape/f": "COMPLETED"}


async def test_405_allow_lists_the_methods_of_the_route(
    start: Start, session: aiohttp.ClientSession
) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    expected = {
        DISCOVERY: {"GET", "HEAD"},
        f"{API}/stage": {"POST"},
        f"{API}/archiveinfo": {"POST"},
    }
    for path, methods in expected.items():
        reply = await tape.call("PUT", path, data=b"{}")
        reply.problem(405)
        allow = {m.strip() for m in reply.headers.get("Allow", "").split(",") if m.strip()}
        assert allow == methods, (path, allow)


async def test_poll_by_other_subject_of_request_with_invalid_path(tokens: TokenSetup) -> None:
    admin = tokens.admin
    await admin.put("/tape/ok", b"ok")
    owner = tokens.client("storage.stage:/tape", sub="alice")
    rid = await owner.stage("/tape/ok", "/tape/a%2Fb")  # an encoded "/": an invalid path
    doc = await owner.poll(rid)
    assert by_path(doc)["/tape/a%2Fb"]["state"] == "FAILED"
    poller = tokens.client("storage.poll:/tape", sub="fts")
    reply = await poller.call("GET", f"{API}/stage/{rid}")
    assert reply.status in (200, 404), (reply.status, reply.body[:300])


async def test_copy_of_a_tape_only_file_is_refused(
    start: Start, session: aiohttp.ClientSession
) -> None:
    srv = start()
    tape = Tape(session, srv.url)
    await tape.on_tape({"/tape/cold": b"cold data"})
    assert (await tape.get("/tape/cold")).status == 503
    copied = await tape.call("COPY", "/tape/cold", headers={"Destination": srv.url + "/other/c"})
    assert copied.status >= 400, (copied.status, copied.body[:200])
    assert not (srv.root / "other" / "c").exists()


async def test_overwrite_during_recall_is_not_archived(
    start: Start, session: aiohttp.ClientSession
) -> None:
    # A recall of about a second: mount after 0.5 s, then robot, load, locate, read.
    srv = start(time_scale=50.0, min_request_age=25.0)
    tape = Tape(session, srv.url)
    await tape.on_tape({"/tape/w": b"old data on tape"})
    rid = await tape.stage("/tape/w")
    await tape.put("/tape/w", b"new data, never flushed")
    assert await tape.locality("/tape/w") == "DISK"
    doc = await tape.poll(rid)
    assert "completedAt" not in doc, "the recall finished before the overwrite"
    await tape.wait_done(rid)
    assert await tape.locality("/tape/w") == "DISK", "new data is reported as on tape"


async def test_anonymous_stage_of_invalid_paths_is_refused(tokens: TokenSetup) -> None:
    anonymous = tokens.client(None)
    reply = await anonymous.stage_reply("/tape/a%2Fb", "/tape/c%2Fd")
    assert reply.status == 401, (reply.status, reply.body[:200])


# --------------------------------------------------------------------------- writes in progress,
# reads during a stage, targetedMetadata (issue 14), with two worker processes

TWO_WORKERS = ["--workers", "2"]
T = TypeVar("T")


def start_two_workers(
    se_factory: Callable[..., SEProcess], tmp_path: Path, **tape: object
) -> SEProcess:
    return se_factory(tape_config(tape), root=data_root(tmp_path), extra_args=TWO_WORKERS)


def fresh_session() -> aiohttp.ClientSession:
    """A session whose every request opens a new connection (so that both workers answer)."""
    connector = aiohttp.TCPConnector(force_close=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20))


async def on_library(tape: Tape, switches: Mapping[str, object]) -> None:
    """POST admin switches until the worker that runs the library has applied them (with
    --workers 2 only the first one does: flush and evict need it); 200 tries at most."""
    for _ in range(200):
        if (await tape.admin(switches))["library"]:
            return
    raise AssertionError("the library worker never answered")


async def per_worker(url: str, action: Callable[[Tape], Awaitable[T]]) -> dict[bool, T]:
    """What ``action`` gets from each of the two workers: on one connection the admin status
    says which worker it is (the library's or not), then ``action`` runs there.  Asks on new
    connections until both answered (the second one binds a moment after the server reports
    its URL); 100 tries and 15 s at most."""
    seen: dict[bool, T] = {}
    deadline = time.monotonic() + 15.0
    for _ in range(100):
        if len(seen) == 2 or time.monotonic() > deadline:
            break
        connector = aiohttp.TCPConnector(limit=1)  # one connection: one worker
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
            tape = Tape(s, url)
            library = bool((await tape.admin())["library"])
            if library not in seen:
                seen[library] = await action(tape)
    assert set(seen) == {True, False}, "both workers should have answered"
    return seen


async def archiveinfo_per_worker(url: str, *paths: str) -> dict[bool, list[dict[str, Any]]]:
    """ARCHIVEINFO of ``paths`` as each of the two workers answers it."""
    return await per_worker(url, lambda tape: tape.archiveinfo(*paths))


class SlowPut:
    """A PUT on a raw connection whose body is sent in two parts: the head and a first part
    now, the rest (or nothing: the client goes away) when the test says."""

    def __init__(self, url: str, path: str, first: bytes, total: int) -> None:
        self.port = int(url.rsplit(":", 1)[1])
        self.path = path
        self.first = first
        self.total = total
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def begin(self, root: Path) -> None:
        """Send the head and the first part; return once the server's temp file exists."""
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (
            f"PUT {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Length: {self.total}\r\n\r\n"
        )
        self.writer.write(head.encode() + self.first)
        await self.writer.drain()
        assert await poll_async(lambda: bool(temp_files(root)), 10.0), "no upload temp file"

    async def finish(self, rest: bytes) -> int:
        """Send the rest; the status of the answer."""
        assert self.reader is not None and self.writer is not None
        assert len(self.first) + len(rest) == self.total
        self.writer.write(rest)
        await self.writer.drain()
        line = await asyncio.wait_for(self.reader.readline(), 20)
        self.writer.close()
        return int(line.split()[1])

    def abort(self) -> None:
        assert self.writer is not None
        self.writer.transport.abort()


async def test_archiveinfo_of_a_file_being_uploaded_is_disk(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """FTS cleans up a destination only when its locality is DISK: a file whose PUT is still
    running (temp file, not yet renamed into place) is DISK, as either worker sees it; once
    the upload ends, the file's own locality applies."""
    srv = start_two_workers(se_factory, tmp_path)
    async with fresh_session() as s:
        tape = Tape(s, srv.url)
        part = b"p" * 65536
        upload = SlowPut(srv.url, "/tape/slow", part, 3 * len(part))
        await upload.begin(srv.root / "tape")
        answers = await archiveinfo_per_worker(srv.url, "/tape/slow", "/tape/absent")
        for items in answers.values():
            assert items[0] == {"path": "/tape/slow", "locality": "DISK"}, items
            assert items[1] == {"path": "/tape/absent", "error": ERR_MISSING}, items
        assert not (srv.root / "tape" / "slow").exists()
        assert await upload.finish(2 * part) == 201
        assert (srv.root / "tape" / "slow").read_bytes() == 3 * part
        assert temp_files(srv.root) == []
        assert await tape.locality("/tape/slow") == "DISK"
        await on_library(tape, {"flush": True})
        await tape.wait_locality("/tape/slow", "DISK_AND_TAPE")


async def test_archiveinfo_after_an_aborted_upload_is_missing(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    srv = start_two_workers(se_factory, tmp_path)
    async with fresh_session() as s:
        tape = Tape(s, srv.url)
        upload = SlowPut(srv.url, "/tape/broken", b"b" * 1000, 10_000)
        await upload.begin(srv.root / "tape")
        for items in (await archiveinfo_per_worker(srv.url, "/tape/broken")).values():
            assert items == [{"path": "/tape/broken", "locality": "DISK"}], items
        upload.abort()
        assert await poll_async(lambda: not temp_files(srv.root), 10.0), "temp file left"
        for items in (await archiveinfo_per_worker(srv.url, "/tape/broken")).values():
            assert items == [{"path": "/tape/broken", "error": ERR_MISSING}], items
        assert not (srv.root / "tape" / "broken").exists()
        # A stage of it fails as for any missing file.
        doc = await tape.wait_done(await tape.stage("/tape/broken"))
        assert by_path(doc)["/tape/broken"]["error"] == ERR_MISSING


async def test_archiveinfo_during_an_overwrite_is_that_of_the_file_there(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """While an existing file is being replaced, archiveinfo reports the file that is there
    (a tape copy is never passed off as DISK, which FTS would delete); the new one is DISK."""
    srv = start_two_workers(se_factory, tmp_path)
    async with fresh_session() as s:
        tape = Tape(s, srv.url)
        await tape.put("/tape/old", b"old data, on tape only")
        await on_library(tape, {"flush": True, "evict": True})
        await tape.wait_locality("/tape/old", "TAPE")
        upload = SlowPut(srv.url, "/tape/old", b"n" * 100, 200)
        await upload.begin(srv.root / "tape")
        for items in (await archiveinfo_per_worker(srv.url, "/tape/old")).values():
            assert items == [{"path": "/tape/old", "locality": "TAPE"}], items
        assert await upload.finish(b"n" * 100) == 204
        assert await tape.locality("/tape/old") == "DISK"


async def test_a_temp_file_left_by_a_crash_is_not_a_write_in_progress(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    srv = start_two_workers(se_factory, tmp_path)
    async with fresh_session() as s:
        upload = SlowPut(srv.url, "/tape/crashed", b"c" * 1000, 10_000)
        await upload.begin(srv.root / "tape")
        assert await Tape(s, srv.url).locality("/tape/crashed") == "DISK"
        srv.kill()
        upload.abort()
        (left,) = temp_files(srv.root)
        # Dated after the next start, so that the start-up sweep keeps it: what tells a
        # write in progress is its writer's lock, which died with the process.
        future = time.time() + 3600
        os.utime(left, (future, future))
        again = start_two_workers(se_factory, tmp_path)
        for items in (await archiveinfo_per_worker(again.url, "/tape/crashed")).values():
            assert items == [{"path": "/tape/crashed", "error": ERR_MISSING}], items
        assert left.exists()


async def test_stage_of_a_file_on_disk_never_blocks_its_reads(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """A large GET is running while a stage of the same file (on disk: DISK_AND_TAPE, and a
    DISK one) is submitted and polled, on other connections: the stage completes at once and
    is seen COMPLETED while the GET is still open; the GET then ends with every byte, and a
    second GET meanwhile is served in full."""
    srv = start_two_workers(se_factory, tmp_path)
    big = os.urandom(24 << 20)
    async with fresh_session() as s:
        tape = Tape(s, srv.url)
        async with s.put(srv.url + "/tape/big", data=io.BytesIO(big)) as resp:
            assert resp.status == 201
        await on_library(tape, {"flush": True})
        await tape.wait_locality("/tape/big", "DISK_AND_TAPE")
        await tape.put("/tape/fresh", b"on disk only")
        staged = asyncio.Event()

        async def read_slowly() -> bytes:
            timeout = aiohttp.ClientTimeout(total=60)
            async with (
                aiohttp.ClientSession(timeout=timeout) as reader,
                reader.get(srv.url + "/tape/big") as resp,
            ):
                assert resp.status == 200
                head = await resp.content.readexactly(1 << 20)
                await asyncio.wait_for(staged.wait(), 30)  # paused mid-body
                return head + await resp.content.read()  # the rest, to the end

        reading = asyncio.ensure_future(read_slowly())
        try:

            async def stage_and_poll(client: Tape) -> dict[str, Any]:
                return await client.poll(await client.stage("/tape/big", "/tape/fresh"))

            for doc in (await per_worker(srv.url, stage_and_poll)).values():
                assert "completedAt" in doc, doc  # at the first poll
                assert states(doc) == {"/tape/big": "COMPLETED", "/tape/fresh": "COMPLETED"}
            assert not reading.done(), "the GET ended before the stage was seen complete"
            second = await tape.get("/tape/big")
            assert second.status == 200 and second.body == big
            staged.set()
            body = await asyncio.wait_for(reading, 60)
            assert len(body) == len(big) and body == big
        finally:
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading


async def test_targeted_metadata_is_stored_with_the_request(
    start: Start, session: aiohttp.ClientSession
) -> None:
    """targetedMetadata under our sitename, or under "default" (as Rucio sends it), is kept
    with the file in the request; ours wins over "default".  Polls never show it (the API
    has no field for it)."""
    srv = start()
    tape = Tape(session, srv.url)
    for name in ("a", "b", "c"):
        await tape.put(f"/tape/{name}", name.encode())
    reply = await tape.call(
        "POST",
        f"{API}/stage",
        {
            "files": [
                {"path": "/tape/a", "targetedMetadata": {"default": {"activity": "T0"}}},
                {
                    "path": "/tape/b",
                    "targetedMetadata": {"default": {"x": 1}, SITENAME: {"activity": "ours"}},
                },
                {"path": "/tape/c", "targetedMetadata": {"other-site": {"y": 2}}},
            ]
        },
    )
    assert reply.status == 201, reply.body
    rid = reply.json()["requestId"]
    doc = await tape.poll(rid)
    assert all(set(f) <= {"path", "state", "startedAt", "finishedAt"} for f in doc["files"])
    store = await open_store(srv.root / ".se-state" / "tape.sqlite")
    try:
        req = await store.get_request(rid)
    finally:
        await store.close()
    assert req is not None
    assert {f.path: f.metadata for f in req.files} == {
        "/tape/a": {"activity": "T0"},
        "/tape/b": {"activity": "ours"},
        "/tape/c": None,
    }


async def test_archiveinfo_of_a_file_being_pulled_is_disk(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    """A third-party-copy pull writes through the same temp file as a PUT: DISK while the
    source is still sending, as either worker sees it."""
    srv = start_two_workers(se_factory, tmp_path)
    data = os.urandom(1 << 20)
    with Remote() as remote:
        remote.files["pulled"] = data
        async with fresh_session() as s:
            tape = Tape(s, srv.url)

            async def pull() -> tuple[int, str]:
                headers = {"Source": f"{remote.url}/gate/pulled"}  # half now, half at the gate
                async with s.request("COPY", srv.url + "/tape/pulled", headers=headers) as resp:
                    return resp.status, await resp.text()

            copying = asyncio.ensure_future(pull())
            try:
                assert await poll_async(lambda: bool(temp_files(srv.root / "tape")), 10.0)
                for items in (await archiveinfo_per_worker(srv.url, "/tape/pulled")).values():
                    assert items == [{"path": "/tape/pulled", "locality": "DISK"}], items
                remote.open_gate()
                status, body = await asyncio.wait_for(copying, 30)
            finally:
                copying.cancel()
                with contextlib.suppress(BaseException):
                    await copying
            assert status == 202 and "success: Created" in body, (status, body[-300:])
            assert (srv.root / "tape" / "pulled").read_bytes() == data
            assert await tape.locality("/tape/pulled") == "DISK"
