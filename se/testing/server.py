"""Real ``se serve`` subprocesses for tests: :class:`SEServer` and :class:`SEServerFactory`.

A server runs ``python -m se serve`` on an ephemeral port of 127.0.0.1 with a configuration
given as a dict (written as TOML by :func:`se.testing.toml.dumps`), in its own work
directory (``config.toml``, ``se.log`` with everything the server printed, ``data/``).  It
is up once its ``se: serving <root> at <url>`` line appears in the log (bounded wait).
:meth:`SEServer.stop` sends SIGTERM, and SIGKILL to the whole process group (workers
included) when the server has not exited after a bounded wait.

When the factory has a :class:`~se.testing.issuer.JWTIssuer`, each server trusts it: its
JWKS is written next to the config and an ``[[auth.issuers]]`` table with ``jwks_file``
is added (so the server has an ``[auth]`` section, and anonymous requests get nothing
unless the config says otherwise).  ``tls=True`` gives the server a certificate from a
throwaway CA (``trustme``, from ``pip install se[testing]``) shared by the factory's
servers, which also trust it for third-party copies among themselves (``tls.ca_dir``,
hashed with the ``openssl`` command when it is installed).
"""

from __future__ import annotations

import contextlib
import copy
import enum
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from se.testing.api import EventsClient, FaultsClient
from se.testing.toml import dumps

if TYPE_CHECKING:
    import trustme

    from se.testing.issuer import JWTIssuer

__all__ = ["ADMIN_SCOPES", "BASE_CONFIG", "SEServer", "SEServerFactory", "TLSFiles", "deep_merge"]

_SERVING = re.compile(r"^se: serving (.*) at (\S+)$", re.MULTILINE)
START_TIMEOUT = 30.0  # seconds until the "serving" line
STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL
# What the fault-injection and events clients of a server with an issuer present.
ADMIN_SCOPES = ("storage.read:/", "storage.modify:/")
ADMIN_SUB = "se-testing-admin"
# Under every server's own config: the fault-injection and events APIs are on (loopback only).
BASE_CONFIG: dict[str, Any] = {"faults": {"enabled": True}, "events": {"enabled": True}}


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``: tables merge key by key, anything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class TLSFiles:
    """A throwaway CA and a certificate for 127.0.0.1 and localhost it issued."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    ca_dir: Path | None  # the CA as <subject hash>.0 (None without the openssl command)

    @classmethod
    def create(cls, directory: Path) -> TLSFiles:
        import trustme  # a test extra: only servers with tls=True need it

        directory.mkdir(parents=True, exist_ok=True)
        ca: trustme.CA = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        ca_pem, cert_pem, key_pem = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
        ca.cert_pem.write_to_path(str(ca_pem))
        leaf.private_key_pem.write_to_path(str(key_pem))
        cert_pem.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        return cls(ca_pem, cert_pem, key_pem, _hashed_ca_dir(ca_pem, directory / "certificates"))


def _hashed_ca_dir(ca_pem: Path, ca_dir: Path) -> Path | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    res = subprocess.run(
        [openssl, "x509", "-hash", "-noout", "-in", str(ca_pem)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    subject_hash = res.stdout.strip()
    if res.returncode != 0 or not re.fullmatch(r"[0-9a-f]{8}", subject_hash):
        return None
    ca_dir.mkdir(exist_ok=True)
    shutil.copyfile(ca_pem, ca_dir / f"{subject_hash}.0")
    return ca_dir


@dataclass
class SEServer:
    """One running ``se serve``.  ``url`` is what the server printed (``http://`` or
    ``https://``, no trailing slash); ``dav_url`` the same in gfal2's ``dav://`` /
    ``davs://`` form; ``root`` the data directory."""

    url: str
    root: Path
    workdir: Path
    config: dict[str, Any]
    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    workers: int = 1
    issuer: JWTIssuer | None = None
    tls: TLSFiles | None = None
    args: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ addresses

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None, self.url
        return port

    @property
    def https(self) -> bool:
        return self.url.startswith("https://")

    @property
    def dav_url(self) -> str:
        """The URL as gfal2 names WebDAV endpoints: ``davs://`` for HTTPS, else ``dav://``."""
        scheme, rest = self.url.split("://", 1)
        return ("davs" if scheme == "https" else "dav") + "://" + rest

    @property
    def ca_file(self) -> Path | None:
        """The CA (PEM) a client needs to trust this server (``curl --cacert``), or None."""
        return self.tls.ca_pem if self.tls is not None else None

    def url_for(self, path: str, dav: bool = False) -> str:
        """The URL of ``path`` (absolute, e.g. ``"/data/f"``) on this server."""
        if not path.startswith("/"):
            path = "/" + path
        return (self.dav_url if dav else self.url) + path

    # ------------------------------------------------------------------ tokens, APIs

    def token(self, scopes: str | Sequence[str] = ADMIN_SCOPES, **claims: Any) -> str:
        """A token from the server's issuer (see :meth:`JWTIssuer.mint`)."""
        if self.issuer is None:
            raise RuntimeError("this server has no issuer (start it with issuer=...)")
        return self.issuer.mint(scopes=scopes, **claims)

    def _admin_token(self) -> str | None:
        if self.issuer is None:
            return None
        return self.issuer.mint(scopes=ADMIN_SCOPES, sub=ADMIN_SUB)

    @cached_property
    def faults(self) -> FaultsClient:
        """The fault-injection API (``[faults] enabled = true``), as an admin of ``/``."""
        return FaultsClient(self.url, token=self._admin_token, ca_file=self.ca_file)

    @cached_property
    def events(self) -> EventsClient:
        """The events API (``[events] enabled = true``), as an admin of ``/``."""
        return EventsClient(self.url, token=self._admin_token, ca_file=self.ca_file)

    # ------------------------------------------------------------------ process

    # The server process is reaped only by stop() and kill(), after any process left in its
    # group is killed: until then its pid (the group id) cannot be taken by another process.

    @property
    def running(self) -> bool:
        return self.proc.returncode is None and not self._exited(0)

    @property
    def returncode(self) -> int | None:
        """The exit status, once :meth:`stop` or :meth:`kill` has reaped the server."""
        return self.proc.returncode

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far (the access log too)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM; SIGKILL to the process group if the server has not exited after
        ``timeout`` s; then any process left in the group is killed.  The exit status."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            if not self._exited(timeout):
                self._kill_group()
                self._exited(STOP_TIMEOUT)
        return self._reap()

    def kill(self) -> int:
        """SIGKILL the whole process group (workers included) at once; the exit status."""
        if self.proc.returncode is None:
            self._kill_group()
            self._exited(STOP_TIMEOUT)
        return self._reap()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _exited(self, timeout: float, step: float = 0.02) -> bool:
        """Whether the server has exited (waiting up to ``timeout`` s) without reaping it."""
        if self.proc.returncode is not None:
            return True
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / step) + 2):
            if os.waitid(os.P_PID, self.proc.pid, flags) is not None:
                return True
            if time.monotonic() >= deadline:
                break
            time.sleep(step)
        return False

    def _reap(self) -> int:
        if self.proc.returncode is None:
            if self._exited(0):
                self._kill_group()  # workers the server left behind (it cannot have waited)
            return self.proc.wait(STOP_TIMEOUT)
        return self.proc.returncode

    def __enter__(self) -> SEServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class _Unset(enum.Enum):
    DEFAULT = "default"


class SEServerFactory:
    """Starts servers in sub-directories of ``workdir``; :meth:`stop_all` stops them all."""

    def __init__(self, workdir: Path, issuer: JWTIssuer | None = None) -> None:
        self.workdir = workdir
        self.issuer = issuer
        self.servers: list[SEServer] = []
        self._names = itertools.count(1)
        self._tls: TLSFiles | None = None

    @property
    def tls_files(self) -> TLSFiles:
        """The CA and host certificate of every ``tls=True`` server of this factory."""
        if self._tls is None:
            self._tls = TLSFiles.create(self.workdir / "tls")
        return self._tls

    def __call__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        workers: int = 1,
        issuer: JWTIssuer | Literal[_Unset.DEFAULT] | None = _Unset.DEFAULT,
        issuer_config: Mapping[str, Any] | None = None,
        tls: bool = False,
        root: Path | None = None,
        workdir: Path | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = START_TIMEOUT,
    ) -> SEServer:
        """Start one server and wait until it serves.

        ``config``: the TOML configuration as a dict (``{"tpc": {"marker_period": 0.5}}``),
        over :data:`BASE_CONFIG` (fault injection and events on);
        ``workers``: ``--workers N``; ``issuer``: the issuer the server trusts (default: the
        factory's; None: no issuer); ``issuer_config``: more keys of its ``[[auth.issuers]]``
        table (``base_path``, ``audiences``, ``groups``); ``tls``: serve HTTPS; ``root``:
        the data directory (default ``<workdir>/data``); ``workdir``: where config and log
        go (default: a new sub-directory of the factory's); ``extra_args``: more
        ``se serve`` flags; ``env``: added to the server's environment.
        """
        if workdir is None:
            workdir = self.workdir / f"se-{next(self._names)}"
        workdir.mkdir(parents=True, exist_ok=True)
        root = root if root is not None else workdir / "data"
        cfg = deep_merge(BASE_CONFIG, config or {})
        the_issuer: JWTIssuer | None = self.issuer if issuer is _Unset.DEFAULT else issuer
        if the_issuer is not None:
            jwks = the_issuer.write_jwks(workdir / "jwks.json")
            entry = {"issuer": the_issuer.issuer, "jwks_file": str(jwks)}
            entry.update(issuer_config or {})
            auth = cfg.setdefault("auth", {})
            auth["issuers"] = [*auth.get("issuers", []), entry]
        tls_files = None
        if tls:
            tls_files = self.tls_files
            tls_cfg = {"cert": str(tls_files.cert_pem), "key": str(tls_files.key_pem)}
            if tls_files.ca_dir is not None:
                tls_cfg["ca_dir"] = str(tls_files.ca_dir)
            cfg = deep_merge({"tls": tls_cfg}, cfg)
        config_path = workdir / "config.toml"
        config_path.write_text(dumps(cfg))
        log_path = workdir / "se.log"
        args = [
            sys.executable,
            *("-m", "se", "serve", "--config", str(config_path), "--root", str(root)),
            *("--host", "127.0.0.1", "--port", "0", "--workers", str(workers)),
            *extra_args,
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )
        srv = SEServer(
            url="",
            root=root,
            workdir=workdir,
            config=cfg,
            config_path=config_path,
            log_path=log_path,
            proc=proc,
            workers=workers,
            issuer=the_issuer,
            tls=tls_files,
            args=args,
        )
        self.servers.append(srv)
        srv.url = _wait_serving(srv, timeout)
        return srv

    def stop_all(self) -> None:
        """Stop every server this factory started (each within its bounded wait)."""
        servers, self.servers = self.servers, []
        for srv in servers:
            srv.stop()


def _wait_serving(srv: SEServer, timeout: float, step: float = 0.02) -> str:
    """The URL in the server's ``serving`` line; RuntimeError (with the log) if it exits
    or ``timeout`` passes first (the server is then killed)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 2):
        m = _SERVING.search(srv.log())
        if m:
            return m.group(2)
        if srv._exited(0) or time.monotonic() >= deadline:
            break
        time.sleep(step)
    m = _SERVING.search(srv.log())
    if m:
        return m.group(2)
    srv.kill()
    raise RuntimeError(
        f"se did not start (exit status {srv.returncode}): {srv.log()[-3000:]}\n"
        f"config {srv.config_path}:\n{srv.config_path.read_text()}"
    )
