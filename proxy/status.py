"""The documents the admin listener serves and the `rollout` command reads, as types.

`proxy.admin` writes them, `proxy.control` reads them: one definition for both sides of
the wire (as uvicorn's `_types.py`), so a renamed key is a type error, not a KeyError in
an operator's terminal.
"""

from __future__ import annotations

from typing import TypedDict

from proxy.records.history import HistoryEntry
from proxy.records.pilot_document import AnalysisEntry, StateDocument
from proxy.rollout.compare import FieldDifference
from proxy.rollout.preview import MoveFigures
from proxy.rollout.ring import SeriesDocument
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


class GuardThresholds(TypedDict):
    enabled: bool
    min_requests: int  # fewer requests in the window: the guard does not judge
    max_error_rate: float
    max_p95_ms: float
    window_seconds: int


class PlanStatus(TypedDict):
    stages: list[float]
    percentage: float  # the global one, which the stages apply to
    current_stage: int | None  # index into stages; None between stages


class AutopilotPage(TypedDict):
    enabled: bool  # autopilot.enabled in the config
    running: bool  # a controller holds the lock on this config
    message: str | None  # why there is nothing to show (no state file, unreadable file)
    state: StateDocument | None
    paused_by: str | None  # the operator who paused it (`rollout pause`)
    next_action: str | None
    next_at: float | None  # wall clock of the next analysis
    last_analysis: AnalysisEntry | None


class HistoryPage(TypedDict):
    entries: list[HistoryEntry]  # the last 20, oldest first
    message: str | None  # unreadable file or lines


class ShadowPage(TypedDict):
    enabled: bool
    match_rate: float | None  # over every feature, since the proxy started
    compared: int  # match + mismatch behind that rate
    counts: dict[str, dict[str, int]]  # feature -> result -> comparisons


class PageDocument(TypedDict):
    """`GET /-/page`: everything the status page shows (SPEC 14), all workers' series."""

    status: StatusDocument
    plan: PlanStatus
    guard_thresholds: GuardThresholds
    autopilot: AutopilotPage
    history: HistoryPage
    shadow: ShadowPage
    series: SeriesDocument
    generated_at: float


# Re-exported: part of the documents.
__all__ = ["FieldDifference", "HistoryEntry", "MoveFigures", "SeriesDocument", "WindowFigures"]
