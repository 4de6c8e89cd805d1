"""The ``se`` command: ``se serve``, ``se check-config``, ``se token``, ``se tape`` and
``se scan``.

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


def build_parser() -> argparse.ArgumentParser:
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
    t = sub.add_parser("token", help="a test WLCG token issuer: make keys, mint tokens")
    tsub = t.add_subparsers(dest="token_command", required=True)
    k = tsub.add_parser("keygen", help="write signing-key.pem and jwks.json into a directory")
    k.add_argument("--out", default=".", help="directory (default: the current one)")
    k.add_argument("--alg", choices=("ES256", "RS256"), default="ES256")
    i = tsub.add_parser("issue", help="print a WLCG-profile token signed with a key")
    i.add_argument("--key", required=True, help="signing-key.pem written by keygen")
    i.add_argument("--issuer", required=True, help="iss (as configured in [[auth.issuers]])")
    i.add_argument("--scope", default="", help='e.g. "storage.read:/ storage.create:/data"')
    i.add_argument(
        "--aud",
        action="append",
        default=None,
        help="audience (repeatable; default https://wlcg.cern.ch/jwt/v1/any)",
    )
    i.add_argument("--groups", default="", help="wlcg.groups, comma-separated")
    i.add_argument("--lifetime", default="1h", help="e.g. 3600, 20m, 1h (default 1h)")
    i.add_argument("--sub", default="se-token-user", help="subject")
    tp = sub.add_parser("tape", help="the simulated tape tier: status, requests, switches")
    tpsub = tp.add_subparsers(dest="tape_command", required=True)
    st = tpsub.add_parser("status", help="drives, mounts, queues, disk buffer (asks the server)")
    st.add_argument("--url", help="server URL (default: from the configuration)")
    st.add_argument("--token", help="bearer token allowing modify on / (when [auth] is set)")
    ls = tpsub.add_parser("ls", help="the newest stage requests and their progress")
    ls.add_argument("--limit", type=int, default=20)
    sw = tpsub.add_parser("set", help="run-time switches: unreachable=true, cartridge.V00001=...")
    sw.add_argument("switches", nargs="+", metavar="KEY=VALUE")
    for sp in (st, ls, sw):
        sp.add_argument("--config", "-c", help="TOML configuration file of the server")
        sp.add_argument("--root", help="data directory (default ./data)")
    # se scan: adopt an existing tree in place (its options live in se.scan).
    sc = sub.add_parser("scan", help="adopt a tree in place: keep, compute, verify checksums")
    _scan_arguments(sc)
    return p


def _scan_arguments(p: argparse.ArgumentParser) -> None:
    from se import scan

    scan.add_arguments(p)


def _scan(args: argparse.Namespace) -> int:
    from se import scan

    cfg = load_file(args.config) if args.config else Config()
    if args.root is not None:
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=args.root))
    return scan.main(args, cfg)


def _tape(args: argparse.Namespace) -> int:
    import urllib.error

    from se.server import serve_url
    from se.tape import cli as tape_cli

    cfg = load_file(args.config) if args.config else Config()
    if args.root is not None:
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=args.root))
    try:
        if args.tape_command == "status":
            print(tape_cli.status(args.url or serve_url(cfg, cfg.server.port), args.token))
        elif args.tape_command == "ls":
            print(tape_cli.ls(cfg, args.limit))
        else:
            tape_cli.set_switches(cfg, args.switches)
            print(f"se: set {' '.join(args.switches)} (applied within tape.sync_interval)")
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"se: {exc}", file=sys.stderr)
        return 2
    return 0


def _token(args: argparse.Namespace) -> int:
    from pathlib import Path

    from se.auth import issuer

    try:
        if args.token_command == "keygen":
            key_path, jwks_path = issuer.keygen(Path(args.out), args.alg)
            print(f"se: wrote {key_path} and {jwks_path}")
            return 0
        token = issuer.issue(
            issuer.load_key(Path(args.key)),
            args.issuer,
            args.scope,
            args.aud or ["https://wlcg.cern.ch/jwt/v1/any"],
            issuer.parse_lifetime(args.lifetime),
            args.sub,
            [g for g in args.groups.split(",") if g] or None,
        )
    except (OSError, ValueError) as exc:
        print(f"se: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def check_components(cfg: Config) -> None:
    """The checks components make of their own settings, beyond what ``se.config`` can see
    (the simulated tape library builds itself from ``[tape]``, the X.509 rules parse their
    FQAN patterns and DNs); ConfigError naming the key."""
    if cfg.tape.enabled:
        from se.tape.service import library_config

        try:
            library_config(cfg.tape)
        except ValueError as exc:
            raise ConfigError(f"tape: {exc}") from None
    for i, rule in enumerate(cfg.faults.rules):
        from se.faults import parse_rule

        try:
            parse_rule(rule, f"cfg-{i}", "config")
        except ValueError as exc:
            raise ConfigError(f"faults.rules[{i}]: {exc}") from None
    if cfg.auth is not None and cfg.auth.x509:
        from se.auth.gridmap import GridMap

        try:
            GridMap(cfg.auth.x509)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


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
    check_components(cfg)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "token":
            return _token(args)
        if args.command == "tape":
            return _tape(args)
        if args.command == "scan":
            return _scan(args)
        if args.command == "check-config":
            check_components(load_file(args.file))
            print(f"se: {args.file} is valid")
            return 0
        from se.server import run

        # SIGHUP reads the file again, with the same flags over it.
        reload = (lambda: build_config(args)) if args.config else None
        return run(build_config(args), reload=reload)
    except ConfigError as exc:
        print(f"se: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
