"""The autopilot's stage machine (SPEC 13), as a pure function of its state and one tick.

A tick brings what the file says now (a person may have changed it), what operators asked
(`rollout approve` / `pause` / `resume`, as counters the controller compares with what it
last saw) and, except on the first tick after a change, one analysis. `decide` returns the
state after the tick and at most one move (promote or roll back) plus the notices to post.

Pauses have kinds, because they lift differently:

| kind | set by | lifted by |
|---|---|---|
| `plan` | emergency on, or a percentage that is not a stage | the file back on the plan |
| `person` | `rollout pause` | `rollout resume` |
| `traffic`, `errors` | `max_inconclusive`, `max_errors` in a row | a conclusive analysis; resume |
| `rollback` | applying `on_failure` | `rollout resume` (no automatic second try) |

`on_failure: gradual` walks down to the rollback target one step per tick (`Walk`): the
rollback pause holds from the first step, each tick writes the next step whatever the
figures say, and a person's change, `rollout pause` or `rollout resume` stops the walk
where it stands (never overwritten, never carried on).

Whenever a pause lifts or a person changes the percentage, the bake starts again; the
analysis on the tick of a person's change measured the old value, so it is not counted.
Unreadable or too few figures say nothing about signal: they neither add to a run of
failures nor end it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from proxy.config.values import AutopilotConfig
from proxy.rollout.analysis import Analysis, Outcome
from proxy.rollout.gradual import gradual_steps, step_number
from proxy.rollout.stages import next_stage, previous_stage

# `on_failure: gradual`'s pace. SPEC 13 has no key for it: the step is the default of
# `rollout rollback --gradual`, and one step is taken per tick, i.e. per autopilot.interval.
GRADUAL_STEP = 5.0


class Event(StrEnum):
    """What the events webhook and the history call a decision (SPEC 13)."""

    PROMOTE = "promote"
    ROLLBACK = "rollback"
    PAUSE = "pause"
    RESUME = "resume"
    GATE = "gate"
    APPROVE = "approve"
    HUMAN_CHANGE = "human_change"


class PauseKind(StrEnum):
    PLAN = "plan"
    PERSON = "person"
    TRAFFIC = "traffic"
    ERRORS = "errors"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Walk:
    """A gradual rollback from `start` down to `target`. Kept after its last step until the
    rollback pause lifts, so a last step lost to a crash is walked again at restart."""

    start: float
    target: float
    step: float
    reason: str  # the failures that started it

    def steps(self) -> list[float]:
        return gradual_steps(self.start, self.target, self.step)

    def where(self, percentage: float) -> str:
        """`step 2 of 4` for the step that wrote `percentage` (`before step 1 of 4` at the
        start: a first step lost to a crash)."""
        steps = self.steps()
        k = step_number(steps, percentage)
        return f"step {k} of {len(steps)}" if k else f"before step 1 of {len(steps)}"

    def next_step(self, percentage: float) -> float:
        return next(s for s in self.steps() if s < percentage)


@dataclass(frozen=True, slots=True)
class PilotState:
    """Everything the controller must remember across a restart."""

    percentage: float  # what the file said (or the autopilot wrote) at the last tick
    emergency: bool
    stage_entered_at: float  # wall clock, seconds: when the bake started
    passes: int = 0  # in a row
    failures: int = 0  # in a row
    inconclusive: int = 0  # in a row
    errors: int = 0  # in a row
    pause: PauseKind | None = None
    pause_reason: str | None = None
    waiting_gate: float | None = None  # the gated percentage a promotion waits for
    approvals_used: int = 0  # operator approvals consumed
    resumes_seen: int = 0  # operator resumes already acted on
    walk: Walk | None = None  # on_failure: gradual, under way or just done

    @property
    def walking(self) -> bool:
        """A gradual rollback has steps left to write."""
        return self.walk is not None and self.percentage > self.walk.target

    def restarted(self, now: float) -> PilotState:
        """The bake and every run counted again from `now`."""
        return dataclasses.replace(
            self,
            stage_entered_at=now,
            passes=0,
            failures=0,
            inconclusive=0,
            errors=0,
            waiting_gate=None,
        )


@dataclass(frozen=True, slots=True)
class Operator:
    """What people asked, from the state file's operator part."""

    approvals: int = 0
    resumes: int = 0
    paused: bool = False
    pause_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    event: Event
    reason: str


@dataclass(frozen=True, slots=True)
class Move:
    """A write of `rollout.percentage`: a promotion or a rollback."""

    event: Event  # PROMOTE or ROLLBACK
    before: float
    after: float
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    state: PilotState  # after the tick, the move (if any) applied
    move: Move | None = None
    notices: tuple[Notice, ...] = ()
    # The state with this tick's analysis counted but the move not applied: what stands
    # when the move cannot be made (a confirm hook said no, the write was refused).
    counted: PilotState | None = None


def initial_state(percentage: float, emergency: bool, now: float) -> PilotState:
    return PilotState(percentage=percentage, emergency=emergency, stage_entered_at=now)


def decide(
    state: PilotState,
    *,
    config: AutopilotConfig,
    stages: tuple[float, ...],
    percentage: float,
    emergency: bool,
    operator: Operator,
    analysis: Analysis | None,
    now: float,
) -> Decision:
    """One tick of the machine; `percentage` and `emergency` are what the file says now."""
    notices: list[Notice] = []
    changed = percentage != state.percentage or emergency != state.emergency
    state = _follow_the_file(state, percentage, emergency, stages, now, notices)
    state = _follow_operators(state, operator, now, notices)
    if changed or state.walking:
        # The interval ran at the old value: it says nothing about the person's, which
        # must not be promoted or rolled back on figures it never had. A walk under way
        # is a decision being carried out: it waits on no figures.
        analysis = None
    if analysis is not None:
        state = _count(state, analysis, config, now, notices)
    # A pause lifted this tick (traffic back, a resume) may uncover one that still stands
    # (emergency on, off the plan, `rollout pause`); both steps are idempotent.
    state = _follow_the_file(state, percentage, emergency, stages, now, notices)
    state = _follow_operators(state, operator, now, notices)
    if state.walking:
        step, stepped = _step(state, now)
        return Decision(stepped, step, tuple(notices), state)
    if analysis is None or state.pause is not None:
        return Decision(state, None, tuple(notices), state)

    move, after = _move(state, analysis, config, stages, operator, now, notices)
    return Decision(after, move, tuple(notices), state)


def _follow_the_file(
    state: PilotState,
    percentage: float,
    emergency: bool,
    stages: tuple[float, ...],
    now: float,
    notices: list[Notice],
) -> PilotState:
    if percentage != state.percentage or emergency != state.emergency:
        notices.append(Notice(Event.HUMAN_CHANGE, _describe_change(state, percentage, emergency)))
        if state.walking:
            state = _stop_walk(state, "by someone else's change")
        # A walk already done goes too: its target must not pull a person's value down.
        state = dataclasses.replace(state, percentage=percentage, emergency=emergency, walk=None)
        state = state.restarted(now)
    off_plan = None
    if emergency:
        off_plan = "rollout.emergency is on"
    elif percentage not in stages:
        off_plan = f"{percentage:g} % is not a stage of rollout.stages"
    if off_plan is not None and state.pause is None:
        notices.append(Notice(Event.PAUSE, f"{off_plan}: the autopilot waits"))
        return dataclasses.replace(state, pause=PauseKind.PLAN, pause_reason=off_plan)
    if off_plan is None and state.pause is PauseKind.PLAN:
        notices.append(Notice(Event.RESUME, f"back on the plan at {percentage:g} %"))
        return dataclasses.replace(state, pause=None, pause_reason=None).restarted(now)
    return state


def _describe_change(state: PilotState, percentage: float, emergency: bool) -> str:
    parts = []
    if percentage != state.percentage:
        parts.append(f"rollout.percentage {state.percentage:g} -> {percentage:g}")
    if emergency != state.emergency:
        parts.append(
            f"rollout.emergency {str(state.emergency).lower()} -> {str(emergency).lower()}"
        )
    changed = ", ".join(parts) + " by someone else"
    if state.walk is not None and state.walking:
        where = state.walk.where(state.percentage)
        return f"{changed}: the gradual rollback stops ({where} at {state.percentage:g} % stands)"
    return changed + ": the bake starts again"


def _stop_walk(state: PilotState, why: str) -> PilotState:
    """The walk ends where it stands; the rollback pause stays."""
    assert state.walk is not None
    walk = state.walk
    reason = (
        f"gradual rollback {walk.start:g} % -> {walk.target:g} % stopped at "
        f"{state.percentage:g} % ({walk.where(state.percentage)}) {why}; `rollout resume` "
        "to try again"
    )
    return dataclasses.replace(state, walk=None, pause_reason=reason)


def _follow_operators(
    state: PilotState, operator: Operator, now: float, notices: list[Notice]
) -> PilotState:
    if operator.resumes > state.resumes_seen:
        state = dataclasses.replace(state, resumes_seen=operator.resumes)
        if state.pause in (PauseKind.ROLLBACK, PauseKind.TRAFFIC, PauseKind.ERRORS):
            notices.append(Notice(Event.RESUME, f"rollout resume (was: {state.pause_reason})"))
            lifted = dataclasses.replace(state, pause=None, pause_reason=None, walk=None)
            state = lifted.restarted(now)
    if operator.paused and state.walk is not None and state.walking:
        reason = operator.pause_reason or "no reason given"
        where = f"{state.walk.where(state.percentage)} at {state.percentage:g} % stands"
        notices.append(
            Notice(Event.PAUSE, f"rollout pause: {reason}; the gradual rollback stops ({where})")
        )
        return dataclasses.replace(state, walk=None, pause=PauseKind.PERSON, pause_reason=reason)
    if operator.paused and state.pause is None:
        reason = operator.pause_reason or "no reason given"
        notices.append(Notice(Event.PAUSE, f"rollout pause: {reason}"))
        return dataclasses.replace(state, pause=PauseKind.PERSON, pause_reason=reason)
    if not operator.paused and state.pause is PauseKind.PERSON:
        notices.append(Notice(Event.RESUME, "rollout resume"))
        return dataclasses.replace(state, pause=None, pause_reason=None).restarted(now)
    return state


def _count(
    state: PilotState,
    analysis: Analysis,
    config: AutopilotConfig,
    now: float,
    notices: list[Notice],
) -> PilotState:
    """The runs after this analysis; automatic pauses set or lifted."""
    outcome = analysis.outcome
    if outcome is Outcome.ERROR:
        # Failures and the run of inconclusive ones stand: unreadable figures say nothing.
        state = dataclasses.replace(state, errors=state.errors + 1, passes=0)
        if state.errors >= config.max_errors and state.pause is None:
            reason = f"{state.errors} analyses in a row could not read figures ({analysis.reason})"
            notices.append(Notice(Event.PAUSE, reason))
            state = dataclasses.replace(state, pause=PauseKind.ERRORS, pause_reason=reason)
        return state
    if outcome is Outcome.INCONCLUSIVE:
        # Its figures were read: the run of unreadable ones ends; failures stand (no news).
        state = dataclasses.replace(state, inconclusive=state.inconclusive + 1, errors=0, passes=0)
        if state.inconclusive >= config.max_inconclusive and state.pause is None:
            reason = f"{state.inconclusive} inconclusive analyses in a row: waiting for traffic"
            notices.append(Notice(Event.PAUSE, reason))
            state = dataclasses.replace(state, pause=PauseKind.TRAFFIC, pause_reason=reason)
        return state

    if state.pause in (PauseKind.TRAFFIC, PauseKind.ERRORS):
        notices.append(Notice(Event.RESUME, f"figures again ({outcome.value}): carrying on"))
        state = dataclasses.replace(state, pause=None, pause_reason=None).restarted(now)
    state = dataclasses.replace(state, inconclusive=0, errors=0)
    if outcome is Outcome.PASS:
        return dataclasses.replace(state, passes=state.passes + 1, failures=0)
    if outcome is Outcome.FAIL:
        return dataclasses.replace(state, passes=0, failures=state.failures + 1)
    return dataclasses.replace(state, passes=0, failures=0)


def _move(
    state: PilotState,
    analysis: Analysis,
    config: AutopilotConfig,
    stages: tuple[float, ...],
    operator: Operator,
    now: float,
    notices: list[Notice],
) -> tuple[Move | None, PilotState]:
    if analysis.outcome is Outcome.FAIL and state.failures >= config.failure_limit:
        return _roll_back(state, analysis, config, stages, now, notices)

    target = next_stage(stages, state.percentage)
    if target is None:
        return None, state
    ready = now - state.stage_entered_at >= config.bake and state.passes >= config.checks
    if target not in config.gates:
        if not ready:
            return None, state
        return _promote(state, target, f"baked and {state.passes} passes in a row", now)

    approved = operator.approvals > state.approvals_used
    waiting = state.waiting_gate == target
    conclusive = analysis.outcome not in (Outcome.FAIL, Outcome.ERROR)
    if approved and (ready or (waiting and conclusive)):
        notices.append(Notice(Event.APPROVE, f"rollout approve opens the gate to {target:g} %"))
        consumed = dataclasses.replace(state, approvals_used=state.approvals_used + 1)
        return _promote(consumed, target, "approved at the gate", now)
    if ready and not waiting:
        notices.append(Notice(Event.GATE, f"{target:g} % is a gate: waiting for `rollout approve`"))
        return None, dataclasses.replace(state, waiting_gate=target)
    return None, state


def _promote(state: PilotState, target: float, why: str, now: float) -> tuple[Move, PilotState]:
    move = Move(Event.PROMOTE, state.percentage, target, why)
    return move, dataclasses.replace(state, percentage=target).restarted(now)


def _roll_back(
    state: PilotState,
    analysis: Analysis,
    config: AutopilotConfig,
    stages: tuple[float, ...],
    now: float,
    notices: list[Notice],
) -> tuple[Move | None, PilotState]:
    target = rollback_target(config.on_failure, stages, state.percentage)
    why = f"{state.failures} failed analyses in a row: {analysis.reason}"
    if target is None:
        reason = f"{why}; already at {state.percentage:g} %, nothing lower to roll back to"
        notices.append(Notice(Event.PAUSE, reason))  # no move to post: the pause says it
        paused = dataclasses.replace(state, pause=PauseKind.ROLLBACK, pause_reason=reason)
        return None, paused
    if config.on_failure == "gradual":
        walk = Walk(state.percentage, target, GRADUAL_STEP, why)
        return _step(dataclasses.replace(state, pause=PauseKind.ROLLBACK, walk=walk), now)
    reason = (
        f"rolled back {state.percentage:g} % -> {target:g} % ({why}); `rollout resume` to try again"
    )
    after = dataclasses.replace(state, percentage=target).restarted(now)
    after = dataclasses.replace(after, pause=PauseKind.ROLLBACK, pause_reason=reason)
    return Move(Event.ROLLBACK, state.percentage, target, why), after


def _step(state: PilotState, now: float) -> tuple[Move, PilotState]:
    """The walk's next step; the last one leaves the pause saying where it landed."""
    assert state.walk is not None
    walk = state.walk
    after = walk.next_step(state.percentage)
    span = f"{walk.start:g} % -> {walk.target:g} %"
    reason = f"{walk.where(after)} of the gradual rollback {span}: {walk.reason}"
    if after == walk.target:
        steps = len(walk.steps())
        pause_reason = (
            f"rolled back {span} in {steps} step{'s' if steps > 1 else ''} ({walk.reason}); "
            "`rollout resume` to try again"
        )
    else:
        pause_reason = f"rolling back {span}, {walk.step:g} % a step ({walk.reason})"
    stepped = dataclasses.replace(state, percentage=after, pause_reason=pause_reason)
    return Move(Event.ROLLBACK, state.percentage, after, reason), stepped.restarted(now)


def rollback_target(on_failure: str, stages: tuple[float, ...], percentage: float) -> float | None:
    """Where `on_failure` goes from `percentage`; None when there is nothing lower.

    `gradual` lands where `previous` does, in steps (`Walk`).
    """
    if on_failure == "zero":
        return 0.0 if percentage > 0 else None
    return previous_stage(stages, percentage)


def next_action(
    state: PilotState,
    config: AutopilotConfig,
    stages: tuple[float, ...],
    operator: Operator,
    now: float,
) -> str:
    """What the autopilot will do next, in one sentence, for `rollout autopilot status`."""
    if state.walk is not None and state.walking:
        walk, step = state.walk, state.walk.next_step(state.percentage)
        return (
            f"rolling back gradually to {walk.target:g} %: {step:g} % next "
            f"({walk.where(step)}), one step per autopilot.interval; then paused"
        )
    if state.pause is not None:
        lift = {
            PauseKind.PLAN: "put the file back on a stage (and emergency off)",
            PauseKind.PERSON: "`rollout resume`",
            PauseKind.TRAFFIC: "traffic (the first conclusive analysis), or `rollout resume`",
            PauseKind.ERRORS: (
                "readable figures (the first conclusive analysis), or `rollout resume`"
            ),
            PauseKind.ROLLBACK: "`rollout resume` to try again",
        }[state.pause]
        return f"paused ({state.pause_reason}); waits for {lift}"
    target = next_stage(stages, state.percentage)
    if target is None:
        return f"at the last stage ({state.percentage:g} %): nothing more to promote"
    left = state.stage_entered_at + config.bake - now
    missing = max(config.checks - state.passes, 0)
    gated = target in config.gates
    approved = operator.approvals > state.approvals_used
    if state.waiting_gate == target and not approved:
        return f"waiting at the gate to {target:g} %: `rollout approve` opens it"
    if state.waiting_gate == target:
        return f"approved: promotes to {target:g} % at the next analysis that does not fail"
    parts = []
    if left > 0:
        parts.append(f"bake {duration_text(left)} more")
    if missing:
        parts.append(f"{missing} more passing analys{'is' if missing == 1 else 'es'}")
    condition = " and ".join(parts) if parts else "the next passing analysis"
    gate = " (a gate: needs `rollout approve`)" if gated and not approved else ""
    return f"promote to {target:g} %{gate} after {condition}"


def duration_text(seconds: float) -> str:
    """`45 s`, `3 min 20 s`, `2 h 5 min`."""
    seconds = max(round(seconds), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
