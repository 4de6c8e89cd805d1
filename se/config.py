"""Configuration: TOML (stdlib tomllib) into frozen dataclasses.

Pure apart from :func:`load_file`.  Every key has a default here and is documented beside
it in ``config.example.toml``; an unknown section or key is an error naming it, so a typo
never silently falls back to a default.  Precedence: defaults < file < command-line flags
(the CLI applies flags with :func:`dataclasses.replace`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AuthConfig",
    "ChecksumConfig",
    "Config",
    "ConfigError",
    "GroupRule",
    "IssuerConfig",
    "Listener",
    "LoggingConfig",
    "PublicRule",
    "SciTagsConfig",
    "ServerConfig",
    "ShareConfig",
    "SpaceConfig",
    "StorageConfig",
    "TLSConfig",
    "TPCConfig",
    "TapeConfig",
    "TapePoolConfig",
    "WebDAVConfig",
    "X509Rule",
    "is_loopback",
    "listener_configs",
    "load_file",
    "load_mapping",
    "state_dir",
]

SUPPORTED_CHECKSUMS = ("adler32", "crc32c", "md5", "sha1", "sha256", "sha512")


class ConfigError(ValueError):
    """A configuration that cannot be served; the message is one line."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # Names (host or host:port) under which clients reach this server; a MOVE/COPY
    # Destination on one of them (or on the request's Host) is local.
    local_hosts: tuple[str, ...] = ()
    insecure_anonymous: bool = False
    # Seconds an idle keep-alive connection stays open.
    keepalive_timeout: float = 75.0
    # Bounded cost before a request exists (before authentication): a request head (request
    # line and header fields) may take this many bytes in all (431 beyond) ...
    max_header_bytes: int = 65536
    # ... this many per field or request line (400 beyond; above auth.max_token_bytes, so
    # that an oversized token is judged by the token check with its 401) ...
    max_header_field: int = 32768
    # ... this many fields ...
    max_headers: int = 100
    # ... and must arrive within this many seconds of the first byte (or of the connection
    # being opened): 408 and closed after that.
    header_timeout: float = 20.0
    # Bytes that the unfinished request heads of all connections of one worker may hold;
    # the connection that would go beyond gets 503 and is closed.
    header_buffer_bytes: int = 8 * 1024 * 1024
    # Threads that drive sendfile and blocking file calls.
    io_threads: int = 32
    # Seconds a stop (SIGTERM) waits for running requests (transfers) to finish while the
    # health page answers 503; those still running then end ("aborted:" for a TPC).
    drain_timeout: float = 30.0
    # Seconds a stop keeps serving, health at 503, even with nothing running, when a load
    # balancer polled /.well-known/se/health within the last minute: long enough for its
    # checks to see the 503 (HAProxy: fall x inter) before the listeners close; never more
    # than drain_timeout.
    drain_min: float = 3.0
    # Anonymous GET/HEAD of small files answered without building aiohttp's request and
    # response (se.web.fastpath): the same answers, at a fraction of the cost.  Off only to
    # compare the two paths.
    lean_path: bool = True


@dataclass(frozen=True, slots=True)
class StorageConfig:
    root: str = "./data"
    create_parents: bool = True
    # Files up to this many bytes are read in one call instead of sendfile.
    inline_read_max: int = 65536
    # Memory (bytes) per worker for small files (up to inline_read_max) kept after a read;
    # each use is checked by one stat (device, inode, size, mtime, ctime); 0 turns it off.
    # An eighth more keeps the answers to PROPFIND Depth 0 of files, checked the same way.
    file_cache_bytes: int = 64 * 1024 * 1024
    # Seconds: a file (or listed member) changed less than this long ago is never cached,
    # since a same-size rewrite within one timestamp tick would keep its mtime and ctime.
    # Raise it on filesystems with coarse timestamps or clocks that differ between hosts.
    cache_settle_time: float = 2.0
    # Temp files of interrupted uploads are swept at start: at once those whose writer is
    # gone (each upload holds a lock on its temp file); where the filesystem has no locks,
    # those older than this many seconds.
    stale_upload_age: float = 3600.0
    # Seconds an upload (PUT, either body path) may wait for its next body byte: beyond,
    # it is dropped (408, temp file removed).
    body_stall_timeout: float = 60.0
    sweep_on_start: bool = True
    # Bytes per read/write chunk for PUT batching and checksum computation.
    chunk_size: int = 4 * 1024 * 1024
    # Plain-HTTP PUTs with a Content-Length of at least this many bytes are read from the
    # socket on a worker thread, bypassing aiohttp's body parser (the connection then
    # closes after the response); 0 turns it off.
    direct_put_min: int = 16 * 1024 * 1024
    fsync: bool = True
    # Where the server keeps its own state (token secret, databases); "" means
    # <root>/.se-state (names starting with ".se-" are never served).
    state_dir: str = ""


@dataclass(frozen=True, slots=True)
class ChecksumConfig:
    # Computed while every upload streams; adler32 is always included.
    algorithms: tuple[str, ...] = ("adler32",)
    # Also write XRootD's user.XrdCks.<alg> xattrs (they are always read when present).
    write_xrootd: bool = True


@dataclass(frozen=True, slots=True)
class WebDAVConfig:
    allow_depth_infinity: bool = False
    # Maximum entries a PROPFIND Depth: infinity may return when allowed.
    depth_infinity_limit: int = 100000
    max_ranges: int = 1024
    # Upper bound on XML request bodies (PROPFIND, PROPPATCH), bytes.
    max_xml_body: int = 1024 * 1024
    # A PROPPATCH may set/remove at most this many properties, each (serialised) at most
    # max_property_size bytes; a larger request is refused whole with 413.
    max_proppatch_ops: int = 10000
    max_property_size: int = 65536
    # Collections (of 32 members or more) whose members' rendered Depth 1 PROPFIND
    # fragments are kept in memory; each is reused only while its member stats the same
    # (device, inode, size, mtime, ctime); 0 turns it off.
    listing_cache_dirs: int = 256
    # Inotify watches per worker that let an unchanged listing of a collection on a local
    # filesystem be answered without a stat per member (se.storage.dirwatch); 0 turns that
    # off (every member is then stat-ed per listing); -1: an eighth of the system's
    # fs.inotify.max_user_watches.
    listing_watches: int = -1


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert: str = ""
    key: str = ""
    # CA directory (hashed, like /etc/grid-security/certificates, with fetch-crl's CRLs):
    # the trust for outgoing connections and for client certificates.
    ca_dir: str = ""
    # Client certificates (X.509, RFC 3820 proxies): "none" (not asked for), "optional"
    # (asked for; a client without one is served by its token or the anonymous rules) or
    # "required" (the TLS handshake fails without one).
    client_certs: str = "none"

    @property
    def enabled(self) -> bool:
        return bool(self.cert)


@dataclass(frozen=True, slots=True)
class TPCConfig:
    enabled: bool = True
    # Seconds between performance markers on a COPY answer.
    marker_period: float = 5.0
    # Timeouts (seconds), each with its own failure reason: TCP/TLS connect; the source's
    # HEAD before the 202; the first body byte (or, for a push, the PUT's answer to the
    # 100-continue); no progress at all for this long; the whole transfer (0 = no limit).
    connect_timeout: float = 60.0
    head_timeout: float = 60.0
    first_byte_timeout: float = 120.0
    stall_timeout: float = 60.0
    total_timeout: float = 0.0
    # Transfers moving data at once (per worker); more wait in a queue of max_queued,
    # still receiving markers; beyond that a COPY gets 503 with Retry-After.
    max_active: int = 64
    max_queued: int = 1000
    # Streams a pull may use when asked with X-Number-Of-Streams, and their block size.
    max_streams: int = 16
    stream_block_size: int = 16 * 1024 * 1024
    # Without a RequireChecksumVerification header: must a checksum be compared?
    # (A mismatch always fails a transfer.)
    require_checksum: bool = False
    max_redirects: int = 10
    # Plain-HTTP single-stream pulls of at least this many bytes read the body from the
    # socket on a worker thread, past aiohttp's parser (that connection is then closed);
    # 0 turns it off.
    direct_pull_min: int = 16 * 1024 * 1024
    # Plain-HTTP pushes of files at least this large send the body with sendfile(2) on a
    # worker thread; 0 turns it off.
    direct_push_min: int = 16 * 1024 * 1024
    # Send Expect: 100-continue on a push's PUT (a refusal then costs no data).  Off by
    # default: XRootD's "100 Continue" carries "Connection: Close", which aiohttp rejects.
    push_expect_continue: bool = False
    # Remote addresses a transfer may connect to (CIDRs, checked after DNS resolution and
    # at every redirect): refused when in deny_networks, else allowed when allow_networks
    # is empty or contains them.
    allow_networks: tuple[str, ...] = ()
    deny_networks: tuple[str, ...] = (
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::254/128",
        "100.100.100.200/32",
    )
    # Remotes on this host (loopback, 0.0.0.0/::, every address of this host's interfaces
    # and names): "refuse" (unless allow_networks names them), "allow", or "auto" = allow
    # only when server.host is a loopback address (a server nobody else can reach).
    local_remotes: str = "auto"
    # A pull never writes more than this many bytes (0 = no limit), nor more than the
    # source declared, nor more than the free space of the target's filesystem.
    max_pull_bytes: int = 1 << 40
    # Verify remote TLS certificates (against tls.ca_dir, or the system store).
    verify_tls: bool = True
    # Server-issued bearer tokens ("macaroons" for gfal2/FTS): the HMAC secret file (created
    # with mode 0600 when missing; default <state_dir>/macaroon.secret) and lifetimes.
    macaroon_secret_file: str = ""
    macaroon_default_validity: float = 86400.0
    macaroon_max_validity: float = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class SciTagsConfig:
    enabled: bool = True
    # UDP fireflies at the start and end of every tagged transfer.
    fireflies: bool = True
    send_to_peer: bool = True  # to the flow's peer, on firefly_port
    firefly_port: int = 10514
    ongoing_interval: float = 0.0  # seconds between "ongoing" fireflies of a flow; 0 = none
    # A transfer on a keep-alive connection continues the flow of the connection's previous
    # transfer when it has the same tag and direction and starts within this many seconds
    # of its end (one start and one end firefly for the run, as the network sees one TCP
    # flow); 0 = every transfer is a flow of its own.
    flow_linger: float = 1.0
    collectors: tuple[str, ...] = ()  # "host:port" (or "[v6]:port"), resolved at start
    exclude: tuple[str, ...] = ()  # CIDRs whose flows are not reported
    report_local: bool = False  # also report loopback and link-local flows (tests)
    # IPv6 flow labels on the connections se opens (TPC).
    flow_labels: bool = True
    # The registry of experiments and activities (api.json format); "" = the shipped copy.
    registry_file: str = ""
    # Without a tag: "path-prefix=experiment", "issuer=experiment", "METHOD=activity"
    # (names from the registry, or numbers).  A flow gets a tag only if an experiment is found.
    experiment_by_path: tuple[str, ...] = ()
    experiment_by_issuer: tuple[str, ...] = ()
    activity_by_method: tuple[str, ...] = ()
    # flowd's named pipe (e.g. /var/run/flowd): "start|end tcp src sport dst dport exp act"
    # lines for flows se accepts, so flowd's eBPF can mark them; "" = off.
    flowd_pipe: str = ""
    application: str = "se"


OPERATION_NAMES = ("read", "create", "modify", "stage", "poll")


@dataclass(frozen=True, slots=True)
class GroupRule:
    """Members of ``group`` (a ``wlcg.groups`` entry) may do ``allow`` below ``path`` and
    may not do ``deny`` there (the most specific path decides; see se.auth.policy)."""

    group: str
    path: str = "/"  # relative to the issuer's base_path
    allow: tuple[str, ...] = ("read",)  # () when only deny is given
    deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class X509Rule:
    """Holders of a certificate or proxy whose VOMS attributes carry an FQAN matching
    ``fqan``, and/or whose end-entity DN is ``dn``, may do ``allow`` below ``path`` and may
    not do ``deny`` there.  FQAN patterns: ``/atlas`` (the group, no role),
    ``/atlas/Role=production``, ``*`` as a wildcard (``/atlas/*``, ``/atlas/Role=*``).
    DNs in slash (``/DC=org/CN=Alice``) or RFC 4514 form."""

    fqan: str = ""
    dn: str = ""
    path: str = "/"
    allow: tuple[str, ...] = ("read",)  # () when only deny is given
    deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str  # compared exactly with the token's iss (a trailing "/" matters)
    base_path: str = "/"  # the namespace path that the token's scope "/" stands for
    audiences: tuple[str, ...] = ()  # accepted in addition to [auth] audiences
    jwks_file: str = ""  # a local JWKS; "" = OIDC discovery over HTTPS
    ca_file: str = ""  # extra CA (PEM) trusted when fetching discovery and JWKS
    groups: tuple[GroupRule, ...] = ()


@dataclass(frozen=True, slots=True)
class PublicRule:
    """What requests without credentials may (``allow``) and may not (``deny``) do below
    ``path``, over the anonymous level."""

    path: str
    allow: tuple[str, ...] = ("read",)  # () when only deny is given
    deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AuthConfig:
    # What a request without credentials may do: "none", "read" or "read-write".
    anonymous: str = "none"
    issuers: tuple[IssuerConfig, ...] = ()
    public: tuple[PublicRule, ...] = ()
    # Audiences accepted besides the URL the client used and, if allowed, the "any" one.
    audiences: tuple[str, ...] = ()
    accept_any_audience: bool = True
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 60.0
    stage_implies_read: bool = False  # profile < 1.3 semantics
    max_token_bytes: int = 16384
    token_cache_entries: int = 10000
    jwks_refresh: float = 3600.0  # seconds before a JWKS is fetched again
    jwks_retry: float = 60.0  # at most one fetch per issuer this often (unknown kid, failures)
    fetch_timeout: float = 10.0
    # X.509 client certificates and VOMS proxies (tls.client_certs): rules, the VOMS
    # servers' .lsc files (<vomsdir>/<vo>/<host>.lsc), how many proxy certificates may
    # stand above the end-entity certificate, and whether a CA without a current CRL in
    # tls.ca_dir revokes nothing ("if_present") or refuses everything it issued ("require").
    x509: tuple[X509Rule, ...] = ()
    vomsdir: str = "/etc/grid-security/vomsdir"
    max_proxy_depth: int = 10
    crl_mode: str = "if_present"


@dataclass(frozen=True, slots=True)
class TapePoolConfig:
    """Files below ``path`` are tape-backed and written to tape pool ``pool``."""

    path: str
    pool: str = ""  # "" = the path itself names the pool
    max_drives: int = 0  # most drives reading this pool's cartridges at once; 0 = no cap

    @property
    def prefix(self) -> str:
        """``path`` normalised: one leading '/', no empty segments, no trailing '/'."""
        return "/" + "/".join(seg for seg in self.path.split("/") if seg)

    @property
    def name(self) -> str:
        """The tape pool's name: ``pool``, else the normalised path."""
        return self.pool or self.prefix


@dataclass(frozen=True, slots=True)
class TapeConfig:
    """The WLCG Tape REST API and the simulated tape tier behind it (off by default)."""

    enabled: bool = False
    sitename: str = "se"  # the key clients use in targetedMetadata; unique per tape endpoint
    description: str = "se simulated tape tier"
    # Base path of the API on every listener; the discovery document points there.
    api_path: str = "/api/v1"
    # Base URL published in discovery; "" = this listener's scheme, Host and api_path.
    endpoint: str = ""
    # SQLite file, or a postgresql:// URL shared by several se frontends; "" =
    # <state_dir>/tape.sqlite.
    database: str = ""
    # Whether this se runs the simulated library (exactly one per shared database); the
    # others only record requests.  With several workers, the first one runs it.
    library: bool = True
    pools: tuple[TapePoolConfig, ...] = ()
    # Limits: files per STAGE request (413 beyond), active requests per principal (429),
    # paths answered per ARCHIVEINFO (the rest is left out), request body bytes.
    max_files_per_request: int = 10000
    max_active_requests: int = 1000
    max_archiveinfo_paths: int = 10000
    max_body_bytes: int = 16 * 1024 * 1024
    # Finished requests are forgotten (GET answers 404) this many seconds after completion.
    request_retention: float = 7 * 86400.0
    # Pin lifetime (s) when a request gives no diskLifetime; longer diskLifetimes are cut.
    pin_lifetime: int = 86400
    max_pin_lifetime: int = 30 * 86400
    # A GET of a file only on tape is answered 503 with this Retry-After (seconds).
    retry_after: int = 600
    # Disk buffer: bytes it holds (DISK + DISK_AND_TAPE files; 0 = unlimited), watermarks
    # as fractions, simulated seconds a recall waits for room before it fails.
    buffer_capacity: int = 10**12
    high_watermark: float = 0.9
    low_watermark: float = 0.8
    buffer_wait: float = 86400.0
    # Archive: a pool's new files are flushed to tape when it has archive_min_files files
    # or archive_min_bytes bytes waiting, or the oldest waited archive_min_age simulated s.
    archive_min_files: int = 200
    archive_min_bytes: int = 32 * 10**9
    archive_min_age: float = 600.0
    # Library (spec 7.1-7.3, CTA defaults): drives, cartridges, mount and batch criteria.
    drives: int = 4
    cartridges: int = 20
    cartridge_capacity: int = 18 * 10**12
    mount_min_files: int = 10000
    mount_min_bytes: int = 500 * 10**9
    min_request_age: float = 60.0
    batch_max_files: int = 4000
    batch_max_bytes: int = 80 * 10**9
    # Drive timings, simulated seconds (LTO-9), and the factor that speeds them all up.
    robot_exchange: float = 12.0
    load: float = 16.0
    locate_base: float = 5.0
    locate_full: float = 130.0
    read_rate: float = 400e6
    file_overhead: float = 2.0
    rewind: float = 62.0
    unload: float = 56.0
    idle_dismount: float = 60.0
    time_scale: float = 1.0
    # Failure injection (also switchable at run time: se tape set, or the admin endpoint).
    seed: int = 0
    bad_file_probability: float = 0.0
    read_retries: int = 2
    drive_failure_probability: float = 0.0
    # Real seconds between two looks at the database (other frontends' requests, switches).
    sync_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class FaultsConfig:
    """Fault injection for test targets (se.faults); off by default."""

    enabled: bool = False
    # Faults on a listener that is not loopback-only are refused at start unless this is set
    # (a test grid on a private network), so a production site cannot be hurt by accident.
    allow_non_loopback: bool = False
    # Who may use /.well-known/se/faults besides a caller with modify on "/": token
    # subjects ("sub" or "sub@iss") and certificate DNs.
    admins: tuple[str, ...] = ()
    # Rules in force from the start, ids cfg-0, cfg-1, ... (keys: README "Fault injection").
    rules: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """Recent events as JSON at /.well-known/se/events (se.events); off by default."""

    enabled: bool = False
    # Who may read them besides a caller with modify on "/" (as faults.admins).
    admins: tuple[str, ...] = ()
    # Bytes of events kept per worker process (two generations of half this each).
    max_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ShareConfig:
    """One ``[[shares]]`` table: a named part of the namespace (the space token / SRR share
    name that Rucio and DIRAC key on) with its accounting, optional size limit and SRR
    attributes.  A file counts in the share with the longest ``paths`` prefix holding it."""

    name: str
    paths: tuple[str, ...] = ("/",)
    vos: tuple[str, ...] = ()
    size: int = 0  # bytes; 0 = no limit (SRR totalsize is then what the filesystem offers)
    # "" = nearline/custodial when the share's first path is inside a tape pool, else
    # online/replica.
    access_latency: str = ""  # online | nearline | offline
    retention_policy: str = ""  # replica | custodial | replicated | intermediate | none
    serving_state: str = "open"  # open | closed | draining (what the admin says)

    @property
    def prefixes(self) -> tuple[str, ...]:
        """``paths`` normalised: one leading '/', no empty segments, no trailing '/'."""
        return tuple("/" + "/".join(seg for seg in p.split("/") if seg) for p in self.paths)


# The share that stands for the whole namespace when no [[shares]] are configured.
IMPLICIT_SHARE = "default"


@dataclass(frozen=True, slots=True)
class SpaceConfig:
    """Space accounting, quotas and Storage Resource Reporting (se.space)."""

    enabled: bool = True
    # SQLite file, or a postgresql:// URL shared by several se frontends; "" =
    # <state_dir>/space.sqlite.
    database: str = ""
    # Seconds between reconciliations (a walk of every share's tree by the first worker);
    # 0 = only on demand (POST /.well-known/se/srr?reconcile, `se scan`).
    reconcile_interval: float = 86400.0
    # A share is reported "draining" in SRR when its filesystem has less than this fraction
    # of its size free (0 = never from free space alone).
    draining_free_fraction: float = 0.02
    # An extra path serving the SRR document besides /.well-known/se/srr ("" = none).
    srr_path: str = ""
    # Who may read SRR: "anyone" (no credentials, what accounting scrapers do; the document
    # holds only totals), "authenticated" (any valid token or certificate), or "stat" (stat
    # permission on "/").
    srr_access: str = "anyone"
    # What SRR publishes about the service.
    service_name: str = ""  # "" = the host name the request used
    service_id: str = ""
    quality_level: str = "production"  # development | testing | pre-production | production
    # The WebDAV endpoint URL published ("" = this request's scheme and Host).
    endpoint: str = ""


@dataclass(frozen=True, slots=True)
class DashboardConfig:
    """The live page at /.well-known/se/dashboard and its JSON (se.dashboard); on by default."""

    enabled: bool = True
    # Who may see it besides a caller with read access to "/": token subjects ("sub" or
    # "sub@iss") and certificate DNs (as faults.admins).
    admins: tuple[str, ...] = ()
    # Recent errors kept (per worker, and shown: the newest of all workers).
    errors: int = 50


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"
    access_log: bool = True
    # One JSON line per transfer (PUT, GET with a body, TPC pull and push) appended to this
    # file, reopened at SIGHUP; "" = off.
    transfer_log: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    checksums: ChecksumConfig = field(default_factory=ChecksumConfig)
    webdav: WebDAVConfig = field(default_factory=WebDAVConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    tpc: TPCConfig = field(default_factory=TPCConfig)
    scitags: SciTagsConfig = field(default_factory=SciTagsConfig)
    # None when the file has no [auth] section: then anonymous read-write on loopback only.
    auth: AuthConfig | None = None
    tape: TapeConfig = field(default_factory=TapeConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # [[shares]] and [space]: accounting, quotas, SRR (se.space).
    shares: tuple[ShareConfig, ...] = ()
    space: SpaceConfig = field(default_factory=SpaceConfig)
    # [[listeners]]: further endpoints of the same process (see listener_configs).
    listeners: tuple[Listener, ...] = ()

    def anonymous_access(self) -> str:
        """The anonymous policy in force: explicit [auth], else read-write (guarded at start)."""
        return self.auth.anonymous if self.auth is not None else "read-write"


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of tables")
        item_type = typing.get_args(tp)[0]
        return tuple(_section(item_type, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple and typing.get_origin(typing.get_args(tp)[0]) is dict:
        # Tables kept as they are, checked by their component (fault rules).
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{where}: expected a list of tables")
        return tuple(value)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
        return value
    raise ConfigError(f"{where}: unsupported type")  # pragma: no cover


def _section(cls: type[Any], data: Any, name: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if "deny" in known and "deny" in data and "allow" not in data:
        values["allow"] = ()  # a deny-only rule allows nothing by itself
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown config key: {name}.{key}")
        values[key] = _coerce(value, hints[key], f"{name}.{key}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{name}: missing key {missing[0]}")
    return cls(**values)


def load_mapping(data: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from parsed TOML."""
    hints = typing.get_type_hints(Config)
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name not in hints:
            raise ConfigError(f"unknown config section: [{name}]")
        if name == "listeners":
            continue  # below, once [tls] is known
        tp = hints[name]
        if isinstance(tp, types.UnionType):  # AuthConfig | None
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if typing.get_origin(tp) is tuple:  # [[shares]]
            sections[name] = _coerce(value, tp, name)
            continue
        sections[name] = _section(tp, value, name)
    if "listeners" in data:
        sections["listeners"] = _parse_listeners(
            data["listeners"], sections.get("tls", TLSConfig())
        )
    cfg = Config(**sections)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks; raises ConfigError with one line."""
    s = cfg.server
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"server.port: {s.port} is not a TCP port")
    if not 1 <= s.workers <= 64:
        raise ConfigError("server.workers: must be between 1 and 64")
    if s.io_threads < 1:
        raise ConfigError("server.io_threads: must be at least 1")
    if not 1024 <= s.max_header_field <= s.max_header_bytes:
        raise ConfigError("server.max_header_field: must be between 1024 and max_header_bytes")
    if not 1 <= s.max_headers <= 1000:
        raise ConfigError("server.max_headers: must be between 1 and 1000")
    if s.header_timeout <= 0:
        raise ConfigError("server.header_timeout: must be positive")
    if s.header_buffer_bytes < s.max_header_bytes:
        raise ConfigError("server.header_buffer_bytes: must be at least max_header_bytes")
    if not 0 <= s.drain_timeout <= 86400:
        raise ConfigError("server.drain_timeout: must be between 0 and 86400 seconds")
    if not 0 <= s.drain_min <= 86400:
        raise ConfigError("server.drain_min: must be between 0 and 86400 seconds")
    for alg in cfg.checksums.algorithms:
        if alg not in SUPPORTED_CHECKSUMS:
            raise ConfigError(
                f"checksums.algorithms: unknown algorithm {alg!r} "
                f"(supported: {', '.join(SUPPORTED_CHECKSUMS)})"
            )
    if cfg.storage.chunk_size < 4096:
        raise ConfigError("storage.chunk_size: must be at least 4096")
    if not 0 < cfg.storage.body_stall_timeout <= 86400:
        raise ConfigError("storage.body_stall_timeout: must be between 0 and 86400 seconds")
    if not 0.05 <= cfg.storage.cache_settle_time <= 86400:
        raise ConfigError("storage.cache_settle_time: must be between 0.05 and 86400 seconds")
    if bool(cfg.tls.cert) != bool(cfg.tls.key):
        raise ConfigError("tls: cert and key must be set together")
    if cfg.tls.client_certs not in ("none", "optional", "required"):
        raise ConfigError("tls.client_certs: must be one of none, optional, required")
    if cfg.tls.client_certs != "none" and not (cfg.tls.enabled and cfg.tls.ca_dir):
        raise ConfigError("tls.client_certs: needs tls.cert, tls.key and tls.ca_dir")
    if cfg.auth is not None:
        _validate_auth(cfg.auth)
        if cfg.auth.x509 and cfg.tls.client_certs == "none":
            raise ConfigError("auth.x509: rules need tls.client_certs = optional or required")
    if cfg.tape.enabled:
        _validate_tape(cfg.tape)
    if cfg.faults.enabled and not cfg.faults.allow_non_loopback and not is_loopback(s.host):
        raise ConfigError(
            f"faults.enabled: refusing fault injection on non-loopback address {s.host} "
            "(set faults.allow_non_loopback = true for a test grid)"
        )
    if cfg.events.max_bytes < 4096:
        raise ConfigError("events.max_bytes: must be at least 4096")
    if not 1 <= cfg.dashboard.errors <= 10000:
        raise ConfigError("dashboard.errors: must be between 1 and 10000")
    if cfg.webdav.max_proppatch_ops < 1 or cfg.webdav.max_property_size < 1:
        raise ConfigError("webdav: max_proppatch_ops and max_property_size must be positive")
    if cfg.webdav.listing_watches < -1:
        raise ConfigError("webdav.listing_watches: must be -1 (automatic), 0 (off) or positive")
    t = cfg.tpc
    if t.marker_period <= 0:
        raise ConfigError("tpc.marker_period: must be positive")
    if min(t.connect_timeout, t.head_timeout, t.first_byte_timeout, t.stall_timeout) <= 0:
        raise ConfigError("tpc: connect, head, first-byte and stall timeouts must be positive")
    if t.total_timeout < 0:
        raise ConfigError("tpc.total_timeout: must be 0 (none) or positive")
    if t.max_active < 1 or t.max_queued < 0:
        raise ConfigError("tpc: max_active must be at least 1 and max_queued at least 0")
    if not 1 <= t.max_streams <= 100:
        raise ConfigError("tpc.max_streams: must be between 1 and 100")
    if t.stream_block_size < 65536:
        raise ConfigError("tpc.stream_block_size: must be at least 65536")
    if t.local_remotes not in ("auto", "allow", "refuse"):
        raise ConfigError('tpc.local_remotes: must be "auto", "allow" or "refuse"')
    if t.max_pull_bytes < 0:
        raise ConfigError("tpc.max_pull_bytes: must be 0 (no limit) or positive")
    for name in ("allow_networks", "deny_networks"):
        for net in getattr(t, name):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"tpc.{name}: {net!r} is not a network") from None
    if not 0 < t.macaroon_default_validity <= t.macaroon_max_validity:
        raise ConfigError("tpc: macaroon_default_validity must be in (0, macaroon_max_validity]")
    sc = cfg.scitags
    if not 1 <= sc.firefly_port <= 65535:
        raise ConfigError("scitags.firefly_port: not a UDP port")
    if not 0 <= sc.flow_linger <= 3600:
        raise ConfigError("scitags.flow_linger: must be in [0, 3600] seconds")
    for net in sc.exclude:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"scitags.exclude: {net!r} is not a network") from None
    for item in sc.collectors:
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"scitags.collectors: {item!r} is not host:port")
    for name in ("experiment_by_path", "experiment_by_issuer", "activity_by_method"):
        for item in getattr(sc, name):
            if "=" not in item:
                raise ConfigError(f"scitags.{name}: {item!r} is not key=value")
    if cfg.logging.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("logging.level: must be one of debug, info, warning, error")
    _validate_listeners(cfg)
    _validate_space(cfg)


def _validate_tape(t: TapeConfig) -> None:
    if not t.api_path.startswith("/") or t.api_path.endswith("/") or "//" in t.api_path:
        raise ConfigError("tape.api_path: an absolute path without a trailing '/'")
    if not t.sitename.strip():
        raise ConfigError("tape.sitename: must not be empty")
    if t.endpoint and not t.endpoint.startswith(("http://", "https://")):
        raise ConfigError("tape.endpoint: must be an http(s) URL or empty")
    seen: set[str] = set()
    for i, pool in enumerate(t.pools):
        if not pool.path.startswith("/") or pool.prefix in seen:
            raise ConfigError(f"tape.pools[{i}].path: absolute, each prefix once")
        if pool.max_drives < 0:
            raise ConfigError(f"tape.pools[{i}].max_drives: must not be negative")
        seen.add(pool.prefix)
    for name in ("max_files_per_request", "max_active_requests", "max_archiveinfo_paths"):
        if getattr(t, name) < 1:
            raise ConfigError(f"tape.{name}: must be at least 1")
    if t.max_body_bytes < 1024 or t.pin_lifetime < 1 or t.max_pin_lifetime < t.pin_lifetime:
        raise ConfigError("tape: max_body_bytes >= 1024, 1 <= pin_lifetime <= max_pin_lifetime")
    if t.sync_interval <= 0 or t.retry_after < 1:
        raise ConfigError("tape: sync_interval must be positive and retry_after at least 1")
    if t.archive_min_files < 1 or t.archive_min_bytes < 1 or t.archive_min_age < 0:
        raise ConfigError("tape: archive_min_files/bytes at least 1, archive_min_age >= 0")
    # The simulated library's numbers: refused here with the key named.  The library's own
    # types keep the same invariants for callers that build them directly, and start-up and
    # `se check-config` also build the library from this section (se.tape.service).
    for name in _TAPE_NOT_NEGATIVE:
        if getattr(t, name) < 0:
            raise ConfigError(f"tape.{name}: must not be negative")
    for name in _TAPE_POSITIVE:
        if getattr(t, name) <= 0:
            raise ConfigError(f"tape.{name}: must be positive")
    for name in ("bad_file_probability", "drive_failure_probability"):
        if not 0.0 <= getattr(t, name) <= 1.0:
            raise ConfigError(f"tape.{name}: a probability, between 0 and 1")
    if not 0.0 < t.low_watermark <= t.high_watermark <= 1.0:
        raise ConfigError("tape: watermarks: 0 < low_watermark <= high_watermark <= 1")


_TAPE_NOT_NEGATIVE = (
    "robot_exchange",
    "load",
    "locate_base",
    "locate_full",
    "file_overhead",
    "rewind",
    "unload",
    "idle_dismount",
    "buffer_capacity",
    "read_retries",
    "min_request_age",
)
_TAPE_POSITIVE = (
    "read_rate",
    "time_scale",
    "drives",
    "cartridges",
    "cartridge_capacity",
    "batch_max_files",
    "batch_max_bytes",
)


_LATENCIES = ("online", "nearline", "offline")
_RETENTIONS = ("none", "intermediate", "replicated", "custodial", "replica")
_SERVING = ("open", "closed", "draining")
_QUALITY = ("development", "testing", "pre-production", "production")


def _validate_space(cfg: Config) -> None:
    sp = cfg.space
    if sp.reconcile_interval < 0:
        raise ConfigError("space.reconcile_interval: must be 0 (on demand only) or positive")
    if not 0 <= sp.draining_free_fraction < 1:
        raise ConfigError("space.draining_free_fraction: a fraction, 0 <= f < 1")
    if sp.srr_path and (
        not sp.srr_path.startswith("/") or sp.srr_path.endswith("/") or "//" in sp.srr_path
    ):
        raise ConfigError("space.srr_path: an absolute path without a trailing '/', or empty")
    if sp.srr_access not in ("anyone", "authenticated", "stat"):
        raise ConfigError("space.srr_access: must be one of anyone, authenticated, stat")
    if sp.quality_level not in _QUALITY:
        raise ConfigError(f"space.quality_level: must be one of {', '.join(_QUALITY)}")
    if sp.endpoint and not sp.endpoint.startswith(("http://", "https://", "davs://")):
        raise ConfigError("space.endpoint: must be an http(s) or davs URL, or empty")
    names: set[str] = set()
    owners: dict[str, str] = {}
    for i, sh in enumerate(cfg.shares):
        where = f"shares[{i}]"
        if not sh.name.strip() or not sh.name.isprintable():
            raise ConfigError(f"{where}.name: must be a non-empty printable name")
        if sh.name in names:
            raise ConfigError(f"{where}.name: {sh.name!r} is used twice")
        names.add(sh.name)
        if not sh.paths:
            raise ConfigError(f"{where}.paths: at least one path")
        for path, prefix in zip(sh.paths, sh.prefixes, strict=True):
            if not path.startswith("/") or any(s in (".", "..") for s in prefix.split("/")):
                raise ConfigError(f"{where}.paths: {path!r} is not an absolute path")
            if prefix in owners:
                raise ConfigError(f"{where}.paths: {prefix} is also a path of {owners[prefix]}")
            owners[prefix] = sh.name
        if sh.size < 0:
            raise ConfigError(f"{where}.size: bytes, 0 = no limit")
        if sh.access_latency and sh.access_latency not in _LATENCIES:
            raise ConfigError(f"{where}.access_latency: must be one of {', '.join(_LATENCIES)}")
        if sh.retention_policy and sh.retention_policy not in _RETENTIONS:
            raise ConfigError(f"{where}.retention_policy: must be one of {', '.join(_RETENTIONS)}")
        if sh.serving_state not in _SERVING:
            raise ConfigError(f"{where}.serving_state: must be one of {', '.join(_SERVING)}")


def _validate_auth(a: AuthConfig) -> None:
    if a.anonymous not in ("none", "read", "read-write"):
        raise ConfigError("auth.anonymous: must be one of none, read, read-write")
    for alg in a.algorithms:
        if alg not in ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256"):
            raise ConfigError(f"auth.algorithms: {alg!r} is not allowed (no none or HS*)")
    if not 0 <= a.leeway <= 300:
        raise ConfigError("auth.leeway: must be between 0 and 300 seconds")
    seen: set[str] = set()
    for i, iss in enumerate(a.issuers):
        where = f"auth.issuers[{i}]"
        if not iss.issuer.startswith("https://") and not iss.jwks_file:
            raise ConfigError(f"{where}.issuer: discovery needs an https issuer (or a jwks_file)")
        if iss.issuer in seen:
            raise ConfigError(f"{where}.issuer: {iss.issuer} is configured twice")
        seen.add(iss.issuer)
        if not iss.base_path.startswith("/"):
            raise ConfigError(f"{where}.base_path: must be an absolute path")
        for j, rule in enumerate(iss.groups):
            _check_allow(rule.allow, f"{where}.groups[{j}].allow")
            _check_allow(rule.deny, f"{where}.groups[{j}].deny")
            if not rule.group.startswith("/") or not rule.path.startswith("/"):
                raise ConfigError(f"{where}.groups[{j}]: group and path must start with /")
    for i, pub in enumerate(a.public):
        _check_allow(pub.allow, f"auth.public[{i}].allow")
        _check_allow(pub.deny, f"auth.public[{i}].deny")
        if not pub.path.startswith("/"):
            raise ConfigError(f"auth.public[{i}].path: must be an absolute path")
    for i, x in enumerate(a.x509):
        where = f"auth.x509[{i}]"
        _check_allow(x.allow, f"{where}.allow")
        _check_allow(x.deny, f"{where}.deny")
        if not x.fqan and not x.dn:
            raise ConfigError(f"{where}: needs an fqan or a dn")
        if x.fqan and not x.fqan.startswith("/"):
            raise ConfigError(f"{where}.fqan: must start with / (like /atlas/Role=production)")
        if not x.path.startswith("/"):
            raise ConfigError(f"{where}.path: must be an absolute path")
    if not 0 <= a.max_proxy_depth <= 100:
        raise ConfigError("auth.max_proxy_depth: must be between 0 and 100")
    if a.crl_mode not in ("if_present", "require"):
        raise ConfigError("auth.crl_mode: must be if_present or require")


def _check_allow(allow: tuple[str, ...], where: str) -> None:
    for op in allow:
        if op not in OPERATION_NAMES:
            raise ConfigError(f"{where}: unknown operation {op!r} ({', '.join(OPERATION_NAMES)})")


def load_file(path: str | Path) -> Config:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return load_mapping(data)


def state_dir(cfg: Config) -> Path:
    """The server's own state directory (not created here)."""
    if cfg.storage.state_dir:
        return Path(cfg.storage.state_dir)
    return Path(cfg.storage.root) / ".se-state"


def checksum_algorithms(cfg: Config) -> tuple[str, ...]:
    """Algorithms computed on every write: adler32 first, then the configured ones."""
    algs = ["adler32"]
    algs += [a for a in cfg.checksums.algorithms if a != "adler32"]
    return tuple(algs)


# --------------------------------------------------------------------------- [[listeners]]
# More endpoints served by the same process.  Each one is a derived Config (listener_configs):
# the top-level one with the listener's overrides, its storage root <root>/<base>.


@dataclass(frozen=True, slots=True)
class Listener:
    """One ``[[listeners]]`` table: a further host:port of ``se serve``.  None (or a key left
    out) inherits the top-level value; ``tls`` is resolved against the file's ``[tls]`` when
    read (None: ``[tls]`` as it is)."""

    port: int  # 0 = an ephemeral port, printed at start
    host: str | None = None
    name: str = ""  # in messages and in the name of its macaroon secret file
    base: str = "/"  # this listener's "/" is <storage.root><base>
    tls: TLSConfig | None = None
    anonymous: str | None = None  # "none" | "read" | "read-write"
    issuers: tuple[str, ...] | None = None  # [[auth.issuers]] whose tokens count here; [] = none
    audiences: tuple[str, ...] | None = None  # replaces auth.audiences here
    accept_any_audience: bool | None = None
    local_hosts: tuple[str, ...] | None = None  # replaces server.local_hosts here


_LISTENER_TYPES: dict[str, Any] = {
    "port": int,
    "host": str,
    "name": str,
    "base": str,
    "anonymous": str,
    "issuers": tuple[str, ...],
    "audiences": tuple[str, ...],
    "accept_any_audience": bool,
    "local_hosts": tuple[str, ...],
}
_LISTENER_TLS_TYPES: dict[str, Any] = {
    "cert": str,
    "key": str,
    "ca_dir": str,
    "client_certs": str,
}


def _parse_listeners(value: Any, tls: TLSConfig) -> tuple[Listener, ...]:
    """``[[listeners]]`` from TOML; ``tls`` is the file's ``[tls]``, which a listener's
    ``tls`` table overrides key by key (``tls = false``: plain HTTP)."""
    if not isinstance(value, list):
        raise ConfigError("listeners: expected a list of tables ([[listeners]])")
    out: list[Listener] = []
    for i, item in enumerate(value):
        where = f"listeners[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"[{where}] must be a table")
        values: dict[str, Any] = {}
        for key, raw in item.items():
            if key == "tls":
                values["tls"] = _listener_tls(raw, tls, f"{where}.tls")
            elif key in _LISTENER_TYPES:
                values[key] = _coerce(raw, _LISTENER_TYPES[key], f"{where}.{key}")
            else:
                raise ConfigError(f"unknown config key: {where}.{key}")
        if "port" not in values:
            raise ConfigError(f"{where}: missing key port (0 picks a free one)")
        out.append(Listener(**values))
    return tuple(out)


def _listener_tls(raw: Any, tls: TLSConfig, where: str) -> TLSConfig:
    if raw is False:
        return TLSConfig(ca_dir=tls.ca_dir)  # plain HTTP; the CA directory still verifies TPC
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected false (plain HTTP) or a table")
    values: dict[str, Any] = {}
    for key, item in raw.items():
        if key not in _LISTENER_TLS_TYPES:
            raise ConfigError(f"unknown config key: {where}.{key}")
        values[key] = _coerce(item, _LISTENER_TLS_TYPES[key], f"{where}.{key}")
    return dataclasses.replace(tls, **values)


def listener_configs(cfg: Config) -> tuple[Config, ...]:
    """The configuration of every endpoint: ``cfg`` itself (its ``[server]`` host and port),
    then one derived configuration per ``[[listeners]]`` table."""
    return (cfg, *(_derive(cfg, lst, i) for i, lst in enumerate(cfg.listeners, 1)))


def _derive(cfg: Config, lst: Listener, index: int) -> Config:
    s = cfg.server
    server = dataclasses.replace(
        s,
        host=s.host if lst.host is None else lst.host,
        port=lst.port,
        local_hosts=s.local_hosts if lst.local_hosts is None else lst.local_hosts,
    )
    segments = _base_segments(lst.base)
    root = str(Path(cfg.storage.root).joinpath(*segments)) if segments else cfg.storage.root
    auth = cfg.auth
    if auth is None:
        # No [auth]: anonymous read-write (guarded to loopback at start) unless narrowed here.
        if lst.anonymous not in (None, "read-write"):
            auth = AuthConfig(anonymous=lst.anonymous)
    else:
        wanted = lst.issuers
        auth = dataclasses.replace(
            auth,
            anonymous=auth.anonymous if lst.anonymous is None else lst.anonymous,
            issuers=auth.issuers
            if wanted is None
            else tuple(i for i in auth.issuers if i.issuer in wanted),
            audiences=auth.audiences if lst.audiences is None else lst.audiences,
            accept_any_audience=auth.accept_any_audience
            if lst.accept_any_audience is None
            else lst.accept_any_audience,
        )
    derived = dataclasses.replace(
        cfg,
        server=server,
        storage=dataclasses.replace(cfg.storage, root=root),
        tls=cfg.tls if lst.tls is None else lst.tls,
        auth=auth,
        listeners=(),
    )
    # Its own macaroon secret beside the shared one (<stem>-<name or listener-N><suffix>): a
    # macaroon that one listener issued (say to an anonymous caller) must not open another
    # listener of the same state directory.
    shared = Path(cfg.tpc.macaroon_secret_file or state_dir(derived) / "macaroon.secret")
    secret = shared.with_name(f"{shared.stem}-{lst.name or f'listener-{index}'}{shared.suffix}")
    return dataclasses.replace(
        derived, tpc=dataclasses.replace(cfg.tpc, macaroon_secret_file=str(secret))
    )


def _base_segments(base: str) -> tuple[str, ...]:
    return tuple(seg for seg in base.split("/") if seg)


def _validate_listeners(cfg: Config) -> None:
    """Each listener on its own (one line naming it), then what they must not share."""
    seen: dict[tuple[str, int], str] = {}
    names: set[str] = set()
    databases: dict[str, tuple[str, str]] = {}  # tape database -> (storage root, who)
    for i, lst in enumerate(cfg.listeners):  # names first: they name files when derived
        name = lst.name
        if name and not (
            name.isascii() and name[0].isalnum() and all(c.isalnum() or c in "._-" for c in name)
        ):
            raise ConfigError(f"listeners[{i}] ({name}).name: ASCII letters, digits, '.', '_', '-'")
    for index, derived in enumerate(listener_configs(cfg)):
        if index == 0:
            who = "server"
        else:
            lst = cfg.listeners[index - 1]
            who = f"listeners[{index - 1}]" + (f" ({lst.name})" if lst.name else "")
            _validate_listener(cfg, lst, derived, who)
            if lst.name:
                if lst.name in names:
                    raise ConfigError(f"{who}.name: {lst.name!r} is used twice")
                names.add(lst.name)
        host, port = derived.server.host, derived.server.port
        if port != 0:
            for (other_host, other_port), other in seen.items():
                if port == other_port and (host == other_host or _WILDCARD & {host, other_host}):
                    raise ConfigError(f"{who}: {host}:{port} is also {other}'s address")
            seen[(host, port)] = who
        if cfg.tape.enabled:
            db = cfg.tape.database or str(state_dir(derived) / "tape.sqlite")
            root = str(Path(derived.storage.root))
            if db in databases and databases[db][0] != root:
                raise ConfigError(
                    f"{who}: shares the tape database {db} with {databases[db][1]}, whose "
                    "base differs (set a base of its own, or leave storage.state_dir and "
                    "tape.database unset)"
                )
            databases.setdefault(db, (root, who))


_WILDCARD = frozenset(("", "0.0.0.0", "::", "[::]"))


def _validate_listener(cfg: Config, lst: Listener, derived: Config, who: str) -> None:
    if not 0 <= lst.port <= 65535:
        raise ConfigError(f"{who}.port: {lst.port} is not a TCP port")
    if lst.host is not None and not lst.host.strip():
        raise ConfigError(f"{who}.host: must not be empty (leave it out to use server.host)")
    base = lst.base
    if not base.startswith("/") or "//" in base or "\\" in base:
        raise ConfigError(f"{who}.base: an absolute path like /xrd1 (got {base!r})")
    for seg in _base_segments(base):
        if seg in (".", "..") or seg.startswith(".se-") or not seg.isprintable():
            raise ConfigError(f"{who}.base: {seg!r} cannot be a directory of the base")
    if lst.anonymous is not None and lst.anonymous not in ("none", "read", "read-write"):
        raise ConfigError(f"{who}.anonymous: must be one of none, read, read-write")
    known = {i.issuer for i in cfg.auth.issuers} if cfg.auth is not None else set()
    for iss in lst.issuers or ():
        if iss not in known:
            raise ConfigError(f"{who}.issuers: {iss} is not one of the [[auth.issuers]]")
    host = derived.server.host
    if cfg.faults.enabled and not cfg.faults.allow_non_loopback and not is_loopback(host):
        raise ConfigError(
            f"{who}.host: refusing fault injection on non-loopback address {host} "
            "(set faults.allow_non_loopback = true for a test grid)"
        )
    tls = derived.tls
    if bool(tls.cert) != bool(tls.key):
        raise ConfigError(f"{who}.tls: cert and key must be set together")
    if tls.client_certs not in ("none", "optional", "required"):
        raise ConfigError(f"{who}.tls.client_certs: must be one of none, optional, required")
    if tls.client_certs != "none" and not (tls.enabled and tls.ca_dir):
        raise ConfigError(f"{who}.tls.client_certs: needs tls.cert, tls.key and tls.ca_dir")
