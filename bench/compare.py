#!/usr/bin/env python3
"""se against XRootD 5.5 (XrdHttp) and nginx (WebDAV) on this machine, every row of issue 16.

Usage: python bench/compare.py [--quick] [--rows get4k,head,...] [--rounds N] [--tmpfs]
                               [--out DIR]

One loopback-only network namespace (tests/xrootd.py ``Netns``) holds everything: this process
enters it (setns) before it starts anything, so the servers, wrk, curl, the firefly sink and the
HTTP checks all see the same 127.0.0.1.  Servers: ``se`` with the shipped defaults
(``python -m se serve --root DIR --workers 2``, no configuration file, access log on), XRootD
as tests/xrootd.py starts it (anonymous read-write, XrdHttp, https on the same port) and nginx
as bench/run.py starts it (nginx-extras WebDAV); a few ``se`` variants (``fsync = false``,
TLS, fireflies on/off, access log off, a TPC pair) are started for the rows that need them.

Every row runs in interleaved rounds (A, B, C, then B, C, A, ...); the table shows the median
and the min-max over the rounds of each server and the ratios se/XRootD and se/nginx (ratio of
the medians; in brackets the min-max of the per-round ratios).  A server with an error response,
a socket error or a failed check in any round of a row shows ``fail`` there.

Output: the table as text and as Markdown, a PNG chart (bars = median ratio, whiskers = min-max
of the per-round ratios) and every sample as JSON, in --out.  The exit status is 0 even when
targets are missed, 2 when a prerequisite is missing or a server does not start, 130 when
interrupted; every server is stopped and the namespace removed at exit.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime
import http.client
import importlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.run import (  # noqa: E402
    BIG_NAME,
    BIG_SIZE,
    GET_LUA,
    MIB,
    RESPONSE_RE,
    SMALL_NAME,
    SMALL_SIZE,
    Server,
    StartError,
    WrkResult,
    add_se_arguments,
    big_get,
    big_put,
    error_lines,
    format_markdown,
    format_text,
    log,
    request,
    run_parallel,
    run_wrk,
    start_nginx,
    start_se,
    stop_server,
    tool_version,
    warm_page_cache,
    write_big_file,
)
from bench.scitags import TAG as SCITAG  # noqa: E402
from bench.scitags import Sink, check_firefly  # noqa: E402
from bench.tpc import Peer, concurrency_run, prepare_concurrency  # noqa: E402
from bench.tpc import Results as TPCResults  # noqa: E402
from tests.xrootd import (  # noqa: E402
    Netns,
    give_to_xrootd,
    scratch_dir,
    start_xrootd,
    xrootd_available,
)

EMPTY_NAME = "empty.bin"  # what wrk HEADs (see head_lua)
SMALL_PUT_SIZE = 4096
XRD_PORT = 1094
XRD_TPC_PORTS = (1095, 1096)
XRD_TPC_EXTRA = "xrootd.chksum adler32"  # as bench/tpc.py configures its pair
HTTPS_TIMEOUT = 300.0
LOG_SETTLE = 10.0  # seconds to wait for the access log to stop growing after a run
CLONE_NEWNET = 0x40000000

# The se instances: name -> configuration ("" = none: the shipped defaults).  {…} are filled in.
SE_CONFIGS = {
    "se": "",
    "se-nofsync": "[storage]\nfsync = false\n",
    "se-tls": '[tls]\ncert = "{cert}"\nkey = "{key}"\n',
    "se-ff-on": '[scitags]\ncollectors = ["127.0.0.1:{sink}"]\nreport_local = true\n',
    "se-ff-off": "[scitags]\nenabled = false\n",
    "se-nolog": "[logging]\naccess_log = false\n",
    "se-tpc-a": "",
    "se-tpc-b": "",
}
MAIN = ("se", "xrootd", "nginx")  # started at the beginning, kept for the whole run
SHOWN = {"se": "se", "xrootd": "XRootD", "nginx": "nginx"}


# --------------------------------------------------------------------------- the namespace


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(ns: Netns) -> Iterator[None]:
    """Run this thread (and what it starts) in ``ns``; back in the original namespace on exit
    (before ``ns`` is closed, which kills every process left in it)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class TLSFiles:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path


@dataclass
class Srv:
    """One running server: bench.run's ``Server`` (http URL, process, logs, errors) plus
    what this script needs to know about it."""

    name: str
    kind: str  # se | xrootd | nginx
    server: Server
    root: Path
    https_url: str = ""
    bad_rows: set[str] = field(default_factory=set)  # rows a failed check rules out

    @property
    def stderr(self) -> Path:
        return self.server.logs[0]

    def alive(self) -> bool:
        return self.server.alive()

    def error(self, msg: str) -> None:
        self.server.error(msg)


def make_tls(base: Path) -> TLSFiles:
    import trustme

    d = base / "tls"
    d.mkdir()
    authority = trustme.CA()
    leaf = authority.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(d / "ca.pem", d / "cert.pem", d / "key.pem")
    authority.cert_pem.write_to_path(str(files.ca_pem))
    leaf.private_key_pem.write_to_path(str(files.key_pem))
    files.cert_pem.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    files.key_pem.chmod(0o600)
    return files


def seed_root(src: Path, root: Path) -> Path:
    """A server's data dir: hard links to the shared files (one inode, one page cache)."""
    shutil.rmtree(root, ignore_errors=True)  # of an earlier instance
    root.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            os.link(f, root / f.name)
    return root


# --------------------------------------------------------------------------- results


@dataclass
class Samples:
    """key -> server -> one value per round (None = that round failed)."""

    values: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    raw: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each row

    def add(self, key: str, server: str, value: float | None, **extra: Any) -> None:
        self.values.setdefault(key, {}).setdefault(server, []).append(value)
        self.raw.append({"key": key, "server": server, "value": value, **extra})

    def get(self, key: str, server: str) -> list[float | None]:
        return self.values.get(key, {}).get(server, [])

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        log(f"  note: {msg}")


def median_of(values: list[float | None]) -> float | None:
    """The median, or None if there is no value or any round failed."""
    if not values or any(v is None for v in values):
        return None
    return statistics.median(v for v in values if v is not None)


def round_ratios(a: list[float | None], b: list[float | None]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=False) if x is not None and y]


@dataclass(frozen=True)
class Line:
    """One line of a table: ``subject``'s samples of ``key`` against those of ``refs``."""

    key: str
    label: str
    subject: str
    refs: tuple[str, ...]
    targets: tuple[tuple[str, float], ...] = ()  # (ref, minimum ratio; maximum if lower_better)
    lower_better: bool = False
    digits: int = 0
    absolute: tuple[str, float] | None = None  # ("==" | "<", bound) on the subject's median
    self_ref: bool = False  # se against another se (fireflies, access log): second table


LINES: dict[str, list[Line]] = {
    "get4k": [
        Line("get4k", "GET 4 KiB, keep-alive, wrk -t2 -c64 (req/s)", "se", ("xrootd", "nginx"),
             (("xrootd", 1.0),)),
    ],
    "head": [
        Line("head", "HEAD of one (empty) file, wrk -t2 -c64 (req/s)", "se", ("xrootd", "nginx"),
             (("xrootd", 1.0),)),
    ],
    "propfind": [
        Line("propfind", "PROPFIND Depth 0 of one file, wrk -t2 -c64 (req/s)", "se",
             ("xrootd", "nginx"), (("xrootd", 1.0),)),
    ],
    "get1g": [
        Line("get1g1", "GET 1 GiB, 1 client (MiB/s)", "se", ("xrootd", "nginx"),
             (("xrootd", 1.0), ("nginx", 1.0))),
        Line("get1g4", "GET 1 GiB, 4 clients (MiB/s, total)", "se", ("xrootd", "nginx"),
             (("xrootd", 1.0), ("nginx", 1.0))),
    ],
    "https": [
        Line("https1g", "HTTPS GET 1 GiB, 1 client (MiB/s; se with [tls])", "se-tls",
             ("xrootd",), (("xrootd", 1.0),)),
    ],
    "put1g": [
        Line("put1g", "PUT 1 GiB, se default fsync (MiB/s)", "se", ("xrootd", "nginx"),
             (("xrootd", 0.9),)),
        Line("put1g", "PUT 1 GiB, se fsync = false (MiB/s)", "se-nofsync", ("xrootd", "nginx"),
             (("xrootd", 1.0),)),
    ],
    "put4k": [
        Line("put4k", "PUT 4 KiB, wrk -t2 -c64, se default fsync (req/s)", "se",
             ("xrootd", "nginx")),
        Line("put4k", "PUT 4 KiB, wrk -t2 -c64, se fsync = false (req/s)", "se-nofsync",
             ("xrootd", "nginx"), (("xrootd", 1.0),)),
    ],
    "fireflies": [
        Line("fireflies", "GET 4 KiB with SciTag, fireflies on / off (req/s)", "se-ff-on",
             ("se-ff-off",), (("se-ff-off", 0.9),), self_ref=True),
    ],
    "accesslog": [
        Line("accesslog", "GET 4 KiB, access log on / off (req/s)", "se", ("se-nolog",),
             (("se-nolog", 0.9),), self_ref=True),
    ],
    "tpc": [
        Line("tpc_wall", "{n} TPC pulls of 1 MiB at once: wall time (s)", "se", ("xrootd",),
             (("xrootd", 1.0),), lower_better=True, digits=2),
        Line("tpc_fail", "{n} TPC pulls of 1 MiB at once: failures", "se", ("xrootd",),
             absolute=("==", 0)),
        Line("tpc_rss", "{n} TPC pulls of 1 MiB at once: peak RSS of the puller (MB)", "se",
             ("xrootd",), absolute=("<", 500)),
    ],
}  # fmt: skip
ROW_NAMES = list(LINES)


def fmt_value(values: list[float | None], digits: int) -> str:
    if not values:
        return "-"
    med = median_of(values)
    if med is None:
        return "fail"
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    lo, hi = min(v for v in values if v is not None), max(v for v in values if v is not None)
    return f"{med:,.{digits}f} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def line_ratio(s: Samples, line: Line, ref: str) -> tuple[float, float, float] | None:
    """(ratio of the medians, min and max of the per-round ratios) of subject / ref."""
    a, b = s.get(line.key, line.subject), s.get(line.key, ref)
    ma, mb = median_of(a), median_of(b)
    if ma is None or not mb:
        return None
    per = round_ratios(a, b) or [ma / mb]
    return ma / mb, min(per), max(per)


def fmt_ratio(r: tuple[float, float, float] | None, rounds: int) -> str:
    if r is None:
        return "-"
    return f"{r[0]:.2f}x" + (f" ({r[1]:.2f}-{r[2]:.2f})" if rounds > 1 else "")


def target_cells(s: Samples, line: Line) -> tuple[str, str]:
    texts: list[str] = []
    met: list[bool | None] = []
    for ref, bound in line.targets:
        op = "<=" if line.lower_better else ">="
        texts.append(f"{op} {bound:.1f}x {SHOWN.get(ref, ref)}")
        r = line_ratio(s, line, ref)
        met.append(None if r is None else (r[0] <= bound if line.lower_better else r[0] >= bound))
    if line.absolute is not None:
        op, bound = line.absolute
        texts.append(f"{op} {bound:g}")
        med = median_of(s.get(line.key, line.subject))
        met.append(None if med is None else (med == bound if op == "==" else med < bound))
    if not texts:
        return "(report)", "-"
    if any(m is None for m in met):
        return ", ".join(texts), "n/a"
    return ", ".join(texts), "yes" if all(met) else "NO"


def active_lines(rows: Sequence[str], tpc_count: int) -> list[Line]:
    out = []
    for row in rows:
        for line in LINES[row]:
            out.append(dataclasses.replace(line, label=line.label.replace("{n}", str(tpc_count))))
    return out


MAIN_HEADER = ["workload", "se", "XRootD", "nginx", "se/XRootD", "se/nginx", "target", "met"]
SELF_HEADER = ["workload", "se (on)", "se (off)", "on/off", "target", "met"]


def tables(s: Samples, lines: list[Line]) -> tuple[list[list[str]], list[list[str]]]:
    main: list[list[str]] = []
    own: list[list[str]] = []
    for line in lines:
        n = max((len(v) for v in s.values.get(line.key, {}).values()), default=0)
        target, met = target_cells(s, line)
        subject = fmt_value(s.get(line.key, line.subject), line.digits)
        if line.self_ref:
            ref = line.refs[0]
            own.append([
                line.label, subject, fmt_value(s.get(line.key, ref), line.digits),
                fmt_ratio(line_ratio(s, line, ref), n), target, met,
            ])  # fmt: skip
            continue
        cells = [line.label, subject]
        for ref in ("xrootd", "nginx"):
            cells.append(fmt_value(s.get(line.key, ref), line.digits) if ref in line.refs else "")
        for ref in ("xrootd", "nginx"):
            shown = line.absolute is None and ref in line.refs
            cells.append(fmt_ratio(line_ratio(s, line, ref), n) if shown else "")
        main.append([*cells, target, met])
    return main, own


# --------------------------------------------------------------------------- chart


def draw_chart(s: Samples, lines: list[Line], path: Path, title: str) -> str | None:
    """A PNG of the ratios: one bar per (line, reference), whiskers = min-max over rounds.
    Returns why not, if it cannot be drawn."""
    try:  # an optional extra: imported by name, so that mypy runs the same without it
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    bars: list[tuple[str, str, float, float, float]] = []  # label, ref, median, lo, hi
    for line in lines:
        if line.absolute is not None:
            continue
        for ref in line.refs:
            r = line_ratio(s, line, ref)
            if r is None:
                continue
            med, lo, hi = r
            label = line.label
            if line.lower_better:  # plot as a speed: >1 means se is faster
                med, lo, hi = 1 / med, 1 / hi, 1 / lo
                label = label.replace("wall time (s)", "speed (1 / wall time)")
            who = "on/off" if line.self_ref else f"vs {SHOWN.get(ref, ref)}"
            bars.append((label, who, med, lo, hi))
    if not bars:
        return "no ratios to draw"
    colours = {"vs XRootD": "#1f77b4", "vs nginx": "#ff7f0e", "on/off": "#2ca02c"}
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(bars) + 1.6))
    ys = list(range(len(bars)))[::-1]
    for y, (_label, who, med, lo, hi) in zip(ys, bars, strict=True):
        ax.barh(y, med, color=colours[who], height=0.7)
        ax.errorbar(med, y, xerr=[[med - lo], [hi - med]], fmt="none", ecolor="black", capsize=3)
        ax.text(hi + 0.02, y, f"{med:.2f}x", va="center", fontsize=8)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{label}  [{who}]" for label, who, *_ in bars], fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.axvline(0.9, color="grey", linewidth=0.6, linestyle="--")
    ax.set_xlabel("se / reference (median over rounds; whiskers: min-max of per-round ratios)")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, max(1.2, max(b[4] for b in bars) * 1.15))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------- wrk scripts

_LUA_DONE = """
local threads = {}
function setup(thread)
    table.insert(threads, thread)
    thread:set("tid", #threads)
end
function done(summary, latency, requests)
    local total_bad = 0
    for _, thread in ipairs(threads) do
        total_bad = total_bad + (thread:get("bad") or 0)
    end
    local e = summary.errors
    io.write(string.format(
        'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "latency_mean_us": %f, '
            .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, '
            .. '"bad_status": %d}\\n',
        summary.requests, summary.duration, summary.bytes, latency.mean,
        e.connect, e.read, e.write, e.status, e.timeout, total_bad))
end
"""


def status_lua(method: str, wanted: Sequence[int], extra: str = "") -> str:
    """A wrk script sending ``method`` and counting answers whose status is not ``wanted``
    (printed as bad_status in the BENCH line bench/run.py parses)."""
    cond = " and ".join(f"status ~= {w}" for w in wanted)
    return (
        f"-- generated by bench/compare.py\nwrk.method = {json.dumps(method)}\n{extra}\n"
        "function init(args)\n    bad = 0\nend\n"
        f"function response(status, headers, body)\n    if {cond} then\n"
        "        bad = bad + 1\n    end\nend\n" + _LUA_DONE
    )


def head_lua() -> str:
    # wrk 4.1 never tells its HTTP parser that an answer is to a HEAD, so it waits for the
    # Content-Length bytes of body that a correct HEAD answer never sends: 0 requests/s for
    # every server (XRootD, nginx and se alike) on a non-empty file.  The HEAD row therefore
    # asks for a 0-byte file (Content-Length: 0); the server's work (path, stat, headers) is
    # the same as for any other file.
    return status_lua("HEAD", [200])


def propfind0_lua() -> str:
    return status_lua("PROPFIND", [207], 'wrk.body = ""\nwrk.headers["Depth"] = "0"\n')


def put_lua(folder: str) -> str:
    """PUTs of SMALL_PUT_SIZE bytes to a new name each (``folder``/t<thread>-<n>.bin)."""
    extra = (
        f'wrk.body = string.rep("x", {SMALL_PUT_SIZE})\n'
        "local counter = 0\n"
        "function request()\n"
        "    counter = counter + 1\n"
        f'    return wrk.format(nil, "/{folder}/t" .. tid .. "-" .. counter .. ".bin")\n'
        "end\n"
    )
    return status_lua("PUT", [200, 201, 204], extra)  # XRootD 5.5: 200


# --------------------------------------------------------------------------- the run


@dataclass
class Ctx:
    args: argparse.Namespace
    out: Path  # logs of the servers are copied to out/logs when they stop
    ns: Netns
    base: Path
    src: Path  # the shared files
    tls: TLSFiles
    samples: Samples
    servers: dict[str, Srv] = field(default_factory=dict)
    sink: Sink | None = None
    errors: dict[str, list[str]] = field(default_factory=dict)  # of the servers stopped
    findings: list[str] = field(default_factory=list)  # error-looking lines in their logs

    @property
    def lua(self) -> Path:
        return self.base / "lua"

    def script(self, name: str, text: str) -> Path:
        path = self.lua / name
        path.write_text(text)
        return path

    # ---- servers

    def start(self, name: str) -> Srv:
        if name in self.servers:
            return self.servers[name]
        args = self.args
        root = seed_root(self.src, self.base / "roots" / name)
        if name == "xrootd":
            x = start_xrootd(self.ns, self.base, root, XRD_PORT, tls=self.tls)
            srv = Srv(name, "xrootd", Server(name, x.port, x.proc, [x.log_path]), root)
            srv.https_url = x.https_url
        elif name.startswith("xrootd-tpc-"):
            port = XRD_TPC_PORTS[0 if name.endswith("a") else 1]
            x = start_xrootd(self.ns, self.base, root, port, extra_config=XRD_TPC_EXTRA)
            srv = Srv(name, "xrootd", Server(name, x.port, x.proc, [x.log_path]), root)
        elif name == "nginx":
            server = start_nginx(self.base, root, str(args.nginx_workers))
            srv = Srv(name, "nginx", server, root)
        else:
            text = SE_CONFIGS[name].format(
                cert=self.tls.cert_pem,
                key=self.tls.key_pem,
                sink=self.sink.port if self.sink else 0,
            )
            server = start_se(
                self.base / "se-files" / name, root, args.workers, args.python,
                config_text=text, tree=args.tree,
            )  # fmt: skip
            server.name = name
            srv = Srv(name, "se", server, root)
            if name == "se-tls":
                srv.https_url = f"https://127.0.0.1:{server.port}"
        self.servers[name] = srv
        log(f"{name} at {srv.https_url or srv.server.url}")
        check(self, srv)
        return srv

    def stop(self, name: str) -> None:
        srv = self.servers.pop(name, None)
        if srv is not None:
            stop_server(srv.server)
            keep = self.out / "logs"
            keep.mkdir(parents=True, exist_ok=True)
            copies = []
            for path in srv.server.logs:
                copy = keep / f"{name}-{path.name}"
                for i in range(2, 100):
                    if not copy.exists():
                        break
                    copy = keep / f"{name}-{i}-{path.name}"
                with contextlib.suppress(OSError):
                    shutil.copyfile(path, copy)
                    copies.append(copy)
            self.errors.setdefault(name, []).extend(srv.server.errors)
            found = error_lines(copies)
            self.findings += [f"{name}: {f}" for f in found]

    def stop_all(self) -> None:
        for name in list(self.servers):
            with contextlib.suppress(Exception):
                self.stop(name)

    def rounds(self, row: str) -> int:
        if self.args.quick:
            return 1
        return int(self.args.put_rounds if row.startswith("put") else self.args.rounds)

    def interleave(
        self,
        row: str,
        key: str,
        names: Sequence[str],
        measure: Callable[[Srv], tuple[float | None, dict[str, Any]]],
        rounds: int | None = None,
    ) -> None:
        """``rounds`` rounds; each measures every server once, the order rotating by one."""
        n = self.rounds(row) if rounds is None else rounds
        for r in range(n):
            k = r % len(names)
            for name in [*names[k:], *names[:k]]:
                srv = self.start(name)
                value: float | None = None
                extra: dict[str, Any] = {}
                if row in srv.bad_rows:
                    srv.error(f"{key}: not measured (its functional check failed)")
                elif not srv.alive():
                    srv.error(f"{key}: the server is not running")
                else:
                    value, extra = measure(srv)
                self.samples.add(key, name, value, round=r + 1, **extra)
                shown = "fail" if value is None else f"{value:,.2f}"
                log(f"  {key} [{r + 1}/{n}] {name}: {shown}")


def check(ctx: Ctx, srv: Srv) -> None:
    """Functional checks before measuring; a failed one rules out the rows it covers."""
    small = (ctx.src / SMALL_NAME).read_bytes()

    def fail(rows: Sequence[str], msg: str) -> None:
        srv.bad_rows.update(rows)
        srv.error(f"check: {msg}")

    def req(method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        try:
            return request(srv.server, method, path, headers, body)
        except (OSError, http.client.HTTPException) as exc:
            return 0, {}, f"{type(exc).__name__}: {exc}".encode()

    if srv.name == "se-tls":
        p = subprocess.run(
            ["curl", "-sS", "--cacert", str(ctx.tls.ca_pem), "-o", "-", "-m", "30",
             f"{srv.https_url}/{SMALL_NAME}"],
            capture_output=True, timeout=40, check=False,
        )  # fmt: skip
        if p.returncode != 0 or p.stdout != small:
            fail(["https"], f"https GET {SMALL_NAME}: curl {p.returncode}, {len(p.stdout)} bytes")
        return
    gets = ["get4k", "fireflies", "accesslog"]
    status, _, body = req("GET", f"/{SMALL_NAME}", {"SciTag": SCITAG})
    if status != 200 or body != small:
        fail(gets, f"GET {SMALL_NAME}: status {status}, {len(body)} bytes (want 200, 4096)")
    for name, size, rows in (
        (SMALL_NAME, SMALL_SIZE, ["head"]),
        (EMPTY_NAME, 0, ["head"]),
        (BIG_NAME, BIG_SIZE, ["get1g", "https", "put1g"]),
    ):
        status, headers, body = req("HEAD", f"/{name}")
        length = headers.get("content-length")
        if status != 200 or length != str(size) or body:
            fail(rows, f"HEAD {name}: status {status}, Content-Length {length}, {len(body)} "
                       f"body bytes (want 200, {size}, 0)")  # fmt: skip
    status, _, body = req("PROPFIND", f"/{SMALL_NAME}", {"Depth": "0"}, b"")
    n = len(RESPONSE_RE.findall(body))
    if status != 207 or n != 1 or b"4096" not in body:
        fail(["propfind"], f"PROPFIND Depth 0: status {status}, {n} <response>s (want 207, 1, "
                           "with the length 4096)")  # fmt: skip
    probe = f"probe-{uuid.uuid4().hex[:8]}.bin"
    status, _, _ = req("PUT", f"/{probe}", None, small)
    stored = srv.root / probe
    if status not in (200, 201, 204):  # XRootD 5.5 answers 200
        fail(["put1g", "put4k"], f"PUT {probe}: status {status}")
    elif not stored.is_file() or stored.read_bytes() != small:
        fail(["put1g", "put4k"], f"PUT {probe}: the stored file is missing or differs")
    status, _, _ = req("DELETE", f"/{probe}")
    if status not in (200, 204):
        fail(["put1g", "put4k"], f"DELETE {probe}: status {status}")
    with contextlib.suppress(FileNotFoundError):
        stored.unlink()


# --------------------------------------------------------------------------- measurements


def wrk_run(
    ctx: Ctx, srv: Srv, what: str, path: str, script: Path, headers: Sequence[str] = ()
) -> WrkResult | None:
    """wrk -t2 -c64 for --duration s; None (and an error) unless every answer was right."""
    r = run_wrk(srv.server, path, script, 2, ctx.args.connections, ctx.args.duration, headers)
    if r is None:
        return None
    if r.bad_status or r.non_2xx or r.socket_errors or not r.requests:
        srv.error(
            f"{what}: {r.bad_status} unexpected status, {r.non_2xx} status >= 400, "
            f"{r.socket_errors} socket errors, {r.requests} requests"
        )
        return None
    return r


def row_get4k(ctx: Ctx) -> None:
    def measure(srv: Srv) -> tuple[float | None, dict[str, Any]]:
        r = wrk_run(ctx, srv, "GET 4 KiB", f"/{SMALL_NAME}", GET_LUA)
        return (r.rps, {"requests": r.requests}) if r else (None, {})

    ctx.interleave("get4k", "get4k", MAIN, measure)


def row_head(ctx: Ctx) -> None:
    script = ctx.script("head.lua", head_lua())

    def measure(srv: Srv) -> tuple[float | None, dict[str, Any]]:
        r = wrk_run(ctx, srv, "HEAD", f"/{EMPTY_NAME}", script)
        return (r.rps, {"requests": r.requests}) if r else (None, {})

    ctx.interleave("head", "head", MAIN, measure)


def row_propfind(ctx: Ctx) -> None:
    script = ctx.script("propfind0.lua", propfind0_lua())

    def measure(srv: Srv) -> tuple[float | None, dict[str, Any]]:
        r = wrk_run(ctx, srv, "PROPFIND Depth 0", f"/{SMALL_NAME}", script)
        return (r.rps, {"requests": r.requests}) if r else (None, {})

    ctx.interleave("propfind", "propfind", MAIN, measure)


def big_get_measure(clients: int) -> Callable[[Srv], tuple[float | None, dict[str, Any]]]:
    get = big_get(clients)

    def measure(srv: Srv) -> tuple[float | None, dict[str, Any]]:
        return get(srv.server).get(f"get{clients}"), {}

    return measure


def row_get1g(ctx: Ctx) -> None:
    warm_page_cache(ctx.src / BIG_NAME)
    for clients in (1, 4):
        ctx.interleave("get1g", f"get1g{clients}", MAIN, big_get_measure(clients))


def https_get(ctx: Ctx, srv: Srv) -> tuple[float | None, dict[str, Any]]:
    cmd = [
        "curl", "-s", "-o", "/dev/null", "--cacert", str(ctx.tls.ca_pem),
        "--max-time", str(int(HTTPS_TIMEOUT)), "-w", "%{http_code} %{size_download}",
        f"{srv.https_url}/{BIG_NAME}",
    ]  # fmt: skip
    try:
        outs, wall = run_parallel([cmd], HTTPS_TIMEOUT + 10)
    except subprocess.TimeoutExpired:
        srv.error("HTTPS GET 1 GiB: timed out")
        return None, {}
    code, _, size = outs[0].partition(" ")
    if code != "200" or size.strip() != str(BIG_SIZE):
        srv.error(f"HTTPS GET 1 GiB: status {code}, {size.strip()} bytes")
        return None, {}
    return BIG_SIZE / wall / MIB, {}


def row_https(ctx: Ctx) -> None:
    warm_page_cache(ctx.src / BIG_NAME)
    ctx.interleave("https", "https1g", ["se-tls", "xrootd"], lambda s: https_get(ctx, s))
    ctx.stop("se-tls")


def row_put1g(ctx: Ctx) -> None:
    names = ["se", "se-nofsync", "xrootd", "nginx"]

    def measure(srv: Srv) -> tuple[float | None, dict[str, Any]]:
        return big_put(srv.root)(srv.server).get("put"), {}

    if not ctx.args.quick:  # the first 1 GiB PUT of a run was much slower (bench/run.py)
        for name in names:
            srv = ctx.start(name)
            value = measure(srv)[0]
            log(f"  put1g [warm-up] {name}: {'fail' if value is None else f'{value:,.2f}'}")
    ctx.interleave("put1g", "put1g", names, measure)
    if "put4k" not in ctx.args.rows:
        ctx.stop("se-nofsync")


def row_put4k(ctx: Ctx) -> None:
    names = ["se", "se-nofsync", "xrootd", "nginx"]
    seq = iter(range(1_000_000))

    def measure(srv: Srv) -> tuple[float | None, dict[str, Any]]:
        folder = f"put4k-{next(seq)}"
        where = srv.root / folder
        where.mkdir()
        if srv.kind == "xrootd":
            give_to_xrootd(where)
        os.sync()
        script = ctx.script(f"{folder}.lua", put_lua(folder))
        try:
            r = wrk_run(ctx, srv, "PUT 4 KiB", f"/{folder}/", script)
            stored = sum(1 for _ in where.iterdir())
        finally:
            shutil.rmtree(where, ignore_errors=True)
        if r is None:
            return None, {}
        if stored < r.requests:
            srv.error(f"PUT 4 KiB: {r.requests} answered, only {stored} files stored")
            return None, {}
        return r.rps, {"requests": r.requests, "stored": stored}

    ctx.interleave("put4k", "put4k", names, measure)
    ctx.stop("se-nofsync")


def row_fireflies(ctx: Ctx) -> None:
    sink = ctx.sink = Sink()
    header = [f"SciTag: {SCITAG}"]
    fireflies: dict[str, list[tuple[int, int, int]]] = {}
    try:
        for name in ("se-ff-on", "se-ff-off"):
            ctx.start(name)
            time.sleep(0.2)
            count, sample = sink.collect()
            want = 2 if name == "se-ff-on" else 0
            if count != want:  # the check's one tagged GET
                ctx.samples.note(f"{name}: one tagged GET gave {count} fireflies (want {want})")
            for problem in filter(None, map(check_firefly, sample)):
                ctx.samples.note(f"{name}: {problem}")

        def measure(srv: Srv) -> tuple[float | None, dict[str, Any]]:
            sink.collect()
            r = wrk_run(ctx, srv, "GET 4 KiB tagged", f"/{SMALL_NAME}", GET_LUA, header)
            time.sleep(2.5)  # the end fireflies: wrk closed its connections (flow_linger 1 s)
            count, _ = sink.collect()
            if r is None:
                return None, {"fireflies": count}
            # Each keep-alive connection's run of GETs is one flow (scitags.flow_linger): its
            # end firefly reports the bytes of all of them.  wrk counts the answers it read;
            # requests in flight when it stopped (at most one per connection) were served
            # and reported too.
            served = sink.ended // SMALL_SIZE
            log(
                f"    {srv.name}: {count} fireflies for {r.requests} requests; their end "
                f"fireflies report {sink.ended:,} bytes = {served} GETs of {SMALL_SIZE}"
            )
            if srv.name == "se-ff-on" and not (
                r.requests <= served <= r.requests + ctx.args.connections
            ):
                ctx.samples.note(
                    f"fireflies: {srv.name}: the end fireflies report {served} GETs, wrk "
                    f"counted {r.requests}: NOT MATCHING"
                )
            fireflies.setdefault(srv.name, []).append((count, r.requests, served))
            return r.rps, {"requests": r.requests, "fireflies": count, "reported": served}

        ctx.interleave("fireflies", "fireflies", ["se-ff-on", "se-ff-off"], measure)
        for name, runs in fireflies.items():
            got = sum(c for c, _, _ in runs)
            asked = sum(n for _, n, _ in runs)
            reported = sum(b for _, _, b in runs)
            expected = (
                "2 per connection expected (one flow per keep-alive connection), and end "
                "fireflies reporting every GET wrk counted plus at most one in flight per "
                "connection"
                if name == "se-ff-on"
                else "0 expected"
            )
            ctx.samples.note(
                f"fireflies: {name} sent {got} to the collector for {asked} requests counted by "
                f"wrk, their end fireflies reporting {reported} GETs ({expected})"
            )
    finally:
        ctx.stop("se-ff-on")
        ctx.stop("se-ff-off")
        sink.close()
        ctx.sink = None


ACCESS_LINE = re.compile(rf'"GET /{re.escape(SMALL_NAME)} HTTP/1\.\d" ')


def count_access_lines(path: Path) -> int:
    """Access log lines of GET /small.bin in ``path``, once the file stopped growing."""
    deadline = time.monotonic() + LOG_SETTLE
    size = -1
    while time.monotonic() < deadline:
        now = path.stat().st_size
        if now == size:
            break
        size = now
        time.sleep(0.5)
    with path.open("rb") as f:
        return sum(1 for line in f if ACCESS_LINE.search(line.decode("utf-8", "replace")))


def row_accesslog(ctx: Ctx) -> None:
    lost_total = 0

    def measure(srv: Srv) -> tuple[float | None, dict[str, Any]]:
        nonlocal lost_total
        before = count_access_lines(srv.stderr)
        r = wrk_run(ctx, srv, "GET 4 KiB", f"/{SMALL_NAME}", GET_LUA)
        if r is None:
            return None, {}
        lines = count_access_lines(srv.stderr) - before
        if srv.name == "se-nolog":
            if lines:
                srv.error(f"access log off, yet {lines} access log lines")
            return r.rps, {"requests": r.requests}
        # wrk counts the answers it read before it stopped; the server may have logged up to
        # one more per connection (answered, but not read by wrk any more)
        lost = max(0, r.requests - lines)
        lost_total += lost
        log(f"    se: {lines} access log lines for {r.requests} requests counted by wrk")
        if lost:
            srv.error(f"access log: {lost} of {r.requests} requests not logged")
        elif lines > r.requests + ctx.args.connections:
            srv.error(f"access log: {lines} lines for {r.requests} requests (too many)")
        return r.rps, {"requests": r.requests, "log_lines": lines}

    ctx.interleave("accesslog", "accesslog", ["se", "se-nolog"], measure)
    ctx.samples.note(f"access log: {lost_total} requests missing from the log in all rounds")
    ctx.stop("se-nolog")


def row_tpc(ctx: Ctx) -> None:
    args = ctx.args
    pairs: dict[str, tuple[Peer, Peer]] = {}
    sources: dict[str, list[Path]] = {}
    for kind, names in (("se", ("se-tpc-a", "se-tpc-b")), ("xrootd", ("xrootd-tpc-a",
                                                                     "xrootd-tpc-b"))):  # fmt: skip
        a, b = (ctx.start(n) for n in names)
        peers = tuple(
            Peer(s.name, kind, s.server.url, s.root, s.server.proc.pid, s.alive, s.server.logs)
            for s in (a, b)
        )
        pairs[kind] = (peers[0], peers[1])
        log(f"  writing {args.tpc_count} x 1 MiB for {kind} ...")
        sources[kind] = prepare_concurrency(peers[0], peers[1], args.tpc_count, MIB)
    tpc_results = TPCResults()
    pullers = {"se": "se-tpc-b", "xrootd": "xrootd-tpc-b"}

    def measure(kind: str) -> tuple[float | None, float | None, float | None]:
        """wall time (None if any copy failed), failures, peak RSS of the puller (MB)"""
        srv = ctx.servers[pullers[kind]]
        src, dst = pairs[kind]
        if not (src.alive() and dst.alive()):
            srv.error("TPC: a server of the pair is not running")
            return None, None, None
        before = len(tpc_results.values.get(("conc_wall", kind), []))
        concurrency_run(ctx.ns, ctx.base, src, dst, sources[kind], args.tpc_timeout, tpc_results)
        srv.server.errors.extend(tpc_results.errors)  # concurrency_run printed them
        tpc_results.errors.clear()
        walls = tpc_results.values.get(("conc_wall", kind), [])
        if len(walls) == before:
            return None, None, None
        fails = tpc_results.values[("conc_fail", kind)][-1]
        rss = tpc_results.values[("conc_rss", kind)][-1]
        return (walls[-1] if fails == 0 else None), fails, rss

    n = ctx.rounds("tpc")
    for r in range(n):
        for kind in ["se", "xrootd"] if r % 2 == 0 else ["xrootd", "se"]:
            wall, fails, rss = measure(kind)
            ctx.samples.add("tpc_wall", kind, wall, round=r + 1, failures=fails, rss_mb=rss)
            ctx.samples.add("tpc_fail", kind, fails, round=r + 1)
            ctx.samples.add("tpc_rss", kind, rss, round=r + 1)
            shown = "fail" if wall is None else f"{wall:.2f} s"
            peak = "?" if rss is None else f"{rss:.0f}"
            log(f"  tpc [{r + 1}/{n}] {kind}: {shown}, {fails} failures, peak RSS {peak} MB")
    for name in ("se-tpc-a", "se-tpc-b", "xrootd-tpc-a", "xrootd-tpc-b"):
        ctx.stop(name)
        shutil.rmtree(ctx.base / "roots" / name, ignore_errors=True)


ROW_FUNCS: dict[str, Callable[[Ctx], None]] = {
    "get4k": row_get4k,
    "head": row_head,
    "propfind": row_propfind,
    "get1g": row_get1g,
    "https": row_https,
    "put1g": row_put1g,
    "put4k": row_put4k,
    "fireflies": row_fireflies,
    "accesslog": row_accesslog,
    "tpc": row_tpc,
}
assert list(ROW_FUNCS) == ROW_NAMES


# --------------------------------------------------------------------------- header


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": ram,
        "kernel": platform.release(),
    }


def se_version(args: argparse.Namespace) -> str:
    version = commit = "?"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        v = subprocess.run(
            [args.python, "-c", "import se; print(se.__version__)"],
            capture_output=True, text=True, timeout=30, check=False, cwd=args.tree,
            env={**os.environ, "PYTHONPATH": str(args.tree)},
        )  # fmt: skip
        version = v.stdout.strip() or "?"
        p = subprocess.run(
            ["git", "-C", str(args.tree), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        commit = p.stdout.strip() or "?"
        d = subprocess.run(
            ["git", "-C", str(args.tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if d.stdout.strip():
            commit += " + uncommitted changes"
    return f"se {version} ({commit})"


def header(args: argparse.Namespace, started: str, data_dir: str) -> dict[str, str]:
    m = machine()
    return {
        "date": started,
        "machine": f"{m['cpu']}, {m['cores']} cores, {m['ram']} RAM, Linux {m['kernel']}",
        "se": se_version(args),
        "xrootd": tool_version(["xrootd", "-v"]),
        "nginx": tool_version(["nginx", "-v"]),
        "wrk": tool_version(["wrk", "--version"]).split(" Copyright")[0],
        "curl": " ".join(tool_version(["curl", "--version"]).split()[:2]),
        "data": data_dir,
        "setup": (
            f"se --workers {args.workers} (shipped defaults unless a row says otherwise), "
            f"nginx worker_processes {args.nginx_workers}, wrk -t2 -c{args.connections} "
            f"-d{args.duration}s, {1 if args.quick else args.rounds} round(s) "
            f"({1 if args.quick else args.put_rounds} for PUT rows), "
            f"TPC {args.tpc_count} x 1 MiB"
        ),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="se vs XRootD vs nginx, every row of issue 16 (see bench/README.md)."
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 round, 2 s wrk runs, 100 TPC pulls, no warm-up PUT (tests the harness)",
    )
    p.add_argument(
        "--rows",
        default=",".join(ROW_NAMES),
        help=f"comma-separated rows (default all: {','.join(ROW_NAMES)})",
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds per row (default 3)")
    p.add_argument("--put-rounds", type=int, default=5, help="rounds of the PUT rows (default 5)")
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 5; --quick 2)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--tmpfs", action="store_true", help="all data dirs on /dev/shm")
    p.add_argument(
        "--out",
        type=Path,
        help="where table.md, chart.png and samples.json go (default /tmp/se-compare-<date>)",
    )
    p.add_argument("--tpc-count", type=int, help="concurrent TPC pulls (default 1000; --quick 100)")
    p.add_argument(
        "--tpc-timeout",
        type=float,
        default=300.0,
        help="seconds for all the TPC pulls of one round (default 300)",
    )
    p.add_argument("--workers", type=int, default=2, help="se --workers (default 2)")
    p.add_argument("--nginx-workers", type=int, default=2, help="nginx worker_processes (2)")
    add_se_arguments(p)
    args = p.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROW_NAMES]
    if unknown:
        p.error(f"unknown row(s) {', '.join(unknown)}; known: {', '.join(ROW_NAMES)}")
    args.rows = [r for r in ROW_NAMES if r in rows]  # always in the canonical order
    if args.duration is None:
        args.duration = 2 if args.quick else 5
    if args.tpc_count is None:
        args.tpc_count = 100 if args.quick else 1000
    if min(args.rounds, args.put_rounds, args.duration, args.tpc_count) < 1:
        p.error("--rounds, --put-rounds, --duration and --tpc-count must be >= 1")
    args.tree = args.tree.resolve()
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: clean up like Ctrl-C


def needed_bytes(args: argparse.Namespace) -> int:
    tpc = 4 * args.tpc_count * MIB if "tpc" in args.rows else 0
    return 2 * BIG_SIZE + tpc + 512 * MIB


def report(
    ctx_samples: Samples,
    lines: list[Line],
    head: dict[str, str],
    out: Path,
    servers_errors: dict[str, list[str]],
    findings: list[str],
) -> None:
    main, own = tables(ctx_samples, lines)
    text_parts = [format_text(main, MAIN_HEADER)] if main else []
    md_parts = [format_markdown(main, MAIN_HEADER)] if main else []
    if own:
        text_parts.append(format_text(own, SELF_HEADER))
        md_parts.append(format_markdown(own, SELF_HEADER))
    intro = [f"{k}: {v}" for k, v in head.items()]
    legend = (
        "Values: median over the rounds (min-max); ratios: ratio of the medians (min-max of "
        "the per-round ratios); fail = an error answer, a socket error or a failed check in "
        "some round (see the errors below)."
    )
    errs = [f"{name}: {e}" for name, es in servers_errors.items() for e in es]
    log("")
    log("\n".join(intro))
    log("")
    log("\n\n".join(text_parts))
    log(legend)
    for note in ctx_samples.notes:
        log(f"note: {note}")
    if errs:
        log(f"\n{len(errs)} error(s):")
        for e in errs:
            log(f"  - {e}")
    else:
        log("\nno errors")
    if findings:
        log("error-looking lines in the servers' logs (copied to the output dir):")
        for f in findings:
            log(f"  - {f}")
    md = "\n".join(f"- {k}: {v}" for k, v in head.items())
    md += "\n\n" + "\n\n".join(md_parts) + "\n\n" + legend + "\n"
    if ctx_samples.notes:
        md += "\n" + "\n".join(f"- {n}" for n in ctx_samples.notes) + "\n"
    if errs:
        md += "\nErrors:\n\n" + "\n".join(f"- {e}" for e in errs) + "\n"
    if findings:
        md += "\nIn the servers' logs:\n\n" + "\n".join(f"- {f}" for f in findings) + "\n"
    log("\n<!-- markdown -->")
    log(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(md)
    raw = {
        "header": head,
        "samples": ctx_samples.values,
        "runs": ctx_samples.raw,
        "notes": ctx_samples.notes,
        "row_seconds": ctx_samples.seconds,
        "errors": errs,
        "log_findings": findings,
    }
    (out / "samples.json").write_text(json.dumps(raw, indent=1) + "\n")
    why = draw_chart(ctx_samples, lines, out / "chart.png", f"{head['date']} · {head['machine']}")
    log(f"\nwritten: {out / 'table.md'}, {out / 'samples.json'}"
        + (f", {out / 'chart.png'}" if why is None else f" (no chart: {why})"))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    reason = xrootd_available()
    if reason is not None:
        log(f"cannot run XRootD here: {reason}")
        return 2
    for tool in ("curl", "wrk", "nginx"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            log(f"{tool} not found (apt-get install -y curl wrk nginx-extras)")
            return 2
    if args.tmpfs:
        tempfile.tempdir = "/dev/shm"
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < needed_bytes(args):
        log(f"{tempfile.gettempdir()}: {free / (1 << 30):.1f} GiB free, need about "
            f"{needed_bytes(args) / (1 << 30):.1f} GiB")  # fmt: skip
        return 2
    now = datetime.datetime.now(datetime.UTC)
    out = args.out or Path(f"/tmp/se-compare-{now:%Y%m%d-%H%M%S}")
    data_dir = tempfile.gettempdir()
    fs = "tmpfs" if args.tmpfs else "disk"
    head = header(args, now.strftime("%Y-%m-%d %H:%M UTC"), f"{data_dir} ({fs})")
    log("\n".join(f"{k}: {v}" for k, v in head.items()))
    samples = Samples()
    t0 = time.monotonic()
    lines = active_lines(args.rows, args.tpc_count)
    status = 0
    ctx: Ctx | None = None
    try:
        with scratch_dir() as base, Netns() as ns:
            log(f"work dir {base}, network namespace {ns.name}")
            src = base / "src"
            src.mkdir()
            write_big_file(src / BIG_NAME)
            (src / SMALL_NAME).write_bytes(os.urandom(SMALL_SIZE))
            (src / EMPTY_NAME).write_bytes(b"")
            (base / "lua").mkdir()
            tls = make_tls(base)
            with inside(ns):
                ctx = Ctx(args, out, ns, base, src, tls, samples)
                try:
                    for name in MAIN:
                        ctx.start(name)
                    warm_page_cache(src / BIG_NAME)
                    for row in args.rows:
                        log(f"\n== {row} ({time.monotonic() - t0:.0f} s since the start)")
                        began = time.monotonic()
                        ROW_FUNCS[row](ctx)
                        samples.seconds[row] = round(time.monotonic() - began, 1)
                        for name, srv in ctx.servers.items():
                            if not srv.alive():
                                srv.error(f"{name} is no longer running")
                finally:
                    ctx.stop_all()
    except (StartError, RuntimeError) as exc:
        log(f"error: {exc}")
        status = 2
    except KeyboardInterrupt:
        log("\ninterrupted; partial results:")
        status = 130
    except Exception:  # a bug here: still the partial results, after the traceback
        traceback.print_exc()
        status = 1
    if ctx is not None:
        errors = {k: v for k, v in ctx.errors.items() if v}
        report(samples, lines, head, out, errors, ctx.findings)
    spent = ", ".join(f"{row} {sec:.0f}" for row, sec in samples.seconds.items())
    log(f"took {time.monotonic() - t0:.0f} s (rows, s: {spent or '-'})")
    return status


if __name__ == "__main__":
    sys.exit(main())
