"""Whether a failed signal attempt is replayed against legacy: SPEC 5 as one pure function."""

from __future__ import annotations

from proxy.errors import FailureReason

# Methods RFC 9110 calls idempotent (GET, HEAD, OPTIONS safe; PUT, DELETE idempotent):
# replaying them after signal may have acted on them does no harm.
REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def should_fall_back(
    reason: FailureReason, method: str, *, body_buffered: bool, enabled: bool
) -> bool:
    """The decision table of SPEC 5.

    | failure               | idempotent, body buffered | others          |
    | connect (nothing sent)| fall back                 | fall back       |
    | timeout / reset       | fall back                 | no (504 / 502)  |
    | fallback status       | fall back                 | no (signal's)   |
    """
    if not enabled:
        return False
    if reason is FailureReason.CONNECT:
        return True
    return body_buffered and method in REPLAYABLE_METHODS
