"""YAML -> `Config`: every validation in one place (SPEC 2).

YAML is read only by `load_config` / `parse_config`. Every problem found is collected,
so `rollout check` can list them all; each names the key path and the bad value
(`rollout.percentage: 150 is not within 0-100`).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import ssl
from dataclasses import fields
from pathlib import Path

import yaml
from yarl import URL

from proxy.config.reader import Section, UniqueKeyLoader, yaml_message
from proxy.config.tls import TLSFileError, client_context, server_context
from proxy.config.values import (
    DEFAULT_FEATURE,
    ON_FAILURE,
    AdminConfig,
    AutopilotConfig,
    CompareLegacy,
    Config,
    FallbackConfig,
    Feature,
    GuardConfig,
    Listener,
    ListenTLS,
    PromotionConfig,
    RolloutConfig,
    SessionConfig,
    ShadowConfig,
    Timeouts,
    UpgradeConfig,
    Upstream,
    Upstreams,
    UpstreamTLS,
    Webhooks,
    format_value,
)
from proxy.errors import ConfigError

DEFAULT_CONFIG_PATH = "config/rollout.yaml"
CONFIG_ENV = "ROLLOUT_CONFIG"

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FEATURE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def resolve_config_path(cli_value: str | None) -> Path:
    """`-c/--config`, else `$ROLLOUT_CONFIG`, else `config/rollout.yaml` (SPEC 2)."""
    return Path(cli_value or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the file; raise `ConfigError` listing every problem."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, ["file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(source, ["is a directory, not a file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [f"cannot read: {exc}"]) from None
    return parse_config(text, source)


def parse_config(text: str, source: str = "<config>") -> Config:
    if not text.strip():
        raise ConfigError(source, ["file is empty"])
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"invalid YAML: {yaml_message(exc)}"]) from None
    problems: list[str] = []
    config = _build_config(Section(data, "", problems))
    if problems:
        raise ConfigError(source, problems)
    assert config is not None
    return config


# --- checks: each returns the message that follows the value, or None ---------------------


def _percentage(value: float) -> str | None:
    if not math.isfinite(value) or not 0 <= value <= 100:
        return "is not within 0-100"
    if abs(value * 100 - round(value * 100)) > 1e-6:
        return "has more than two decimals"
    return None


def _positive(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else "must be greater than 0"


def _seconds(value: float) -> str | None:
    if not math.isfinite(value) or not 0 < value <= 3600:
        return "is not within 0-3600 seconds"
    return None


def _port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "is not a port number (0-65535)"


def _ratio(value: float) -> str | None:
    return None if 0 <= value <= 1 else "is not a ratio within 0-1 (0.05 means 5 %)"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _header_name(value: str) -> str | None:
    return None if _HEADER_NAME.match(value) else "is not a valid HTTP header name"


def _status(value: int) -> str | None:
    return None if 100 <= value <= 599 else "is not an HTTP status (100-599)"


# Mirroring replays a request on a second system: only methods that change nothing.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _safe_method(value: str) -> str | None:
    if value not in SAFE_METHODS:
        return "cannot be mirrored: only GET, HEAD and OPTIONS change nothing when replayed"
    return None


def _path_prefix(value: str) -> str | None:
    return None if value.startswith("/") else "does not start with '/'"


def _upstream_url(value: str) -> str | None:
    try:
        url = URL(value)
    except ValueError:
        return "is not a URL"
    if url.scheme not in ("http", "https") or not url.host:
        return "is not an http(s) URL such as http://127.0.0.1:8000"
    if url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment:
        return "must be scheme://host[:port] only (paths go upstream unchanged)"
    return None


def _has_credentials(value: str) -> bool:
    try:
        url = URL(value)
    except ValueError:
        return False
    return bool(url.user or url.password)


# --- sections ------------------------------------------------------------------------------


def _build_config(root: Section) -> Config | None:
    if root.has("upstreams"):
        upstreams = _build_upstreams(root.section("upstreams"))
    else:
        root.error("upstreams", "is required (signal.url and legacy.url)")
        upstreams = Upstreams(Upstream("signal", ""), Upstream("legacy", ""))
    rollout = _build_rollout(root.section("rollout"))
    config = Config(
        upstreams=upstreams,
        listen=_build_listener(root.section("listen"), Listener("0.0.0.0", 8080)),
        admin=_build_admin(root.section("admin")),
        timeouts=_build_timeouts(root.section("timeouts")),
        session=_build_session(root.section("session")),
        rollout=rollout,
        fallback=_build_fallback(root.section("fallback")),
        guard=_build_guard(root.section("guard")),
        promotion=_build_promotion(root.section("promotion")),
        shadow=_build_shadow(root.section("shadow")),
        upgrade=_build_upgrade(root.section("upgrade")),
        autopilot=_build_autopilot(root.section("autopilot"), rollout),
    )
    root.finish(tuple(f.name for f in fields(Config)))
    return config


# Several replicas on one host can read one file (the file the autopilot writes) and
# still bind their own ports: these override `listen.port` and `admin.port`.
PORT_OVERRIDES = {"listen": "ROLLOUT_LISTEN_PORT", "admin": "ROLLOUT_ADMIN_PORT"}


def _port_from_env(s: Section, name: str, port: int) -> int:
    raw = os.environ.get(PORT_OVERRIDES[s.path])
    if raw is None or raw == "":
        return port
    if not raw.isdigit() or _port(int(raw)):
        s.error(name, f"${PORT_OVERRIDES[s.path]}={raw!r} is not a port number (0-65535)")
        return port
    return int(raw)


def _build_listener(s: Section, default: Listener) -> Listener:
    host = s.get("host", str, default.host, _non_empty)
    port = _port_from_env(s, "port", s.get("port", int, default.port, _port))
    tls, context = _build_listen_tls(s) if s.has("tls") else (None, None)
    s.finish(("host", "port", "tls"))
    return Listener(host=host, port=port, tls=tls, ssl_context=context)


def _build_listen_tls(listen: Section) -> tuple[ListenTLS | None, ssl.SSLContext | None]:
    """`listen.tls` (HTTPS on the public port) and the server context made from it."""
    if listen.data.get("tls") is None:
        return None, None  # `tls: null`: plain HTTP
    s = listen.section("tls")
    if not isinstance(listen.data["tls"], dict):
        return None, None  # (said by `section`)
    cert_file = _optional_str(s, "cert_file")
    key_file = _optional_str(s, "key_file")
    client_ca_file = _optional_str(s, "client_ca_file")
    s.finish(("cert_file", "key_file", "client_ca_file"))
    for key, present in (("cert_file", cert_file), ("key_file", key_file)):
        if present is None and not s.has(key):
            s.error(key, "is required (the certificate chain and its private key, PEM)")
    if cert_file is None or key_file is None:
        return None, None
    tls = ListenTLS(cert_file, key_file, client_ca_file)
    try:
        return tls, server_context(tls)
    except TLSFileError as exc:
        s.error(exc.key, exc.message)
        return tls, None


def _build_admin(s: Section) -> AdminConfig:
    d = AdminConfig()
    raw_token = s.data.get("token")
    token: str | None = None
    if raw_token is not None and not isinstance(raw_token, str):
        s.error("token", "is not a string (quote it; the value is not shown)")
    else:
        token = raw_token
    if isinstance(token, str) and not token.strip():
        s.error("token", "must not be empty (remove the key, or set null, for no token)")
        token = None
    value = AdminConfig(
        host=s.get("host", str, d.host, _non_empty),
        port=_port_from_env(s, "port", s.get("port", int, d.port, _port)),
        token=token,
    )
    s.finish(("host", "port", "token"))
    return value


def _build_upstreams(s: Section) -> Upstreams:
    def one(name: str, default_url: str) -> Upstream:
        sub = s.section(name, required=True)
        raw = sub.data.get("url")
        if isinstance(raw, str) and _has_credentials(raw):
            sub.error("url", "must not carry credentials (the value is not shown)")
            raw = None
        url = sub.get("url", str, default_url, _upstream_url) if raw is not None else default_url
        if s.has(name) and not sub.has("url"):
            sub.error("url", "is required")
        tls, context = _build_upstream_tls(sub, url)
        sub.finish(("url", "tls"))
        return Upstream(name, url.rstrip("/"), tls, context)

    value = Upstreams(
        signal=one("signal", "http://127.0.0.1:8000"),
        legacy=one("legacy", "http://127.0.0.1:8001"),
    )
    s.finish(("signal", "legacy"))
    return value


def _optional_str(s: Section, name: str) -> str | None:
    value = s.get(name, (str, type(None)), None)
    if isinstance(value, str) and not value.strip():
        s.error(name, f"{value!r} must not be empty (remove the key, or set null)")
        return None
    return value if isinstance(value, str) else None


def _build_upstream_tls(
    upstream: Section, url: str
) -> tuple[UpstreamTLS | None, ssl.SSLContext | None]:
    """`upstreams.<side>.tls` and the SSL context made from it (https URLs only)."""
    if URL(url).scheme != "https":
        if upstream.has("tls"):
            upstream.error("tls", f"applies to https URLs only, and url is {url!r}")
        return None, None
    s = upstream.section("tls")
    d = UpstreamTLS()
    tls = UpstreamTLS(
        verify=s.get("verify", bool, d.verify),
        ca_file=_optional_str(s, "ca_file"),
        server_name=_optional_str(s, "server_name"),
        cert_file=_optional_str(s, "cert_file"),
        key_file=_optional_str(s, "key_file"),
    )
    s.finish(("verify", "ca_file", "server_name", "cert_file", "key_file"))
    if (tls.cert_file is None) != (tls.key_file is None):
        present, missing = ("cert_file", "key_file")[:: 1 if tls.key_file is None else -1]
        s.error(missing, f"is required with {present} (a client certificate and its key)")
        return tls, None
    try:
        return tls, client_context(tls)
    except TLSFileError as exc:
        s.error(exc.key, exc.message)
        return tls, None


def _build_timeouts(s: Section) -> Timeouts:
    d = Timeouts()
    value = Timeouts(
        connect=s.get("connect", float, d.connect, _seconds),
        signal=s.get("signal", float, d.signal, _seconds),
        total=s.get("total", float, d.total, _seconds),
        idle=s.get("idle", float, d.idle, _seconds),
    )
    if value.signal > value.total:
        s.error("signal", f"{format_value(value.signal)} exceeds timeouts.total")
    s.finish(("connect", "signal", "total", "idle"))
    return value


def _build_session(s: Section) -> SessionConfig:
    d = SessionConfig()
    value = SessionConfig(
        header=s.get("header", str, d.header, _header_name),
        cookie=s.get("cookie", str, d.cookie, _header_name),
        set_cookie=s.get("set_cookie", bool, d.set_cookie),
    )
    s.finish(("header", "cookie", "set_cookie"))
    return value


def _build_rollout(s: Section) -> RolloutConfig:
    d = RolloutConfig()
    stages = s.get_list("stages", float, d.stages, _percentage)
    if not stages:
        s.error("stages", "must list at least one percentage")
        stages = d.stages
    elif any(b <= a for a, b in itertools.pairwise(stages)):
        s.error("stages", f"{format_value(stages)} is not strictly increasing")
        stages = d.stages
    test_sessions = s.get_list("test_sessions", str, (), _non_empty)
    value = RolloutConfig(
        percentage=s.get("percentage", float, d.percentage, _percentage),
        seed=s.get("seed", str, d.seed),
        emergency=s.get("emergency", bool, d.emergency),
        test_sessions=frozenset(test_sessions),
        stages=stages,
        features=_build_features(s.section("features")),
    )
    s.finish(("percentage", "seed", "emergency", "test_sessions", "stages", "features"))
    return value


def _build_features(s: Section) -> tuple[Feature, ...]:
    features: list[Feature] = []
    owner: dict[str, str] = {}
    for name in s.data:
        if not isinstance(name, str) or not _FEATURE_NAME.match(name) or name == DEFAULT_FEATURE:
            s.error(
                str(name),
                "is not a valid feature name (letters, digits, _ or -, starting with a "
                f"letter; not '{DEFAULT_FEATURE}')",
            )
            continue
        sub = s.section(name)
        paths = sub.get_list("paths", str, (), _path_prefix)
        if not sub.data.get("paths"):  # absent, null or []; bad items are reported above
            sub.error("paths", "must list at least one path prefix such as /signals/anomaly")
        for p in paths:
            if p in owner:
                sub.error("paths", f"{p!r} is already used by feature {owner[p]!r}")
            owner[p] = name
        pct_raw = sub.get("percentage", (float, type(None)), None)
        pct = None if pct_raw is None else float(pct_raw)
        if pct is not None and (message := _percentage(pct)):
            sub.error("percentage", f"{format_value(pct)} {message}")
            pct = None
        sub.finish(("paths", "percentage"))
        features.append(Feature(name=name, paths=paths, percentage=pct))
    return tuple(features)


def _build_fallback(s: Section) -> FallbackConfig:
    d = FallbackConfig()
    statuses = s.get_list("statuses", int, tuple(sorted(d.statuses)), _status)
    value = FallbackConfig(
        enabled=s.get("enabled", bool, d.enabled),
        statuses=frozenset(statuses),
        max_body_bytes=s.get(
            "max_body_bytes", int, d.max_body_bytes, lambda v: None if v >= 0 else "is negative"
        ),
    )
    s.finish(("enabled", "statuses", "max_body_bytes"))
    return value


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


def _build_guard(s: Section) -> GuardConfig:
    d = GuardConfig()
    value = GuardConfig(
        enabled=s.get("enabled", bool, d.enabled),
        window_seconds=s.get(
            "window_seconds",
            int,
            d.window_seconds,
            lambda v: None if 1 <= v <= 3600 else "is not within 1-3600",
        ),
        min_requests=s.get("min_requests", int, d.min_requests, _at_least_one),
        max_error_rate=s.get("max_error_rate", float, d.max_error_rate, _ratio),
        max_p95_ms=s.get("max_p95_ms", float, d.max_p95_ms, _positive),
    )
    s.finish(("enabled", "window_seconds", "min_requests", "max_error_rate", "max_p95_ms"))
    return value


def _build_promotion(s: Section) -> PromotionConfig:
    d = PromotionConfig()
    value = PromotionConfig(
        min_requests=s.get("min_requests", int, d.min_requests, _at_least_one),
        max_error_rate=s.get("max_error_rate", float, d.max_error_rate, _ratio),
        max_p95_ms=s.get("max_p95_ms", float, d.max_p95_ms, _positive),
    )
    s.finish(("min_requests", "max_error_rate", "max_p95_ms"))
    return value


def _build_shadow(s: Section) -> ShadowConfig:
    d = ShadowConfig()
    value = ShadowConfig(
        enabled=s.get("enabled", bool, d.enabled),
        percentage=s.get("percentage", float, d.percentage, _percentage),
        methods=frozenset(s.get_list("methods", str, tuple(sorted(d.methods)), _safe_method)),
        ignore=s.get_list("ignore", str, d.ignore, _non_empty),
        learn_noise=s.get("learn_noise", bool, d.learn_noise),
        max_in_flight=s.get("max_in_flight", int, d.max_in_flight, _at_least_one),
        keep_diffs=s.get("keep_diffs", int, d.keep_diffs, _at_least_one),
    )
    s.finish(
        (
            "enabled",
            "percentage",
            "methods",
            "ignore",
            "learn_noise",
            "max_in_flight",
            "keep_diffs",
        )
    )
    return value


def _build_upgrade(s: Section) -> UpgradeConfig:
    d = UpgradeConfig()
    value = UpgradeConfig(
        enabled=s.get("enabled", bool, d.enabled),
        idle_timeout=s.get("idle_timeout", float, d.idle_timeout, _seconds),
        max_connections=s.get("max_connections", int, d.max_connections, _at_least_one),
        drain_on_rollback=s.get("drain_on_rollback", bool, d.drain_on_rollback),
    )
    s.finish(("enabled", "idle_timeout", "max_connections", "drain_on_rollback"))
    return value


def _build_autopilot(s: Section, rollout: RolloutConfig) -> AutopilotConfig:
    d = AutopilotConfig()
    compare: CompareLegacy | None = d.compare_legacy
    if s.has("compare_legacy") and s.data["compare_legacy"] is None:
        compare = None
    elif s.has("compare_legacy"):
        c = s.section("compare_legacy")
        dc = CompareLegacy()
        compare = CompareLegacy(
            max_error_rate_delta=c.get(
                "max_error_rate_delta", float, dc.max_error_rate_delta, _ratio
            ),
            max_p95_ratio=c.get(
                "max_p95_ratio",
                float,
                dc.max_p95_ratio,
                lambda v: None if v >= 1 else "must be at least 1 (1.5: up to 50 % slower)",
            ),
        )
        c.finish(("max_error_rate_delta", "max_p95_ratio"))
    gates = s.get_list("gates", float, d.gates, _percentage)
    for i, gate in enumerate(gates):
        if gate not in rollout.stages:
            s.error(
                f"gates[{i}]",
                f"{format_value(gate)} is not a stage (rollout.stages: "
                f"{format_value(rollout.stages)})",
            )
    w = s.section("webhooks")
    webhooks = Webhooks(
        confirm=w.get_list("confirm", str, (), _webhook_url),
        events=w.get_list("events", str, (), _webhook_url),
    )
    w.finish(("confirm", "events"))
    value = AutopilotConfig(
        enabled=s.get("enabled", bool, d.enabled),
        interval=s.get("interval", float, d.interval, _interval),
        bake=s.get("bake", float, d.bake, _not_negative),
        checks=s.get("checks", int, d.checks, _at_least_one),
        failure_limit=s.get("failure_limit", int, d.failure_limit, _at_least_one),
        min_requests=s.get("min_requests", int, d.min_requests, _at_least_one),
        max_inconclusive=s.get("max_inconclusive", int, d.max_inconclusive, _at_least_one),
        max_errors=s.get("max_errors", int, d.max_errors, _at_least_one),
        compare_legacy=compare,
        gates=gates,
        on_failure=s.get(
            "on_failure",
            str,
            d.on_failure,
            lambda v: None if v in ON_FAILURE else f"is not one of {', '.join(ON_FAILURE)}",
        ),
        prometheus=s.get("prometheus", (str, type(None)), d.prometheus, _prometheus_url),
        webhooks=webhooks,
    )
    s.finish(tuple(f.name for f in fields(AutopilotConfig)))
    return value


def _interval(value: float) -> str | None:
    return None if 0.1 <= value <= 86400 else "is not within 0.1-86400 seconds"


def _not_negative(value: float) -> str | None:
    return None if value >= 0 and math.isfinite(value) else "must be 0 or more seconds"


def _webhook_url(value: str) -> str | None:
    try:
        url = URL(value)
    except ValueError:
        return "is not a URL"
    if url.scheme not in ("http", "https") or not url.host:
        return "is not an http(s) URL"
    return None


def _prometheus_url(value: str | None) -> str | None:
    return None if value is None else _webhook_url(value)
