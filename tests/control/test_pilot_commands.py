"""`rollout approve / pause / resume / history`, run as an operator runs them.

The commands run in-process through `proxy.control.cli.main` on a copy of the shipped
config (one run goes through `python -m proxy` to prove the wiring end to end).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.config.values import AutopilotConfig, GuardConfig, PromotionConfig
from proxy.control import cli
from proxy.control.edit import set_value
from proxy.records.history import HISTORY_FILE, record
from proxy.records.pilot_state import STATE_FILE, read_state, write_controller
from proxy.rollout.analysis import Sample, SideSample, analyse, unreadable

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "config" / "rollout.yaml"
DISABLED = "autopilot.enabled is false in"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


Rollout = Callable[..., Run]


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "ROLLOUT_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def rollout(capsys: pytest.CaptureFixture[str]) -> Rollout:
    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "rollout.yaml"
    path.write_text(SHIPPED_CONFIG.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def edit(path: Path, key: tuple[str, ...], value: bool | float) -> None:
    path.write_text(set_value(path.read_text(encoding="utf-8"), key, value), encoding="utf-8")


def history_lines(config_path: Path) -> list[dict[str, Any]]:
    path = config_path.parent / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("command", ["approve", "pause", "resume", "history"])
def test_help_shows_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: rollout {command}" in out
    assert out.split("example:", 1)[1].strip().startswith(f"rollout {command}")


# --- approve ------------------------------------------------------------------------------


def test_approve_ahead_counts_records_and_warns_when_disabled(
    rollout: Rollout, config_file: Path
) -> None:
    run = rollout("approve", "-c", str(config_file), "--reason", "agreed in #ops")
    assert run.code == 0, run.err
    assert "approved ahead: the next gate (100 %) opens when the autopilot reaches it" in run.out
    assert DISABLED in run.out
    assert read_state(config_file)["operator"]["approvals"] == 1
    (line,) = history_lines(config_file)
    assert line["command"] == "rollout approve"
    assert line["before"] == {"autopilot.approvals": 0}
    assert line["after"] == {"autopilot.approvals": 1}
    assert line["reason"] == "agreed in #ops"
    assert line["user"] == getpass.getuser()
    assert line["host"] == socket.gethostname()
    assert "event" not in line
    assert "figures" not in line

    assert rollout("approve", "-c", str(config_file)).code == 0
    assert read_state(config_file)["operator"]["approvals"] == 2
    assert history_lines(config_file)[-1]["after"] == {"autopilot.approvals": 2}


def test_approve_at_a_gate_says_the_promotion_comes_next(
    rollout: Rollout, config_file: Path
) -> None:
    edit(config_file, ("autopilot", "enabled"), True)
    write_controller(config_file, {"waiting_gate": 100, "stage": 4})
    run = rollout("approve", "-c", str(config_file))
    assert run.code == 0, run.err
    assert (
        "approved: the autopilot promotes to 100 % at its next analysis that does not fail"
        in run.out
    )
    assert DISABLED not in run.out
    state = read_state(config_file)
    assert state["controller"] == {"waiting_gate": 100, "stage": 4}  # left as it was
    assert state["operator"]["approvals"] == 1


def test_approve_with_no_gate_ahead_says_so(rollout: Rollout, config_file: Path) -> None:
    edit(config_file, ("rollout", "percentage"), 100)
    run = rollout("approve", "-c", str(config_file))
    assert run.code == 0
    assert "approved, but no gate lies ahead of 100 % (autopilot.gates [100])" in run.out
    assert read_state(config_file)["operator"]["approvals"] == 1


# --- pause and resume ---------------------------------------------------------------------


def test_pause_then_pause_again_then_resume(rollout: Rollout, config_file: Path) -> None:
    run = rollout("pause", "-c", str(config_file), "--reason", "load test")
    assert run.code == 0, run.err
    assert "paused" in run.out
    assert DISABLED in run.out
    pause = read_state(config_file)["operator"]["pause"]
    assert pause is not None
    assert pause["reason"] == "load test"
    assert pause["user"] == getpass.getuser()
    state_text = (config_file.parent / STATE_FILE).read_text(encoding="utf-8")

    again = rollout("pause", "-c", str(config_file), "--reason", "twice")
    assert again.code == 0
    assert (
        f"already paused by {pause['user']} since {pause['time']} (load test): nothing to change"
        in again.out
    )
    assert (config_file.parent / STATE_FILE).read_text(encoding="utf-8") == state_text
    assert len(history_lines(config_file)) == 1

    run = rollout("resume", "-c", str(config_file), "--reason", "done")
    assert run.code == 0, run.err
    assert f"the pause by {pause['user']} since {pause['time']} is lifted" in run.out
    assert read_state(config_file)["operator"] == {"approvals": 0, "resumes": 1, "pause": None}
    paused, resumed = history_lines(config_file)
    assert (paused["command"], paused["before"], paused["after"]) == (
        "rollout pause",
        {"autopilot.paused": False},
        {"autopilot.paused": True},
    )
    assert (resumed["command"], resumed["before"], resumed["after"], resumed["reason"]) == (
        "rollout resume",
        {"autopilot.paused": True, "autopilot.resumes": 0},
        {"autopilot.paused": False, "autopilot.resumes": 1},
        "done",
    )


def test_resume_without_a_pause_still_counts(rollout: Rollout, config_file: Path) -> None:
    edit(config_file, ("autopilot", "enabled"), True)
    run = rollout("resume", "-c", str(config_file))
    assert run.code == 0
    assert "no `rollout pause` was in force" in run.out
    assert DISABLED not in run.out
    assert read_state(config_file)["operator"]["resumes"] == 1
    assert history_lines(config_file)[-1]["after"] == {
        "autopilot.paused": False,
        "autopilot.resumes": 1,
    }


@pytest.mark.parametrize("command", ["approve", "pause", "resume"])
def test_a_corrupt_state_file_exits_2_with_the_fix(
    rollout: Rollout, config_file: Path, command: str
) -> None:
    state = config_file.parent / STATE_FILE
    state.write_text('{"version": 1, "operator": ', encoding="utf-8")
    run = rollout(command, "-c", str(config_file))
    assert run.code == 2
    (line,) = run.err.strip().splitlines()
    assert line.startswith(f"ERROR    {state} is not valid JSON")
    assert line.endswith("delete it to start the autopilot afresh at the file's current percentage")
    assert "Traceback" not in run.out + run.err
    assert history_lines(config_file) == []
    assert state.read_text(encoding="utf-8") == '{"version": 1, "operator": '


def test_an_invalid_config_exits_2(rollout: Rollout, config_file: Path) -> None:
    edit(config_file, ("autopilot", "checks"), 0)
    run = rollout("approve", "-c", str(config_file))
    assert run.code == 2
    assert "autopilot.checks" in run.err
    assert not (config_file.parent / STATE_FILE).exists()


def test_pause_through_the_real_command(config_file: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "pause", "-c", str(config_file), "--reason", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SUCCESS  paused")
    assert read_state(config_file)["operator"]["pause"] is not None


# --- history ------------------------------------------------------------------------------

GOOD = Sample(SideSample(412, 2, p95_ms=80.0), SideSample(300, 1, p95_ms=70.0), False, 60.0)
BAD = Sample(SideSample(400, 40, p95_ms=80.0), SideSample(300, 3, p95_ms=70.0), False, 60.0)


def figures(sample: Sample) -> Any:
    return analyse(sample, AutopilotConfig(), PromotionConfig(), GuardConfig()).as_document()


def autopilot_line(config_file: Path, event: str, before: float, after: float, doc: Any) -> None:
    record(
        config_file,
        command="autopilot",
        before={"rollout.percentage": before},
        after={"rollout.percentage": after},
        reason=doc["reason"] if doc else "a person changed the file",
        live=None,
        event=event,
        figures=doc,
    )


def test_no_history_yet(rollout: Rollout, config_file: Path) -> None:
    run = rollout("history", "-c", str(config_file))
    assert run.code == 0
    assert f"no history yet ({config_file.parent / HISTORY_FILE})" in run.out
    run = rollout("history", "-c", str(config_file), "--json")
    assert (run.code, json.loads(run.out)) == (0, [])


def test_history_tells_who_did_what_with_the_figures(rollout: Rollout, config_file: Path) -> None:
    assert rollout("set", "30", "-c", str(config_file), "--reason", "by hand").code == 0
    autopilot_line(config_file, "promote", 30, 50, figures(GOOD))
    autopilot_line(config_file, "rollback", 50, 30, figures(BAD))
    autopilot_line(config_file, "pause", 30, 30, unreadable("admin listener down").as_document())
    autopilot_line(config_file, "human_change", 30, 10, None)
    run = rollout("history", "-c", str(config_file))
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    when = [entry["time"] for entry in history_lines(config_file)]
    me = f"{getpass.getuser()}@{socket.gethostname()}"
    assert lines == [
        f"{when[0]}  {me}  rollout set 30  rollout.percentage 10 -> 30  (reason: by hand)",
        f"{when[1]}  autopilot  promote  rollout.percentage 30 -> 50  "
        "(reason: every criterion holds (signal 412 attempts, 0.49 % errors, p95 80 ms; "
        "legacy 300 attempts, 0.33 % errors, p95 70 ms))",
        "    pass: 412 signal attempts in 60 s; signal error rate 0.49 % (needs < 1.00 %): ok; "
        "signal p95 80 ms (needs < 200 ms): ok; error rate over legacy's 0.15 % "
        "(needs <= 0.50 %): ok; p95 ratio to legacy's 1.14x (needs <= 1.50x): ok",
        lines[3],  # the rollback, whose reason is the analysis' own wording
        "    fail: 400 signal attempts in 60 s; signal error rate 10.00 % (needs <= 5.00 %): "
        "breached; error rate over legacy's 9.00 % (needs <= 1.00 %): breached",
        lines[5],
        "    error: figures unreadable: admin listener down",
        f"{when[4]}  autopilot  human_change  rollout.percentage 30 -> 10  "
        "(reason: a person changed the file)",
    ]
    assert lines[3].startswith(f"{when[2]}  autopilot  rollback  rollout.percentage 50 -> 30  ")
    assert lines[5].startswith(f"{when[3]}  autopilot  pause  rollout.percentage 30 -> 30  ")


def test_history_last_and_json(rollout: Rollout, config_file: Path) -> None:
    for n in range(5):
        assert rollout("approve", "-c", str(config_file), "--reason", f"r{n}").code == 0
    run = rollout("history", "-c", str(config_file), "--last", "2")
    assert run.code == 0
    shown = run.out.splitlines()
    assert len(shown) == 3
    assert shown[0].endswith("autopilot.approvals 3 -> 4  (reason: r3)")
    assert shown[1].endswith("autopilot.approvals 4 -> 5  (reason: r4)")
    assert shown[2] == "(3 older entries: --last 0 shows all)"
    everything = rollout("history", "-c", str(config_file), "--last", "0").out.splitlines()
    assert len(everything) == 5
    assert "(reason: r0)" in everything[0]

    run = rollout("history", "-c", str(config_file), "--json", "--last", "2")
    assert run.code == 0
    assert json.loads(run.out) == history_lines(config_file)[-2:]
    assert len(json.loads(rollout("history", "-c", str(config_file), "--json").out)) == 5


def test_history_rejects_a_negative_count(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["history", "-c", str(config_file), "--last", "-1"])
    assert exc.value.code == 2
    assert "must be 0 or more, not -1" in capsys.readouterr().err


def test_history_skips_a_malformed_line_with_a_warning(rollout: Rollout, config_file: Path) -> None:
    assert rollout("approve", "-c", str(config_file)).code == 0
    path = config_file.parent / HISTORY_FILE
    with path.open("a", encoding="utf-8") as file:
        file.write('{"time": "2026-12-03T10:00:00+00:00", "comm\n')  # cut short
        file.write("[1, 2]\n")
    assert rollout("pause", "-c", str(config_file)).code == 0
    run = rollout("history", "-c", str(config_file))
    assert run.code == 0
    lines = run.out.splitlines()
    assert lines[0] == f"WARNING  {path} line 2 is not a history entry: skipped"
    assert lines[1] == f"WARNING  {path} line 3 is not a history entry: skipped"
    assert "rollout approve" in lines[2]
    assert "rollout pause" in lines[3]
    assert len(lines) == 4

    run = rollout("history", "-c", str(config_file), "--json")
    assert run.code == 0
    assert [e["command"] for e in json.loads(run.out)] == ["rollout approve", "rollout pause"]
    assert f"{path} line 2 is not a history entry: skipped" in run.err
