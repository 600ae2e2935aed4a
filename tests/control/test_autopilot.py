"""proxy.control.autopilot: how the controller carries decisions out, tick by tick.

The figures come from a scripted source (the `FiguresSource` protocol, in memory) so each
tick's analysis is known; the config, history and state files are real files. The real
fleet, Prometheus and processes are in tests/e2e/test_autopilot.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.load import load_config
from proxy.control.autopilot import Controller
from proxy.records.pilot_state import read_state, write_controller
from proxy.rollout.counters import Counters

REPLICA = "http://127.0.0.1:9180"


def config_text(percentage: float, **autopilot: Any) -> str:
    data = {
        "upstreams": {
            "signal": {"url": "http://127.0.0.1:8000"},
            "legacy": {"url": "http://127.0.0.1:8001"},
        },
        "rollout": {"percentage": percentage},
        "autopilot": {
            "enabled": True,
            "interval": 1,
            "bake": 0,
            "checks": 1,
            "failure_limit": 1,
            "min_requests": 10,
            **autopilot,
        },
    }
    return "# the operators' comment stays\n" + yaml.safe_dump(data, sort_keys=False)


class Script:
    """Counters that grow by `attempts` signal and legacy requests per read, `errors` failed."""

    def __init__(self, attempts: int = 100, errors: int = 0) -> None:
        self.attempts, self.errors, self.reads = attempts, errors, 0
        self.before_read: Callable[[], None] | None = None

    def read(self) -> Counters:
        if self.before_read is not None:
            self.before_read()
        self.reads += 1
        n = self.reads
        served = {(REPLICA, "signal"): n * self.attempts, (REPLICA, "legacy"): n * self.attempts}
        errors = {(REPLICA, "signal"): n * self.errors, (REPLICA, "legacy"): 0.0}
        buckets = {
            (REPLICA, side, le): float(n * self.attempts)
            for side in ("signal", "legacy")
            for le in (0.01, 0.1, float("inf"))
        }
        return Counters(served, errors, {REPLICA: 0.0}, buckets, False, float(n))

    def describe(self) -> str:
        return "a script"


def controller(path: Path, script: Script, lines: list[str]) -> Controller:
    config = load_config(path)
    return Controller.start(
        path,
        config,
        None,
        dry_run=False,
        say=lines.append,
        make_source=lambda _config, _admin: script,
    )


def history(path: Path) -> list[dict[str, Any]]:
    text = (path.parent / "rollout-history.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def saved(path: Path) -> dict[str, Any]:
    controller_part = read_state(path)["controller"]
    assert controller_part is not None
    return controller_part


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "rollout.yaml"
    p.write_text(config_text(10), encoding="utf-8")
    return p


def test_a_promotion_writes_the_file_then_the_history_then_the_state(path: Path) -> None:
    lines: list[str] = []
    c = controller(path, Script(), lines)
    c.baseline = c.make_source(c.config, None).read()
    c.tick()
    assert load_config(path).rollout.percentage == 30
    assert path.read_text(encoding="utf-8").startswith("# the operators' comment stays")
    [entry] = history(path)
    assert entry["command"] == "autopilot"
    assert entry["event"] == "promote"
    assert (entry["before"], entry["after"]) == (
        {"rollout.percentage": 10},
        {"rollout.percentage": 30},
    )
    assert entry["figures"]["outcome"] == "pass"
    assert entry["figures"]["signal"]["attempts"] == 100
    state = saved(path)
    assert state["pending"] is None
    assert state["state"]["percentage"] == 30
    assert any("PROMOTE 10 % -> 30 %" in line for line in lines), lines
    # The interval after a move is a fresh baseline, not evidence for the new stage.
    assert c.baseline is None


def test_a_persons_edit_during_the_decision_wins(path: Path) -> None:
    lines: list[str] = []
    script = Script()
    c = controller(path, script, lines)
    c.baseline = script.read()
    # The person's write lands after the controller read the file, before it writes.
    script.before_read = lambda: path.write_text(config_text(50), encoding="utf-8")
    c.tick()
    assert load_config(path).rollout.percentage == 50
    assert not (path.parent / "rollout-history.jsonl").exists()
    assert any("a person's edit wins" in line for line in lines), lines
    script.before_read = None
    c.tick()
    [entry] = history(path)
    assert entry["event"] == "human_change"
    assert entry["after"]["rollout.percentage"] == 50
    assert load_config(path).rollout.percentage == 50


def test_a_failure_rolls_back_and_pauses(path: Path) -> None:
    lines: list[str] = []
    script = Script(errors=20)  # 20 %: beyond the guard's 5 %
    c = controller(path, script, lines)
    c.baseline = script.read()
    c.tick()
    assert load_config(path).rollout.percentage == 0
    [entry] = history(path)
    assert entry["event"] == "rollback"
    assert entry["figures"]["outcome"] == "fail"
    assert saved(path)["state"]["pause"] == "rollback"


@pytest.mark.parametrize(
    ("file_says", "expected_percentage", "said"),
    [
        (30, 30, "was written: taken as done"),
        (10, 10, "was not written: baking again"),
    ],
)
def test_a_move_cut_short_by_a_crash_is_settled_at_restart(
    path: Path, file_says: float, expected_percentage: float, said: str
) -> None:
    # As a SIGKILL between the intent and the state would leave it: the state after the
    # move, with the intent still pending.
    state = {
        "percentage": 30,
        "emergency": False,
        "stage_entered_at": 1000.0,
        "passes": 0,
        "failures": 0,
        "inconclusive": 0,
        "errors": 0,
        "pause": None,
        "pause_reason": None,
        "waiting_gate": None,
        "approvals_used": 0,
        "resumes_seen": 0,
    }
    pending = {"event": "promote", "before": 10, "after": 30, "at": 1000.0}
    write_controller(
        path,
        {
            "state": state,
            "analyses": [],
            "next_at": None,
            "held": None,
            "next_action": "promote to 50 %",
            "pending": pending,
            "pid": 1,
            "updated_at": 1000.0,
        },
    )
    path.write_text(config_text(file_says), encoding="utf-8")
    lines: list[str] = []
    c = controller(path, Script(), lines)
    assert c.state.percentage == expected_percentage
    assert any(said in line for line in lines), lines
    # Whatever happened, the next tick is no person's change and no second promotion.
    c.baseline = None
    c.tick()
    assert not (path.parent / "rollout-history.jsonl").exists()


def test_an_invalid_file_mid_run_means_no_decision(path: Path) -> None:
    lines: list[str] = []
    script = Script()
    c = controller(path, script, lines)
    c.baseline = script.read()
    path.write_text("rollout: {percentage: 150}\n", encoding="utf-8")
    assert c.tick() is None
    assert path.read_text(encoding="utf-8") == "rollout: {percentage: 150}\n"
    assert not (path.parent / "rollout-history.jsonl").exists()


def test_disabled_in_the_file_mid_run_means_no_decision(path: Path) -> None:
    lines: list[str] = []
    script = Script()
    c = controller(path, script, lines)
    c.baseline = script.read()
    path.write_text(config_text(10, enabled=False), encoding="utf-8")
    assert c.tick() is None
    assert load_config(path).rollout.percentage == 10
    assert not (path.parent / "rollout-history.jsonl").exists()


def test_on_failure_gradual_walks_down_one_step_a_tick_then_pauses(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text(config_text(50, on_failure="gradual"), encoding="utf-8")
    lines: list[str] = []
    script = Script(errors=20)
    c = controller(path, script, lines)
    c.baseline = script.read()
    seen = []
    for _ in range(4):  # the failure writes the first step; each tick after it one more
        c.tick()
        seen.append(load_config(path).rollout.percentage)
        assert saved(path)["pending"] is None
    assert seen == [45, 40, 35, 30]
    steps = [e for e in history(path) if e["event"] == "rollback"]
    assert [(e["before"], e["after"]) for e in steps] == [
        ({"rollout.percentage": b}, {"rollout.percentage": a})
        for b, a in [(50, 45), (45, 40), (40, 35), (35, 30)]
    ]
    assert [e["reason"].split(" of the")[0] for e in steps] == [
        f"step {k} of 4" for k in range(1, 5)
    ]
    assert steps[0]["figures"]["outcome"] == "fail"  # the failure that started it
    assert all(e["command"] == "autopilot" for e in steps)
    assert [e["event"] for e in history(path)] == ["rollback"] * 4  # no human_change
    state = saved(path)["state"]
    assert (state["percentage"], state["pause"], state["walk"]["target"]) == (30, "rollback", 30)
    assert state["pause_reason"].startswith("rolled back 50 % -> 30 % in 4 steps")
    assert sum("ROLLBACK" in line for line in lines) == 4, lines
    assert path.read_text(encoding="utf-8").startswith("# the operators' comment stays")
    for _ in range(3):  # paused as a plain rollback is: nothing more moves
        c.tick()
    assert load_config(path).rollout.percentage == 30
    assert len(history(path)) == 4


def test_a_persons_set_during_the_gradual_walk_stops_it(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text(config_text(50, on_failure="gradual"), encoding="utf-8")
    lines: list[str] = []
    script = Script(errors=20)
    c = controller(path, script, lines)
    c.baseline = script.read()
    c.tick()
    c.tick()
    assert load_config(path).rollout.percentage == 40
    path.write_text(config_text(10, on_failure="gradual"), encoding="utf-8")
    for _ in range(3):
        c.tick()
    assert load_config(path).rollout.percentage == 10
    events = [e["event"] for e in history(path)]
    assert events == ["rollback", "rollback", "human_change"]
    assert "the gradual rollback stops" in history(path)[-1]["reason"]
    assert c.state.walk is None


def test_a_gradual_step_cut_short_by_a_crash_is_taken_again(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text(config_text(50, on_failure="gradual"), encoding="utf-8")
    script = Script(errors=20)
    c = controller(path, script, [])
    c.baseline = script.read()
    c.tick()  # 45 %
    # As a SIGKILL after the intent of the step to 40 % would leave it: not written.
    c.state = dataclasses.replace(c.state, percentage=40.0)
    doc = saved(path)
    doc["state"]["percentage"] = 40
    doc["pending"] = {"event": "rollback", "before": 45, "after": 40, "at": 1000.0}
    write_controller(path, doc)
    lines: list[str] = []
    again = controller(path, script, lines)
    assert any("was not written" in line for line in lines), lines
    again.tick()
    assert load_config(path).rollout.percentage == 40
    assert [e["event"] for e in history(path)] == ["rollback", "rollback"]
