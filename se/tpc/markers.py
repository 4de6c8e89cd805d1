"""Performance markers and result lines of a TPC response body.  Pure.

The body of a ``202`` COPY answer is a stream of LF-terminated text lines: blocks of
``Perf Marker`` ... ``End`` and one final result line (``success: Created``,
``failure: <reason>`` or ``aborted: <reason>``).  davix reads them with a 1024-byte line
buffer and matches case-insensitive prefixes after leading whitespace, so every line is
kept short and the result reason is folded onto one line.

A marker block carries, besides the usual fields, ``Stripe Source: tcp:<ip>:<port>`` and
``Stripe Destination: tcp:<ip>:<port>``: the two ends of the connection that carries the
stripe (for a pull the source is the remote and the destination this server's local
address of that connection; for a push the other way round).  davix ignores lines it
does not know (none of its prefixes -- ``Stripe Index:``, ``Stripe Bytes Transferred:``,
``End`` ... -- is a prefix of these), as it ignores dCache's ``Stripe Start Time:``.

Failure lines have one grammar, built by :func:`format_failure` only::

    failure: <tag>: <detail>; local=<path> remote=<url without its query>

    <tag>   = <side> " " <phase> | "local write" | "local read" | "local internal"
            | "checksum"
    <side>  = "source" | "destination"           (the remote party of this transfer)
    <phase> = "connect"     TCP connection (and name resolution, network policy)
            | "TLS"         TLS handshake, certificate verification
            | "HEAD"        a HEAD: the pull's probe, the push's verification
            | "first byte"  request sent, until the first byte of data (an error
                            status of the GET/PUT, the first-byte timeout)
            | "body"        while data moves (source ended early, stall timeout)
            | "close"       after all data: the destination's final answer to a PUT

``local write`` is this server's disk (free space, ``tpc.max_pull_bytes``, write, fsync,
rename), ``local read`` the file a push sends, ``local internal`` anything else on this
server, ``checksum`` a comparison of checksums (or sizes) that failed (the detail names who
declared what).  In ``<detail>`` an unexpected HTTP status of the remote is written
``HTTP <nnn>`` (its first occurrence is the status) and an operating-system error ends in
``(errno <n>)``.  The detail is shortened (``...``) so that the line stays under
:data:`MAX_LINE` bytes; the tag and the suffix are always whole.  :func:`parse_failure` reads
it back.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

__all__ = [
    "LOCAL_PHASES",
    "MAX_LINE",
    "REMOTE_PHASES",
    "SIDES",
    "Failure",
    "FailureLine",
    "PerfMarker",
    "Result",
    "format_connection",
    "format_failure",
    "format_marker",
    "format_result",
    "os_error_text",
    "parse_failure",
    "parse_stream",
]

# davix's line buffer is 1024 bytes; stay below it with the newline and some slack.
MAX_LINE = 1000
_KINDS = ("success", "failure", "aborted")


@dataclass(frozen=True, slots=True)
class PerfMarker:
    timestamp: int
    stripe_index: int = 0
    stripe_bytes: int = 0
    total_stripes: int = 1
    remote_connections: tuple[str, ...] = ()
    stripe_source: str = ""  # "tcp:<ip>:<port>" of the sending end of this stripe
    stripe_destination: str = ""  # ... and of its receiving end
    extra: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Result:
    kind: str  # "success", "failure" or "aborted"
    message: str


SIDES = ("source", "destination")
REMOTE_PHASES = ("connect", "TLS", "HEAD", "first byte", "body", "close")
LOCAL_PHASES = ("write", "read", "internal")
CHECKSUM = "checksum"


@dataclass(frozen=True, slots=True)
class Failure:
    """Where a transfer failed and why: the ``<tag>: <detail>`` of a failure line.

    ``side`` is ``source``, ``destination`` or ``local`` (this server), or empty for the
    side-less ``checksum`` phase.
    """

    side: str
    phase: str
    detail: str

    def __post_init__(self) -> None:
        if self.side in SIDES:
            ok = self.phase in REMOTE_PHASES
        elif self.side == "local":
            ok = self.phase in LOCAL_PHASES
        else:
            ok = self.side == "" and self.phase == CHECKSUM
        if not ok:
            raise ValueError(f"no failure tag {self.side!r} {self.phase!r}")

    @property
    def tag(self) -> str:
        return f"{self.side} {self.phase}" if self.side else self.phase

    def __str__(self) -> str:
        return f"{self.tag}: {self.detail}"


def os_error_text(exc: OSError) -> str:
    """``<strerror> (errno <n>)`` of an operating-system error (its text alone if it has no
    errno, or a name-resolution error, whose negative codes are not errnos).  The text of a
    real errno is the C library's (asyncio words a refused connection its own way)."""
    if not isinstance(exc.errno, int) or exc.errno <= 0:
        return exc.strerror or str(exc) or exc.__class__.__name__
    return f"{os.strerror(exc.errno)} (errno {exc.errno})"


def format_connection(host: str, port: int, proto: str = "tcp") -> str:
    """``tcp:1.2.3.4:80`` or ``tcp:[2001:db8::1]:80`` (IPv6 in brackets)."""
    host = host.split("%", 1)[0]  # drop an IPv6 zone id
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            host = f"[{host}]"
    except ValueError:
        pass
    return f"{proto}:{host}:{port}"


def format_marker(m: PerfMarker) -> bytes:
    lines = [
        "Perf Marker",
        f"Timestamp: {m.timestamp}",
        f"Stripe Index: {m.stripe_index}",
        f"Stripe Bytes Transferred: {m.stripe_bytes}",
        f"Total Stripe Count: {m.total_stripes}",
    ]
    if m.remote_connections:
        conns = ""
        for c in m.remote_connections:  # only as many as fit on one line
            candidate = f"{conns},{c}" if conns else c
            if len("RemoteConnections: ") + len(candidate) > MAX_LINE:
                break
            conns = candidate
        lines.append(f"RemoteConnections: {conns}")
    if m.stripe_source:
        lines.append(f"Stripe Source: {m.stripe_source}")
    if m.stripe_destination:
        lines.append(f"Stripe Destination: {m.stripe_destination}")
    lines.append("End")
    return ("\n".join(lines) + "\n").encode()


def format_result(kind: str, message: str = "") -> bytes:
    """The final line: one line, no control characters, under :data:`MAX_LINE` bytes."""
    if kind not in _KINDS:
        raise ValueError(f"unknown result kind {kind!r}")
    text = " ".join("".join(c if c.isprintable() else " " for c in message).split())
    if kind == "success" and not text:
        text = "Created"
    line = f"{kind}: {text}"
    data = line.encode()
    if len(data) >= MAX_LINE:
        data = data[: MAX_LINE - 4].decode(errors="ignore").encode() + b"..."
    return data + b"\n"


def _one_line(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def format_failure(kind: str, reason: Failure | str, local: str, remote: str) -> bytes:
    """The one format of every failure (or aborted) line:
    ``<kind>: <tag>: <detail>; local=<path> remote=<url>`` (see the module docstring; an
    ``aborted`` line and a bare string reason have no tag).

    The detail is shortened (``...``) rather than the tag or the suffix, so that the line
    always says where it failed and names both ends, under :data:`MAX_LINE` bytes.
    """
    tag = f"{reason.tag}: " if isinstance(reason, Failure) else ""
    detail = _one_line(reason.detail if isinstance(reason, Failure) else reason)
    suffix = f"; local={_one_line(local)} remote={_one_line(remote)}"
    room = MAX_LINE - 16 - len(f"{kind}: {tag}".encode()) - len(suffix.encode())
    if len(detail.encode()) > room:
        detail = detail.encode()[: max(0, room - 3)].decode(errors="ignore") + "..."
    return format_result(kind, tag + detail + suffix)


@dataclass(frozen=True, slots=True)
class FailureLine:
    """A failure line read back: its tag, detail, and what the detail says."""

    side: str  # "source", "destination", "local" or "" (checksum)
    phase: str
    detail: str
    local: str
    remote: str
    status: int | None  # the remote's HTTP status, if the detail gives one
    errno: int | None  # the OS error number, if the detail gives one

    @property
    def tag(self) -> str:
        return f"{self.side} {self.phase}" if self.side else self.phase


_TAGS = sorted(
    [f"{s} {p}" for s in SIDES for p in REMOTE_PHASES]
    + [f"local {p}" for p in LOCAL_PHASES]
    + [CHECKSUM],
    key=len,
    reverse=True,
)
_FAILURE_RE = re.compile(
    r"^(?:failure|failed):\s*(?P<tag>"
    + "|".join(re.escape(t) for t in _TAGS)
    + r"): (?P<detail>.*); local=(?P<local>.*?) remote=(?P<remote>\S*)$",
    re.IGNORECASE,
)
_STATUS_RE = re.compile(r"\bHTTP ([1-5][0-9]{2})\b")
_ERRNO_RE = re.compile(r"\(errno (\d+)\)")


def parse_failure(line: str) -> FailureLine | None:
    """A ``failure:`` line (or the message of one, after ``failure:``) in the grammar of
    :func:`format_failure`; None if it is not one."""
    text = line.strip()
    if not text.lower().startswith(("failure", "failed")):
        text = f"failure: {text}"
    m = _FAILURE_RE.match(text)
    if m is None:
        return None
    tag = m["tag"]
    side, _, phase = tag.partition(" ") if tag.lower() != CHECKSUM else ("", "", tag)
    detail = m["detail"]
    status = _STATUS_RE.search(detail)
    errno = _ERRNO_RE.search(detail)
    return FailureLine(
        side=side,
        phase=phase,
        detail=detail,
        local=m["local"],
        remote=m["remote"],
        status=int(status[1]) if status else None,
        errno=int(errno[1]) if errno else None,
    )


_INT_KEYS = {
    "timestamp": "timestamp",
    "stripe index": "stripe_index",
    "stripe bytes transferred": "stripe_bytes",
    "total stripe count": "total_stripes",
}


def parse_stream(text: str) -> tuple[list[PerfMarker], Result | None]:
    """Markers and the result line of a perf-marker stream, as a client reads them.

    Tolerant like davix: leading whitespace is ignored, keys are case-insensitive, unknown
    keys (dCache's ``State:``, ``Stripe Start Time:`` ...) are kept in ``extra``, malformed
    numbers drop the block, and anything after the result line is ignored.
    """
    markers: list[PerfMarker] = []
    block: dict[str, str] | None = None
    for raw in text.split("\n"):
        line = raw.strip()
        low = line.lower()
        if low.startswith("perf marker"):
            block = {}
            continue
        if block is not None and low == "end":
            marker = _marker(block)
            if marker is not None:
                markers.append(marker)
            block = None
            continue
        for kind in (*_KINDS, "failed"):
            if low.startswith(kind) and block is None:
                message = line[len(kind) :].lstrip(":").strip()
                return markers, Result("failure" if kind == "failed" else kind, message)
        if block is not None and ":" in line:
            key, _, value = line.partition(":")
            block[key.strip().lower()] = value.strip()
    return markers, None


def _marker(block: dict[str, str]) -> PerfMarker | None:
    values: dict[str, int] = {}
    for key, attr in _INT_KEYS.items():
        if key in block:
            try:
                values[attr] = int(block[key])
            except ValueError:
                return None
    if "timestamp" not in values:
        return None
    conns = block.get("remoteconnections", "")
    known = {"remoteconnections", "stripe source", "stripe destination"}
    extra = {k: v for k, v in block.items() if k not in _INT_KEYS and k not in known}
    return PerfMarker(
        timestamp=values["timestamp"],
        stripe_index=values.get("stripe_index", 0),
        stripe_bytes=values.get("stripe_bytes", 0),
        total_stripes=values.get("total_stripes", 1),
        remote_connections=tuple(c.strip() for c in conns.split(",") if c.strip()),
        stripe_source=block.get("stripe source", ""),
        stripe_destination=block.get("stripe destination", ""),
        extra=extra,
    )
