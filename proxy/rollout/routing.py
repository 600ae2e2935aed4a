"""Who goes where: session ids, buckets and the routing decision (SPEC 3). Pure, no I/O."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import mmh3

from proxy.config.values import DEFAULT_FEATURE, Feature, RolloutConfig, SessionConfig

BUCKETS = 10_000


class Side(StrEnum):
    SIGNAL = "signal"
    LEGACY = "legacy"


class Reason(StrEnum):
    """Why a request went where it went (label `reason` of the routing metric)."""

    BUCKET = "bucket"
    TEST_SESSION = "test_session"
    EMERGENCY = "emergency"
    GUARD = "guard"
    NO_SESSION = "no_session"


# Not frozen: made once per request, and a frozen dataclass pays an object.__setattr__
# per field for it (bench/RESULTS.md, issue 19). Nothing changes a decision once made.
@dataclass(slots=True)
class Decision:
    side: Side
    reason: Reason
    feature: str
    bucket: int | None
    # The hash the bucket came from: the activity counters take more bits of it (no
    # second hash per request). Not part of the decision's identity.
    hash: int | None = field(default=None, compare=False)


def session_hash(session_id: str, seed: str) -> int:
    """MurmurHash3 x86_32 (seed 0, unsigned) of `seed:session_id` in UTF-8.

    `surrogateescape` lets ids that arrived as non-UTF-8 bytes hash as those bytes.
    """
    key = f"{seed}:{session_id}".encode("utf-8", "surrogateescape")
    return mmh3.hash(key, 0, signed=False)


def bucket(session_id: str, seed: str) -> int:
    """The session's bucket: `session_hash` mod 10,000 (SPEC 3)."""
    return session_hash(session_id, seed) % BUCKETS


def threshold(percentage: float) -> int:
    """Buckets below this number go to signal."""
    return round(percentage * 100)


def match_feature(path: str, features: tuple[Feature, ...]) -> Feature | None:
    """The feature with the longest prefix of `path`, matching whole segments.

    `/signals/anomaly` matches `/signals/anomaly` and `/signals/anomaly/x`, not
    `/signals/anomalyx`.
    """
    if not features:
        return None
    best: Feature | None = None
    best_len = -1
    for feature in features:
        for prefix in feature.paths:
            if len(prefix) > best_len and _has_prefix(path, prefix):
                best, best_len = feature, len(prefix)
    return best


def _has_prefix(path: str, prefix: str) -> bool:
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix.endswith("/") or path[len(prefix)] == "/"


def choose_upstream(
    rollout: RolloutConfig,
    session_id: str | None,
    path: str,
    *,
    guard_tripped: bool = False,
) -> Decision:
    """SPEC 3 order: emergency, test session, tripped guard, then the bucket rule."""
    feature = match_feature(path, rollout.features)
    name = feature.name if feature else DEFAULT_FEATURE
    if rollout.emergency:
        return Decision(Side.LEGACY, Reason.EMERGENCY, name, None)
    if session_id is None:
        return Decision(Side.LEGACY, Reason.NO_SESSION, name, None)
    if session_id in rollout.test_sessions:
        return Decision(Side.SIGNAL, Reason.TEST_SESSION, name, None)
    h = session_hash(session_id, rollout.seed)
    b = h % BUCKETS
    if guard_tripped:
        return Decision(Side.LEGACY, Reason.GUARD, name, b, h)
    pct = rollout.percentage
    if feature is not None and feature.percentage is not None:
        pct = feature.percentage
    side = Side.SIGNAL if b < threshold(pct) else Side.LEGACY
    return Decision(side, Reason.BUCKET, name, b, h)


class HeaderLookup(Protocol):
    def get(self, name: str, /) -> str | None: ...


def find_session_id(
    headers: HeaderLookup, cookie_header: str | None, session: SessionConfig
) -> str | None:
    """The session id from the configured header, else the configured cookie."""
    value = headers.get(session.header)
    if value:
        return value
    if cookie_header:
        return _cookie_value(cookie_header, session.cookie)
    return None


def _cookie_value(cookie_header: str, name: str) -> str | None:
    """Tolerant `Cookie` parsing: one sloppy neighbour cookie must not hide the session.

    (`http.cookies.SimpleCookie` drops the rest of the header at the first value it does
    not like, which would re-mint the id and move the user between sides.)
    """
    for part in cookie_header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def mint_session_id() -> str:
    """A fresh id for a client that sent none: 128 random bits, cookie-safe."""
    return secrets.token_hex(16)
