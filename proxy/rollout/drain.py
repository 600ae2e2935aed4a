"""Which upgraded connections a change closes (SPEC 12). Pure, no I/O.

A WebSocket connection stays on the side chosen at its handshake through reloads; only
when routing would now send its session from signal to legacy (emergency, a lowered
percentage, a tripped guard) is it closed, so that the client's reconnect lands where
routing says. Raising a percentage never cuts a connection: legacy's are left alone.
"""

from __future__ import annotations

from enum import StrEnum

from proxy.config.values import RolloutConfig
from proxy.rollout.routing import Reason, Side, choose_upstream


class DrainReason(StrEnum):
    """Label `reason` of `rollout_upgraded_drained_total`."""

    EMERGENCY = "emergency"
    ROLLBACK = "rollback"
    GUARD = "guard"
    SHUTDOWN = "shutdown"


def drain_reason(
    rollout: RolloutConfig,
    side: Side,
    session_id: str | None,
    path: str,
    *,
    guard_tripped: bool,
) -> DrainReason | None:
    """Why a connection served by `side` for `session_id` on `path` must close now, or
    None when it may stay."""
    if side is not Side.SIGNAL:
        return None
    now = choose_upstream(rollout, session_id, path, guard_tripped=guard_tripped)
    if now.side is Side.SIGNAL:
        return None
    if now.reason is Reason.EMERGENCY:
        return DrainReason.EMERGENCY
    if now.reason is Reason.GUARD:
        return DrainReason.GUARD
    return DrainReason.ROLLBACK
