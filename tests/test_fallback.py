"""proxy.fallback: every cell of the SPEC 5 replay table."""

from __future__ import annotations

import itertools

import pytest

from proxy.errors import FailureReason
from proxy.rollout.fallback import should_fall_back

# SPEC 5, transcribed: per failure, (GET/HEAD/OPTIONS/PUT/DELETE with the body buffered,
# POST/PATCH/others or a body too large to buffer).
SPEC_TABLE: dict[FailureReason, tuple[bool, bool]] = {
    FailureReason.CONNECT: (True, True),  # nothing was sent: always safe
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


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "POST"])
def test_other_methods_fall_back_when_nothing_was_sent(method: str) -> None:
    assert should_fall_back(FailureReason.CONNECT, method, body_buffered=False, enabled=True)


@pytest.mark.parametrize("reason", list(FailureReason))
@pytest.mark.parametrize("method", METHODS)
def test_disabled_never_falls_back(reason: FailureReason, method: str) -> None:
    assert should_fall_back(reason, method, body_buffered=True, enabled=False) is False
