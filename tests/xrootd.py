"""A real XRootD HTTP server (XrdHttp + libXrdHttpTPC, Debian ``xrootd-server`` 5.5) as a test peer.

XRootD listens on the wildcard address and cannot be told otherwise, so every instance runs in a
private network namespace that has nothing but loopback (:class:`Netns`); whatever talks to it
(curl, other XRootD instances, ``se`` via :func:`start_se_in`) runs in the same namespace.

Facts this module is built on (XRootD 5.5.3):

* the TPC handler is only loaded when ``xrd.tls`` is configured; the one port then speaks both
  http and https;
* it refuses to run as root: it is started as root with ``-R xrootd`` and switches to that user,
  so its work and data directories belong to ``xrootd`` and every directory above them must be
  searchable by it. pytest's ``tmp_path`` is not (``/tmp/pytest-of-root`` is 0700 and pytest resets
  it at every session start), hence :func:`scratch_dir`;
* without ``ofs.authorize`` and ``xrootd.seclib`` an unauthenticated http client may GET, PUT,
  MKCOL, DELETE and COPY; PUT creates missing parents, a TPC pull into a missing directory fails;
* TPC to and from 127.0.0.1 peers needs no extra directive;
* COPY answers ``201`` with a chunked ``text/plain`` perf-marker stream whose last line
  (``success: Created`` / ``failure: ...``) has no trailing newline.

``se`` keeps running as root, so it can read and write anything XRootD stores; XRootD can read
what ``se`` stores (files 0644, directories 0755) but cannot write into directories ``se`` made.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support import SEProcess

__all__ = [
    "XROOTD_USER",
    "GridSite",
    "Netns",
    "TLSLike",
    "TPCReply",
    "XRootD",
    "find_plugin",
    "give_to_xrootd",
    "grid_site",
    "parse_perf_markers",
    "scratch_dir",
    "start_se_in",
    "start_xrootd",
    "tpc_copy",
    "xrootd_available",
    "xrootd_test_marks",
]

XROOTD_USER = "xrootd"
NS_PREFIX = "sexrd"
_SCRATCH_PREFIX = "se-xrootd-"
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
_PLUGINS = ("libXrdHttp-5.so", "libXrdHttpTPC-5.so")
_seq = itertools.count()
_READY = re.compile(r"xrootd \S+:(\d+) initialization completed")
_SE_URL = re.compile(r"^se: serving .* at (\S+)$", re.MULTILINE)


# --------------------------------------------------------------------------- availability


@cache
def xrootd_available() -> str | None:
    """None when XRootD peers can run here, else the reason to skip."""
    if os.geteuid() != 0:
        return "XRootD peers need root (network namespaces, xrootd -R)"
    for tool in ("ip", "xrootd", "curl"):
        if shutil.which(tool) is None:
            return f"not installed: {tool} (apt-get install iproute2 xrootd-server curl)"
    for lib in _PLUGINS:
        if not any(Path(d, lib).is_file() for d in _LIB_DIRS):
            return f"XRootD plugin {lib} not found (apt-get install xrootd-server-plugins)"
    try:
        pwd.getpwnam(XROOTD_USER)
    except KeyError:
        return f"no {XROOTD_USER!r} user (it comes with the xrootd-server package)"
    probe = f"{NS_PREFIX}-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        res = _ip(["netns", "add", probe])
        if res.returncode != 0:
            return f"cannot create a network namespace: {res.stderr.strip()}"
        up = _ip(["netns", "exec", probe, "ip", "link", "set", "lo", "up"])
        if up.returncode != 0:
            return f"cannot bring up loopback in a network namespace: {up.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            _ip(["netns", "del", probe])
    return None


def find_plugin(name: str) -> Path | None:
    """The installed XRootD plugin library ``name`` (e.g. ``libXrdVoms-5.so``), or None."""
    for folder in _LIB_DIRS:
        path = Path(folder, name)
        if path.is_file():
            return path
    return None


def xrootd_test_marks(timeout: float = 120) -> list[pytest.MarkDecorator]:
    """``pytestmark`` of a module of tests with XRootD peers: they drive external clients,
    are skipped (saying why) where peers cannot run, and get ``timeout`` seconds each."""
    reason = xrootd_available()
    return [
        pytest.mark.clients,
        pytest.mark.skipif(reason is not None, reason=reason or ""),
        pytest.mark.timeout(timeout),
    ]


def _ip(args: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# --------------------------------------------------------------------------- namespaces


def _ns_pids(name: str) -> list[int]:
    res = _ip(["netns", "pids", name])
    return [int(tok) for tok in res.stdout.split() if tok.isdigit()]


def _kill_all_in(name: str, timeout: float = 10.0) -> None:
    """SIGKILL every process in the namespace until none is left (bounded)."""
    deadline = time.monotonic() + timeout
    for _ in range(100):
        pids = _ns_pids(name)
        if not pids or time.monotonic() >= deadline:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _reap_stale_namespaces() -> None:
    """Delete namespaces this module left behind in processes that no longer exist."""
    res = _ip(["netns", "list"])
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{NS_PREFIX}-(\d+)-\d+-[0-9a-f]+", name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        if not _pid_alive(int(m.group(1))):
            _kill_all_in(name)
            _ip(["netns", "del", name])


class Netns:
    """A uniquely named network namespace with only ``lo`` (up); deleted, with everything
    still running inside it, on exit."""

    def __init__(self) -> None:
        self.name = f"{NS_PREFIX}-{os.getpid()}-{next(_seq)}-{secrets.token_hex(2)}"
        self._procs: list[subprocess.Popen[Any]] = []
        self._created = False

    def __enter__(self) -> Netns:
        _reap_stale_namespaces()
        res = _ip(["netns", "add", self.name])
        if res.returncode != 0:
            raise RuntimeError(f"ip netns add {self.name}: {res.stderr.strip()}")
        self._created = True
        try:
            up = _ip(["netns", "exec", self.name, "ip", "link", "set", "lo", "up"])
            if up.returncode != 0:
                raise RuntimeError(f"lo up in {self.name}: {up.stderr.strip()}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def argv(self, argv: Sequence[str | Path]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *(str(a) for a in argv)]

    def run(
        self, argv: Sequence[str | Path], *, timeout: float = 60.0, **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the namespace; captures text output unless told otherwise.

        ``ip netns exec`` execs the command itself, so a timeout kills the command."""
        kw.setdefault("capture_output", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        if "text" not in kw and "encoding" not in kw:
            kw["text"] = True
            kw.setdefault("errors", "replace")
        kw.setdefault("check", False)
        return subprocess.run(self.argv(argv), timeout=timeout, **kw)

    def popen(self, argv: Sequence[str | Path], **kw: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside the namespace, in a new session; reaped at exit."""
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kw)
        self._procs.append(proc)
        return proc

    def curl(
        self, args: Sequence[str | Path], *, timeout: float = 60.0, **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """curl inside the namespace, never through a proxy, with ``-m`` matching the timeout.

        Output is text (universal newlines) unless ``text=False`` is passed."""
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        return self.run(
            ["curl", "-sS", "--noproxy", "*", "-m", f"{timeout:.0f}", *args],
            timeout=timeout + 10,
            env=env,
            **kw,
        )

    def close(self) -> None:
        if not self._created:
            return
        _kill_all_in(self.name)
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self._procs.clear()
        res = _ip(["netns", "del", self.name])
        if res.returncode != 0:
            raise RuntimeError(f"ip netns del {self.name}: {res.stderr.strip()}")
        self._created = False


# --------------------------------------------------------------------------- directories


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh directory under the system temp dir that the xrootd user may enter (0711);
    removed on exit. Put XRootD's work and data directories below it. Ones left behind by
    killed test processes are removed here too."""
    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{_SCRATCH_PREFIX}*-*"):
        m = re.fullmatch(rf"{_SCRATCH_PREFIX}(\d+)-\w+", old.name)
        if m is not None and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-", dir=base))
    try:
        path.chmod(0o711)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def give_to_xrootd(path: Path) -> None:
    """chown ``path`` (recursively) to the xrootd user, e.g. after seeding files on disk."""
    pw = pwd.getpwnam(XROOTD_USER)
    os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    if path.is_dir() and not path.is_symlink():
        for top, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                os.chown(os.path.join(top, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


def _check_searchable(path: Path) -> None:
    """Raise unless the xrootd user may traverse every directory above ``path``."""
    pw = pwd.getpwnam(XROOTD_USER)
    groups = {pw.pw_gid, *os.getgrouplist(XROOTD_USER, pw.pw_gid)}
    for parent in path.resolve().parents:
        st = parent.stat()
        if st.st_uid == pw.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise RuntimeError(
                f"user {XROOTD_USER} cannot enter {parent} (mode {st.st_mode & 0o7777:o}); "
                f"put {path} below tests.xrootd.scratch_dir()"
            )


# --------------------------------------------------------------------------- XRootD


class TLSLike(Protocol):
    """Anything with these paths, such as ``tests.e2e.clients.TLSFiles``."""

    @property
    def ca_pem(self) -> Path: ...
    @property
    def cert_pem(self) -> Path: ...
    @property
    def key_pem(self) -> Path: ...


@dataclass
class XRootD:
    port: int
    data_dir: Path
    home: Path  # config, TLS files, admin/pid dirs, log
    netns: Netns
    proc: subprocess.Popen[bytes]
    ca_pem: Path  # trusted for https peers; also the CA of the server certificate

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.home / "xrootd.cfg"

    @property
    def log_path(self) -> Path:
        return self.home / "xrootd.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _write_tls(home: Path, tls: TLSLike | None) -> tuple[Path, Path, Path]:
    ca, cert, key = home / "ca.pem", home / "cert.pem", home / "key.pem"
    if tls is None:
        import trustme

        authority = trustme.CA()
        leaf = authority.issue_cert("127.0.0.1", "localhost")
        authority.cert_pem.write_to_path(str(ca))
        leaf.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    else:
        shutil.copyfile(tls.ca_pem, ca)
        shutil.copyfile(tls.cert_pem, cert)
        shutil.copyfile(tls.key_pem, key)
    key.chmod(0o600)  # XRootD insists on a private key file
    return ca, cert, key


def xrootd_config(
    port: int, data_dir: Path, home: Path, ca: Path, cert: Path, key: Path, extra: str = ""
) -> str:
    """The configuration :func:`start_xrootd` writes (anonymous read/write http + TPC)."""
    return (
        f"all.export /\n"
        f"oss.localroot {data_dir}\n"
        f"all.adminpath {home / 'admin'}\n"
        f"all.pidpath {home / 'run'}\n"
        f"xrd.port {port}\n"
        f"xrd.protocol XrdHttp:{port} libXrdHttp.so\n"
        f"xrd.tls {cert} {key}\n"
        f"xrd.tlsca certfile {ca}\n"
        f"http.exthandler xrdtpc libXrdHttpTPC.so\n"
        f"{extra}\n"
    )


def start_xrootd(
    netns: Netns,
    workdir: Path,
    data_dir: Path,
    port: int = 1094,
    *,
    tls: TLSLike | None = None,
    extra_config: str = "",
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> XRootD:
    """Start XRootD serving ``data_dir`` over http and https on ``port`` inside ``netns``.

    Its files go to ``workdir/xrootd-<port>``; ``data_dir`` (created if missing) and all it
    holds are chowned to the xrootd user. Both must lie below :func:`scratch_dir` or another
    directory the xrootd user can enter. Without ``tls`` a throwaway CA and a certificate for
    127.0.0.1 are made; pass the same ``tls`` to other peers so they trust each other.
    ``env`` is added to XRootD's environment (e.g. ``X509_VOMS_DIR`` for libXrdVoms)."""
    home = workdir / f"xrootd-{port}"
    home.mkdir(parents=True)
    (home / "admin").mkdir()
    (home / "run").mkdir()
    data_dir.mkdir(parents=True, exist_ok=True)
    _check_searchable(home)
    _check_searchable(data_dir)
    ca, cert, key = _write_tls(home, tls)
    cfg = home / "xrootd.cfg"
    cfg.write_text(xrootd_config(port, data_dir, home, ca, cert, key, extra_config))
    give_to_xrootd(home)
    give_to_xrootd(data_dir)
    log_path = home / "xrootd.log"
    with open(log_path, "wb") as log:
        proc: subprocess.Popen[bytes] = netns.popen(
            ["xrootd", "-R", XROOTD_USER, "-n", f"p{port}", "-c", cfg],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env} if env else None,
        )
    srv = XRootD(port, data_dir, home, netns, proc, ca)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"xrootd exited with {proc.returncode}:\n{srv.log()[-3000:]}")
        if _READY.search(srv.log()):
            probe = netns.curl(["-o", "/dev/null", "-w", "%{http_code}", f"{srv.url}/"], timeout=5)
            if probe.stdout.strip() not in ("", "000"):
                return srv
        if time.monotonic() >= deadline:
            srv.stop(signal.SIGKILL)
            raise RuntimeError(f"xrootd not ready after {timeout} s:\n{srv.log()[-3000:]}")
        time.sleep(0.05)


@dataclass(frozen=True)
class GridSite:
    """``extra_config`` and ``env`` for :func:`start_xrootd`: an XRootD that authenticates
    grid proxies (see :func:`grid_site`)."""

    extra_config: str
    env: dict[str, str]


def grid_site(
    home: Path,
    ca_dir: Path,
    vomsdir: Path,
    authdb: str,
    *,
    macaroons: bool = False,
    voms: bool = True,
) -> GridSite:
    """Configuration for an XRootD that wants VOMS proxies, its files in ``home`` (created
    here; put it below :func:`scratch_dir`).  Pass the host certificate as ``tls``.

    * ``xrd.tlsca certdir <copy of ca_dir> proxies``: client chains, proxies included, verified
      against the hashed CA directory;
    * ``http.secxtractor libXrdVoms.so grpopt=0``: VOMS attributes through libvomsapi (which
      reads ``X509_VOMS_DIR`` and ``X509_CERT_DIR``, hence ``env``).  ``grpopt=0`` keeps the
      first FQAN only: with the default (every FQAN, as a "vertically sliced" tuple) a proxy
      holding ``/dteam/Role=production`` and ``/dteam`` has an empty role in its second
      column, XrdAcc refuses the entity ("missing attrs in col 1") and answers 403.  Without
      ``voms`` nothing is extracted and XrdHttp names a client by the subject hash of its
      end-entity certificate (``openssl x509 -hash`` plus ``.0``), for ``u`` rules;
    * ``ofs.authorize 1`` with ``authdb`` as the XrdAcc database (e.g. ``o dteam /dteam a``:
      everything below /dteam for the dteam VO, nothing for anyone else; ``u *`` would match
      anonymous clients too);
    * ``xrootd.chksum adler32``;
    * with ``macaroons``, the macaroons plugin issues macaroons to authenticated clients and
      accepts them, chained in front of XrdAcc; XrdHttp 5.5 passes a bearer token of a plain
      request to it only with ``http.header2cgi Authorization authz`` (a COPY's own token
      reaches the TPC handler without it).
    """
    home.mkdir(parents=True)
    shutil.copytree(ca_dir, home / "certificates")
    shutil.copytree(vomsdir, home / "vomsdir")
    (home / "authdb").write_text(authdb if authdb.endswith("\n") else authdb + "\n")
    lines = [f"xrd.tlsca certdir {home / 'certificates'} proxies"]
    if voms:
        lines.append("http.secxtractor libXrdVoms.so grpopt=0")
    lines += ["ofs.authorize 1", f"acc.authdb {home / 'authdb'}", "xrootd.chksum adler32"]
    if macaroons:
        secret = home / "macaroon-secret"
        secret.write_bytes(base64.b64encode(os.urandom(64)) + b"\n")
        secret.chmod(0o600)
        lines += [
            "all.sitename se-test",
            "ofs.authlib libXrdMacaroons.so",
            "http.exthandler xrdmacaroons libXrdMacaroons.so",
            f"macaroons.secretkey {secret}",
            "http.header2cgi Authorization authz",
        ]
    give_to_xrootd(home)
    env = {"X509_VOMS_DIR": str(home / "vomsdir"), "X509_CERT_DIR": str(home / "certificates")}
    return GridSite("\n".join(lines) + "\n", env)


# --------------------------------------------------------------------------- se in the namespace


def start_se_in(
    netns: Netns,
    workdir: Path,
    root: Path,
    config: str = "",
    extra_args: Sequence[str] = (),
    timeout: float = 20.0,
) -> SEProcess:
    """Start ``python -m se serve --port 0`` inside ``netns`` (listening on its 127.0.0.1).

    stdout goes to a file that is polled for the ``se: serving <root> at <url>`` line, so a
    server that never prints it cannot hang the caller."""
    tag = f"se-{time.monotonic_ns()}"
    args = [sys.executable, "-m", "se", "serve", "--root", str(root), "--port", "0"]
    cfg_path = None
    if config:
        cfg_path = workdir / f"{tag}.toml"
        cfg_path.write_text(config)
        args += ["--config", str(cfg_path)]
    args += list(extra_args)
    out_path = workdir / f"{tag}.stdout"
    err_path = workdir / f"{tag}.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc: subprocess.Popen[str] = netns.popen(args, stdout=out, stderr=err, text=True)
    deadline = time.monotonic() + timeout
    while True:
        m = _SE_URL.search(out_path.read_text(errors="replace"))
        if m is not None:
            return SEProcess(m.group(1), root, proc, cfg_path, err_path, args)
        if proc.poll() is not None or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    raise RuntimeError(
        f"se did not start in {netns.name}: {out_path.read_text()[-1000:]!r}\n"
        f"{err_path.read_text(errors='replace')[-2000:]}"
    )


# --------------------------------------------------------------------------- TPC helpers


def parse_perf_markers(body: str) -> tuple[list[dict[str, str]], str]:
    """Split a perf-marker stream into its marker blocks (field -> value) and its final line."""
    markers: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    final = ""
    for raw in body.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line == "Perf Marker":
            current = {}
        elif line == "End" and current is not None:
            markers.append(current)
            current = None
        elif current is not None:
            name, _, value = line.partition(":")
            current[name.strip()] = value.strip()
        else:
            final = line
    return markers, final


@dataclass
class TPCReply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: str
    markers: list[dict[str, str]] = field(default_factory=list)
    final: str = ""  # "success: ..." or "failure: ..."; "" if the stream ended without one


def tpc_copy(
    netns: Netns,
    url: str,
    *,
    source: str | None = None,
    destination: str | None = None,
    headers: Mapping[str, str] | None = None,
    cacert: Path | None = None,
    timeout: float = 120.0,
) -> TPCReply:
    """Send one HTTP-TPC ``COPY`` with curl inside ``netns`` and read the whole marker stream."""
    args: list[str | Path] = ["-N", "-D", "-", "-X", "COPY"]
    if source is not None:
        args += ["-H", f"Source: {source}"]
    if destination is not None:
        args += ["-H", f"Destination: {destination}"]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    if cacert is not None:
        args += ["--cacert", cacert]
    res = netns.curl([*args, url], timeout=timeout, text=False)
    if res.returncode != 0:
        err = res.stderr.decode("utf-8", "replace")[-2000:]
        raise RuntimeError(f"curl COPY {url} -> {res.returncode}: {err}")
    raw_head, _, raw_body = bytes(res.stdout).partition(b"\r\n\r\n")
    head, body = raw_head.decode("latin-1"), raw_body.decode("utf-8", "replace")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    hdrs: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        hdrs[name.strip().lower()] = value.strip()
    markers, final = parse_perf_markers(body)
    return TPCReply(status, hdrs, body, markers, final)
