"""`rollout rollback --gradual`: lower the percentage in steps, so legacy takes the returning
users at a pace (SPEC 14).

Each step goes through the editing commands' safe path (validated in full, comments kept,
written atomically, one history line naming the step). Before each step the file must
still say what the last step wrote: a person's (or the autopilot's) change stops the walk,
never overwritten. Ctrl-C and SIGTERM stop it at once, between steps or while waiting; the
last step written stays, and the output says where it stopped. `rollout emergency` is
the instant way down.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from proxy.config.load import load_config, parse_config
from proxy.config.values import Config, format_value
from proxy.control.client import live_status
from proxy.control.console import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Console
from proxy.control.edit import set_value
from proxy.control.moves import _live_summary as live_summary
from proxy.errors import ConfigError, EditError
from proxy.records.files import write_atomically
from proxy.records.history import record
from proxy.rollout.gradual import gradual_steps
from proxy.rollout.stages import describe_stage, previous_stage

DEFAULT_STEP = 5.0  # percentage points per step
DEFAULT_EVERY = 30.0  # seconds between two steps
# How a walk stopped by a signal exits: the shell's 128 + the signal number.
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
_KEY = ("rollout", "percentage")


@dataclass(frozen=True, slots=True)
class Plan:
    start: float
    target: float
    step: float
    every: float
    steps: list[float]


def cmd_rollback_gradual(args: argparse.Namespace) -> int:
    con = Console()
    config = load_config(args.config_path)
    plan = _plan(args, config, con)
    if isinstance(plan, int):
        return plan
    n = len(plan.steps)
    con.info(
        f"gradual rollback {plan.start:g} % -> {plan.target:g} %: {n} step{'s' if n > 1 else ''} "
        f"of {plan.step:g} %, one every {plan.every:g} s "
        f"({', '.join(f'{s:g}' for s in plan.steps)}); Ctrl-C stops it where it is"
    )
    if getattr(args, "dry_run", False):
        con.info("dry run: nothing written")
        return EXIT_OK
    stop = _Stop()
    with stop.on_signals():
        return _walk(args, config, plan, stop, con)


def _plan(args: argparse.Namespace, config: Config, con: Console) -> Plan | int:
    """The walk the arguments ask for, or the exit code of a refusal (one line, said)."""
    r = config.rollout
    step = DEFAULT_STEP if args.step is None else args.step
    every = DEFAULT_EVERY if args.every is None else args.every
    problem = _percentage_problem("--step", step, above_zero=True) or (
        None if 0 <= every < math.inf else f"--every {every:g} must be 0 or more seconds"
    )
    if args.to is not None:
        problem = problem or _percentage_problem("--to", args.to)
        if problem is None and args.to >= r.percentage:
            problem = (
                f"--to {args.to:g} is not below the current {r.percentage:g} %: a rollback only "
                "lowers it (`rollout set` raises it)"
            )
    if problem is not None:
        con.error(problem)
        return EXIT_USAGE
    target = args.to if args.to is not None else previous_stage(r.stages, r.percentage)
    if target is None:
        con.info(f"already at {r.percentage:g} %, the first stage: nothing to roll back")
        return EXIT_OK
    return Plan(r.percentage, target, step, every, gradual_steps(r.percentage, target, step))


def _percentage_problem(flag: str, value: float, *, above_zero: bool = False) -> str | None:
    if above_zero and not value > 0:
        return f"{flag} {value:g} must be more than 0"
    if not 0 <= value <= 100:
        return f"{flag} {value:g} is not within 0-100"
    if abs(value * 100 - round(value * 100)) > 1e-6:
        return f"{flag} {value:g} has more than two decimals"
    return None


class _Stop:
    """Set by SIGINT or SIGTERM; the walk checks it between steps and while waiting."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: signal.Signals | None = None

    def _set(self, signum: int, _frame: object) -> None:
        self.signal = signal.Signals(signum)
        self.event.set()

    @contextlib.contextmanager
    def on_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._set) for sig in EXIT_SIGNAL}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _walk(args: argparse.Namespace, config: Config, plan: Plan, stop: _Stop, con: Console) -> int:
    command = _command_line(args, plan)
    # The live state when the walk starts: the evidence behind it, on the first line.
    live = live_summary(live_status(config, args.admin)[0])
    n = len(plan.steps)
    written = plan.start
    for k, value in enumerate(plan.steps, start=1):
        where = f"step {k} of {n}"
        if stop.signal is not None:
            return _stopped(con, stop.signal, written, k - 1, n)
        span = f"{where}, {plan.start:g} % -> {plan.target:g} %"
        refused = _write_step(args, command, written, value, span, live if k == 1 else None)
        if refused is not None:
            code, problem = refused
            con.error(
                f"{problem}; stopped at {written:g} % ({_done(k - 1, n)}), the rest not applied"
            )
            return code
        before, written = written, value
        if k == n:
            stage = describe_stage(config.rollout.stages, value)
            con.success(
                f"{where}: rollout.percentage {before:g} -> {value:g} ({stage}); done, the proxy "
                "applies it within 2 s"
            )
            break
        at = datetime.fromtimestamp(time.time() + plan.every).astimezone().strftime("%H:%M:%S")
        con.success(
            f"{where}: rollout.percentage {before:g} -> {value:g}; next step "
            f"({plan.steps[k]:g} %) in {plan.every:g} s, at {at}"
        )
        sys.stdout.flush()  # a line per step as it happens, also into a pipe or a log
        if stop.event.wait(plan.every):
            assert stop.signal is not None
            return _stopped(con, stop.signal, written, k, n)
    if not args.reason:
        con.warning("no --reason given; the history records the steps without one")
    return EXIT_OK


def _done(k: int, n: int) -> str:
    return f"step {k} of {n}" if k else f"none of the {n} steps written"


def _stopped(con: Console, sig: signal.Signals, at: float, k: int, n: int) -> int:
    name = "Ctrl-C" if sig is signal.SIGINT else sig.name
    con.warning(f"stopped by {name} at {at:g} % ({_done(k, n)}); the rest not applied")
    return EXIT_SIGNAL[sig]


def _write_step(
    args: argparse.Namespace,
    command: str,
    expected: float,
    value: float,
    where: str,
    live: dict[str, Any] | None,
) -> tuple[int, str] | None:
    """Write one step as the editing commands write an edit; None once written, else the
    exit code and why not: 1 someone else changed the file, 2 the edit was refused."""
    path = args.config_path
    try:
        text = path.read_text(encoding="utf-8")
        current = parse_config(text, str(path)).rollout.percentage
        if current != expected:
            return EXIT_FAILED, (
                f"{path} now says {current:g} %, not the {expected:g} % this walk left: someone "
                "else changed it, and it is not overwritten"
            )
        after_text = set_value(text, _KEY, _number(value))
        parse_config(after_text, str(path))
        write_atomically(path, after_text)
    except ConfigError as exc:
        problems = "; ".join(exc.problems)
        return EXIT_USAGE, f"refused: the file is not, or would not be, valid ({problems})"
    except (EditError, OSError) as exc:
        return EXIT_USAGE, f"refused: {exc}"
    reason = f"{args.reason} ({where})" if args.reason else where
    record(
        path,
        command=command,
        before={"rollout.percentage": _number(expected)},
        after={"rollout.percentage": _number(value)},
        reason=reason,
        live=live,
    )
    return None


def _command_line(args: argparse.Namespace, plan: Plan) -> str:
    parts = ["rollout rollback --gradual", f"--step {plan.step:g}", f"--every {plan.every:g}"]
    if args.to is not None:
        parts.append(f"--to {format_value(float(args.to))}")
    return " ".join(parts)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
