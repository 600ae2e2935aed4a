"""proxy.rollout.drain: which upgraded connections a change closes (SPEC 12), as a table.

Vectors from SPEC 3 with seed `rollout`: bob is bucket 1133, alice 9177.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.values import Feature, RolloutConfig
from proxy.rollout.drain import DrainReason, drain_reason
from proxy.rollout.routing import Side
from proxy.telemetry.metrics import DRAIN_REASONS

SIGNAL, LEGACY = Side.SIGNAL, Side.LEGACY
STREAM = Feature("stream", ("/stream",), 50.0)

ROWS = [
    # (name, rollout, side, session, path, guard tripped, expected)
    ("unchanged", RolloutConfig(percentage=50), SIGNAL, "bob", "/ws", False, None),
    ("raised", RolloutConfig(percentage=100), SIGNAL, "bob", "/ws", False, None),
    ("lowered below", RolloutConfig(percentage=10), SIGNAL, "bob", "/ws", False, "rollback"),
    ("lowered, still in", RolloutConfig(percentage=12), SIGNAL, "bob", "/ws", False, None),
    ("to zero", RolloutConfig(percentage=0), SIGNAL, "bob", "/ws", False, "rollback"),
    (
        "emergency",
        RolloutConfig(percentage=100, emergency=True),
        SIGNAL,
        "bob",
        "/",
        False,
        "emergency",
    ),
    ("guard", RolloutConfig(percentage=100), SIGNAL, "bob", "/ws", True, "guard"),
    (
        "guard spares test sessions",
        RolloutConfig(percentage=0, test_sessions=frozenset({"bob"})),
        SIGNAL,
        "bob",
        "/ws",
        True,
        None,
    ),
    (
        "emergency takes test sessions",
        RolloutConfig(emergency=True, test_sessions=frozenset({"bob"})),
        SIGNAL,
        "bob",
        "/ws",
        False,
        "emergency",
    ),
    ("test session removed", RolloutConfig(percentage=0), SIGNAL, "bob", "/ws", False, "rollback"),
    (
        "legacy is never cut: emergency",
        RolloutConfig(emergency=True),
        LEGACY,
        "alice",
        "/",
        False,
        None,
    ),
    (
        "legacy is never cut: raised",
        RolloutConfig(percentage=100),
        LEGACY,
        "alice",
        "/",
        False,
        None,
    ),
    (
        "feature percentage applies",
        RolloutConfig(percentage=100, features=(STREAM,)),
        SIGNAL,
        "alice",
        "/stream/x",
        False,
        "rollback",
    ),
    (
        "feature kept, global lowered",
        RolloutConfig(percentage=0, features=(STREAM,)),
        SIGNAL,
        "bob",
        "/stream",
        False,
        None,
    ),
]


@pytest.mark.parametrize(
    ("rollout", "side", "session", "path", "tripped", "expected"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_drain_table(
    rollout: RolloutConfig,
    side: Side,
    session: str,
    path: str,
    tripped: bool,
    expected: str | None,
) -> None:
    reason = drain_reason(rollout, side, session, path, guard_tripped=tripped)
    assert (reason.value if reason else None) == expected


@given(
    session=st.text(min_size=1, max_size=20),
    before=st.integers(0, 10000),
    raised_by=st.integers(0, 10000),
)
def test_raising_a_percentage_never_drains(session: str, before: int, raised_by: int) -> None:
    """Whoever signal served at a percentage is still signal's at any higher one."""
    low, high = before / 100, min(before + raised_by, 10000) / 100
    was = drain_reason(RolloutConfig(percentage=low), SIGNAL, session, "/", guard_tripped=False)
    if was is None:  # the session was on signal at `low`
        now = drain_reason(
            RolloutConfig(percentage=high), SIGNAL, session, "/", guard_tripped=False
        )
        assert now is None


def test_every_reason_is_a_metric_label() -> None:
    assert set(DRAIN_REASONS) == {"emergency", "rollback", "guard", "shutdown"}
    assert {r.value for r in DrainReason} == set(DRAIN_REASONS)
