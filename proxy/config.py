"""The configuration: frozen values, parsed and validated in one place.

YAML is read only by `load_config` / `parse_config`. Every problem found is collected,
so `rollout check` can list them all; each names the key path and the bad value
(`rollout.percentage: 150 is not within 0-100`).
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yarl import URL

from proxy.errors import ConfigError

DEFAULT_CONFIG_PATH = "config/rollout.yaml"
CONFIG_ENV = "ROLLOUT_CONFIG"
DEFAULT_FEATURE = "default"

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_FEATURE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 9180
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: str
    # Derived once here, not per request: what the connection pool and `Host` need.
    host: str = field(init=False, compare=False)
    port: int = field(init=False, compare=False)
    tls: bool = field(init=False, compare=False)
    authority: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        url = URL(self.url) if self.url else URL("http://invalid")
        object.__setattr__(self, "host", url.raw_host or "")
        object.__setattr__(self, "port", url.port or 80)
        object.__setattr__(self, "tls", url.scheme == "https")
        object.__setattr__(self, "authority", url.raw_authority)


@dataclass(frozen=True, slots=True)
class Upstreams:
    signal: Upstream
    legacy: Upstream


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 1.0
    signal: float = 5.0
    total: float = 30.0


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
    features: tuple[Feature, ...] = ()


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

    def feature_percentages(self) -> dict[str, float]:
        """Configured percentage per feature, `default` being the global one."""
        out = {DEFAULT_FEATURE: self.rollout.percentage}
        for feature in self.rollout.features:
            pct = self.rollout.percentage if feature.percentage is None else feature.percentage
            out[feature.name] = pct
        return out


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
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"invalid YAML: {_yaml_message(exc)}"]) from None
    problems: list[str] = []
    config = _build_config(_Section(data, "", problems))
    if problems:
        raise ConfigError(source, problems)
    assert config is not None
    return config


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


def diff_configs(old: Config, new: Config) -> list[str]:
    """Human-readable changes between two configs: `rollout.percentage 10 -> 30`."""
    changes: list[str] = []
    _diff(old, new, "", changes)
    return changes


def _diff(old: object, new: object, path: str, out: list[str]) -> None:
    if old == new:
        return
    if is_dataclass(old) and is_dataclass(new) and type(old) is type(new):
        for f in fields(old):
            if not f.compare:
                continue  # derived from another field, e.g. Upstream.host from url
            if f.name == "token":
                # Never print a secret, only that it changed.
                if getattr(old, f.name) != getattr(new, f.name):
                    out.append(f"{path}.{f.name} changed")
                continue
            _diff(getattr(old, f.name), getattr(new, f.name), _join(path, f.name), out)
        return
    if path.endswith("features"):
        old_f = {f.name: f for f in old}  # type: ignore[attr-defined]
        new_f = {f.name: f for f in new}  # type: ignore[attr-defined]
        for name in sorted(old_f.keys() | new_f.keys()):
            o, n = old_f.get(name), new_f.get(name)
            if o is None:
                out.append(f"{path}.{name} added")
            elif n is None:
                out.append(f"{path}.{name} removed")
            else:
                _diff(o, n, f"{path}.{name}", out)
        return
    out.append(f"{path} {format_value(old)} -> {format_value(new)}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- YAML reading -----------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML silently overwrites."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


T = TypeVar("T")
_MISSING: Any = object()


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return format_value(value)


class _Section:
    """One YAML mapping being read: typed getters that record problems, not raise."""

    def __init__(self, data: object, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error("", f"{_describe(data)} is not a mapping")
            data = {}
        self.data: dict[Any, Any] = data

    def key(self, name: str) -> str:
        return _join(self.path, name)

    def error(self, name: str, message: str) -> None:
        where = self.key(name) if name else (self.path or "top level")
        self.problems.append(f"{where}: {message}")

    def has(self, name: str) -> bool:
        return name in self.data

    def section(self, name: str, *, required: bool = False) -> _Section:
        if required and name not in self.data:
            self.error(name, "is required")
        return _Section(self.data.get(name), self.key(name), self.problems)

    def get(
        self,
        name: str,
        kind: type[T] | tuple[type, ...],
        default: T,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        value = self.data.get(name, _MISSING)
        if value is _MISSING:
            return default
        if not _is_kind(value, kind):
            expected = _kind_name(kind)
            self.error(name, f"{_describe(value)} is not {expected}")
            return default
        if isinstance(value, int) and not isinstance(value, bool) and kind is float:
            value = float(value)
        if check is not None:
            message = check(value)
            if message:
                self.error(name, f"{_describe(value)} {message}")
                return default
        return value  # type: ignore[no-any-return]

    def get_list(
        self,
        name: str,
        item_kind: type[T] | tuple[type, ...],
        default: tuple[T, ...],
        check: Callable[[Any], str | None] | None = None,
    ) -> tuple[T, ...]:
        value = self.data.get(name, _MISSING)
        if value is _MISSING:
            return default
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(name, f"{_describe(value)} is not a list")
            return default
        items: list[T] = []
        ok = True
        for i, item in enumerate(value):
            if not _is_kind(item, item_kind):
                self.error(f"{name}[{i}]", f"{_describe(item)} is not {_kind_name(item_kind)}")
                ok = False
                continue
            if isinstance(item, int) and not isinstance(item, bool) and item_kind is float:
                item = float(item)
            if check is not None and (message := check(item)):
                self.error(f"{name}[{i}]", f"{_describe(item)} {message}")
                ok = False
                continue
            items.append(item)
        return tuple(items) if ok else default

    def finish(self, known: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in known:
                self.error(
                    str(key),
                    f"unknown key (known keys here: {', '.join(known)})",
                )


def _is_kind(value: object, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        bool: "true/false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        type(None): "null",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


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


def _build_config(root: _Section) -> Config | None:
    if root.has("upstreams"):
        upstreams = _build_upstreams(root.section("upstreams"))
    else:
        root.error("upstreams", "is required (signal.url and legacy.url)")
        upstreams = Upstreams(Upstream("signal", ""), Upstream("legacy", ""))
    config = Config(
        upstreams=upstreams,
        listen=_build_listener(root.section("listen"), Listener("0.0.0.0", 8080)),
        admin=_build_admin(root.section("admin")),
        timeouts=_build_timeouts(root.section("timeouts")),
        session=_build_session(root.section("session")),
        rollout=_build_rollout(root.section("rollout")),
        fallback=_build_fallback(root.section("fallback")),
        guard=_build_guard(root.section("guard")),
        promotion=_build_promotion(root.section("promotion")),
        shadow=_build_shadow(root.section("shadow")),
    )
    root.finish(tuple(f.name for f in fields(Config)))
    return config


def _build_listener(s: _Section, default: Listener) -> Listener:
    value = Listener(
        host=s.get("host", str, default.host, _non_empty),
        port=s.get("port", int, default.port, _port),
    )
    s.finish(("host", "port"))
    return value


def _build_admin(s: _Section) -> AdminConfig:
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
        port=s.get("port", int, d.port, _port),
        token=token,
    )
    s.finish(("host", "port", "token"))
    return value


def _build_upstreams(s: _Section) -> Upstreams:
    def one(name: str, default_url: str) -> Upstream:
        sub = s.section(name, required=True)
        raw = sub.data.get("url")
        if isinstance(raw, str) and _has_credentials(raw):
            sub.error("url", "must not carry credentials (the value is not shown)")
            raw = None
        url = sub.get("url", str, default_url, _upstream_url) if raw is not None else default_url
        if s.has(name) and not sub.has("url"):
            sub.error("url", "is required")
        sub.finish(("url",))
        return Upstream(name, url.rstrip("/"))

    value = Upstreams(
        signal=one("signal", "http://127.0.0.1:8000"),
        legacy=one("legacy", "http://127.0.0.1:8001"),
    )
    s.finish(("signal", "legacy"))
    return value


def _build_timeouts(s: _Section) -> Timeouts:
    d = Timeouts()
    value = Timeouts(
        connect=s.get("connect", float, d.connect, _seconds),
        signal=s.get("signal", float, d.signal, _seconds),
        total=s.get("total", float, d.total, _seconds),
    )
    if value.signal > value.total:
        s.error("signal", f"{format_value(value.signal)} exceeds timeouts.total")
    s.finish(("connect", "signal", "total"))
    return value


def _build_session(s: _Section) -> SessionConfig:
    d = SessionConfig()
    value = SessionConfig(
        header=s.get("header", str, d.header, _header_name),
        cookie=s.get("cookie", str, d.cookie, _header_name),
        set_cookie=s.get("set_cookie", bool, d.set_cookie),
    )
    s.finish(("header", "cookie", "set_cookie"))
    return value


def _build_rollout(s: _Section) -> RolloutConfig:
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


def _build_features(s: _Section) -> tuple[Feature, ...]:
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


def _build_fallback(s: _Section) -> FallbackConfig:
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


def _build_guard(s: _Section) -> GuardConfig:
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


def _build_promotion(s: _Section) -> PromotionConfig:
    d = PromotionConfig()
    value = PromotionConfig(
        min_requests=s.get("min_requests", int, d.min_requests, _at_least_one),
        max_error_rate=s.get("max_error_rate", float, d.max_error_rate, _ratio),
        max_p95_ms=s.get("max_p95_ms", float, d.max_p95_ms, _positive),
    )
    s.finish(("min_requests", "max_error_rate", "max_p95_ms"))
    return value


def _build_shadow(s: _Section) -> ShadowConfig:
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


def as_mapping(value: object) -> Mapping[str, Any]:
    """Plain-data view of a config value (for `/-/status` and `--json`); no secrets."""
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            if not f.compare:
                continue
            if f.name == "token":
                out[f.name] = None if getattr(value, f.name) is None else "***"
                continue
            out[f.name] = as_mapping(getattr(value, f.name))
        return out
    if isinstance(value, frozenset):
        return sorted(value)  # type: ignore[return-value]
    if isinstance(value, tuple):
        return [as_mapping(v) for v in value]  # type: ignore[return-value]
    return value  # type: ignore[return-value]
