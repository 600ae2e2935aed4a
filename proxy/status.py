"""The documents the admin listener serves and the `rollout` command reads, as types.

`proxy.admin` writes them, `proxy.control` reads them: one definition for both sides of
the wire (as uvicorn's `_types.py`), so a renamed key is a type error, not a KeyError in
an operator's terminal.
"""

from __future__ import annotations

from typing import TypedDict

from proxy.rollout.compare import FieldDifference
from proxy.rollout.preview import MoveFigures
from proxy.rollout.window import WindowFigures


class UpstreamStatus(WindowFigures):
    url: str
    upgraded: int  # upgraded (WebSocket) connections open now


class LastReload(TypedDict):
    ok: bool
    error: str | None
    at: float
    changes: list[str]


class ConfigStatus(TypedDict):
    path: str
    generation: int
    last_reload: LastReload


class GuardStatus(TypedDict):
    enabled: bool
    tripped: bool
    reason: str | None
    tripped_at: float | None
    figures: WindowFigures | None  # the window that tripped it
    window_seconds: int


class PromotionStatus(TypedDict):
    min_requests: int
    max_error_rate: float
    max_p95_ms: float


class ShadowStatus(TypedDict):
    enabled: bool
    percentage: float
    in_flight: int
    kept_diffs: int
    learned_noise: dict[str, list[str]]  # route -> field paths


class StatusDocument(TypedDict):
    """`GET /-/status` (SPEC 8)."""

    version: str
    config: ConfigStatus
    draining: bool
    emergency: bool
    percentages: dict[str, float]  # feature -> configured percentage ("default": global)
    effective_percentages: dict[str, float]  # what routing applies now
    stages: list[float]
    guard: GuardStatus
    upstreams: dict[str, UpstreamStatus]  # "signal", "legacy"
    promotion: PromotionStatus
    shadow: ShadowStatus
    uptime_seconds: float


class ShadowDiff(TypedDict):
    time: float
    method: str
    path: str
    feature: str
    legacy_status: int
    signal_status: int | None
    fields: list[FieldDifference]


class DiffsDocument(TypedDict):
    """`GET /-/diffs` (SPEC 11): the kept mismatches, newest first."""

    diffs: list[ShadowDiff]


class PreviewQuery(TypedDict, total=False):
    """`POST /-/preview`: a proposed state; what it leaves out stays as served."""

    percentages: dict[str, float]  # feature -> percentage ("default": the global)
    emergency: bool
    seed: str
    test_sessions: list[str]


class MovedActivity(TypedDict):
    """The recently active sessions that would change side one way (from the proxy)."""

    sessions: float  # estimate without ids (README "Who moves"); expected on a seed change
    requests: int  # their requests in the window (test sessions' included when they move)
    request_share: float  # percent of the feature's requests in the window
    saturated: bool  # the estimate is a floor


class RecentActivity(TypedDict):
    sessions: float  # estimate
    requests: int  # every request with a session id, test sessions' included
    test_session_requests: int
    saturated: bool


class FeaturePreview(MoveFigures):
    to_signal: MovedActivity | None  # None: no figures from a running proxy
    to_legacy: MovedActivity | None
    recent: RecentActivity | None


class PreviewDocument(TypedDict):
    """`GET|POST /-/preview` (SPEC 14); the CLI builds one from two files when no proxy
    answers (`source` "file", activity None)."""

    source: str  # "proxy": against what it serves; "file": against the file as it is
    generation: int | None  # the served configuration's
    changed: bool  # the proposed state routes anyone differently
    window_seconds: int
    scope: str  # whose requests were counted
    warnings: list[str]
    features: list[FeaturePreview]


__all__ = ["FieldDifference", "MoveFigures", "WindowFigures"]  # re-exported: part of the documents
