"""Supervision of ``se serve --workers N`` (issue 12, finding 14).

A worker that dies is started again by the parent (with a pause, logged); workers that
keep crashing stop the server with a message and a non-zero exit status.  The crash at
start is a real one: a tape database that is not a database, which each worker opens.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from tests.conftest import BASE_CONFIG
from tests.support import SEProcess, poll


def workers_of(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:
        return set()


def get_status(port: int) -> int:
    """One GET on a new connection; its status, or 0 when none came within 5 s."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while not data.endswith(b"\r\n") or b" " not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    except OSError:
        return 0


def test_killed_worker_is_replaced(se_factory: Callable[..., SEProcess]) -> None:
    se = se_factory(extra_args=["--workers", "2"])
    assert poll(lambda: len(workers_of(se.proc.pid)) == 2, timeout=10)
    assert poll(lambda: get_status(se.port) == 200, timeout=10)
    before = workers_of(se.proc.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # A new worker appears in its place ...
    assert poll(
        lambda: len(workers_of(se.proc.pid)) == 2 and victim not in workers_of(se.proc.pid),
        timeout=15,
    ), workers_of(se.proc.pid)
    new = workers_of(se.proc.pid) - before
    assert len(new) == 1
    # ... and, once it listens, every new connection is answered (none lands on a dead
    # socket's queue).
    assert poll(lambda: all(get_status(se.port) == 200 for _ in range(20)), timeout=15)
    assert all(get_status(se.port) == 200 for _ in range(40))
    assert "worker" in se.stderr() and "restarting" in se.stderr()
    assert se.proc.poll() is None


def test_workers_crashing_at_start_stop_the_server(
    se_factory: Callable[..., SEProcess], tmp_path: Path
) -> None:
    database = tmp_path / "tape.sqlite"
    database.write_bytes(b"this is not an SQLite database\n" * 100)
    config = (
        BASE_CONFIG
        + f"""
[tape]
enabled = true
database = "{database}"
"""
    )
    se = se_factory(config, extra_args=["--workers", "2"])
    status = se.proc.wait(60)
    assert status != 0
    err = se.stderr()
    assert "crashed 5 times within 60 s" in err, err[-3000:]
    assert "stopping the server" in err
    assert workers_of(se.proc.pid) == set()


def test_sigterm_right_after_the_address_line_stops_cleanly(tmp_path: Path) -> None:
    """A test harness may stop the server as soon as it printed its address: the signal
    waits for the handlers that stop cleanly (exit status 0), with one worker or several."""
    from tests.support import start_se

    for workers in ("1", "2", "1", "2"):
        srv = start_se(tmp_path, config=BASE_CONFIG, extra_args=["--workers", workers])
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(20) == 0, srv.stderr()[-2000:]
        srv.stop()
