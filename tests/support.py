"""Starting real ``se`` servers for tests: a subprocess on an ephemeral loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SEProcess",
    "ServerFarm",
    "exchange",
    "poll",
    "poll_async",
    "read_answer",
    "start_se",
    "temp_files",
]

_URL = re.compile(r"^se: serving .* at (\S+)$")


@dataclass
class SEProcess:
    url: str
    root: Path
    proc: subprocess.Popen[str]
    config: Path | None = None
    stderr_path: Path | None = None
    args: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL the whole process group (workers included)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path else ""


def start_se(
    workdir: Path,
    root: Path | None = None,
    config: str = "",
    extra_args: list[str] | None = None,
    timeout: float = 20.0,
) -> SEProcess:
    """Start ``python -m se serve`` on 127.0.0.1:0 and wait for its address line."""
    root = root or workdir / "data"
    args = [sys.executable, "-m", "se", "serve", "--root", str(root), "--port", "0"]
    cfg_path = None
    if config:
        cfg_path = workdir / f"se-{time.monotonic_ns()}.toml"
        cfg_path.write_text(config)
        args += ["--config", str(cfg_path)]
    args += extra_args or []
    err_path = workdir / f"se-{time.monotonic_ns()}.stderr"
    err = open(err_path, "w")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True
    )
    err.close()
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = _URL.match(line.strip())
        if m:
            return SEProcess(m.group(1), root, proc, cfg_path, err_path, args)
        if proc.poll() is not None:
            break
    proc.kill()
    proc.wait(10)
    proc.stdout.close()
    raise RuntimeError(f"se did not start: {line!r} {err_path.read_text()[-2000:]}")


class ServerFarm:
    """Servers started on first use, by name, each from its own config (for module-scoped
    fixtures whose tests need some of several differently configured servers)."""

    def __init__(self, workdir: Path, configs: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.configs = configs
        self.servers: dict[str, SEProcess] = {}

    def __getitem__(self, name: str) -> SEProcess:
        if name not in self.servers:
            self.servers[name] = start_se(
                self.workdir, root=self.workdir / name, config=self.configs[name]
            )
        return self.servers[name]

    def stop(self) -> None:
        for srv in self.servers.values():
            srv.stop()


def poll(cond: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> bool:
    """True as soon as cond() holds; False after timeout (bounded in time and count)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 1):
        if cond():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    return cond()


async def poll_async(cond: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """:func:`poll` for coroutines: True as soon as cond() holds; False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)


def temp_files(root: Path) -> list[Path]:
    """Upload temp files (``.se-upload-*``) anywhere below ``root``."""
    return [p for p in root.rglob(".se-upload-*") if p.is_file()]


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw ``data`` on a new connection to 127.0.0.1:``port`` and read until the server
    closes it (or the timeout, or the first complete answer to a keep-alive request)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
        return read_answer(s, timeout)


def read_answer(s: socket.socket, timeout: float) -> bytes:
    """What the server sends on ``s`` until it closes, or one answer with a Content-Length
    is complete, or ``timeout`` passes."""
    s.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += chunk
        head, sep, body = out.partition(b"\r\n\r\n")
        if sep and b"content-length: " + str(len(body)).encode() in head.lower():
            break
    return out
