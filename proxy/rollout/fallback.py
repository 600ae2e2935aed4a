"""Whether a failed signal attempt is replayed against legacy: SPEC 5 as pure functions."""

from __future__ import annotations

from proxy.config.values import FallbackConfig
from proxy.errors import FailureReason

# Methods RFC 9110 calls idempotent (GET, HEAD, OPTIONS safe; PUT, DELETE idempotent):
# replaying them after signal may have acted on them does no harm.
REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Failures before any byte of the request left: safe to replay whatever the method.
_NOTHING_SENT = frozenset({FailureReason.CONNECT, FailureReason.TLS})


def should_fall_back(
    reason: FailureReason, method: str, *, body_buffered: bool, enabled: bool
) -> bool:
    """The decision table of SPEC 5.

    | failure               | idempotent, body buffered | others          |
    | connect, tls (nothing sent) | fall back           | fall back       |
    | timeout / reset       | fall back                 | no (504 / 502)  |
    | fallback status       | fall back                 | no (signal's)   |
    """
    if not enabled:
        return False
    if reason in _NOTHING_SENT:
        return True
    return body_buffered and method in REPLAYABLE_METHODS


def fallback_reason(
    error: FailureReason | None,
    status: int | None,
    method: str,
    *,
    body_buffered: bool,
    config: FallbackConfig,
) -> FailureReason | None:
    """Why a signal attempt that failed with `error` (or answered `status`) is tried again
    on legacy, or None when its outcome stands (Caddy's `tryAgain`)."""
    if error is not None:
        reason = error
    elif status in config.statuses:
        reason = FailureReason.STATUS
    else:
        return None
    if should_fall_back(reason, method, body_buffered=body_buffered, enabled=config.enabled):
        return reason
    return None


def attempt_failure(error: FailureReason | None, status: int | None) -> FailureReason | None:
    """What counts against an upstream (guard, windows, error metric): a failed attempt or
    a 5xx answer, whether or not it is then replayed (fallbacks do not hide errors)."""
    if error is not None:
        return error
    if status is not None and status >= 500:
        return FailureReason.STATUS
    return None
