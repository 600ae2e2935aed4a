"""proxy.rollout.fallback: every cell of the SPEC 5 replay table, and the attempt rules."""

from __future__ import annotations

import itertools

import pytest

from proxy.config.values import FallbackConfig
from proxy.errors import FailureReason
from proxy.rollout.fallback import attempt_failure, fallback_reason, should_fall_back

# SPEC 5, transcribed: per failure, (GET/HEAD/OPTIONS/PUT/DELETE with the body buffered,
# POST/PATCH/others or a body too large to buffer).
SPEC_TABLE: dict[FailureReason, tuple[bool, bool]] = {
    FailureReason.CONNECT: (True, True),  # nothing was sent: always safe
    FailureReason.TLS: (True, True),  # the handshake failed: nothing was sent either
    FailureReason.TIMEOUT: (True, False),  # 504, not replayed
    FailureReason.RESET: (True, False),  # 502, not replayed
    FailureReason.STATUS: (True, False),  # signal's response returned
}
REPLAYABLE = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
NOT_REPLAYABLE = ("POST", "PATCH")
METHODS = REPLAYABLE + NOT_REPLAYABLE


def expected(reason: FailureReason, method: str, buffered: bool, enabled: bool) -> bool:
    if not enabled:
        return False
    replayable, others = SPEC_TABLE[reason]
    return replayable if method in REPLAYABLE and buffered else others


def test_table_covers_every_failure_reason() -> None:
    assert set(SPEC_TABLE) == set(FailureReason)


@pytest.mark.parametrize(
    ("reason", "method", "buffered", "enabled"),
    [
        pytest.param(
            reason,
            method,
            buffered,
            enabled,
            id=f"{reason.value}-{method}-{'buffered' if buffered else 'streamed'}"
            f"-{'on' if enabled else 'off'}",
        )
        for reason, method, buffered, enabled in itertools.product(
            FailureReason, METHODS, (True, False), (True, False)
        )
    ],
)
def test_every_cell_of_the_spec_table(
    reason: FailureReason, method: str, buffered: bool, enabled: bool
) -> None:
    result = should_fall_back(reason, method, body_buffered=buffered, enabled=enabled)
    assert result is expected(reason, method, buffered, enabled)


# The same table spelled out by hand, so a mistake in `expected` cannot hide one in the code.
@pytest.mark.parametrize(
    ("reason", "method", "buffered", "falls_back"),
    [
        (FailureReason.CONNECT, "GET", True, True),
        (FailureReason.CONNECT, "POST", True, True),
        (FailureReason.CONNECT, "PATCH", False, True),
        (FailureReason.CONNECT, "PUT", False, True),
        (FailureReason.TLS, "POST", False, True),
        (FailureReason.TLS, "GET", True, True),
        (FailureReason.TIMEOUT, "GET", True, True),
        (FailureReason.TIMEOUT, "DELETE", True, True),
        (FailureReason.TIMEOUT, "POST", True, False),
        (FailureReason.TIMEOUT, "PUT", False, False),
        (FailureReason.RESET, "HEAD", True, True),
        (FailureReason.RESET, "OPTIONS", True, True),
        (FailureReason.RESET, "PATCH", True, False),
        (FailureReason.RESET, "DELETE", False, False),
        (FailureReason.STATUS, "PUT", True, True),
        (FailureReason.STATUS, "GET", True, True),
        (FailureReason.STATUS, "POST", True, False),
        (FailureReason.STATUS, "GET", False, False),
    ],
)
def test_spot_checks(reason: FailureReason, method: str, buffered: bool, falls_back: bool) -> None:
    assert should_fall_back(reason, method, body_buffered=buffered, enabled=True) is falls_back


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "MKCOL", "LOCK", "PURGE"])
@pytest.mark.parametrize(
    "reason", [FailureReason.TIMEOUT, FailureReason.RESET, FailureReason.STATUS]
)
def test_other_methods_are_not_replayed(reason: FailureReason, method: str) -> None:
    assert should_fall_back(reason, method, body_buffered=True, enabled=True) is False


@pytest.mark.parametrize("reason", [FailureReason.CONNECT, FailureReason.TLS])
@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "POST"])
def test_other_methods_fall_back_when_nothing_was_sent(reason: FailureReason, method: str) -> None:
    assert should_fall_back(reason, method, body_buffered=False, enabled=True)


@pytest.mark.parametrize("reason", list(FailureReason))
@pytest.mark.parametrize("method", METHODS)
def test_disabled_never_falls_back(reason: FailureReason, method: str) -> None:
    assert should_fall_back(reason, method, body_buffered=True, enabled=False) is False


# --- fallback_reason: the attempt loop's "try legacy?" and attempt_failure -------------------

_STATUSES = FallbackConfig(statuses=frozenset({502, 503}))


@pytest.mark.parametrize(
    ("error", "status", "method", "buffered", "config", "expected"),
    [
        (None, 200, "GET", True, _STATUSES, None),  # an answer: it stands
        (None, 500, "GET", True, _STATUSES, None),  # 5xx not listed in statuses
        (None, 503, "GET", True, _STATUSES, FailureReason.STATUS),
        (None, 503, "POST", True, _STATUSES, None),  # signal's answer is returned
        (None, 503, "GET", False, _STATUSES, None),  # body streamed: cannot replay
        (None, 404, "GET", True, FallbackConfig(statuses=frozenset({404})), FailureReason.STATUS),
        (FailureReason.CONNECT, None, "POST", False, _STATUSES, FailureReason.CONNECT),
        (FailureReason.TIMEOUT, None, "GET", True, _STATUSES, FailureReason.TIMEOUT),
        (FailureReason.TIMEOUT, None, "PATCH", True, _STATUSES, None),
        (FailureReason.RESET, None, "DELETE", True, _STATUSES, FailureReason.RESET),
        (FailureReason.RESET, None, "DELETE", False, _STATUSES, None),
        (FailureReason.CONNECT, None, "GET", True, FallbackConfig(enabled=False), None),
        (None, 503, "GET", True, FallbackConfig(enabled=False), None),
    ],
)
def test_fallback_reason(
    error: FailureReason | None,
    status: int | None,
    method: str,
    buffered: bool,
    config: FallbackConfig,
    expected: FailureReason | None,
) -> None:
    assert fallback_reason(error, status, method, body_buffered=buffered, config=config) is expected


@pytest.mark.parametrize(
    ("error", "status", "expected"),
    [
        (None, 200, None),
        (None, 404, None),  # the client's mistake, not signal's
        (None, 499, None),
        (None, 500, FailureReason.STATUS),
        (None, 599, FailureReason.STATUS),
        (FailureReason.CONNECT, None, FailureReason.CONNECT),
        (FailureReason.TIMEOUT, None, FailureReason.TIMEOUT),
        (FailureReason.RESET, None, FailureReason.RESET),
    ],
)
def test_attempt_failure(
    error: FailureReason | None, status: int | None, expected: FailureReason | None
) -> None:
    assert attempt_failure(error, status) is expected
