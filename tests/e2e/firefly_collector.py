"""A UDP collector for SciTags fireflies, for the end-to-end tests.

:class:`FireflyCollector` binds the same port on ``::1`` and ``127.0.0.1`` (``se`` sends a
flow's fireflies to the flow's peer address on ``scitags.firefly_port``, and the tests' peers
are loopback addresses of either family) and reads datagrams on a background thread.  Every
datagram is parsed strictly by :func:`parse`: the RFC 5424 header (``<134>1``, MSGID
``firefly-json``), then the JSON body, validated against the SciTags firefly schema vendored
in ``tests/data/firefly.schema.json`` with format checking (date-times, IPv4/IPv6 addresses).
Datagrams that fail are kept in :attr:`FireflyCollector.errors` so a test can assert there
were none.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]

__all__ = ["Firefly", "FireflyCollector", "FireflyError", "parse", "validator"]

SCHEMA = Path(__file__).resolve().parent.parent / "data" / "firefly.schema.json"
PREFIX = "<134>1 "  # facility local0, severity informational; syslog VERSION 1
MSGID = "firefly-json"
MAX_LIFETIME = 600.0  # the reader thread stops by itself after this many seconds
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


class FireflyError(ValueError):
    """A datagram that is not a valid firefly."""


@functools.cache
def validator() -> Any:
    """The firefly schema validator (the upstream file has trailing commas: they are
    stripped before parsing; the file itself stays as published)."""
    schema = json.loads(_TRAILING_COMMA.sub(r"\1", SCHEMA.read_text(encoding="utf-8")))
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _datetime(text: str, what: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise FireflyError(f"{what} {text!r} is not an ISO 8601 date-time") from exc
    if when.utcoffset() != dt.timedelta(0):
        raise FireflyError(f"{what} {text!r} is not UTC")
    return when


@dataclass(frozen=True)
class Firefly:
    """One parsed, schema-valid firefly."""

    timestamp: str  # the syslog TIMESTAMP ("-" or a date-time)
    hostname: str
    app_name: str
    body: dict[str, Any]
    sender: tuple[str, int]  # where the datagram came from
    received_at: float  # time.monotonic() on arrival

    @property
    def state(self) -> str:
        return str(self.body["flow-lifecycle"]["state"])

    @property
    def experiment(self) -> int:
        return int(self.body["context"]["experiment-id"])

    @property
    def activity(self) -> int:
        return int(self.body["context"]["activity-id"])

    @property
    def tag(self) -> tuple[int, int]:
        return self.experiment, self.activity

    @property
    def application(self) -> str:
        return str(self.body["context"].get("application", ""))

    @property
    def afi(self) -> str:
        return str(self.body["flow-id"]["afi"])

    @property
    def src(self) -> tuple[str, int]:
        fid = self.body["flow-id"]
        return str(fid["src-ip"]), int(fid["src-port"])

    @property
    def dst(self) -> tuple[str, int]:
        fid = self.body["flow-id"]
        return str(fid["dst-ip"]), int(fid["dst-port"])

    @property
    def flow(self) -> tuple[tuple[str, int], tuple[str, int]]:
        return self.src, self.dst

    @property
    def sent(self) -> int | None:
        usage = self.body.get("usage")
        return None if usage is None else usage.get("sent")

    @property
    def received(self) -> int | None:
        usage = self.body.get("usage")
        return None if usage is None else usage.get("received")

    @property
    def start_time(self) -> dt.datetime:
        return _datetime(self.body["flow-lifecycle"]["start-time"], "start-time")

    @property
    def end_time(self) -> dt.datetime | None:
        text = self.body["flow-lifecycle"].get("end-time")
        return None if text is None else _datetime(text, "end-time")


def parse(data: bytes, sender: tuple[str, int] = ("", 0)) -> Firefly:
    """A datagram -> Firefly; FireflyError unless it is a well-formed, schema-valid firefly."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FireflyError(f"not UTF-8: {data[:80]!r}") from exc
    if not text.startswith(PREFIX):
        raise FireflyError(f"no {PREFIX!r} syslog prefix: {text[:80]!r}")
    # <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
    parts = text.split(" ", 7)
    if len(parts) != 8:
        raise FireflyError(f"short syslog header: {text[:120]!r}")
    _, timestamp, hostname, app_name, procid, msgid, sdata, message = parts
    if msgid != MSGID:
        raise FireflyError(f"MSGID {msgid!r}, not {MSGID!r}")
    if sdata != "-" or not procid or not hostname or not app_name:
        raise FireflyError(f"odd syslog header fields: {parts[:7]!r}")
    if timestamp != "-":
        _datetime(timestamp, "syslog TIMESTAMP")
    try:
        body = json.loads(message)
    except json.JSONDecodeError as exc:
        raise FireflyError(f"body is not JSON ({exc}): {message[:120]!r}") from exc
    problems = sorted(validator().iter_errors(body), key=lambda e: list(e.path))
    if problems:
        raise FireflyError(
            "schema: " + "; ".join(f"{list(e.path)}: {e.message}" for e in problems[:5])
        )
    fly = Firefly(timestamp, hostname, app_name, body, sender, time.monotonic())
    # What the schema cannot say: addresses match the afi, times are UTC and in order.
    fid = body["flow-id"]
    for key in ("src-ip", "dst-ip"):
        version = ipaddress.ip_address(fid[key]).version
        if f"ipv{version}" != fid["afi"]:
            raise FireflyError(f"{key} {fid[key]} does not match afi {fid['afi']}")
    end = fly.end_time
    if end is not None and end < fly.start_time:
        raise FireflyError("end-time before start-time")
    if fly.state == "end" and "usage" not in body:
        raise FireflyError("an end firefly without usage")
    return fly


class FireflyCollector:
    """Receives fireflies on ``[::1]:port`` and ``127.0.0.1:port`` until :meth:`close`."""

    def __init__(self, attempts: int = 8) -> None:
        self._socks = self._bind(attempts)
        self.port: int = self._socks[0].getsockname()[1]
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._fireflies: list[Firefly] = []
        self.errors: list[str] = []
        self.raw: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="firefly-collector", daemon=True)
        self._thread.start()

    @staticmethod
    def _bind(attempts: int) -> list[socket.socket]:
        """::1 on an ephemeral port, then 127.0.0.1 on the same number (retried if taken)."""
        last: OSError | None = None
        for _ in range(attempts):
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::1", 0))
            v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                v4.bind(("127.0.0.1", v6.getsockname()[1]))
            except OSError as exc:
                last = exc
                v4.close()
                v6.close()
                continue
            for s in (v6, v4):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                s.setblocking(False)
            return [v6, v4]
        raise OSError(f"no UDP port free on both ::1 and 127.0.0.1: {last}")

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_LIFETIME
        with selectors.DefaultSelector() as sel:
            for s in self._socks:
                sel.register(s, selectors.EVENT_READ)
            while not self._stop.is_set() and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.05):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    for _ in range(1000):  # drain, bounded
                        try:
                            data, addr = sock.recvfrom(65535)
                        except BlockingIOError:
                            break
                        self._add(data, (str(addr[0]), int(addr[1])))

    def _add(self, data: bytes, sender: tuple[str, int]) -> None:
        try:
            fly: Firefly | None = parse(data, sender)
            error = ""
        except (FireflyError, ValueError, KeyError, TypeError) as exc:
            fly, error = None, f"{exc} (from {sender}): {data[:300]!r}"
        with self._arrived:
            self.raw.append(data)
            if fly is not None:
                self._fireflies.append(fly)
            else:
                self.errors.append(error)
            self._arrived.notify_all()

    @property
    def fireflies(self) -> list[Firefly]:
        with self._lock:
            return list(self._fireflies)

    def wait_for(
        self, pred: Callable[[Firefly], bool], timeout: float = 5.0, count: int = 1
    ) -> list[Firefly]:
        """The fireflies matching ``pred`` once there are ``count`` of them, or whatever
        matched when ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = [f for f in self._fireflies if pred(f)]
                left = deadline - time.monotonic()
                if len(found) >= count or left <= 0:
                    return found
                self._arrived.wait(min(left, 0.1))

    def quiet(self, seconds: float = 0.3) -> list[Firefly]:
        """Everything received after waiting ``seconds`` (for "nothing was sent" checks)."""
        time.sleep(seconds)
        return self.fireflies

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self._socks:
            s.close()

    def __enter__(self) -> FireflyCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
