"""proxy.rollout.pilot: the autopilot's stage machine, driven tick by tick (SPEC 13)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.values import AutopilotConfig
from proxy.rollout.analysis import Analysis, Outcome
from proxy.rollout.pilot import (
    Decision,
    Event,
    Operator,
    PauseKind,
    PilotState,
    Walk,
    decide,
    initial_state,
    next_action,
    rollback_target,
)
from proxy.rollout.stages import next_stage

STAGES = (0.0, 10.0, 30.0, 50.0, 100.0)
CONFIG = AutopilotConfig(
    interval=60.0,
    bake=600.0,
    checks=3,
    failure_limit=2,
    max_inconclusive=3,
    max_errors=2,
    gates=(100.0,),
    on_failure="previous",
)
T0 = 1_700_000_000.0
GRADUAL = dataclasses.replace(CONFIG, on_failure="gradual")

PASS = Analysis(Outcome.PASS, "every criterion holds")
HOLD = Analysis(Outcome.HOLD, "signal p95 250 ms (needs < 200 ms): not met")
FAIL = Analysis(Outcome.FAIL, "signal error rate 8.00 % (needs <= 5.00 %): breached")
INCONCLUSIVE = Analysis(Outcome.INCONCLUSIVE, "12 signal attempts in 60 s, fewer than 100")
ERROR = Analysis(Outcome.ERROR, "figures unreadable: connection refused")
BY_LETTER = {"P": PASS, "H": HOLD, "F": FAIL, "I": INCONCLUSIVE, "E": ERROR, "-": None}


@dataclass
class Run:
    """The file, the operators and the clock around `decide`, as the controller keeps them:
    a move is written to the file (the next tick reads it back)."""

    percentage: float = 0.0
    config: AutopilotConfig = CONFIG
    emergency: bool = False
    operator: Operator = field(default_factory=Operator)
    now: float = T0
    state: PilotState = field(init=False)
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = initial_state(self.percentage, self.emergency, self.now)

    def tick(self, analysis: Analysis | None, seconds: float = 60.0) -> Decision:
        self.now += seconds
        decision = decide(
            self.state,
            config=self.config,
            stages=STAGES,
            percentage=self.percentage,
            emergency=self.emergency,
            operator=self.operator,
            analysis=analysis,
            now=self.now,
        )
        self.state = decision.state
        if decision.move is not None:
            self.percentage = decision.move.after
        self.decisions.append(decision)
        return decision

    def ticks(self, letters: str, seconds: float = 60.0) -> list[Decision]:
        return [self.tick(BY_LETTER[letter], seconds) for letter in letters]

    def moves(self) -> list[tuple[str, float, float]]:
        return [(d.move.event.value, d.move.before, d.move.after) for d in self.decisions if d.move]

    def events(self) -> list[str]:
        return [n.event.value for d in self.decisions for n in d.notices]

    def approve(self) -> None:
        self.operator = dataclasses.replace(self.operator, approvals=self.operator.approvals + 1)

    def resume(self) -> None:
        self.operator = dataclasses.replace(self.operator, resumes=self.operator.resumes + 1)


def events(decision: Decision) -> list[Event]:
    return [n.event for n in decision.notices]


# --- walks: a sequence of analyses, the moves it makes and where it ends ---------------------

# (case, config, start, analyses P/H/F/I/E/- (None), seconds per tick, moves, final pause)
WALKS: list[
    tuple[str, AutopilotConfig, float, str, float, list[tuple[str, float, float]], PauseKind | None]
] = [
    ("bake not over: passes do not promote", CONFIG, 0, "PPPPPPPPP", 60, [], None),
    ("bake over with passes: promotes", CONFIG, 0, "PPPPPPPPPP", 60, [("promote", 0, 10)], None),
    ("bake over, passes not enough", CONFIG, 0, "PP", 600, [], None),
    ("bake over, the third pass promotes", CONFIG, 0, "PPP", 600, [("promote", 0, 10)], None),
    ("a hold resets the passes", CONFIG, 0, "PPHPP", 600, [], None),
    ("passes after a hold count again", CONFIG, 0, "PPHPPP", 600, [("promote", 0, 10)], None),
    ("an inconclusive resets the passes", CONFIG, 0, "PPIPP", 600, [], None),
    ("an error resets the passes", CONFIG, 0, "PPEPP", 600, [], None),
    (
        "0 -> 10 -> 30: the bake restarts at each stage",
        CONFIG,
        0,
        "PPPPPP",
        600,
        [("promote", 0, 10), ("promote", 10, 30)],
        None,
    ),
    ("baseline ticks never move", CONFIG, 0, "------", 600, [], None),
    (
        "baseline ticks between passes do not break the run",
        CONFIG,
        0,
        "P-P-P",
        600,
        [("promote", 0, 10)],
        None,
    ),
    ("at the last stage nothing to promote", CONFIG, 100, "PPPPPP", 600, [], None),
    (
        "failures in a row roll back to the previous stage",
        CONFIG,
        30,
        "FF",
        60,
        [("rollback", 30, 10)],
        PauseKind.ROLLBACK,
    ),
    ("one failure is not enough", CONFIG, 30, "F", 60, [], None),
    ("a pass between failures resets the run", CONFIG, 30, "FPF", 60, [], None),
    ("a hold between failures resets the run", CONFIG, 30, "FHF", 60, [], None),
    (
        # Unreadable figures say nothing about signal: they neither add to the run of
        # failures nor forgive it (a flapping Prometheus must not keep a failing signal).
        "an error between failures does not reset the run",
        CONFIG,
        30,
        "FEF",
        60,
        [("rollback", 30, 10)],
        PauseKind.ROLLBACK,
    ),
    (
        # Too little traffic says nothing either, so the run stands.
        "an inconclusive between failures does not reset the run",
        CONFIG,
        30,
        "FIF",
        60,
        [("rollback", 30, 10)],
        PauseKind.ROLLBACK,
    ),
    ("errors are not failures", CONFIG, 30, "E", 60, [], None),
    (
        "on_failure zero",
        dataclasses.replace(CONFIG, on_failure="zero"),
        30,
        "FF",
        60,
        [("rollback", 30, 0)],
        PauseKind.ROLLBACK,
    ),
    (
        "on_failure gradual: the failure writes the first step",
        GRADUAL,
        50,
        "FF",
        60,
        [("rollback", 50, 45)],
        PauseKind.ROLLBACK,
    ),
    (
        "on_failure gradual walks down one step a tick to the previous stage",
        GRADUAL,
        50,
        "FF---",
        60,
        [("rollback", 50, 45), ("rollback", 45, 40), ("rollback", 40, 35), ("rollback", 35, 30)],
        PauseKind.ROLLBACK,
    ),
    (
        # The walk is a decision being carried out: passes or failures do not change it.
        "on_failure gradual: figures during the walk are not counted",
        GRADUAL,
        50,
        "FFPFE",
        60,
        [("rollback", 50, 45), ("rollback", 45, 40), ("rollback", 40, 35), ("rollback", 35, 30)],
        PauseKind.ROLLBACK,
    ),
    (
        "on_failure gradual: once down, nothing moves until resume",
        GRADUAL,
        50,
        "FF---PPPPFFFF",
        600,
        [("rollback", 50, 45), ("rollback", 45, 40), ("rollback", 40, 35), ("rollback", 35, 30)],
        PauseKind.ROLLBACK,
    ),
    (
        "on_failure gradual from 10: a last step of 5 to 0",
        GRADUAL,
        10,
        "FF-",
        60,
        [("rollback", 10, 5), ("rollback", 5, 0)],
        PauseKind.ROLLBACK,
    ),
    ("on_failure gradual at 0: paused, no move", GRADUAL, 0, "FF", 60, [], PauseKind.ROLLBACK),
    (
        "failure_limit 1",
        dataclasses.replace(CONFIG, failure_limit=1),
        10,
        "F",
        60,
        [("rollback", 10, 0)],
        PauseKind.ROLLBACK,
    ),
    ("rollback at stage 0: paused, no move", CONFIG, 0, "FF", 60, [], PauseKind.ROLLBACK),
    (
        "on_failure zero at 0: paused, no move",
        dataclasses.replace(CONFIG, on_failure="zero"),
        0,
        "FF",
        60,
        [],
        PauseKind.ROLLBACK,
    ),
    (
        "after a rollback nothing moves until resume",
        CONFIG,
        30,
        "FFPPPPPPFFFF",
        600,
        [("rollback", 30, 10)],
        PauseKind.ROLLBACK,
    ),
    ("inconclusive in a row: paused for traffic", CONFIG, 10, "III", 600, [], PauseKind.TRAFFIC),
    ("inconclusive below max_inconclusive", CONFIG, 10, "II", 600, [], None),
    ("errors in a row: paused for figures", CONFIG, 10, "EE", 600, [], PauseKind.ERRORS),
    (
        # An inconclusive analysis read its figures: the run of unreadable ones is broken.
        "an inconclusive breaks the run of errors",
        CONFIG,
        10,
        "EIE",
        600,
        [],
        None,
    ),
    (
        # An error says nothing about traffic: the run of quiet intervals stands.
        "an error does not break the run of inconclusive",
        CONFIG,
        10,
        "IIEI",
        600,
        [],
        PauseKind.TRAFFIC,
    ),
    (
        "traffic back: the first conclusive analysis resumes, the bake restarts there",
        CONFIG,
        10,
        "IIIPPP" + "P" * 9,
        60,
        [("promote", 10, 30)],
        None,
    ),
    ("a gate without approval waits", CONFIG, 50, "PPPPPP", 600, [], None),
    (
        "bake 0, checks 1: every pass promotes, until the gate",
        dataclasses.replace(CONFIG, bake=0.0, checks=1),
        0,
        "PPPPP",
        1,
        [("promote", 0, 10), ("promote", 10, 30), ("promote", 30, 50)],
        None,
    ),
]


@pytest.mark.parametrize(
    ("config", "start", "letters", "seconds", "moves", "pause"),
    [row[1:] for row in WALKS],
    ids=[row[0] for row in WALKS],
)
def test_walk(
    config: AutopilotConfig,
    start: float,
    letters: str,
    seconds: float,
    moves: list[tuple[str, float, float]],
    pause: PauseKind | None,
) -> None:
    run = Run(percentage=start, config=config)
    run.ticks(letters, seconds)
    assert run.moves() == moves
    assert run.state.pause is pause
    assert run.state.percentage == run.percentage


def test_the_walk_counts_and_restarts_the_bake_at_each_promotion() -> None:
    run = Run()
    run.ticks("PPPPPPPPP")  # 540 s: three passes long since, the bake not over
    assert run.state.passes == 9
    assert run.moves() == []
    promoted = run.tick(PASS)  # 600 s
    assert promoted.move is not None
    assert (promoted.move.before, promoted.move.after) == (0, 10)
    assert promoted.move.reason == "baked and 10 passes in a row"
    assert promoted.state.stage_entered_at == run.now
    assert (promoted.state.passes, promoted.state.failures) == (0, 0)
    # `counted` is the state without the move: what stands if the write is refused.
    assert promoted.counted is not None
    assert promoted.counted.percentage == 0
    assert promoted.counted.passes == 10
    assert promoted.counted.stage_entered_at == T0


def test_a_rollback_says_why_and_pauses_until_resume() -> None:
    run = Run(percentage=30)
    assert run.tick(FAIL).move is None
    assert run.state.failures == 1
    rolled = run.tick(FAIL)
    assert rolled.move is not None
    assert rolled.move.event is Event.ROLLBACK
    assert rolled.move.reason == f"2 failed analyses in a row: {FAIL.reason}"
    assert rolled.state.pause is PauseKind.ROLLBACK
    assert rolled.state.pause_reason is not None
    assert "rolled back 30 % -> 10 %" in rolled.state.pause_reason
    assert rolled.counted is not None
    assert (rolled.counted.percentage, rolled.counted.pause) == (30, None)

    run.ticks("PPPPPPPPPPPP", 600)
    assert run.percentage == 10
    assert run.state.pause is PauseKind.ROLLBACK

    run.resume()
    resumed = run.tick(PASS)
    assert events(resumed) == [Event.RESUME]
    assert resumed.state.pause is None
    assert resumed.state.stage_entered_at == run.now  # the bake starts again
    assert resumed.state.passes == 1
    assert resumed.move is None
    run.ticks("PPPPPPPPP")
    assert run.moves() == [("rollback", 30, 10)]  # 540 s since the resume
    run.tick(PASS)
    assert run.moves()[-1] == ("promote", 10, 30)


def test_a_rollback_with_nowhere_to_go_pauses_and_says_so() -> None:
    run = Run(percentage=0)
    run.tick(FAIL)
    paused = run.tick(FAIL)
    assert paused.move is None
    assert paused.state.pause is PauseKind.ROLLBACK
    assert [(n.event, n.reason) for n in paused.notices] == [
        (
            Event.PAUSE,
            f"2 failed analyses in a row: {FAIL.reason}; "
            "already at 0 %, nothing lower to roll back to",
        )
    ]
    assert run.tick(FAIL).notices == ()  # said once


def test_a_resume_seen_is_not_banked_for_a_later_pause() -> None:
    run = Run(percentage=30)
    run.resume()  # nothing is paused: this resume lifts nothing, now or later
    assert run.tick(PASS).notices == ()
    run.ticks("FF")
    assert run.state.pause is PauseKind.ROLLBACK
    run.ticks("PPP")
    assert run.state.pause is PauseKind.ROLLBACK
    assert run.state.resumes_seen == 1


# --- gates and approvals ----------------------------------------------------------------------


def at_the_gate() -> Run:
    """At 50 %, baked with its passes: the next stage, 100, is a gate."""
    run = Run(percentage=50)
    run.ticks("PPPPPPPPP")
    return run


def test_the_gate_is_announced_once_and_waited_at() -> None:
    run = at_the_gate()
    reached = run.tick(PASS)
    assert reached.move is None
    assert events(reached) == [Event.GATE]
    assert reached.notices[0].reason == "100 % is a gate: waiting for `rollout approve`"
    assert reached.state.waiting_gate == 100
    assert reached.counted is not None
    assert reached.counted.waiting_gate is None
    for decision in run.ticks("PPPPHPPP"):
        assert decision.move is None
        assert decision.notices == ()
    assert run.state.waiting_gate == 100


@pytest.mark.parametrize(
    ("analysis", "promotes"),
    [(PASS, True), (HOLD, True), (INCONCLUSIVE, True), (FAIL, False), (ERROR, False)],
    ids=["pass", "hold", "inconclusive", "fail", "error"],
)
def test_an_approval_while_waiting_promotes_at_the_next_analysis_that_does_not_fail(
    analysis: Analysis, promotes: bool
) -> None:
    run = at_the_gate()
    run.tick(PASS)
    run.approve()
    decision = run.tick(analysis)
    if promotes:
        assert decision.move is not None
        assert (decision.move.before, decision.move.after) == (50, 100)
        assert decision.move.reason == "approved at the gate"
        assert events(decision) == [Event.APPROVE]
        assert decision.state.approvals_used == 1
        assert decision.state.waiting_gate is None
        # Not applied (the confirm hook said no): the approval is not consumed.
        assert decision.counted is not None
        assert decision.counted.approvals_used == 0
        assert decision.counted.percentage == 50
    else:
        assert decision.move is None
        assert decision.notices == ()
        assert decision.state.approvals_used == 0
        assert decision.state.waiting_gate == 100
        promoted = run.tick(HOLD)  # the next one that does not fail
        assert promoted.move is not None
        assert promoted.move.after == 100


def test_an_approval_given_early_opens_the_next_gate_without_waiting() -> None:
    run = Run(percentage=50)
    run.approve()
    run.ticks("PPPPPPPPP")
    assert run.moves() == []  # the approval does not skip the bake
    promoted = run.tick(PASS)
    assert promoted.move is not None
    assert promoted.move.after == 100
    assert events(promoted) == [Event.APPROVE]  # no GATE: nothing waited
    assert run.state.approvals_used == 1


def test_an_approval_is_consumed_once() -> None:
    config = dataclasses.replace(CONFIG, gates=(30.0, 50.0), bake=0.0, checks=1)
    run = Run(percentage=10, config=config)
    run.approve()
    run.ticks("PPPP", 1)
    # 10 -> 30 took the one approval; 50 waits for another.
    assert run.moves() == [("promote", 10, 30)]
    assert run.state.waiting_gate == 50
    assert run.events() == ["approve", "gate"]
    run.approve()
    run.ticks("PP", 1)
    assert run.moves() == [("promote", 10, 30), ("promote", 30, 50), ("promote", 50, 100)]
    assert run.state.approvals_used == 2


def test_a_failure_at_the_gate_still_rolls_back() -> None:
    run = at_the_gate()
    run.tick(PASS)
    run.approve()
    run.ticks("FF")
    assert run.moves() == [("rollback", 50, 30)]
    assert run.state.approvals_used == 0  # the approval waits for the next gate


# --- pauses: inconclusive, errors, a person's, the plan's -------------------------------------


@pytest.mark.parametrize(
    ("letters", "kind", "reason"),
    [
        ("III", PauseKind.TRAFFIC, "3 inconclusive analyses in a row: waiting for traffic"),
        (
            "EE",
            PauseKind.ERRORS,
            f"2 analyses in a row could not read figures ({ERROR.reason})",
        ),
    ],
    ids=["inconclusive", "errors"],
)
def test_an_automatic_pause_lifts_at_the_first_conclusive_analysis(
    letters: str, kind: PauseKind, reason: str
) -> None:
    run = Run(percentage=10)
    run.ticks("PPPPPPPPP")
    decisions = run.ticks(letters)
    assert [events(d) for d in decisions[:-1]] == [[]] * (len(letters) - 1)
    assert [(n.event, n.reason) for n in decisions[-1].notices] == [(Event.PAUSE, reason)]
    assert run.state.pause is kind
    for decision in run.ticks(letters * 2, 600):  # still quiet: said once, nothing moves
        assert decision.notices == ()
        assert decision.move is None
    resumed = run.tick(HOLD)
    assert [(n.event, n.reason) for n in resumed.notices] == [
        (Event.RESUME, "figures again (hold): carrying on")
    ]
    assert resumed.state.pause is None
    assert resumed.state.stage_entered_at == run.now
    assert (resumed.state.inconclusive, resumed.state.errors) == (0, 0)
    run.ticks("PPPPPPPPP")
    assert run.moves() == []  # the bake counts from the resume
    run.tick(PASS)
    assert run.moves() == [("promote", 10, 30)]


def test_a_failure_lifts_a_traffic_pause_and_counts() -> None:
    run = Run(percentage=30)
    run.ticks("III")
    assert run.state.pause is PauseKind.TRAFFIC
    first = run.tick(FAIL)
    assert events(first) == [Event.RESUME]
    assert first.state.failures == 1
    assert run.tick(FAIL).move is not None


def test_resume_lifts_an_automatic_pause() -> None:
    run = Run(percentage=10)
    run.ticks("III")
    run.resume()
    resumed = run.tick(None)
    assert events(resumed) == [Event.RESUME]
    assert resumed.state.pause is None


def test_rollout_pause_holds_every_decision_until_resume() -> None:
    run = Run(percentage=10)
    run.ticks("PPPPPPPPP")
    run.operator = Operator(paused=True, pause_reason="release freeze")
    paused = run.tick(PASS)
    assert [(n.event, n.reason) for n in paused.notices] == [
        (Event.PAUSE, "rollout pause: release freeze")
    ]
    assert paused.state.pause is PauseKind.PERSON
    assert paused.move is None
    for decision in run.ticks("PPPPFFFFIIII", 600):  # no promotion, no rollback, no repeats
        assert decision.move is None
        assert decision.notices == ()
    run.operator = Operator(paused=False)
    resumed = run.tick(PASS)
    assert [(n.event, n.reason) for n in resumed.notices] == [(Event.RESUME, "rollout resume")]
    assert resumed.state.pause is None
    assert resumed.state.stage_entered_at == run.now
    assert resumed.move is None


def test_rollout_pause_without_a_reason() -> None:
    run = Run(percentage=10, operator=Operator(paused=True))
    decision = run.tick(None)
    assert [n.reason for n in decision.notices] == ["rollout pause: no reason given"]


@pytest.mark.parametrize(
    ("first", "lift"),
    [("III", "traffic"), ("EE", "traffic"), ("FF", "resume")],
    ids=["traffic pause", "errors pause", "rollback pause"],
)
def test_a_person_s_pause_given_during_another_still_holds_when_that_one_lifts(
    first: str, lift: str
) -> None:
    # bake 0 and checks 1: the tick that lifts the first pause could promote at once.
    run = Run(percentage=10, config=dataclasses.replace(CONFIG, bake=0.0, checks=1))
    run.ticks(first)
    assert run.state.pause is not None
    run.operator = dataclasses.replace(run.operator, paused=True, pause_reason="freeze")
    run.tick(None)
    if lift == "resume":
        run.resume()
    decision = run.tick(PASS)
    assert decision.move is None
    assert decision.state.pause is PauseKind.PERSON
    assert events(decision)[-1] is Event.PAUSE
    assert run.tick(PASS).move is None


def test_emergency_pauses_the_plan_and_its_end_resumes_it() -> None:
    run = Run(percentage=30)
    run.ticks("PPPPPPPPP")
    run.emergency = True
    on = run.tick(PASS)
    assert events(on) == [Event.HUMAN_CHANGE, Event.PAUSE]
    assert on.notices[0].reason == (
        "rollout.emergency false -> true by someone else: the bake starts again"
    )
    assert on.notices[1].reason == "rollout.emergency is on: the autopilot waits"
    assert on.state.pause is PauseKind.PLAN
    for decision in run.ticks("PPPPFFFF", 600):
        assert decision.move is None
        assert decision.notices == ()
    run.emergency = False
    off = run.tick(PASS)
    assert events(off) == [Event.HUMAN_CHANGE, Event.RESUME]
    assert off.notices[1].reason == "back on the plan at 30 %"
    assert off.state.pause is None
    assert off.state.stage_entered_at == run.now
    assert off.move is None


def test_emergency_during_a_rollback_pause_still_holds_after_resume() -> None:
    run = Run(percentage=30, config=dataclasses.replace(CONFIG, bake=0.0, checks=1))
    run.ticks("FF")
    assert run.state.pause is PauseKind.ROLLBACK
    run.emergency = True
    run.tick(None)
    run.resume()
    decision = run.tick(PASS)
    assert decision.move is None
    assert decision.state.pause is PauseKind.PLAN


def test_rollout_pause_given_during_an_emergency_holds_when_the_emergency_ends() -> None:
    run = Run(percentage=30, config=dataclasses.replace(CONFIG, bake=0.0, checks=1))
    run.emergency = True
    run.tick(None)
    run.operator = Operator(paused=True, pause_reason="freeze")
    assert run.tick(PASS).notices == ()  # the plan's pause stands; the person's waits
    run.emergency = False
    decision = run.tick(PASS)
    assert events(decision) == [Event.HUMAN_CHANGE, Event.RESUME, Event.PAUSE]
    assert decision.state.pause is PauseKind.PERSON
    assert decision.move is None
    assert run.tick(PASS).move is None


def test_a_percentage_off_the_plan_pauses_until_back_on_it() -> None:
    run = Run(percentage=10)
    run.percentage = 20
    off = run.tick(PASS)
    assert events(off) == [Event.HUMAN_CHANGE, Event.PAUSE]
    assert off.notices[1].reason == "20 % is not a stage of rollout.stages: the autopilot waits"
    assert off.state.pause is PauseKind.PLAN
    run.ticks("PPPPFFFF", 600)
    assert run.moves() == []
    run.percentage = 30
    back = run.tick(PASS)
    assert events(back) == [Event.HUMAN_CHANGE, Event.RESUME]
    assert back.state.pause is None


@pytest.mark.parametrize(
    "analysis",
    [PASS, HOLD, FAIL, INCONCLUSIVE, ERROR, None],
    ids=["pass", "hold", "fail", "inconclusive", "error", "baseline"],
)
def test_a_person_s_change_restarts_the_bake_and_moves_nothing_that_tick(
    analysis: Analysis | None,
) -> None:
    config = dataclasses.replace(CONFIG, bake=0.0, checks=1, failure_limit=1)
    run = Run(percentage=30, config=config)
    run.percentage = 10  # `rollout set 10` while the autopilot bakes 30
    decision = run.tick(analysis)
    assert events(decision) == [Event.HUMAN_CHANGE]
    assert decision.notices[0].reason == (
        "rollout.percentage 30 -> 10 by someone else: the bake starts again"
    )
    # The interval's figures were the old percentage's: nothing moves the person's value.
    assert decision.move is None
    assert decision.state.percentage == 10
    assert decision.state.stage_entered_at == run.now
    assert (decision.state.passes, decision.state.failures) == (0, 0)
    assert run.tick(PASS).move is not None  # the next tick judges 10 % and carries on


def test_a_person_s_change_clears_the_gate_wait_but_not_the_approvals() -> None:
    run = at_the_gate()
    run.tick(PASS)
    assert run.state.waiting_gate == 100
    run.approve()
    run.percentage = 30
    changed = run.tick(None)
    assert changed.state.waiting_gate is None
    assert changed.state.approvals_used == 0
    assert changed.move is None


def test_a_person_s_change_during_a_rollback_pause_keeps_the_pause() -> None:
    run = Run(percentage=30)
    run.ticks("FF")
    run.percentage = 30  # a person puts it back
    decision = run.tick(PASS)
    assert events(decision) == [Event.HUMAN_CHANGE]
    assert decision.state.pause is PauseKind.ROLLBACK
    assert decision.move is None


def test_the_autopilot_s_own_move_is_not_a_person_s_change() -> None:
    run = Run(config=dataclasses.replace(CONFIG, bake=0.0, checks=1))
    run.ticks("PP", 1)
    assert run.moves() == [("promote", 0, 10), ("promote", 10, 30)]
    assert "human_change" not in run.events()


# --- rollback_target ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_failure", "percentage", "target"),
    [
        ("previous", 30.0, 10.0),
        ("previous", 10.0, 0.0),
        ("previous", 0.0, None),
        ("previous", 100.0, 50.0),
        ("gradual", 30.0, 10.0),
        ("gradual", 0.0, None),
        ("zero", 100.0, 0.0),
        ("zero", 10.0, 0.0),
        ("zero", 0.0, None),
    ],
    ids=lambda v: str(v),
)
def test_rollback_target(on_failure: str, percentage: float, target: float | None) -> None:
    assert rollback_target(on_failure, STAGES, percentage) == target


# --- next_action -----------------------------------------------------------------------------


def state(**changes: Any) -> PilotState:
    return dataclasses.replace(initial_state(10.0, False, T0), **changes)


# (case, state, operator, seconds since T0, the sentence)
NEXT: list[tuple[str, PilotState, Operator, float, str]] = [
    (
        "bake left and passes missing",
        state(passes=1),
        Operator(),
        60,
        "promote to 30 % after bake 9 min more and 2 more passing analyses",
    ),
    (
        "bake left under a minute",
        state(passes=3),
        Operator(),
        570,
        "promote to 30 % after bake 30 s more",
    ),
    (
        "bake left with seconds",
        state(passes=3),
        Operator(),
        45,
        "promote to 30 % after bake 9 min 15 s more",
    ),
    (
        "passes missing",
        state(passes=2),
        Operator(),
        600,
        "promote to 30 % after 1 more passing analysis",
    ),
    ("ready", state(passes=3), Operator(), 900, "promote to 30 % after the next passing analysis"),
    (
        "a gate ahead",
        state(percentage=50.0, passes=3),
        Operator(),
        900,
        "promote to 100 % (a gate: needs `rollout approve`) after the next passing analysis",
    ),
    (
        "a gate ahead, approved early",
        state(percentage=50.0, passes=0),
        Operator(approvals=1),
        900,
        "promote to 100 % after 3 more passing analyses",
    ),
    (
        "waiting at the gate",
        state(percentage=50.0, passes=3, waiting_gate=100.0),
        Operator(),
        900,
        "waiting at the gate to 100 %: `rollout approve` opens it",
    ),
    (
        "approved at the gate",
        state(percentage=50.0, passes=3, waiting_gate=100.0),
        Operator(approvals=1),
        900,
        "approved: promotes to 100 % at the next analysis that does not fail",
    ),
    (
        "an approval already used",
        state(percentage=50.0, waiting_gate=100.0, approvals_used=1),
        Operator(approvals=1),
        900,
        "waiting at the gate to 100 %: `rollout approve` opens it",
    ),
    (
        "the last stage",
        state(percentage=100.0),
        Operator(),
        900,
        "at the last stage (100 %): nothing more to promote",
    ),
    (
        "paused: plan",
        state(pause=PauseKind.PLAN, pause_reason="rollout.emergency is on"),
        Operator(),
        0,
        "paused (rollout.emergency is on); "
        "waits for put the file back on a stage (and emergency off)",
    ),
    (
        "paused: person",
        state(pause=PauseKind.PERSON, pause_reason="freeze"),
        Operator(paused=True),
        0,
        "paused (freeze); waits for `rollout resume`",
    ),
    (
        "paused: traffic",
        state(pause=PauseKind.TRAFFIC, pause_reason="10 inconclusive"),
        Operator(),
        0,
        "paused (10 inconclusive); "
        "waits for traffic (the first conclusive analysis), or `rollout resume`",
    ),
    (
        "paused: errors",
        state(pause=PauseKind.ERRORS, pause_reason="5 unreadable"),
        Operator(),
        0,
        "paused (5 unreadable); waits for readable figures (the first conclusive analysis), or "
        "`rollout resume`",
    ),
    (
        "paused: rollback",
        state(pause=PauseKind.ROLLBACK, pause_reason="rolled back"),
        Operator(),
        0,
        "paused (rolled back); waits for `rollout resume` to try again",
    ),
]


@pytest.mark.parametrize(
    ("state_", "operator", "elapsed", "sentence"),
    [row[1:] for row in NEXT],
    ids=[row[0] for row in NEXT],
)
def test_next_action(state_: PilotState, operator: Operator, elapsed: float, sentence: str) -> None:
    assert next_action(state_, CONFIG, STAGES, operator, T0 + elapsed) == sentence


def test_next_action_follows_the_machine() -> None:
    run = at_the_gate()
    assert next_action(run.state, CONFIG, STAGES, run.operator, run.now) == (
        "promote to 100 % (a gate: needs `rollout approve`) after bake 1 min more"
    )
    run.tick(PASS)
    assert next_action(run.state, CONFIG, STAGES, run.operator, run.now).startswith(
        "waiting at the gate"
    )
    run.approve()
    assert next_action(run.state, CONFIG, STAGES, run.operator, run.now).startswith("approved")


# --- a property: with no person editing the file, moves only go along the plan ---------------

OUTCOMES = [PASS, HOLD, FAIL, INCONCLUSIVE, ERROR, None]

tick_strategy = st.tuples(
    st.sampled_from(OUTCOMES),
    st.sampled_from([1.0, 60.0, 300.0, 600.0]),
    st.sampled_from(["", "approve", "resume", "pause", "unpause"]),
)


@settings(max_examples=300, deadline=None)
@given(
    ticks=st.lists(tick_strategy, max_size=60),
    bake=st.sampled_from([0.0, 60.0, 600.0]),
    checks=st.integers(1, 3),
    failure_limit=st.integers(1, 3),
    on_failure=st.sampled_from(["previous", "zero", "gradual"]),
    gates=st.sampled_from([(), (100.0,), (30.0, 100.0), (10.0, 50.0)]),
    start=st.sampled_from(STAGES),
)
def test_moves_only_go_one_stage_up_or_to_the_rollback_target(
    ticks: list[tuple[Analysis | None, float, str]],
    bake: float,
    checks: int,
    failure_limit: int,
    on_failure: str,
    gates: tuple[float, ...],
    start: float,
) -> None:
    config = dataclasses.replace(
        CONFIG,
        bake=bake,
        checks=checks,
        failure_limit=failure_limit,
        on_failure=on_failure,
        gates=gates,
        max_inconclusive=2,
        max_errors=2,
    )
    run = Run(percentage=start, config=config)
    for analysis, seconds, action in ticks:
        if action == "approve":
            run.approve()
        elif action == "resume":
            run.resume()
        elif action in ("pause", "unpause"):
            run.operator = dataclasses.replace(run.operator, paused=action == "pause")
        before = run.state
        decision = run.tick(analysis, seconds)
        after = decision.state
        assert Event.HUMAN_CHANGE not in events(decision)
        assert after.approvals_used <= run.operator.approvals
        if decision.move is None:
            assert after.percentage == before.percentage
            assert after.approvals_used == before.approvals_used
            continue
        move = decision.move
        assert not run.operator.paused
        assert move.before == before.percentage
        if before.walking:  # a step of a walk under way: the next one, whatever the figures
            assert before.walk is not None
            assert move.event is Event.ROLLBACK
            assert move.after == before.walk.next_step(move.before)
            assert after.pause is PauseKind.ROLLBACK
            continue
        assert analysis is not None
        if move.event is Event.PROMOTE:
            assert analysis.outcome not in (Outcome.FAIL, Outcome.ERROR)
            assert move.after == next_stage(STAGES, move.before)
            gated = move.after in gates
            assert after.approvals_used == before.approvals_used + int(gated)
        else:
            assert move.event is Event.ROLLBACK
            assert analysis.outcome is Outcome.FAIL
            target = rollback_target(on_failure, STAGES, move.before)
            if on_failure == "gradual":
                assert target is not None
                assert move.after == max(target, move.before - 5)  # the first step
                assert after.walk == Walk(move.before, target, 5.0, move.reason.split(": ", 1)[1])
            else:
                assert move.after == target
            assert after.pause is PauseKind.ROLLBACK


# --- on_failure: gradual ----------------------------------------------------------------------


def walking_from_50() -> Run:
    """Two failures at 50 % under `on_failure: gradual`: the first step (45 %) is written."""
    run = Run(percentage=50, config=GRADUAL)
    run.ticks("FF")
    assert run.moves() == [("rollback", 50, 45)]
    return run


def test_a_gradual_rollback_says_each_step_and_pauses_at_the_end() -> None:
    run = walking_from_50()
    first = run.decisions[-1]
    why = f"2 failed analyses in a row: {FAIL.reason}"
    assert first.move is not None
    assert first.move.reason == f"step 1 of 4 of the gradual rollback 50 % -> 30 %: {why}"
    assert first.state.walk == Walk(50, 30, 5.0, why)
    assert first.state.pause is PauseKind.ROLLBACK
    assert first.state.pause_reason == f"rolling back 50 % -> 30 %, 5 % a step ({why})"
    assert first.notices == ()  # the move is the rollback's post; no pause posted beside it
    assert first.counted is not None
    assert (first.counted.percentage, first.counted.walk) == (50, None)
    assert next_action(run.state, GRADUAL, STAGES, run.operator, run.now) == (
        "rolling back gradually to 30 %: 40 % next (step 2 of 4), "
        "one step per autopilot.interval; then paused"
    )
    steps = run.ticks("---")
    assert [d.move.reason.split(" of the")[0] for d in steps if d.move] == [
        "step 2 of 4",
        "step 3 of 4",
        "step 4 of 4",
    ]
    assert run.state.percentage == 30
    assert run.state.pause_reason == (
        f"rolled back 50 % -> 30 % in 4 steps ({why}); `rollout resume` to try again"
    )
    assert not run.state.walking
    assert next_action(run.state, GRADUAL, STAGES, run.operator, run.now).startswith(
        "paused (rolled back 50 % -> 30 % in 4 steps"
    )
    assert run.tick(PASS).move is None


def test_a_person_s_change_during_the_walk_stops_it_and_is_never_overwritten() -> None:
    run = walking_from_50()
    run.tick(None)  # 40 %
    run.percentage = 10  # `rollout set 10` between two steps
    stopped = run.tick(None)
    assert stopped.move is None
    assert [(n.event, n.reason) for n in stopped.notices] == [
        (
            Event.HUMAN_CHANGE,
            "rollout.percentage 40 -> 10 by someone else: the gradual rollback stops "
            "(step 2 of 4 at 40 % stands)",
        )
    ]
    assert stopped.state.walk is None
    assert stopped.state.percentage == 10
    assert stopped.state.pause is PauseKind.ROLLBACK
    assert stopped.state.pause_reason is not None
    assert "stopped at 40 % (step 2 of 4) by someone else's change" in stopped.state.pause_reason
    run.ticks("PPPPFFFF", 600)
    assert run.moves() == [("rollback", 50, 45), ("rollback", 45, 40)]


def test_emergency_during_the_walk_stops_it() -> None:
    run = walking_from_50()
    run.emergency = True
    stopped = run.tick(None)
    assert stopped.move is None
    assert events(stopped) == [Event.HUMAN_CHANGE]
    assert stopped.state.walk is None
    assert stopped.state.pause is PauseKind.ROLLBACK
    run.ticks("----")
    assert run.percentage == 45


def test_rollout_pause_during_the_walk_stops_it_where_it_stands() -> None:
    run = walking_from_50()
    run.operator = Operator(paused=True, pause_reason="we take it from here")
    stopped = run.tick(None)
    assert stopped.move is None
    assert [(n.event, n.reason) for n in stopped.notices] == [
        (
            Event.PAUSE,
            "rollout pause: we take it from here; the gradual rollback stops "
            "(step 1 of 4 at 45 % stands)",
        )
    ]
    assert (stopped.state.pause, stopped.state.walk) == (PauseKind.PERSON, None)
    run.ticks("----")
    assert run.percentage == 45
    # `rollout resume` lifts the person's pause; 45 % is not a stage: the plan's pause holds.
    run.operator = Operator(resumes=1)
    resumed = run.tick(PASS)
    assert events(resumed) == [Event.RESUME, Event.PAUSE]
    assert resumed.state.pause is PauseKind.PLAN
    assert resumed.move is None


def test_rollout_resume_during_the_walk_stops_it_and_lifts_the_rollback_pause() -> None:
    run = walking_from_50()
    run.resume()
    resumed = run.tick(None)
    assert resumed.move is None
    assert events(resumed) == [Event.RESUME, Event.PAUSE]  # 45 % is off the plan
    assert (resumed.state.pause, resumed.state.walk) == (PauseKind.PLAN, None)
    assert run.percentage == 45


def test_a_step_lost_to_a_crash_is_walked_again() -> None:
    # The controller's restart puts the percentage back when its write did not happen;
    # the walk kept in the state takes the same step again.
    run = walking_from_50()
    run.tick(None)  # the step to 40 % is decided ...
    assert run.state.walk is not None
    run.state = dataclasses.replace(run.state, percentage=45.0)  # ... but never written
    run.percentage = 45
    again = run.tick(None)
    assert again.move is not None
    assert (again.move.before, again.move.after) == (45, 40)
    # Even the last step, after which the walk is done.
    run.ticks("--")
    assert run.state.percentage == 30
    run.state = dataclasses.replace(run.state, percentage=35.0)
    run.percentage = 35
    last = run.tick(None)
    assert last.move is not None
    assert (last.move.before, last.move.after) == (35, 30)
    assert last.notices == ()


def test_a_walk_names_its_steps() -> None:
    walk = Walk(50.0, 30.0, 5.0, "failures")
    assert [walk.where(p) for p in (50, 45, 30)] == [
        "before step 1 of 4",
        "step 1 of 4",
        "step 4 of 4",
    ]
    assert walk.next_step(50) == 45
    assert walk.next_step(35) == 30


def test_a_person_s_raise_after_a_gradual_rollback_is_not_walked_down_again() -> None:
    run = walking_from_50()
    run.ticks("---")
    assert (run.percentage, run.state.walking) == (30, False)
    run.percentage = 50  # a person puts it back while the rollback pause holds
    decision = run.tick(None)
    assert decision.move is None
    assert events(decision) == [Event.HUMAN_CHANGE]
    assert (decision.state.walk, decision.state.pause) == (None, PauseKind.ROLLBACK)
    run.ticks("--FF")
    assert run.percentage == 50
