"""The autopilot's state file and controller lock, with real processes racing on them."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from proxy.records.pilot_state import (
    CONTROLLER_LOCK,
    STATE_FILE,
    AlreadyRunningError,
    ControllerLock,
    OperatorState,
    StateFileError,
    read_state,
    state_path,
    update_operator,
    write_controller,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "rollout.yaml"
    path.write_text("upstreams: {}\n", encoding="utf-8")
    return path


def approve(op: OperatorState) -> OperatorState:
    return {**op, "approvals": op["approvals"] + 1}


def test_missing_file_reads_as_defaults(config_path: Path) -> None:
    assert state_path(config_path) == config_path.parent / STATE_FILE
    assert read_state(config_path) == {
        "version": 1,
        "operator": {"approvals": 0, "resumes": 0, "pause": None},
        "controller": None,
    }
    assert not state_path(config_path).exists()


def test_each_writer_replaces_only_its_part(config_path: Path) -> None:
    write_controller(config_path, {"stage": 2, "waiting_gate": None})
    new = update_operator(config_path, approve)
    assert new == {"approvals": 1, "resumes": 0, "pause": None}
    write_controller(config_path, {"stage": 3})
    state = read_state(config_path)
    assert state["operator"]["approvals"] == 1
    assert state["controller"] == {"stage": 3}
    on_disk = json.loads(state_path(config_path).read_text(encoding="utf-8"))
    assert on_disk == state
    assert oct(state_path(config_path).stat().st_mode & 0o777) == oct(0o644)


def test_an_unchanged_operator_part_is_not_written(config_path: Path) -> None:
    assert update_operator(config_path, lambda op: op) == {
        "approvals": 0,
        "resumes": 0,
        "pause": None,
    }
    assert not state_path(config_path).exists()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "the document is a list"),
        ('{"version": 2, "operator": {}, "controller": null}', "version is 2"),
        ('{"version": 1, "operator": {"approvals": "x", "resumes": 0}}', "operator.approvals"),
        (
            '{"version": 1, "operator": {"approvals": 0, "resumes": 0, "pause": 3}}',
            "operator.pause",
        ),
        (
            '{"version": 1, "operator": {"approvals": 0, "resumes": 0, "pause": null},'
            ' "controller": 5}',
            "controller is not an object",
        ),
    ],
)
def test_a_corrupt_file_is_one_line_naming_the_file_and_the_fix(
    config_path: Path, text: str, says: str
) -> None:
    state_path(config_path).write_text(text, encoding="utf-8")
    for action in (
        lambda: read_state(config_path),
        lambda: update_operator(config_path, approve),
        lambda: write_controller(config_path, {}),
    ):
        with pytest.raises(StateFileError) as exc:
            action()
        message = str(exc.value)
        assert "\n" not in message
        assert str(state_path(config_path)) in message
        assert says in message
        assert "delete it to start the autopilot afresh" in message
    assert state_path(config_path).read_text(encoding="utf-8") == text  # left for a person


_RACER = """
import sys
from pathlib import Path
from proxy.records.pilot_state import update_operator, write_controller
config, role, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(rounds):
    if role == "controller":
        write_controller(config, {"round": i})
    else:
        update_operator(config, lambda op: {**op, "approvals": op["approvals"] + 1})
"""


def test_concurrent_processes_lose_no_update(config_path: Path) -> None:
    rounds, operators = 40, 4
    roles = ["operator"] * operators + ["controller"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(config_path), role, str(rounds)], cwd=ROOT
        )
        for role in roles
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    state = read_state(config_path)
    assert state["operator"]["approvals"] == rounds * operators
    assert state["controller"] == {"round": rounds - 1}
    leftovers = [p.name for p in config_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_concurrent_threads_lose_no_update(config_path: Path) -> None:
    rounds, threads = 25, 6

    def work() -> None:
        for _ in range(rounds):
            update_operator(config_path, approve)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert not worker.is_alive()
    assert read_state(config_path)["operator"]["approvals"] == rounds * threads


# --- the controller lock ----------------------------------------------------------------

_HOLDER = """
import sys
from pathlib import Path
from proxy.records.pilot_state import ControllerLock
with ControllerLock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def start_holder(config_path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(config_path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, "the holder did not take the lock within 30 s"
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_controller_is_told_who_holds_the_lock(config_path: Path) -> None:
    proc = start_holder(config_path)
    try:
        with pytest.raises(AlreadyRunningError) as exc:
            ControllerLock(config_path).acquire()
        error = exc.value
        assert error.pid == proc.pid
        assert error.host == socket.gethostname()
        lock = config_path.parent / CONTROLLER_LOCK
        message = str(error)
        assert message.startswith(
            f"another autopilot runs on this config: pid {proc.pid} on host {socket.gethostname()}"
            f" since {error.started}"
        )
        assert message.endswith(f"(lock {lock})")
    finally:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=30)
    assert out.strip() == "released"
    with ControllerLock(config_path) as mine:  # released: free again
        holder = json.loads(mine.path.read_text(encoding="utf-8"))
        assert holder["pid"] == os.getpid()


def test_the_lock_of_a_killed_controller_does_not_block_a_restart(config_path: Path) -> None:
    proc = start_holder(config_path)
    lock = config_path.parent / CONTROLLER_LOCK
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # reaps it and closes the pipes
    assert proc.returncode == -signal.SIGKILL
    assert json.loads(lock.read_text(encoding="utf-8"))["pid"] == proc.pid  # stale content
    with ControllerLock(config_path):
        assert json.loads(lock.read_text(encoding="utf-8"))["pid"] == os.getpid()
    assert lock.read_text(encoding="utf-8") == ""  # emptied on a clean release


def test_the_lock_excludes_a_second_holder_in_the_same_process(config_path: Path) -> None:
    with ControllerLock(config_path), pytest.raises(AlreadyRunningError) as exc:
        ControllerLock(config_path).acquire()
    assert exc.value.pid == os.getpid()
    with ControllerLock(config_path) as again:  # and free once the first left
        assert again.path.read_text(encoding="utf-8")
