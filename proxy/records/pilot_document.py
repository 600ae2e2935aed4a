"""The controller's part of `rollout-autopilot.json`: written by `rollout autopilot`, read by
`rollout autopilot status` (and by the controller itself after a restart)."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict, cast

from proxy.records.pilot_state import OperatorState
from proxy.rollout.analysis import AnalysisDocument
from proxy.rollout.pilot import Operator, PauseKind, PilotState, Walk

KEEP_ANALYSES = 20  # the last analyses kept for `autopilot status`


class WalkDocument(TypedDict):
    start: float
    target: float
    step: float
    reason: str


class StateDocument(TypedDict):
    percentage: float
    emergency: bool
    stage_entered_at: float
    passes: int
    failures: int
    inconclusive: int
    errors: int
    pause: str | None
    pause_reason: str | None
    waiting_gate: float | None
    approvals_used: int
    resumes_seen: int
    walk: NotRequired[WalkDocument | None]  # absent in files written before gradual rollbacks


class AnalysisEntry(TypedDict):
    time: float
    percentage: float
    analysis: AnalysisDocument


class PendingMove(TypedDict):
    """A write about to happen: after a crash, tells our own write from a person's."""

    event: str
    before: float
    after: float
    at: float


class ControllerDocument(TypedDict):
    state: StateDocument
    analyses: list[AnalysisEntry]  # oldest first, at most KEEP_ANALYSES
    next_at: float | None  # wall clock of the next analysis
    held: str | None  # why the last promotion was held back (a confirm hook said no)
    next_action: str  # `next_action()` at the save, for readers without the operator part
    pending: PendingMove | None
    pid: int
    updated_at: float


def state_document(state: PilotState) -> StateDocument:
    return {
        "percentage": state.percentage,
        "emergency": state.emergency,
        "stage_entered_at": state.stage_entered_at,
        "passes": state.passes,
        "failures": state.failures,
        "inconclusive": state.inconclusive,
        "errors": state.errors,
        "pause": None if state.pause is None else state.pause.value,
        "pause_reason": state.pause_reason,
        "waiting_gate": state.waiting_gate,
        "approvals_used": state.approvals_used,
        "resumes_seen": state.resumes_seen,
        "walk": None if state.walk is None else _walk_document(state.walk),
    }


def _walk_document(walk: Walk) -> WalkDocument:
    return {"start": walk.start, "target": walk.target, "step": walk.step, "reason": walk.reason}


def _walk(doc: WalkDocument | None) -> Walk | None:
    if doc is None:
        return None
    return Walk(float(doc["start"]), float(doc["target"]), float(doc["step"]), str(doc["reason"]))


def pilot_state(doc: StateDocument) -> PilotState:
    return PilotState(
        percentage=float(doc["percentage"]),
        emergency=bool(doc["emergency"]),
        stage_entered_at=float(doc["stage_entered_at"]),
        passes=int(doc["passes"]),
        failures=int(doc["failures"]),
        inconclusive=int(doc["inconclusive"]),
        errors=int(doc["errors"]),
        pause=None if doc["pause"] is None else PauseKind(doc["pause"]),
        pause_reason=doc["pause_reason"],
        waiting_gate=None if doc["waiting_gate"] is None else float(doc["waiting_gate"]),
        approvals_used=int(doc["approvals_used"]),
        resumes_seen=int(doc["resumes_seen"]),
        walk=_walk(doc.get("walk")),
    )


def controller_document(raw: dict[str, Any] | None) -> ControllerDocument | None:
    """The controller part as read from the file; None when absent or not ours."""
    if not raw or not isinstance(raw.get("state"), dict):
        return None
    return cast(ControllerDocument, raw)


def operator_of(part: OperatorState) -> Operator:
    """What people asked, from the state file's operator part, as the stage machine takes it."""
    pause = part["pause"]
    return Operator(
        approvals=part["approvals"],
        resumes=part["resumes"],
        paused=pause is not None,
        pause_reason=None if pause is None else pause["reason"],
    )
