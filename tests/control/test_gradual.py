"""proxy.control.gradual: `rollout rollback --gradual` in-process (the real walks, signals
and proxy are in tests/e2e/test_gradual.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from proxy.config.load import load_config
from proxy.control.cli import main
from proxy.control.gradual import cmd_rollback_gradual
from tests.support import config_dict, write_config
from tests.support.autopilot import history


@pytest.fixture
def path(tmp_path: Path) -> Path:
    data = config_dict("http://127.0.0.1:1", "http://127.0.0.1:2", rollout={"percentage": 50})
    return write_config(tmp_path / "rollout.yaml", data)


def args(path: Path, **given: Any) -> argparse.Namespace:
    values = {"step": None, "every": 0.0, "to": None, "reason": None, "admin": None, **given}
    return argparse.Namespace(config_path=path, **values)


def test_the_whole_walk_with_no_wait(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rollback", "--gradual", "--every", "0", "-c", str(path)]) == 0
    assert load_config(path).rollout.percentage == 30
    assert [e["after"]["rollout.percentage"] for e in history(path)] == [45, 40, 35, 30]
    assert [e["reason"] for e in history(path)][-1] == "step 4 of 4, 50 % -> 30 %"
    out = capsys.readouterr().out
    assert "4 steps of 5 %, one every 0 s (45, 40, 35, 30)" in out
    assert "no --reason given" in out


def test_a_dry_run_prints_the_steps_and_writes_nothing(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--dry-run` is every editing command's (SPEC 10); the walk honours it when given.
    before = path.read_bytes()
    assert cmd_rollback_gradual(args(path, dry_run=True, step=10.0, to=25.0)) == 0
    assert path.read_bytes() == before
    assert not (path.parent / "rollout-history.jsonl").exists()
    out = capsys.readouterr().out
    assert "gradual rollback 50 % -> 25 %: 3 steps of 10 %" in out
    assert "(40, 30, 25)" in out
    assert "dry run: nothing written" in out


def test_at_the_first_stage_there_is_nothing_to_roll_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = config_dict("http://127.0.0.1:1", "http://127.0.0.1:2", rollout={"percentage": 0})
    path = write_config(tmp_path / "rollout.yaml", data)
    assert cmd_rollback_gradual(args(path)) == 0
    assert "nothing to roll back" in capsys.readouterr().out
    assert not (path.parent / "rollout-history.jsonl").exists()


def test_a_step_the_safe_path_refuses_stops_the_walk(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A symlinked config (a ConfigMap mount) is managed elsewhere: every edit is refused.
    link = path.parent / "linked.yaml"
    link.symlink_to(path)
    before = path.read_bytes()
    assert cmd_rollback_gradual(args(link)) == 2
    assert path.read_bytes() == before
    assert not (path.parent / "rollout-history.jsonl").exists()
    err = capsys.readouterr().err
    assert "is a symlink" in err
    assert "stopped at 50 % (none of the 4 steps written), the rest not applied" in err
