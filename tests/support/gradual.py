"""`rollout rollback --gradual` as a real process, and what a running proxy serves while it
walks (polled from `/-/status`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.autopilot import history


@dataclass
class WalkProcess:
    """`rollout rollback --gradual ...`, its output captured to a file."""

    config_path: Path
    args: tuple[str, ...]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self) -> WalkProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "rollback", "--gradual", *self.args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"},
        )
        return self

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.wait(10)

    def output(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def status(admin_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(admin_url + "/-/status", timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def served(admin_url: str) -> float:
    """The global percentage the proxy applies now."""
    return float(status(admin_url)["percentages"]["default"])


def watch_served(admin_url: str, walk: WalkProcess, *, timeout: float = 60.0) -> list[float]:
    """Every distinct percentage the proxy served while the walk ran, and for 3 s after it
    ended (the last reload), in order."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    ended: float | None = None
    while time.monotonic() < deadline:
        value = served(admin_url)
        if not seen or seen[-1] != value:
            seen.append(value)
        if ended is None and not walk.running():
            ended = time.monotonic()
        if ended is not None and time.monotonic() - ended > 3:
            break
        time.sleep(0.05)
    return seen


def wait_for_lines(config_path: Path, count: int, *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The history once it has `count` lines; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = history(config_path)
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"not {count} history lines within {timeout:g} s: {history(config_path)}")


def wait_served(admin_url: str, percentage: float, *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while served(admin_url) != percentage:
        if time.monotonic() > deadline:
            raise AssertionError(f"the proxy does not serve {percentage:g} % within {timeout:g} s")
        time.sleep(0.05)
