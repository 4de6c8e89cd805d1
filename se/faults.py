"""Fault injection: rules that make this server fail exactly when and how a test asks.

A rule has match criteria (method, path glob, caller identity, VO, third-party-copy role,
every Nth matching request, a seeded probability, a byte offset, a maximum number of
firings) and actions (answer a status; delay; reset, stall, throttle, corrupt or truncate
a response body; a wrong digest header; withhold TPC markers or end a TPC with a given
failure line; fail or delay tape stage and archive of matching paths).  Rules come from
the configuration (``[[faults.rules]]``, ids ``cfg-0``, ``cfg-1`` ...) and from the
``/.well-known/se/faults`` endpoint at run time.

Every worker process sees the same rules and counts: run-time rules and all counters are
kept in one SQLite file under the state directory (WAL, no fsync: test state), with a
rule-set version that each change increments in the same transaction and then writes to an
8-byte file every worker maps: a request reads the version from memory (no system call)
and the rules are reloaded only when it changed.  A rule's Nth-request and probability
decisions use its global count of matching requests, so they are deterministic whichever
worker serves a request.

:func:`parse_rule`, :func:`criteria_match` and :func:`decide` are pure.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import mmap
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "BODY_ACTIONS",
    "TPC_ROLES",
    "Facts",
    "FactsLike",
    "FaultState",
    "Rule",
    "criteria_match",
    "decide",
    "parse_rule",
    "reset_state",
]

TPC_ROLES = ("pull", "push", "passive")
BODY_ACTIONS = ("reset_after", "stall_after", "throttle", "corrupt_at", "truncate_after")
_MATCH_KEYS = {
    "method",
    "path",
    "identity",
    "vo",
    "tpc",
    "every",
    "probability",
    "seed",
    "offset",
    "times",
}
_ACTION_KEYS = {
    "status",
    "body",
    "headers",
    "delay",
    "reset_after",
    "stall_after",
    "stall",
    "throttle",
    "corrupt_at",
    "truncate_after",
    "wrong_digest",
    "markers",
    "tpc_failure",
    "stage_error",
    "stage_delay",
    "archive_error",
    "archive_delay",
}
_OTHER_KEYS = {"id", "source", "hits", "comment"}
MAX_DELAY = 3600.0
MAX_RULES = 1000
DB_NAME = "faults.sqlite"
VERSION_NAME = "faults.version"


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    source: str  # "config" or "api"
    spec: dict[str, Any]  # the rule as given (normalised), for listings
    methods: frozenset[str] | None = None
    path: re.Pattern[str] | None = None
    identity: re.Pattern[str] | None = None
    vo: str | None = None
    tpc: str | None = None
    every: int = 1
    probability: float | None = None
    seed: int = 0
    offset: int | None = None
    times: int | None = None
    status: int | None = None
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    reset_after: int | None = None
    stall_after: int | None = None
    stall: float = 0.0
    throttle: int | None = None
    corrupt_at: int | None = None
    truncate_after: int | None = None
    wrong_digest: bool = False
    markers: bool = True
    tpc_failure: str | None = None
    stage_error: str | None = None
    stage_delay: float = 0.0
    archive_error: str | None = None
    archive_delay: float = 0.0

    @property
    def is_tape(self) -> bool:
        return bool(
            self.stage_error or self.stage_delay or self.archive_error or self.archive_delay
        )

    @property
    def has_body_action(self) -> bool:
        return any(getattr(self, name) is not None for name in BODY_ACTIONS)

    def actions(self) -> list[str]:
        """The names of the actions this rule takes (for events)."""
        return [k for k in sorted(_ACTION_KEYS) if k in self.spec and k not in ("body", "stall")]


class FactsLike(Protocol):
    """What a rule can match about one request (see :class:`Facts`); the front's version
    may work each one out only when a rule asks for it."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def identities(self) -> tuple[str, ...]: ...
    @property
    def vo(self) -> str: ...
    @property
    def tpc(self) -> str | None: ...
    @property
    def range(self) -> tuple[int, int | None] | None: ...


@dataclass(frozen=True, slots=True)
class Facts:
    """What a rule can match about one request."""

    method: str
    path: str
    identities: tuple[str, ...] = ()  # "sub@iss", "sub", a DN ...; () = anonymous
    vo: str = ""
    tpc: str | None = None  # "pull", "push", "passive" or None
    range: tuple[int, int | None] | None = None  # first byte, last byte (None: to the end)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob: ``*`` and ``?`` stay within a segment, ``**`` crosses ``/``."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _int(data: Mapping[str, Any], key: str, low: int, high: int | None = None) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer")
    if value < low or (high is not None and value > high):
        top = f"..{high}" if high is not None else " or more"
        raise ValueError(f"{key}: {value} out of range ({low}{top})")
    return value


def _float(data: Mapping[str, Any], key: str, high: float) -> float:
    value = data.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number")
    if not 0 <= value <= high:
        raise ValueError(f"{key}: {value} out of range (0..{high:g})")
    return float(value)


def _str(data: Mapping[str, Any], key: str, limit: int = 1000) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string")
    if len(value) > limit or any(c in value for c in "\r\n\x00"):
        raise ValueError(f"{key}: at most {limit} characters, one line")
    return value


def parse_rule(data: Mapping[str, Any], rule_id: str, source: str) -> Rule:
    """A rule from its JSON/TOML form; ValueError with a one-line reason."""
    if not isinstance(data, Mapping):
        raise ValueError("a rule is a table (JSON object)")
    unknown = sorted(set(data) - _MATCH_KEYS - _ACTION_KEYS - _OTHER_KEYS)
    if unknown:
        raise ValueError(f"unknown rule key {unknown[0]!r}")
    if not set(data) & _ACTION_KEYS - {"body", "headers", "stall"}:
        raise ValueError("a rule needs an action (status, delay, reset_after, ...)")
    methods = data.get("method")
    method_set: frozenset[str] | None = None
    if methods is not None:
        items = [methods] if isinstance(methods, str) else methods
        if not isinstance(items, list) or not all(
            isinstance(m, str) and re.fullmatch(r"[A-Za-z-]{1,20}", m) for m in items
        ):
            raise ValueError("method: a method name or a list of them")
        method_set = frozenset(m.upper() for m in items)
    path = _str(data, "path")
    if path is not None and not path.startswith("/"):
        raise ValueError("path: an absolute path glob (starts with /)")
    identity = _str(data, "identity")
    tpc = _str(data, "tpc")
    if tpc is not None and tpc not in TPC_ROLES:
        raise ValueError(f"tpc: one of {', '.join(TPC_ROLES)}")
    probability = data.get("probability")
    if probability is not None:
        probability = _float(data, "probability", 1.0)
    status = _int(data, "status", 200, 599)
    headers = data.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str)
        and isinstance(v, str)
        and re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}", k)
        and not any(c in v for c in "\r\n\x00")
        for k, v in headers.items()
    ):
        raise ValueError("headers: a table of header names to one-line values")
    if ("body" in data or headers) and status is None:
        raise ValueError("body and headers go with a status")
    stall_after = _int(data, "stall_after", 0)
    if (stall_after is None) != ("stall" not in data):
        raise ValueError("stall_after and stall (seconds) go together")
    wrong_digest = data.get("wrong_digest", False)
    markers = data.get("markers", True)
    if not isinstance(wrong_digest, bool) or not isinstance(markers, bool):
        raise ValueError("wrong_digest and markers: true or false")
    spec = {k: data[k] for k in sorted(data) if k not in _OTHER_KEYS}
    return Rule(
        id=rule_id,
        source=source,
        spec=spec,
        methods=method_set,
        path=glob_regex(path) if path is not None else None,
        identity=re.compile(fnmatch.translate(identity)) if identity is not None else None,
        vo=_str(data, "vo", 100),
        tpc=tpc,
        every=_int(data, "every", 1) or 1,
        probability=probability,
        seed=_int(data, "seed", -(2**63), 2**63) or 0,
        offset=_int(data, "offset", 0),
        times=_int(data, "times", 1),
        status=status,
        body=_str(data, "body", 4096) or "",
        headers=tuple(headers.items()),
        delay=_float(data, "delay", MAX_DELAY),
        reset_after=_int(data, "reset_after", 0),
        stall_after=stall_after,
        stall=_float(data, "stall", MAX_DELAY),
        throttle=_int(data, "throttle", 1),
        corrupt_at=_int(data, "corrupt_at", 0),
        truncate_after=_int(data, "truncate_after", 0),
        wrong_digest=wrong_digest,
        markers=markers,
        tpc_failure=_str(data, "tpc_failure", 500),
        stage_error=_str(data, "stage_error", 500),
        stage_delay=_float(data, "stage_delay", MAX_DELAY),
        archive_error=_str(data, "archive_error", 500),
        archive_delay=_float(data, "archive_delay", MAX_DELAY),
    )


def criteria_match(rule: Rule, facts: FactsLike) -> bool:
    """Whether a request is one the rule speaks of (before every/probability/times)."""
    if rule.methods is not None and facts.method not in rule.methods:
        return False
    if rule.tpc in ("pull", "push") and facts.method != "COPY":
        return False  # decided without working out the request's role
    if rule.path is not None and rule.path.match(facts.path) is None:
        return False
    if rule.identity is not None:
        names = facts.identities or ("-",)
        if not any(rule.identity.match(name) for name in names):
            return False
    if rule.vo is not None and facts.vo != rule.vo:
        return False
    if rule.tpc is not None and facts.tpc != rule.tpc:
        return False
    if rule.offset is not None:
        first, last = facts.range if facts.range is not None else (0, None)
        if rule.offset < first or (last is not None and rule.offset > last):
            return False
    return True


def decide(rule: Rule, matches: int, hits: int) -> bool:
    """Whether the ``matches``-th matching request (1-based) fires, ``hits`` firings so far."""
    if rule.times is not None and hits >= rule.times:
        return False
    if matches % rule.every:
        return False
    if rule.probability is not None:
        digest = hashlib.sha256(f"{rule.seed}:{matches}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < rule.probability
    return True


def reset_state(directory: Path) -> None:
    """Forget run-time rules and counts (at server start, before the workers)."""
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", VERSION_NAME):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


@dataclass(frozen=True, slots=True)
class _Loaded:
    key: int | None
    rules: tuple[Rule, ...]
    request_rules: tuple[Rule, ...]  # those that act on requests (not tape-only)


class FaultState:
    """One per worker: the rules in force and the shared counters."""

    def __init__(self, directory: Path, config_rules: Iterable[Mapping[str, Any]]) -> None:
        self.directory = directory
        self.config_rules = tuple(
            parse_rule(data, f"cfg-{i}", "config") for i, data in enumerate(config_rules)
        )
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # the connection is shared with the executor
        self._loaded: _Loaded | None = None
        self._version_file = directory / VERSION_NAME
        self._map: mmap.mmap | None = None
        directory.mkdir(parents=True, exist_ok=True)
        try:
            whole = self._version_file.stat().st_size >= 8
        except FileNotFoundError:
            whole = None
        if not whole:
            # Whole from the start (a reader maps its 8 bytes): written aside, then linked
            # (or put in place of a short one left by an older version).
            tmp = directory / f".{VERSION_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
            tmp.write_bytes(bytes(8))
            if whole is None:
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, self._version_file)
                tmp.unlink()
            else:
                os.replace(tmp, self._version_file)

    def update_config_rules(self, config_rules: Iterable[Mapping[str, Any]]) -> None:
        """The configuration's rules after a reload (ValueError for a bad one: nothing
        changes); run-time rules and all counts are kept."""
        self.config_rules = tuple(
            parse_rule(data, f"cfg-{i}", "config") for i, data in enumerate(config_rules)
        )
        self._loaded = None

    # -- storage ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.directory / DB_NAME, timeout=10, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.execute(
                "CREATE TABLE IF NOT EXISTS rules "
                "(id TEXT PRIMARY KEY, spec TEXT NOT NULL, seq INTEGER NOT NULL)"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS counters (id TEXT PRIMARY KEY, "
                "matches INTEGER NOT NULL DEFAULT 0, hits INTEGER NOT NULL DEFAULT 0)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            self._db = db
        return self._db

    def _bump_version(self, db: sqlite3.Connection) -> int:
        """The next rule-set version (inside the caller's transaction)."""
        (version,) = db.execute(
            "INSERT INTO meta (k, v) VALUES ('version', 1) "
            "ON CONFLICT (k) DO UPDATE SET v = v + 1 RETURNING v"
        ).fetchone()
        return int(version)

    def _publish(self, version: int) -> None:
        """Tell every worker (after the commit): they reload when the number changes."""
        fd = os.open(self._version_file, os.O_WRONLY)
        try:
            os.pwrite(fd, version.to_bytes(8, "little"), 0)
        finally:
            os.close(fd)

    def _version_key(self) -> int | None:
        """The rule-set version every worker reads from one shared page (no system call)."""
        if self._map is None:
            try:
                fd = os.open(self._version_file, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                if os.fstat(fd).st_size < 8:
                    return None
                self._map = mmap.mmap(fd, 8, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        return int.from_bytes(self._map[:8], "little")

    def rules(self) -> tuple[Rule, ...]:
        """The rules in force, config ones first (reloaded when another process changed them)."""
        key = self._version_key()
        loaded = self._loaded
        if loaded is not None and key == loaded.key:
            return loaded.rules
        api: list[Rule] = []
        if key:
            with self._lock:
                rows = self._conn().execute("SELECT id, spec FROM rules ORDER BY seq").fetchall()
            for rule_id, spec in rows:
                with contextlib.suppress(ValueError):
                    api.append(parse_rule(json.loads(spec), rule_id, "api"))
        rules = (*self.config_rules, *api)
        for_requests = tuple(
            r for r in rules if not (r.is_tape and r.status is None and not r.delay)
        )
        self._loaded = _Loaded(key, rules, for_requests)
        return rules

    def add(self, data: Mapping[str, Any]) -> Rule:
        """Add a run-time rule (ValueError for a bad one)."""
        rule = parse_rule(data, secrets.token_hex(6), "api")
        with self._transaction() as db:
            (count,) = db.execute("SELECT count(*) FROM rules").fetchone()
            if count >= MAX_RULES:
                raise ValueError(f"too many rules (at most {MAX_RULES})")
            db.execute(
                "INSERT INTO rules (id, spec, seq) VALUES (?, ?, "
                "(SELECT coalesce(max(seq), 0) + 1 FROM rules))",
                (rule.id, json.dumps(rule.spec)),
            )
            version = self._bump_version(db)
        self._publish(version)
        return rule

    def remove(self, rule_id: str | None) -> int:
        """Remove one run-time rule (or all of them with None); how many went."""
        with self._transaction() as db:
            if rule_id is None:
                gone = db.execute("DELETE FROM rules").rowcount
                db.execute("DELETE FROM counters WHERE id NOT LIKE 'cfg-%'")
            else:
                gone = db.execute("DELETE FROM rules WHERE id = ?", (rule_id,)).rowcount
                db.execute("DELETE FROM counters WHERE id = ?", (rule_id,))
            version = self._bump_version(db)
        self._publish(version)
        return int(gone)

    def listing(self) -> list[dict[str, Any]]:
        rules = self.rules()
        with self._lock:
            counts = dict(
                (row[0], (row[1], row[2]))
                for row in self._conn().execute("SELECT id, matches, hits FROM counters")
            )
        out = []
        for rule in rules:
            matches, hits = counts.get(rule.id, (0, 0))
            out.append(
                {
                    "id": rule.id,
                    "source": rule.source,
                    **rule.spec,
                    "matches": matches,
                    "hits": hits,
                }
            )
        return out

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: the workers take turns), rolled back on
        any error."""
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _count(self, rule: Rule) -> bool:
        """Count a matching request for ``rule``; whether it fires (one transaction, so
        every worker sees one sequence of counts)."""
        with self._transaction() as db:
            matches, hits = db.execute(
                "INSERT INTO counters (id, matches, hits) VALUES (?, 1, 0) "
                "ON CONFLICT (id) DO UPDATE SET matches = matches + 1 "
                "RETURNING matches, hits",
                (rule.id,),
            ).fetchone()
            fire = decide(rule, matches, hits)
            if fire:
                db.execute("UPDATE counters SET hits = hits + 1 WHERE id = ?", (rule.id,))
        return fire

    def request_rules(self) -> tuple[Rule, ...]:
        """The rules that act on requests (tape-only ones are left to :meth:`tape`)."""
        self.rules()
        assert self._loaded is not None
        return self._loaded.request_rules

    def candidates(self, facts: FactsLike) -> list[Rule]:
        """The request rules whose criteria match (cheap: nothing is counted)."""
        return [rule for rule in self.request_rules() if criteria_match(rule, facts)]

    def fire(self, candidates: Iterable[Rule]) -> Rule | None:
        """Count the request for each candidate in order until one fires; that one (the
        later candidates do not count this request).  Blocking (SQLite)."""
        for rule in candidates:
            if self._count(rule):
                return rule
        return None

    def tape(self, operation: str, path: str, count: bool = True) -> Rule | None:
        """The first tape rule for ``operation`` ("stage" or "archive") of a file that fires
        (``count``: a tape read, counted like a request; else a look that counts nothing,
        such as an archive poll).  Blocking (SQLite) when counting."""
        for rule in self.rules():
            error = rule.stage_error if operation == "stage" else rule.archive_error
            delay = rule.stage_delay if operation == "stage" else rule.archive_delay
            if not (error or delay):
                continue
            if rule.path is not None and rule.path.match(path) is None:
                continue
            if not count or self._count(rule):
                return rule
        return None

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._db is not None:
            self._db.close()
            self._db = None
