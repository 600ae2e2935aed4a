"""The autopilot's state file and its one-controller lock, beside the config (SPEC 13).

`rollout-autopilot.json` has two owners: the operator commands (`rollout approve`,
`pause`, `resume`) write `operator`, the controller writes `controller`. Each writer takes
an exclusive flock on `rollout-autopilot.json.lock`, re-reads the file under it and
replaces only its own part, so an approval racing the controller's write is never lost.

`rollout-autopilot.lock` is held (non-blocking flock) by the controller for its whole
life. The kernel drops a flock when its holder dies, even by SIGKILL, so a stale lock file
never blocks a restart; its content (pid, host, start time) only names the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict, cast

from proxy.errors import EditError, RolloutError
from proxy.records.files import write_atomically

STATE_FILE = "rollout-autopilot.json"
CONTROLLER_LOCK = "rollout-autopilot.lock"
VERSION = 1
_FRESH = "delete it to start the autopilot afresh at the file's current percentage"


class PauseState(TypedDict):
    reason: str | None
    user: str
    time: str  # ISO 8601, UTC


class OperatorState(TypedDict):
    approvals: int  # the controller compares these counters with what it last saw
    resumes: int
    pause: PauseState | None


class StateFile(TypedDict):
    version: int
    operator: OperatorState
    controller: dict[str, Any] | None  # the controller's own business


class StateFileError(RolloutError):
    """The state file cannot be read or written; the message names it and the fix."""


class AlreadyRunningError(RolloutError):
    """Another controller holds the lock on this config."""

    def __init__(self, lock: Path, pid: int | None, host: str | None, started: str | None):
        self.lock, self.pid, self.host, self.started = lock, pid, host, started
        who = f"pid {pid} on host {host or '?'}" if pid is not None else "a process"
        since = f" since {started}" if started else ""
        super().__init__(f"another autopilot runs on this config: {who}{since} (lock {lock})")


def state_path(config_path: Path) -> Path:
    return config_path.parent / STATE_FILE


def default_operator() -> OperatorState:
    return {"approvals": 0, "resumes": 0, "pause": None}


def read_state(config_path: Path) -> StateFile:
    """The file's content; defaults when there is none. `StateFileError` when unusable."""
    path = state_path(config_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"version": VERSION, "operator": default_operator(), "controller": None}
    except (OSError, UnicodeDecodeError) as exc:
        raise StateFileError(f"cannot read the autopilot state file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateFileError(f"{path} is not valid JSON ({exc}); {_FRESH}") from None
    return _checked(data, path)


def _checked(data: object, path: Path) -> StateFile:
    def bad(what: str) -> StateFileError:
        return StateFileError(f"{path} is not an autopilot state file: {what}; {_FRESH}")

    if not isinstance(data, dict):
        raise bad(f"the document is a {type(data).__name__}, not an object")
    if data.get("version") != VERSION:
        raise bad(f"version is {data.get('version')!r}, this rollout-proxy reads {VERSION}")
    operator, controller = data.get("operator"), data.get("controller")
    if not isinstance(operator, dict):
        raise bad("operator is not an object")
    for key in ("approvals", "resumes"):
        value = operator.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(f"operator.{key} is {value!r}, not a count")
    pause = operator.get("pause")
    if pause is not None and not (
        isinstance(pause, dict)
        and isinstance(pause.get("user"), str)
        and isinstance(pause.get("time"), str)
        and isinstance(pause.get("reason"), str | None)
    ):
        raise bad(f"operator.pause is {pause!r}, not null or {{reason, user, time}}")
    if controller is not None and not isinstance(controller, dict):
        raise bad("controller is not an object or null")
    return cast(StateFile, {"version": VERSION, "operator": operator, "controller": controller})


def write_controller(config_path: Path, controller: dict[str, Any]) -> None:
    """Replace the controller's part, keeping whatever the operator wrote meanwhile."""
    with _exclusive(config_path):
        state = read_state(config_path)
        state["controller"] = controller
        _write(config_path, state)


def update_operator(
    config_path: Path, change: Callable[[OperatorState], OperatorState]
) -> OperatorState:
    """Apply `change` to the operator's part under the lock; returns the new part. Nothing
    is written when `change` returns it unchanged."""
    with _exclusive(config_path):
        state = read_state(config_path)
        new = change(cast(OperatorState, dict(state["operator"])))
        if new != state["operator"]:
            state["operator"] = new
            _write(config_path, state)
        return new


@contextlib.contextmanager
def _exclusive(config_path: Path) -> Iterator[None]:
    lock = state_path(config_path).with_name(STATE_FILE + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StateFileError(f"cannot open the lock file {lock}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read-modify-write: milliseconds
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _write(config_path: Path, state: StateFile) -> None:
    text = json.dumps(state, indent=2, ensure_ascii=False) + "\n"
    try:
        write_atomically(state_path(config_path), text)
    except EditError as exc:
        raise StateFileError(str(exc)) from None


class ControllerLock:
    """Held by the one controller of a config for its whole life:

    with ControllerLock(config_path):
        run()
    """

    def __init__(self, config_path: Path) -> None:
        self.path = config_path.parent / CONTROLLER_LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise `AlreadyRunningError` naming the holder; never waits."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateFileError(f"cannot open the lock file {self.path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise AlreadyRunningError(
                self.path, holder.get("pid"), holder.get("host"), holder.get("started")
            ) from None
        except BaseException:
            os.close(fd)
            raise
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Emptied, not removed: unlinking a flock'ed file lets two processes lock two files.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> ControllerLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class _Holder(TypedDict, total=False):
    pid: int
    host: str
    started: str


def _holder(fd: int) -> _Holder:
    """Who holds the lock, as it wrote; empty when it has not written yet."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: _Holder = {}
    if isinstance(data.get("pid"), int):
        out["pid"] = data["pid"]
    if isinstance(data.get("host"), str):
        out["host"] = data["host"]
    if isinstance(data.get("started"), str):
        out["started"] = data["started"]
    return out


def lock_holder(config_path: Path) -> dict[str, Any] | None:
    """The running controller of this config (pid, host, started), or None when none runs.

    Probes the lock without keeping it: a lock this process can take is held by no one.
    """
    path = config_path.parent / CONTROLLER_LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return dict(_holder(fd)) or {"pid": None, "host": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
