"""The audit trail: one JSON line per CLI edit in `rollout-history.jsonl` beside the config."""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HISTORY_FILE = "rollout-history.jsonl"


def history_path(config_path: Path) -> Path:
    return config_path.parent / HISTORY_FILE


def _user() -> str:
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
) -> dict[str, Any]:
    """Append one entry (O_APPEND: concurrent writers never interleave a line)."""
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "user": _user(),
        "host": socket.gethostname(),
        "command": command,
        "before": before,
        "after": after,
        "reason": reason,
        "forced": forced,
        "live": live,
    }
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
