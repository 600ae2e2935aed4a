"""The audit trail: one JSON line per CLI edit or autopilot decision in
`rollout-history.jsonl` beside the config.

The autopilot's lines (`command: "autopilot"`) add `event` (promote, rollback, pause,
resume, gate, approve, human_change) and `figures` (the analysis it decided on, or null).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

HISTORY_FILE = "rollout-history.jsonl"


def history_path(config_path: Path) -> Path:
    return config_path.parent / HISTORY_FILE


class HistoryEntry(TypedDict):
    time: str  # ISO 8601, UTC
    user: str
    host: str
    command: str  # "rollout set 30", or "autopilot"
    before: Any
    after: Any
    reason: str | None
    forced: bool
    live: dict[str, Any] | None
    event: NotRequired[str]
    figures: NotRequired[Any]


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def record(
    config_path: Path,
    *,
    command: str,
    before: Any,
    after: Any,
    reason: str | None,
    live: dict[str, Any] | None,
    forced: bool = False,
    event: str | None = None,
    figures: Any = None,
) -> HistoryEntry:
    """Append one entry (O_APPEND: concurrent writers never interleave a line). `event` and
    `figures` appear only when given; a line with an `event` always carries `figures`."""
    entry: HistoryEntry = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "user": current_user(),
        "host": socket.gethostname(),
        "command": command,
        "before": before,
        "after": after,
        "reason": reason,
        "forced": forced,
        "live": live,
    }
    if event is not None:
        entry["event"] = event
    if event is not None or figures is not None:
        entry["figures"] = figures
    line = json.dumps(entry, ensure_ascii=False) + "\n"
    fd = os.open(history_path(config_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)
    return entry


def read(config_path: Path) -> list[dict[str, Any]]:
    path = history_path(config_path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_entries(config_path: Path) -> tuple[list[HistoryEntry], list[int]]:
    """Every readable entry, oldest first, and the numbers of the lines that were not one
    (a line cut short by a full disk must not hide the rest of the log)."""
    path = history_path(config_path)
    entries: list[HistoryEntry] = []
    bad: list[int] = []
    with path.open(encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                bad.append(number)
                continue
            if not (
                isinstance(data, dict)
                and isinstance(data.get("time"), str)
                and isinstance(data.get("command"), str)
            ):
                bad.append(number)
                continue
            entries.append(cast(HistoryEntry, data))
    return entries, bad
