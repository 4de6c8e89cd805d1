"""Performance markers and result lines of a TPC response body.  Pure.

The body of a ``202`` COPY answer is a stream of LF-terminated text lines: blocks of
``Perf Marker`` ... ``End`` and one final result line (``success: Created``,
``failure: <reason>`` or ``aborted: <reason>``).  davix reads them with a 1024-byte line
buffer and matches case-insensitive prefixes after leading whitespace, so every line is
kept short and the result reason is folded onto one line.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = [
    "MAX_LINE",
    "PerfMarker",
    "Result",
    "format_connection",
    "format_failure",
    "format_marker",
    "format_result",
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
    extra: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Result:
    kind: str  # "success", "failure" or "aborted"
    message: str


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


def format_failure(kind: str, message: str, local: str, remote: str) -> bytes:
    """Every failure (or aborted) line: ``<kind>: <reason>; local=<path> remote=<url>``.

    The reason is shortened (``...``) rather than the suffix, so that the line always names
    both ends and stays under :data:`MAX_LINE` bytes.
    """
    reason = " ".join("".join(c if c.isprintable() else " " for c in message).split())
    suffix = f"; local={local} remote={remote}"
    room = MAX_LINE - 16 - len(f"{kind}: ".encode()) - len(suffix.encode())
    if len(reason.encode()) > room:
        reason = reason.encode()[: max(0, room - 3)].decode(errors="ignore") + "..."
    return format_result(kind, reason + suffix)


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
    extra = {k: v for k, v in block.items() if k not in _INT_KEYS and k != "remoteconnections"}
    return PerfMarker(
        timestamp=values["timestamp"],
        stripe_index=values.get("stripe_index", 0),
        stripe_bytes=values.get("stripe_bytes", 0),
        total_stripes=values.get("total_stripes", 1),
        remote_connections=tuple(c.strip() for c in conns.split(",") if c.strip()),
        extra=extra,
    )
