"""The configuration as frozen values (SPEC 2); built and validated only by `load.py`.

Field metadata tells generic code what a field is without looking at its name:
`secret` (never printed, only "changed" / "***") and `keyed_by` (a tuple of values
compared item by item under that attribute, e.g. features by name).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from yarl import URL

DEFAULT_FEATURE = "default"

SECRET = {"secret": True}


@dataclass(frozen=True, slots=True)
class ListenTLS:
    """HTTPS on the public port (SPEC 2 `listen.tls`); the files are watched for rotation."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None  # PEM bundle: clients must present a certificate


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    tls: ListenTLS | None = None  # None: plain HTTP
    # Built from `tls` by `load_config`; what the listener starts with (rotation swaps
    # in newer contexts at run time, `proxy.gateway.certificates`).
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9180
    token: str | None = field(default=None, repr=False, metadata=SECRET)


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """How an https upstream is reached (SPEC 2 `upstreams.<side>.tls`)."""

    verify: bool = True
    ca_file: str | None = None  # PEM bundle; None: the system trust store
    server_name: str | None = None  # SNI and the name checked; None: the URL's host
    cert_file: str | None = None  # client certificate (mutual TLS), with key_file
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: str
    tls: UpstreamTLS | None = None  # None for an http URL
    # Built from `tls` by `load_config`, once per load; the pool of an unchanged upstream
    # keeps the context it was made with (`Runtime.pool`).
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)
    # Derived once here, not per request: what the connection pool and `Host` need.
    host: str = field(init=False, compare=False)
    port: int = field(init=False, compare=False)
    https: bool = field(init=False, compare=False)
    authority: str = field(init=False, compare=False)
    server_name: str = field(init=False, compare=False)
    # The upstream head's `Host` field, as bytes once per load rather than formatted per
    # request (bench/RESULTS.md, issue 19).
    host_field: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        url = URL(self.url) if self.url else URL("http://invalid")
        object.__setattr__(self, "host", url.raw_host or "")
        object.__setattr__(self, "port", url.port or 80)
        object.__setattr__(self, "https", url.scheme == "https")
        object.__setattr__(self, "authority", url.raw_authority)
        host_field = f"Host: {url.raw_authority}".encode("utf-8", "surrogateescape")
        object.__setattr__(self, "host_field", host_field)
        name = self.tls.server_name if self.tls is not None else None
        object.__setattr__(self, "server_name", name or url.host or "")


@dataclass(frozen=True, slots=True)
class Upstreams:
    signal: Upstream
    legacy: Upstream

    def of(self, side: str) -> Upstream:
        """The upstream of a side by its name (`signal` or `legacy`)."""
        return self.signal if side == "signal" else self.legacy


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 1.0
    signal: float = 5.0
    total: float = 30.0  # request start -> response headers sent, fallback included
    idle: float = 60.0  # once a body streams: the longest silence between two bytes


@dataclass(frozen=True, slots=True)
class SessionConfig:
    header: str = "X-Session-Id"
    cookie: str = "session_id"
    set_cookie: bool = True


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    paths: tuple[str, ...]
    percentage: float | None = None


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    percentage: float = 10.0
    seed: str = "rollout"
    emergency: bool = False
    test_sessions: frozenset[str] = frozenset()
    stages: tuple[float, ...] = (0.0, 10.0, 30.0, 50.0, 80.0, 100.0)
    features: tuple[Feature, ...] = field(default=(), metadata={"keyed_by": "name"})


@dataclass(frozen=True, slots=True)
class FallbackConfig:
    enabled: bool = True
    statuses: frozenset[int] = frozenset({500, 502, 503, 504})
    max_body_bytes: int = 1048576


@dataclass(frozen=True, slots=True)
class GuardConfig:
    enabled: bool = True
    window_seconds: int = 60
    min_requests: int = 50
    max_error_rate: float = 0.05
    max_p95_ms: float = 500.0


@dataclass(frozen=True, slots=True)
class PromotionConfig:
    min_requests: int = 100
    max_error_rate: float = 0.01
    max_p95_ms: float = 200.0


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    enabled: bool = False
    percentage: float = 5.0
    methods: frozenset[str] = frozenset({"GET", "HEAD"})
    ignore: tuple[str, ...] = ()
    learn_noise: bool = False
    max_in_flight: int = 50
    keep_diffs: int = 100


@dataclass(frozen=True, slots=True)
class UpgradeConfig:
    enabled: bool = True  # false: upgrade handshakes are answered 501
    idle_timeout: float = 300.0  # no byte either way for this long: both sides closed
    max_connections: int = 10000  # open upgraded connections per process; beyond: 503
    drain_on_rollback: bool = True  # close a connection whose session routing moved away


@dataclass(frozen=True, slots=True)
class CompareLegacy:
    """How much worse than legacy signal may be and still pass (SPEC 13)."""

    max_error_rate_delta: float = 0.005  # signal's error rate minus legacy's
    max_p95_ratio: float = 1.5  # signal's p95 over legacy's


@dataclass(frozen=True, slots=True)
class Webhooks:
    # URLs often carry a token (chat webhooks): never printed, only "changed".
    confirm: tuple[str, ...] = field(default=(), metadata=SECRET)  # POSTed before a promotion
    events: tuple[str, ...] = field(default=(), metadata=SECRET)  # POSTed after a decision


ON_FAILURE = ("previous", "zero", "gradual")


@dataclass(frozen=True, slots=True)
class AutopilotConfig:
    """The autopilot controller's plan (SPEC 13); read by `rollout autopilot`, not the proxy."""

    enabled: bool = False
    interval: float = 60.0  # seconds between analyses
    bake: float = 600.0  # seconds at a stage before it may be promoted
    checks: int = 3  # consecutive passes needed to promote, after the bake
    failure_limit: int = 2  # consecutive failures that apply on_failure
    min_requests: int = 100  # signal attempts an analysis needs; fewer: inconclusive
    max_inconclusive: int = 10  # in a row: notify and wait for traffic
    max_errors: int = 5  # unreadable figures in a row: notify and wait
    compare_legacy: CompareLegacy | None = CompareLegacy()  # None: no comparison
    gates: tuple[float, ...] = (100.0,)  # percentages entered only after `rollout approve`
    on_failure: str = "previous"  # one of ON_FAILURE
    prometheus: str | None = None  # URL: every replica's figures; None: the admin listener
    webhooks: Webhooks = Webhooks()


@dataclass(frozen=True, slots=True)
class Config:
    upstreams: Upstreams
    listen: Listener = Listener("0.0.0.0", 8080)
    admin: AdminConfig = AdminConfig()
    timeouts: Timeouts = Timeouts()
    session: SessionConfig = SessionConfig()
    rollout: RolloutConfig = RolloutConfig()
    fallback: FallbackConfig = FallbackConfig()
    guard: GuardConfig = GuardConfig()
    promotion: PromotionConfig = PromotionConfig()
    shadow: ShadowConfig = ShadowConfig()
    upgrade: UpgradeConfig = UpgradeConfig()
    autopilot: AutopilotConfig = AutopilotConfig()

    def feature_percentages(self) -> dict[str, float]:
        """Configured percentage per feature, `default` being the global one."""
        out = {DEFAULT_FEATURE: self.rollout.percentage}
        for feature in self.rollout.features:
            pct = self.rollout.percentage if feature.percentage is None else feature.percentage
            out[feature.name] = pct
        return out


def format_value(value: object) -> str:
    """How values appear in messages and change logs: YAML-like, floats without `.0`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, frozenset):
        return "[" + ", ".join(format_value(v) for v in sorted(value)) + "]"
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)
