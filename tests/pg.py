"""A real, throw-away PostgreSQL server for tests (Debian ``postgresql`` package, any version).

:func:`start_postgres` runs ``initdb`` on a fresh cluster in a scratch directory and starts it
with ``pg_ctl``: it listens on 127.0.0.1 only, on an ephemeral port, with its unix socket inside
the scratch directory; authentication is ``trust`` (nothing but this machine can connect), and
durability is off (``fsync``), which a test server does not need.  :meth:`PGServer.create_database`
gives each test a database of its own; :meth:`PGServer.stop` stops the server and removes the
scratch directory.

PostgreSQL refuses to run as root, so as root ``initdb`` and ``pg_ctl`` run as the ``postgres``
system user (``runuser``), which owns the scratch directory.  That directory is made with
:func:`tempfile.mkdtemp` under ``/tmp``: pytest's ``tmp_path`` is below ``/tmp/pytest-of-root``,
which ``postgres`` cannot enter, and a unix socket path must stay short (107 bytes).

When the server cannot run here, :func:`start_postgres` raises :class:`PostgresUnavailable` whose
message says what is missing: tests turn it into a skip.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["PGServer", "PostgresUnavailable", "find_pg_bin", "postgres_or_skip", "start_postgres"]

PG_USER = "postgres"  # the system user the server runs as when we are root
SUPERUSER = "se_test"  # the database superuser initdb creates (trust authentication)
_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_seq = itertools.count()


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot run here; the message is the reason (for ``pytest.skip``)."""


def find_pg_bin() -> Path:
    """The newest Debian ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl."""
    candidates = [d for d in Path("/").glob(_BIN_GLOB.lstrip("/")) if (d / "initdb").is_file()]

    def version(d: Path) -> tuple[int, ...]:
        digits = d.parent.name.split(".")
        return tuple(int(x) for x in digits if x.isdigit())

    for d in sorted(candidates, key=version, reverse=True):
        if (d / "pg_ctl").is_file() and (d / "postgres").is_file():
            return d
    raise PostgresUnavailable(
        f"no PostgreSQL server binaries ({_BIN_GLOB}/initdb, pg_ctl): apt-get install postgresql"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PGServer:
    """A running test cluster; connect as :data:`SUPERUSER` over TCP to 127.0.0.1:``port``."""

    bindir: Path
    base: Path  # scratch directory: data/, sock/, server.log
    port: int
    runas: list[str]  # command prefix: [] or ["runuser", "-u", "postgres", "--"]
    databases: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError as exc:
            return f"(no server log: {exc})"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its ``postgresql://`` URL."""
        name = f"{prefix}_{os.getpid()}_{next(_seq)}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        self.databases.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, closing its leftover connections."""
        name = url.rsplit("/", 1)[1]
        self.databases.remove(name)
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _pg_ctl_stop(self, mode: str) -> None:
        if (self.datadir / "postmaster.pid").exists():
            cmd = [*self.runas, str(self.bindir / "pg_ctl"), "-D", str(self.datadir)]
            _run([*cmd, "-m", mode, "-w", "-t", "30", "stop"], timeout=60, check=False)

    def stop(self) -> None:
        """Stop the server (fast shutdown, bounded) and remove the scratch directory."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self._pg_ctl_stop("fast")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def _run(args: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}"
        )
    return proc


def _run_as() -> tuple[list[str], int | None, int | None]:
    """(command prefix, uid, gid) to run the server binaries as a user PostgreSQL accepts."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root and there is no {PG_USER!r} system user to run PostgreSQL as"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root and runuser (util-linux) is missing")
    return [runuser, "-u", PG_USER, "--"], pw.pw_uid, pw.pw_gid


def start_postgres(timeout: float = 60.0, attempts: int = 3) -> PGServer:
    """initdb and start a cluster; raises :class:`PostgresUnavailable` with the reason."""
    try:
        import psycopg  # noqa: F401 - the fixtures create databases with it
    except ImportError:
        raise PostgresUnavailable(
            "psycopg is not installed: pip install 'psycopg[binary]'"
        ) from None
    bindir = find_pg_bin()
    runas, uid, gid = _run_as()
    base = Path(tempfile.mkdtemp(prefix="se-pg-"))
    try:
        if uid is not None and gid is not None:
            os.chown(base, uid, gid)
        (base / "sock").mkdir()
        if uid is not None and gid is not None:
            os.chown(base / "sock", uid, gid)
        cmd = [*runas, str(bindir / "initdb"), "-D", str(base / "data"), "-U", SUPERUSER]
        cmd += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        init = _run(cmd, timeout=timeout, check=False)
        if init.returncode != 0:
            raise PostgresUnavailable(
                f"initdb failed ({init.returncode}): {(init.stdout + init.stderr)[-1000:]}"
            )
        last = ""
        for _ in range(attempts):  # the free port can be taken before the server binds it
            port = _free_port()
            server = PGServer(bindir, base, port, runas)
            options = " ".join(
                [
                    "-c listen_addresses=127.0.0.1",
                    f"-c port={port}",
                    f"-c unix_socket_directories={server.socket_dir}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c max_connections=100",
                    "-c shared_buffers=32MB",
                ]
            )
            cmd = [*runas, str(bindir / "pg_ctl"), "-D", str(server.datadir)]
            cmd += ["-l", str(server.log_path), "-o", options, "-w", "-t", str(int(timeout))]
            start = _run([*cmd, "start"], timeout=timeout + 30, check=False)
            if start.returncode == 0:
                return server
            last = f"pg_ctl start failed ({start.returncode}): {server.log_tail(1000)}"
            server._pg_ctl_stop("immediate")  # a half-started server
        raise PostgresUnavailable(last)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


@contextlib.contextmanager
def postgres_or_skip() -> Iterator[PGServer]:
    """A running server for the ``with`` block (a session-scoped fixture's body); skips the
    test, naming what is missing, when PostgreSQL cannot run here."""
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()
