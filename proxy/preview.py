"""The who-moves preview (SPEC 14): a proposed state against what the proxy serves.

The bucket rule (`proxy.rollout.preview`) says which buckets change side; the activity
counters (`proxy.gateway.activity`) say how many recently active sessions and requests
are in them. One document for `GET|POST /-/preview`, the CLI's `--dry-run` and
`rollout check --preview`, and the status page's box. Without a running proxy the CLI
builds the same document from two configurations, with no activity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from proxy.config.values import DEFAULT_FEATURE, Config
from proxy.gateway.activity import WINDOW_SECONDS, Activity
from proxy.gateway.state import Runtime
from proxy.rollout.preview import (
    FeatureMove,
    Movement,
    RoutingState,
    plan_moves,
    warnings_of,
)
from proxy.rollout.routing import Side
from proxy.status import FeaturePreview, MovedActivity, PreviewDocument, PreviewQuery

# Under `--workers N` only worker 0 runs the admin listener: its counters are its own.
SCOPE = "this process (under --workers N: worker 0 only)"


class PreviewQueryError(ValueError):
    """A proposed state that cannot be previewed; the message is one line for a 400."""


def query_from_params(params: Mapping[str, str], config: Config) -> PreviewQuery:
    """The page's form: `percentage=P[&feature=NAME][&emergency=true|false][&seed=S]`."""
    query: PreviewQuery = {}
    if "percentage" in params:
        pct = _percentage("percentage", params["percentage"])
        feature = params.get("feature") or DEFAULT_FEATURE
        names = {DEFAULT_FEATURE, *(f.name for f in config.rollout.features)}
        if feature not in names:
            raise PreviewQueryError(
                f"feature: unknown feature {feature!r}; served: {', '.join(sorted(names))}"
            )
        query["percentages"] = {feature: pct}
    if "emergency" in params:
        value = params["emergency"].lower()
        if value not in ("true", "false"):
            raise PreviewQueryError(f"emergency: {params['emergency']!r} is not true or false")
        query["emergency"] = value == "true"
    if "seed" in params:
        query["seed"] = params["seed"]
    return query


def query_from_body(data: object) -> PreviewQuery:
    """`POST /-/preview`'s JSON, checked key by key."""
    if not isinstance(data, dict):
        raise PreviewQueryError("body: a JSON object is expected")
    query: PreviewQuery = {}
    unknown = set(data) - {"percentages", "emergency", "seed", "test_sessions"}
    if unknown:
        raise PreviewQueryError(f"{sorted(unknown)[0]}: unknown key")
    if "percentages" in data:
        pcts = data["percentages"]
        if not isinstance(pcts, dict):
            raise PreviewQueryError("percentages: an object feature -> percentage is expected")
        query["percentages"] = {
            str(name): _percentage(f"percentages.{name}", value) for name, value in pcts.items()
        }
    if "emergency" in data:
        if not isinstance(data["emergency"], bool):
            raise PreviewQueryError(f"emergency: {data['emergency']!r} is not true or false")
        query["emergency"] = data["emergency"]
    if "seed" in data:
        if not isinstance(data["seed"], str):
            raise PreviewQueryError(f"seed: {data['seed']!r} is not a string")
        query["seed"] = data["seed"]
    if "test_sessions" in data:
        ids = data["test_sessions"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise PreviewQueryError("test_sessions: a list of strings is expected")
        query["test_sessions"] = ids
    return query


def _percentage(key: str, value: object) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError(value)
        pct = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PreviewQueryError(f"{key}: {value!r} is not a number") from None
    if not math.isfinite(pct) or not 0 <= pct <= 100:
        raise PreviewQueryError(f"{key}: {value!r} is not within 0-100")
    if abs(pct * 100 - round(pct * 100)) > 1e-6:
        raise PreviewQueryError(f"{key}: {value!r} has more than two decimals")
    return pct


def query_of(config: Config) -> PreviewQuery:
    """A whole configuration as a proposed state (what the CLI sends for a file)."""
    r = config.rollout
    return {
        "percentages": config.feature_percentages(),
        "emergency": r.emergency,
        "seed": r.seed,
        "test_sessions": sorted(r.test_sessions),
    }


def proposed_state(served: Config, query: PreviewQuery) -> RoutingState:
    """The served configuration with the query's values over it; features without a
    percentage of their own follow a proposed global one. Applying a change re-arms a
    tripped guard, so the proposed state has none."""
    r = served.rollout
    asked = query.get("percentages", {})
    default = asked.get(DEFAULT_FEATURE, r.percentage)
    percentages = {DEFAULT_FEATURE: default}
    for feature in r.features:
        own = default if feature.percentage is None else feature.percentage
        percentages[feature.name] = asked.get(feature.name, own)
    for name, pct in asked.items():
        percentages.setdefault(name, pct)
    return RoutingState(
        percentages,
        query.get("seed", r.seed),
        query.get("emergency", r.emergency),
        False,
        frozenset(query.get("test_sessions", r.test_sessions)),
    )


def preview_document(runtime: Runtime, query: PreviewQuery, now: float) -> PreviewDocument:
    """The query against what this proxy serves, with its activity counters."""
    config = runtime.store.config
    before = RoutingState.of(config, guard_tripped=runtime.guard_tripped())
    after = proposed_state(config, query)
    if after.routes_like(RoutingState.of(config)):
        after = before  # nothing changes, so nothing re-arms a tripped guard
    return _document(before, after, "proxy", runtime.store.generation, runtime.activity, now)


def file_preview(current: Config, proposed: Config) -> PreviewDocument:
    """No proxy answers: the bucket rule between two configurations, no activity."""
    return _document(RoutingState.of(current), RoutingState.of(proposed), "file", None, None, 0.0)


def _document(
    before: RoutingState,
    after: RoutingState,
    source: str,
    generation: int | None,
    activity: Activity | None,
    now: float,
) -> PreviewDocument:
    features = []
    for move in plan_moves(before, after):
        counted = activity is not None and move.feature in activity.features
        features.append(_feature(move, activity if counted else None, now))
    return {
        "source": source,
        "generation": generation,
        "changed": not before.routes_like(after),
        "window_seconds": WINDOW_SECONDS,
        "scope": SCOPE if activity is not None else "none (no running proxy)",
        "warnings": warnings_of(before, after),
        "features": features,
    }


def _feature(move: FeatureMove, activity: Activity | None, now: float) -> FeaturePreview:
    figures = move.as_dict()
    if activity is None:
        return {**figures, "to_signal": None, "to_legacy": None, "recent": None}
    name = move.feature
    everyone = activity.buckets(name, 0, 10_000, now)
    pinned = activity.pinned(name, now)
    total = everyone.requests + pinned

    def moved(movement: Movement, side: Side) -> MovedActivity:
        seen = activity.buckets(name, movement.start, movement.stop, now)
        fraction = movement.fraction if movement.buckets else 0.0
        requests = seen.requests * fraction + (pinned if move.pinned_to is side else 0)
        return {
            "sessions": round(seen.sessions * fraction, 1),
            "requests": round(requests),
            "request_share": round(100 * requests / total, 2) if total else 0.0,
            "saturated": seen.saturated and fraction > 0,
        }

    return {
        **figures,
        "to_signal": moved(move.to_signal, Side.SIGNAL),
        "to_legacy": moved(move.to_legacy, Side.LEGACY),
        "recent": {
            "sessions": round(everyone.sessions, 1),
            "requests": total,
            "test_session_requests": pinned,
            "saturated": everyone.saturated,
        },
    }
