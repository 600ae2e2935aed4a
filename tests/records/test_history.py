"""The history file: what a line holds, and reading a file with a damaged line."""

from __future__ import annotations

import json
from pathlib import Path

from proxy.records.history import history_path, read_entries, record

FIGURES = {"outcome": "pass", "reason": "every criterion holds", "checks": []}


def lines(config_path: Path) -> list[dict[str, object]]:
    text = history_path(config_path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_event_and_figures_appear_only_when_given(tmp_path: Path) -> None:
    config = tmp_path / "rollout.yaml"
    common = {"before": {"rollout.percentage": 10}, "after": {"rollout.percentage": 30}}
    record(config, command="rollout set 30", reason=None, live=None, **common)
    record(
        config,
        command="autopilot",
        before=None,
        after=None,
        reason="r",
        live=None,
        event="promote",
        figures=FIGURES,
    )
    record(config, command="autopilot", reason="r", live=None, event="human_change", **common)
    plain, promote, human = lines(config)
    assert "event" not in plain
    assert "figures" not in plain
    assert (promote["event"], promote["figures"]) == ("promote", FIGURES)
    assert (human["event"], human["figures"]) == ("human_change", None)  # null, not missing
    assert promote["before"] is None


def test_read_entries_skips_damaged_lines_and_names_them(tmp_path: Path) -> None:
    config = tmp_path / "rollout.yaml"
    record(config, command="rollout set 30", before=1, after=2, reason=None, live=None)
    with history_path(config).open("a", encoding="utf-8") as file:
        file.write('{"time": "x", "command": 3}\n\n"text"\n{"tim\n')
    record(config, command="rollout set 50", before=2, after=3, reason=None, live=None)
    entries, bad = read_entries(config)
    assert [e["command"] for e in entries] == ["rollout set 30", "rollout set 50"]
    assert bad == [2, 4, 5]
