"""The ``se`` command: ``se serve`` and ``se check-config``.

Precedence: built-in defaults < ``--config`` file < flags given on the command line
(a flag left out never overrides the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from se import __version__
from se.config import Config, ConfigError, load_file, validate

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="se", description="A WebDAV storage element for the grid.")
    p.add_argument("--version", action="version", version=f"se {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a directory over HTTP/WebDAV")
    s.add_argument("--config", "-c", help="TOML configuration file")
    s.add_argument("--root", help="data directory (default ./data)")
    s.add_argument("--host", help="listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="listen port, 0 picks a free one (default 8080)")
    s.add_argument("--workers", type=int, help="worker processes (default 1)")
    s.add_argument(
        "--insecure-anonymous",
        action="store_true",
        default=None,
        help="allow anonymous read-write on a non-loopback address",
    )
    c = sub.add_parser("check-config", help="validate a configuration file and exit")
    c.add_argument("file")
    return p


def build_config(args: argparse.Namespace) -> Config:
    cfg = load_file(args.config) if args.config else Config()
    server = cfg.server
    for flag in ("host", "port", "workers", "insecure_anonymous"):
        value = getattr(args, flag)
        if value is not None:
            server = dataclasses.replace(server, **{flag: value})
    storage = cfg.storage
    if args.root is not None:
        storage = dataclasses.replace(storage, root=args.root)
    cfg = dataclasses.replace(cfg, server=server, storage=storage)
    validate(cfg)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            load_file(args.file)
            print(f"se: {args.file} is valid")
            return 0
        from se.server import run

        return run(build_config(args))
    except ConfigError as exc:
        print(f"se: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
