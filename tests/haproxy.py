"""A real HAProxy (Debian ``haproxy``) in the foreground, for tests of a balanced topology.

:func:`start_haproxy` checks a configuration (``haproxy -c``), runs ``haproxy -db`` on it and
waits until its listening port accepts connections.  :meth:`HAProxy.servers` reads the
servers' states from the admin socket (``show servers state``), so a test can wait until the
health checks have taken a frontend in or out instead of sleeping.

:func:`haproxy_or_skip` raises ``pytest.skip`` naming what is missing when the binary is not
installed (CI installs it; see .ci/run).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["HAProxy", "find_haproxy", "haproxy_or_skip", "start_haproxy"]

_CANDIDATES = ("/usr/sbin/haproxy", "haproxy")


def find_haproxy() -> str | None:
    """The haproxy binary (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class HAProxy:
    proc: subprocess.Popen[bytes]
    port: int
    config: Path
    admin_socket: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def log(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError as exc:
            return f"(no log: {exc})"

    def command(self, line: str, timeout: float = 5.0) -> str:
        """One command on the admin socket; its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.admin_socket))
            s.sendall(line.encode() + b"\n")
            out = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        return out.decode(errors="replace")

    def servers(self, backend: str) -> dict[str, bool]:
        """Server name -> up (operational state 2 = running) in ``backend``."""
        states: dict[str, bool] = {}
        for line in self.command(f"show servers state {backend}").splitlines():
            fields = line.split()
            # be_id be_name srv_id srv_name srv_addr srv_op_state ...
            if len(fields) > 5 and fields[1] == backend and fields[0].isdigit():
                states[fields[3]] = fields[5] == "2"
        return states

    def wait_servers(self, backend: str, want: dict[str, bool], timeout: float = 15.0) -> None:
        """Until the health checks agree with ``want`` (bounded); AssertionError otherwise."""
        deadline = time.monotonic() + timeout
        seen: dict[str, bool] = {}
        while time.monotonic() < deadline:
            seen = self.servers(backend)
            if all(seen.get(name) == up for name, up in want.items()):
                return
            time.sleep(0.05)
        raise AssertionError(f"haproxy servers {seen}, wanted {want}: {self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def start_haproxy(
    workdir: Path, render: Callable[[int, Path], str], timeout: float = 15.0, attempts: int = 3
) -> HAProxy:
    """Run HAProxy on the configuration ``render(port, admin_socket)`` (a free port on
    127.0.0.1; a few attempts, as the port can be taken before HAProxy binds it)."""
    binary = find_haproxy()
    if binary is None:
        raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
    admin = workdir / "haproxy.sock"
    last = ""
    for attempt in range(attempts):
        port = _free_port()
        config = workdir / f"haproxy-{attempt}.cfg"
        config.write_text(render(port, admin))
        check = subprocess.run(
            [binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused {config}: {check.stdout}{check.stderr}")
        log_path = workdir / f"haproxy-{attempt}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [binary, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        haproxy = HAProxy(proc, port, config, admin, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _accepts(port) and admin.exists():
                return haproxy
            time.sleep(0.05)
        last = haproxy.log()
        haproxy.stop()
    raise RuntimeError(f"haproxy did not start: {last}")


@contextlib.contextmanager
def haproxy_or_skip(workdir: Path, render: Callable[[int, Path], str]) -> Iterator[HAProxy]:
    """A running HAProxy for the ``with`` block; skips the test when it is not installed."""
    if find_haproxy() is None:
        pytest.skip("not installed: haproxy (apt-get install haproxy)")
    haproxy = start_haproxy(workdir, render)
    try:
        yield haproxy
    finally:
        haproxy.stop()
