"""`rollout autopilot`: the controller that walks the plan by itself (SPEC 13).

One process per config (a lock beside it), never part of `rollout serve`. Every
`interval` it reads the figures (one admin listener, or Prometheus over every replica),
analyses the interval (`proxy.rollout.analysis`), lets the pure stage machine decide
(`proxy.rollout.pilot`) and carries the decision out through the editing commands' safe
path: validated in full, comments kept, written atomically, one history line.

A move is written in this order: the intent into the state file, the config, the history
line, then the state; each step of a gradual rollback (`on_failure: gradual`, one per tick)
is such a move. After a crash anywhere in between, the intent tells the autopilot's
own write from a person's, so a restart neither promotes twice nor mistakes itself for
someone else. After any change of the percentage the next read is a fresh baseline: an
interval that straddles a change is evidence for neither stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.config.load import load_config, parse_config
from proxy.config.values import Config
from proxy.control.console import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Console
from proxy.control.edit import set_value
from proxy.control.sources import FiguresError, FiguresSource, source_for
from proxy.control.webhooks import Notifier, confirm
from proxy.errors import ConfigError, EditError
from proxy.records.files import write_atomically
from proxy.records.history import record
from proxy.records.pilot_document import (
    KEEP_ANALYSES,
    AnalysisEntry,
    ControllerDocument,
    PendingMove,
    controller_document,
    operator_of,
    pilot_state,
    state_document,
)
from proxy.records.pilot_state import (
    AlreadyRunningError,
    ControllerLock,
    StateFileError,
    read_state,
    write_controller,
)
from proxy.rollout.analysis import Analysis, Outcome, analyse, unreadable
from proxy.rollout.counters import Counters, sample_between
from proxy.rollout.pilot import (
    Decision,
    Event,
    Move,
    Notice,
    Operator,
    PilotState,
    decide,
    duration_text,
    initial_state,
    next_action,
)
from proxy.rollout.stages import stage_index

# `--once` exit codes (SPEC 13): 0 passed or held, 1 failed, 3 inconclusive, 4 error.
ONCE_EXIT = {
    Outcome.PASS: EXIT_OK,
    Outcome.HOLD: EXIT_OK,
    Outcome.FAIL: EXIT_FAILED,
    Outcome.INCONCLUSIVE: 3,
    Outcome.ERROR: 4,
}


def run_autopilot(
    config_path: Path,
    *,
    once: bool = False,
    dry_run: bool = False,
    admin: str | None = None,
    stop: threading.Event | None = None,
    say: Callable[[str], None] | None = None,
) -> int:
    """Run the controller until `stop` (or SIGTERM / Ctrl-C); the exit code of SPEC 13."""
    con = Console()
    say = say or con.line
    config = load_config(config_path)
    if not config.autopilot.enabled:
        con.error(
            f"autopilot.enabled is false in {config_path}: set it to true to let the "
            "autopilot move the rollout"
        )
        return EXIT_USAGE
    stop = stop or threading.Event()
    with _stop_on_signals(stop), contextlib.ExitStack() as stack:
        if not dry_run:
            try:
                stack.enter_context(ControllerLock(config_path))
            except AlreadyRunningError as exc:
                con.error(str(exc))
                return EXIT_FAILED
        try:
            controller = Controller.start(config_path, config, admin, dry_run=dry_run, say=say)
        except StateFileError as exc:
            con.error(str(exc))
            return EXIT_USAGE
        stack.callback(controller.close)
        return controller.run(stop, once=once)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and Ctrl-C end the run between two decisions, never inside one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class Controller:
    path: Path
    config: Config
    admin: str | None
    state: PilotState
    dry_run: bool
    say: Callable[[str], None]
    notifier: Notifier | None
    clock: Callable[[], float] = time.time
    analyses: list[AnalysisEntry] = field(default_factory=list)
    make_source: Callable[[Config, str | None], FiguresSource] = source_for
    source: FiguresSource | None = None
    baseline: Counters | None = None
    held: str | None = None
    next_at: float | None = None
    operator: Operator = field(default_factory=Operator)

    @classmethod
    def start(
        cls,
        path: Path,
        config: Config,
        admin: str | None,
        *,
        dry_run: bool,
        say: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        make_source: Callable[[Config, str | None], FiguresSource] = source_for,
    ) -> Controller:
        now = clock()
        r = config.rollout
        saved = controller_document(read_state(path)["controller"])
        if saved is None:
            state = initial_state(r.percentage, r.emergency, now)
            say(f"autopilot starts at {r.percentage:g} % ({_stage(config, r.percentage)})")
            analyses: list[AnalysisEntry] = []
        else:
            state = pilot_state(saved["state"])
            state = _settle_pending(state, saved["pending"], r.percentage, now, say)
            analyses = list(saved["analyses"])
            baked = duration_text(now - state.stage_entered_at)
            say(f"autopilot resumes at {state.percentage:g} % (baked {baked})")
        notifier = None if dry_run else Notifier(config.autopilot.webhooks.events)
        controller = cls(
            path, config, admin, state, dry_run, say, notifier, clock, analyses, make_source
        )
        if dry_run:
            say("dry run: decisions are printed, nothing is written and no webhook is called")
        return controller

    def close(self) -> None:
        if self.notifier is not None:
            left = self.notifier.close(timeout=10.0)
            if left:
                Console().warning(f"{left} event webhook posts were not delivered")

    # --- the loop --------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, once: bool) -> int:
        first = self._read()
        self.baseline = None if isinstance(first, str) else first
        if once:
            interval = self.config.autopilot.interval
            self.say(f"measuring for {interval:g} s (autopilot.interval) ...")
        while True:
            interval = self.config.autopilot.interval  # a reload may change it
            self.next_at = self.clock() + interval
            self._save()
            if stop.wait(interval):
                self.say("autopilot stopped (between decisions); state saved")
                return EXIT_OK
            analysis = self.tick()
            if once:
                if analysis is None:
                    self.say("no analysis (see the warning above)")
                    return 4
                return ONCE_EXIT[analysis.outcome]

    def tick(self) -> Analysis | None:
        """One analysis and what follows from it; None when no decision could be made (the
        config or the state file unreadable, or the autopilot disabled in the file)."""
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            Console().warning(
                f"{self.path} is not valid now ({'; '.join(exc.problems)}): no decision "
                "until it is fixed"
            )
            return None
        self.config = config
        if not config.autopilot.enabled:
            Console().warning(f"autopilot.enabled is false in {self.path} now: no decision")
            self.baseline = None
            return None
        analysis = self._analyse()
        now = self.clock()
        if analysis is not None:
            self._remember(analysis, now)
        try:
            state = read_state(self.path)
        except StateFileError as exc:
            Console().warning(f"{exc}: no decision until it is readable")
            return None
        operator = operator_of(state["operator"])
        r = config.rollout
        decision = decide(
            self.state,
            config=config.autopilot,
            stages=r.stages,
            percentage=r.percentage,
            emergency=r.emergency,
            operator=operator,
            analysis=analysis,
            now=now,
        )
        self.operator = operator
        self._carry_out(decision, analysis)
        return analysis if analysis is not None else unreadable("no baseline yet")

    def _read(self) -> Counters | str:
        """The counters now, or why they could not be read."""
        source = self.make_source(self.config, self.admin)
        if self.source is None or source.describe() != self.source.describe():
            self.source, self.baseline = source, None
        try:
            return source.read()
        except FiguresError as exc:
            return str(exc)

    def _analyse(self) -> Analysis | None:
        before = self.baseline
        counters = self._read()
        if isinstance(counters, str):
            self.baseline = None
            return unreadable(counters)
        self.baseline = counters
        if before is None:
            return None  # a fresh baseline: the next tick analyses
        c = self.config
        return analyse(sample_between(before, counters), c.autopilot, c.promotion, c.guard)

    def _carry_out(self, decision: Decision, analysis: Analysis | None) -> None:
        before = self.state
        if analysis is not None and decision.counted is not None:
            self._print_analysis(analysis, decision.counted)
        self.state = decision.state
        for notice in decision.notices:
            self._notify(notice, before, analysis)
        if decision.move is None:
            return
        problem = self._make_move(decision.move, analysis)
        if problem is None:
            self.held = None
            self.baseline = None  # the next interval is the new stage's
            return
        self.held = problem
        if decision.counted is not None:
            self.state = decision.counted
        move = decision.move
        self.say(f"{_now()}  {move.event.value} to {move.after:g} % held: {problem}")

    def _make_move(self, move: Move, analysis: Analysis | None) -> str | None:
        """Write the move; a problem that stopped it, or None once written."""
        figures = None if analysis is None else analysis.as_document()
        payload = self._payload(move.event, move.after, move.reason, figures)
        if self.dry_run:
            self.say(
                f"{_now()}  would {move.event.value} {move.before:g} % -> {move.after:g} %: "
                f"{move.reason} (dry run: nothing written)"
            )
            return None
        if move.event is Event.PROMOTE and self.config.autopilot.webhooks.confirm:
            problems = confirm(self.config.autopilot.webhooks.confirm, payload)
            if problems:
                return "promotion held: " + "; ".join(problems)
        text = self.path.read_text(encoding="utf-8")
        try:
            current = parse_config(text, str(self.path)).rollout.percentage
            if current != move.before:
                return f"the file now says {current:g} %: a person's edit wins"
            after_text = set_value(text, ("rollout", "percentage"), _number(move.after))
            parse_config(after_text, str(self.path))
        except (ConfigError, EditError) as exc:
            return f"the edit was refused ({exc})"
        pending: PendingMove = {
            "event": move.event.value,
            "before": move.before,
            "after": move.after,
            "at": self.clock(),
        }
        self._save(pending)
        write_atomically(self.path, after_text)
        record(
            self.path,
            command="autopilot",
            before={"rollout.percentage": _number(move.before)},
            after={"rollout.percentage": _number(move.after)},
            reason=move.reason,
            live=None,
            event=move.event.value,
            figures=figures,
        )
        self._save()
        self._post(payload)
        verb = "PROMOTE" if move.event is Event.PROMOTE else "ROLLBACK"
        self.say(f"{_now()}  {verb} {move.before:g} % -> {move.after:g} %: {move.reason}")
        return None

    def _notify(self, notice: Notice, before: PilotState, analysis: Analysis | None) -> None:
        figures = None if analysis is None else analysis.as_document()
        self.say(f"{_now()}  {notice.event.value.upper()}: {notice.reason}")
        if self.dry_run:
            return
        old: dict[str, Any] | None = None
        new: dict[str, Any] | None = None
        if notice.event is Event.HUMAN_CHANGE:
            old = {
                "rollout.percentage": _number(before.percentage),
                "rollout.emergency": before.emergency,
            }
            new = {
                "rollout.percentage": _number(self.state.percentage),
                "rollout.emergency": self.state.emergency,
            }
        record(
            self.path,
            command="autopilot",
            before=old,
            after=new,
            reason=notice.reason,
            live=None,
            event=notice.event.value,
            figures=figures,
        )
        self._post(self._payload(notice.event, self.state.percentage, notice.reason, figures))

    def _payload(
        self, event: Event, percentage: float, reason: str, figures: Any
    ) -> dict[str, Any]:
        return {
            "event": event.value,
            "stage": stage_index(self.config.rollout.stages, percentage),
            "percentage": _number(percentage),
            "figures": figures,
            "reason": reason,
            "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        }

    def _post(self, payload: dict[str, Any]) -> None:
        if self.notifier is not None:
            self.notifier.post(payload)

    def _remember(self, analysis: Analysis, now: float) -> None:
        entry: AnalysisEntry = {
            "time": now,
            "percentage": self.state.percentage,
            "analysis": analysis.as_document(),
        }
        self.analyses = [*self.analyses, entry][-KEEP_ANALYSES:]

    def _print_analysis(self, analysis: Analysis, s: PilotState) -> None:
        ap = self.config.autopilot
        if s.pause is not None:
            where = f"paused: {s.pause_reason}"
        else:
            baked = duration_text(self.clock() - s.stage_entered_at)
            where = (
                f"passes {s.passes}/{ap.checks}, failures {s.failures}/{ap.failure_limit}, "
                f"baked {baked}/{duration_text(ap.bake)}"
            )
        outcome = analysis.outcome.value
        self.say(f"{_now()}  {s.percentage:g} %  {outcome:<12}  {analysis.reason}  [{where}]")

    def _save(self, pending: PendingMove | None = None) -> None:
        if self.dry_run:
            return
        doc: ControllerDocument = {
            "state": state_document(self.state),
            "analyses": self.analyses,
            "next_at": self.next_at,
            "held": self.held,
            "next_action": self.describe_next(self.operator),
            "pending": pending,
            "pid": os.getpid(),
            "updated_at": self.clock(),
        }
        try:
            write_controller(self.path, dict(doc))
        except StateFileError as exc:
            Console().warning(f"state not saved: {exc}")

    def describe_next(self, operator: Operator) -> str:
        r = self.config.rollout
        return next_action(self.state, self.config.autopilot, r.stages, operator, self.clock())


def _settle_pending(
    state: PilotState,
    pending: PendingMove | None,
    file_percentage: float,
    now: float,
    say: Callable[[str], None],
) -> PilotState:
    """After a stop between the intent and the state: did our write happen?

    The saved state is the one after the move. If the file still says `before`, the write
    did not happen: the stage is baked again from now (never promoted twice). Any other
    value is a person's, which the next tick notices.
    """
    if pending is None:
        return state
    if file_percentage == pending["after"]:
        say(f"the last {pending['event']} (to {pending['after']:g} %) was written: taken as done")
        return state
    if file_percentage == pending["before"]:
        say(
            f"the last {pending['event']} (to {pending['after']:g} %) was not written: baking again"
        )
        return dataclasses.replace(state, percentage=pending["before"]).restarted(now)
    return state


def _stage(config: Config, percentage: float) -> str:
    index = stage_index(config.rollout.stages, percentage)
    return "between stages" if index is None else f"stage {index}"


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _now() -> str:
    return datetime.now().astimezone().strftime("%H:%M:%S")
