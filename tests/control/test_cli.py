"""The `rollout` command (SPEC 10): every command as an operator runs it.

File-only commands run `proxy.control.cli.main(argv)` in-process on a copy of the shipped
config/rollout.yaml (its listeners moved to free ports, so no proxy answers there). Commands
that read live state run against real sample upstreams and the real `rollout serve`
process; there the CLI runs in a worker thread, because the upstreams share the test's
event loop and the CLI blocks on its HTTP calls (and `rollout test` runs its own loop).
"""

from __future__ import annotations

import asyncio
import difflib
import getpass
import json
import os
import pty
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import trustme
import yaml
from aiohttp import web

from proxy.config.load import load_config
from proxy.control import cli
from proxy.control.edit import set_value
from proxy.control.smoke import proxy_url
from proxy.demo.apis import legacy_app, signal_app
from proxy.records.history import HISTORY_FILE
from tests.support import (
    HOST,
    ProxyProcess,
    UpstreamFactory,
    config_dict,
    free_port,
    server_url,
    write_config,
)
from tests.support.tls import tls_upstream, write_ca, write_cert

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "config" / "rollout.yaml"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
COMMANDS = (
    "serve",
    "demo",
    "check",
    "explain",
    "status",
    "set",
    "stage",
    "promote",
    "rollback",
    "emergency",
    "test",
    "report",
)
HISTORY_FIELDS = {"time", "user", "host", "command", "before", "after", "reason", "live"}


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs are compared as text: no colour, and no config path from the environment."""
    for name in ("NO_COLOR", "FORCE_COLOR", "ROLLOUT_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    def json(self) -> Any:
        return json.loads(self.out)


Rollout = Callable[..., Run]


@pytest.fixture
def rollout(capsys: pytest.CaptureFixture[str]) -> Rollout:
    """`rollout ARGS...` in-process: exit code, stdout, stderr."""

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


async def in_thread(rollout: Rollout, *argv: str) -> Run:
    return await asyncio.to_thread(rollout, *argv)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A copy of the shipped config whose listeners are on free (unused) loopback ports."""
    path = tmp_path / "rollout.yaml"
    text = SHIPPED_CONFIG.read_text(encoding="utf-8")
    for key in (("listen", "port"), ("admin", "port")):
        text = set_value(text, key, free_port())
    path.write_text(text, encoding="utf-8")
    return path


def history(config_path: Path) -> list[dict[str, Any]]:
    path = config_path.parent / HISTORY_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def percentage_in(path: Path) -> float:
    return float(yaml.safe_load(path.read_text(encoding="utf-8"))["rollout"]["percentage"])


def the_changed_line(before: str, after: str) -> tuple[int, str, str]:
    """The only line that differs (index, old, new); fails unless exactly one line changed."""
    old_lines = before.splitlines(keepends=True)
    new_lines = after.splitlines(keepends=True)
    diff = list(difflib.ndiff(old_lines, new_lines))
    removed = [line[2:] for line in diff if line.startswith("- ")]
    added = [line[2:] for line in diff if line.startswith("+ ")]
    assert len(removed) == 1, "".join(diff)
    assert len(added) == 1, "".join(diff)
    assert len(old_lines) == len(new_lines)
    index = old_lines.index(removed[0])
    assert new_lines[index] == added[0]
    return index, removed[0], added[0]


# --- help, -c placement, colour ---------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_shows_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: rollout {command}" in out
    assert "example:" in out
    example = out.split("example:", 1)[1].strip().splitlines()[0]
    assert example.startswith(f"rollout {command}")
    assert "-c CONFIG, --config CONFIG" in out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", out, re.MULTILINE), command


def test_no_command_prints_help_and_exits_2(rollout: Rollout) -> None:
    run = rollout()
    assert run.code == 2
    assert "usage: rollout" in run.out


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "{path}", "status", "--json"],
        ["status", "-c", "{path}", "--json"],
        ["status", "--json", "--config", "{path}"],
        ["--config={path}", "status", "--json"],
    ],
)
def test_config_option_before_or_after_the_command(
    argv: list[str], rollout: Rollout, config_file: Path
) -> None:
    run = rollout(*(a.replace("{path}", str(config_file)) for a in argv))
    assert run.code == 0, run.text
    assert run.json()["config"] == str(config_file)


def test_config_from_the_environment(
    rollout: Rollout, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLOUT_CONFIG", str(config_file))
    run = rollout("status", "--json")
    assert run.code == 0, run.text
    assert run.json()["config"] == str(config_file)


def test_missing_config_file_is_a_configuration_error(rollout: Rollout, tmp_path: Path) -> None:
    run = rollout("status", "-c", str(tmp_path / "nope.yaml"))
    assert run.code == 2
    assert "nope.yaml" in run.err
    assert "file not found" in run.err


def _run_rollout(argv: list[str], env: dict[str, str], *, tty: bool) -> str:
    """`python -m proxy ARGV` as a separate process, its output on a pipe or a terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")} | env
    command = [sys.executable, "-m", "proxy", *argv]
    if not tty:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(command, stdout=child_fd, stderr=child_fd, env=env, cwd=ROOT)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode("utf-8")


@pytest.mark.parametrize(
    ("tty", "env", "coloured"),
    [
        pytest.param(False, {}, False, id="piped"),
        pytest.param(False, {"FORCE_COLOR": "1"}, True, id="piped FORCE_COLOR"),
        pytest.param(False, {"NO_COLOR": "1", "FORCE_COLOR": "1"}, False, id="NO_COLOR wins"),
        pytest.param(True, {}, True, id="terminal"),
        pytest.param(True, {"NO_COLOR": "1"}, False, id="terminal NO_COLOR"),
    ],
)
def test_colour_only_on_a_terminal_or_when_forced(
    tty: bool, env: dict[str, str], coloured: bool, config_file: Path
) -> None:
    # status without a proxy prints a heading and a WARNING: both coloured on a terminal.
    out = _run_rollout(["status", "-c", str(config_file)], env, tty=tty)
    assert "proxy not reachable" in out
    assert bool(ANSI.search(out)) is coloured, repr(out)
    assert "WARNING" in ANSI.sub("", out)


# --- check ------------------------------------------------------------------------------


def test_check_valid_config_prints_a_summary(rollout: Rollout, config_file: Path) -> None:
    run = rollout("check", "-c", str(config_file))
    assert run.code == 0, run.text
    assert f"{config_file}: valid" in run.out
    assert "signal http://127.0.0.1:8000, legacy http://127.0.0.1:8001" in run.out
    assert "10 % (stage 1 of 5), seed 'rollout'" in run.out
    assert "anomalyDetection: 10 % on /signals/anomaly" in run.out
    assert "test ids    2" in run.out
    assert "error rate < 1.0%, p95 < 200 ms, min 100 requests" in run.out
    assert run.err == ""


def test_check_invalid_config_lists_every_error(rollout: Rollout, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "upstreams:\n"
        "  signal: {url: ftp://example.com}\n"
        "  legacy: {url: http://127.0.0.1:8001}\n"
        "rollout:\n"
        "  percentage: 150\n"
        "  stages: [0, 50, 30]\n"
        "  features:\n"
        "    anomalyDetection: {paths: [/signals/anomaly, signals/today]}\n"
        "guard: {max_error_rate: 0.05, colour: red}\n",
        encoding="utf-8",
    )
    run = rollout("check", "-c", str(path))
    assert run.code == 2
    assert run.out == ""
    assert f"invalid configuration {path}" in run.err
    problems = [line for line in run.err.splitlines() if line.startswith("  - ")]
    expected = [
        "upstreams.signal.url",
        "rollout.percentage: 150 is not within 0-100",
        "rollout.stages",
        "rollout.features.anomalyDetection.paths",
        "guard.colour",
    ]
    for key in expected:
        assert any(key in problem for problem in problems), (key, run.err)
    assert "ftp://example.com" in run.err
    assert "'signals/today' does not start with '/'" in run.err


def _tls_config(tmp_path: Path, client_not_after: datetime) -> Path:
    """A config whose https signal has a CA file and a client certificate expiring then."""
    ca = trustme.CA(organization_name="Example Internal CA")
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    client = ca.issue_cert(
        "rollout-proxy.internal", common_name="rollout-proxy", not_after=client_not_after
    )
    files = write_cert(client, tmp_path, "client")
    tls = {"ca_file": str(ca_file), "cert_file": str(files.cert), "key_file": str(files.key)}
    data = config_dict(
        "http://unused",
        "http://unused",
        upstreams={
            "signal": {"url": f"https://{HOST}:8443", "tls": tls},
            "legacy": {"url": f"http://{HOST}:8001"},
        },
    )
    return write_config(tmp_path / "rollout.yaml", data)


def test_check_prints_each_tls_certificate(rollout: Rollout, tmp_path: Path) -> None:
    path = _tls_config(tmp_path, datetime.now(UTC) + timedelta(days=400, hours=1))
    run = rollout("check", "-c", str(path))
    assert run.code == 0, run.text
    lines = run.out.splitlines()
    ca_at = lines.index(f"  upstreams.signal.tls.ca_file {tmp_path / 'ca.pem'}")
    assert lines[ca_at + 1].startswith("      subject O=Example Internal CA")
    assert lines[ca_at + 2].startswith("      issuer  O=Example Internal CA")
    cert_at = lines.index(f"  upstreams.signal.tls.cert_file {tmp_path / 'client.crt'}")
    assert "CN=rollout-proxy" in lines[cert_at + 1]
    assert lines[cert_at + 3].endswith("(400 days left)")
    assert "WARNING" not in run.out
    assert run.err == ""


def test_check_warns_when_a_certificate_expires_within_14_days(
    rollout: Rollout, tmp_path: Path
) -> None:
    path = _tls_config(tmp_path, datetime.now(UTC) + timedelta(days=3, hours=1))
    run = rollout("check", "-c", str(path))
    assert run.code == 0, run.text
    [warning] = [line for line in run.out.splitlines() if line.startswith("WARNING")]
    assert "upstreams.signal.tls.cert_file: certificate " in warning
    assert "CN=rollout-proxy" in warning
    assert " expires in 3 days, on 20" in warning
    assert warning.endswith(f"within 14 days ({tmp_path / 'client.crt'})")
    assert run.err == ""


def test_check_fails_on_an_expired_certificate(rollout: Rollout, tmp_path: Path) -> None:
    path = _tls_config(tmp_path, datetime.now(UTC) - timedelta(days=2))
    run = rollout("check", "-c", str(path))
    assert run.code == 1, run.text
    assert f"{path}: valid" in run.out  # the file is valid; the certificate is not
    [error] = [line for line in run.err.splitlines() if line.startswith("ERROR")]
    assert "upstreams.signal.tls.cert_file: certificate " in error
    assert "has expired" in error


# --- explain ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "path", "expected"),
    [
        (
            "alice",
            "/",
            {
                "feature": "default",
                "percentage": 10,
                "threshold": 1000,
                "bucket": 9177,
                "upstream": "legacy",
                "reason": "bucket",
            },
        ),
        (
            "bob",
            "/signals",
            {"bucket": 1133, "threshold": 1000, "upstream": "legacy", "reason": "bucket"},
        ),
        (
            "会话-42",
            "/signals/anomaly/today",
            {
                "feature": "anomalyDetection",
                "bucket": 520,
                "upstream": "signal",
                "reason": "bucket",
            },
        ),
        (
            "qa-tester-1",
            "/",
            {"bucket": None, "upstream": "signal", "reason": "test_session"},
        ),
    ],
)
def test_explain_json(
    session: str, path: str, expected: dict[str, Any], rollout: Rollout, config_file: Path
) -> None:
    run = rollout("explain", session, "--path", path, "--json", "-c", str(config_file))
    assert run.code == 0, run.text
    doc = run.json()
    assert doc["session_id"] == session
    assert doc["path"] == path
    assert {k: doc[k] for k in expected} == expected


def test_explain_text(rollout: Rollout, config_file: Path) -> None:
    run = rollout("explain", "alice", "-c", str(config_file))
    assert run.code == 0, run.text
    assert run.out.splitlines() == [
        "session   alice",
        "feature   default (10 %)",
        "bucket    9177 of 10000",
        "upstream  legacy",
        "reason    bucket 9177 >= 1000 (= 10 % of 10000)",
    ]
    run = rollout("explain", "qa-tester-1", "-c", str(config_file))
    assert "upstream  signal" in run.out
    assert "reason    listed in rollout.test_sessions" in run.out
    assert "bucket" not in run.out


def test_explain_follows_edits_and_emergency(rollout: Rollout, config_file: Path) -> None:
    c = ("-c", str(config_file))
    assert rollout("explain", "bob", "--json", *c).json()["upstream"] == "legacy"
    assert rollout("set", "30", *c).code == 0
    bob = rollout("explain", "bob", "--json", *c).json()
    assert (bob["upstream"], bob["threshold"], bob["bucket"]) == ("signal", 3000, 1133)

    assert rollout("emergency", *c).code == 0
    for session in ("bob", "qa-tester-1"):  # emergency beats test sessions too
        doc = rollout("explain", session, "--json", *c).json()
        assert (doc["upstream"], doc["reason"]) == ("legacy", "emergency")
    text = rollout("explain", "qa-tester-1", *c).out
    assert "rollout.emergency is true: everything goes to legacy" in text

    assert rollout("emergency", "--off", *c).code == 0
    assert rollout("explain", "qa-tester-1", "--json", *c).json()["reason"] == "test_session"


# --- status (file only) -----------------------------------------------------------------


def test_status_without_a_proxy_shows_the_file_and_says_so(
    rollout: Rollout, config_file: Path
) -> None:
    run = rollout("status", "-c", str(config_file))
    assert run.code == 0, run.text
    assert f"Configured ({config_file})" in run.out
    assert "rollout      10 % to signal, stage 1 of 5" in run.out
    assert "feature      anomalyDetection: 10 %" in run.out
    assert "emergency    off" in run.out
    assert "test ids     qa-tester-1, qa-tester-2" in run.out
    assert "proxy not reachable" in run.out
    assert "showing the file's state only" in run.out
    assert "Live (" not in run.out


def test_status_json_without_a_proxy(rollout: Rollout, config_file: Path) -> None:
    run = rollout("status", "--json", "-c", str(config_file))
    assert run.code == 0, run.text
    doc = run.json()
    assert doc["live"] is None
    admin_port = yaml.safe_load(config_file.read_text())["admin"]["port"]
    assert f"127.0.0.1:{admin_port}" in doc["live_error"]
    assert doc["percentage"] == 10
    assert doc["stage"] == "stage 1 of 5"
    assert doc["percentages"] == {"default": 10, "anomalyDetection": 10, "limitUpPrediction": 10}
    assert doc["emergency"] is False
    assert doc["test_sessions"] == ["qa-tester-1", "qa-tester-2"]


# --- edits: one line changed, comments kept ---------------------------------------------


@pytest.mark.parametrize(
    ("argv", "key", "old", "new"),
    [
        (["set", "30"], "percentage", "10", "30"),
        (["set", "12.5"], "percentage", "10", "12.5"),
        (["set", "0"], "percentage", "10", "0"),
        (["stage", "2"], "percentage", "10", "30"),
        (["stage", "5"], "percentage", "10", "100"),
        (["emergency"], "emergency", "false", "true"),
    ],
)
def test_edit_changes_exactly_one_line_and_keeps_its_comment(
    argv: list[str], key: str, old: str, new: str, rollout: Rollout, config_file: Path
) -> None:
    before = config_file.read_text(encoding="utf-8")
    run = rollout(*argv, "-c", str(config_file), "--reason", "test")
    assert run.code == 0, run.text
    assert "SUCCESS" in run.out
    _, old_line, new_line = the_changed_line(before, config_file.read_text(encoding="utf-8"))
    old_value, _, old_comment = old_line.partition("#")
    new_value, _, new_comment = new_line.partition("#")
    assert old_value.split() == [f"{key}:", old]
    assert new_value.split() == [f"{key}:", new]
    assert old_line.index(key) == new_line.index(key)  # indentation kept
    assert new_comment == old_comment
    if old_comment:  # an aligned comment stays in its column
        assert new_line.index("#") == old_line.index("#")


def test_set_feature_edits_that_feature_only(rollout: Rollout, config_file: Path) -> None:
    before = config_file.read_text(encoding="utf-8")
    run = rollout("set", "25", "--feature", "anomalyDetection", "-c", str(config_file))
    assert run.code == 0, run.text
    assert "rollout.features.anomalyDetection.percentage 10 -> 25" in run.out
    after = config_file.read_text(encoding="utf-8")
    index, old_line, new_line = the_changed_line(before, after)
    assert (old_line, new_line) == ("      percentage: 10\n", "      percentage: 25\n")
    lines = before.splitlines()
    owner = next(line for line in reversed(lines[:index]) if line.endswith(":"))
    assert owner.strip() == "anomalyDetection:"
    doc = yaml.safe_load(after)["rollout"]
    assert doc["percentage"] == 10
    assert doc["features"]["anomalyDetection"]["percentage"] == 25
    assert doc["features"]["limitUpPrediction"]["percentage"] == 10


def test_emergency_on_then_off_restores_the_file(rollout: Rollout, config_file: Path) -> None:
    original = config_file.read_bytes()
    assert rollout("emergency", "-c", str(config_file)).code == 0
    assert yaml.safe_load(config_file.read_text())["rollout"]["emergency"] is True
    status = rollout("status", "-c", str(config_file))
    assert "emergency    ON: everything to legacy" in status.out
    run = rollout("emergency", "--off", "-c", str(config_file))
    assert run.code == 0, run.text
    assert "rollout.emergency true -> false" in run.out
    assert config_file.read_bytes() == original


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["set", "150"], "rollout.percentage: 150 is not within 0-100"),
        (["set", "-5"], "rollout.percentage: -5 is not within 0-100"),
        (["set", "12.345"], "rollout.percentage: 12.345 has more than two decimals"),
        (["set", "101", "--feature", "anomalyDetection"], "anomalyDetection.percentage: 101"),
        (["set", "20", "--feature", "nope"], "unknown feature 'nope'"),
        (["stage", "9"], "stage 9 does not exist: rollout.stages has stages 0-5"),
        (["stage", "-1"], "stage -1 does not exist"),
    ],
)
def test_refused_edit_exits_2_and_leaves_the_file_alone(
    argv: list[str], message: str, rollout: Rollout, config_file: Path
) -> None:
    original = config_file.read_bytes()
    run = rollout(*argv, "-c", str(config_file))
    assert run.code == 2, run.text
    assert message in run.err
    assert "SUCCESS" not in run.out
    assert config_file.read_bytes() == original
    assert history(config_file) == []
    # Nothing left behind from the atomic write either.
    assert sorted(p.name for p in config_file.parent.iterdir()) == ["rollout.yaml"]


@pytest.mark.parametrize("argv", [["set", "10"], ["stage", "1"], ["emergency", "--off"]])
def test_edit_to_the_current_value_is_a_no_op(
    argv: list[str], rollout: Rollout, config_file: Path
) -> None:
    original = config_file.read_bytes()
    run = rollout(*argv, "-c", str(config_file))
    assert run.code == 0, run.text
    assert "nothing to change" in run.out
    assert config_file.read_bytes() == original
    assert history(config_file) == []


def test_rollback_moves_to_the_previous_stage(rollout: Rollout, config_file: Path) -> None:
    c = ("-c", str(config_file))
    assert rollout("set", "30", *c).code == 0
    run = rollout("rollback", *c, "--reason", "p95 regression")
    assert run.code == 0, run.text
    assert "rollout.percentage 30 -> 10 (stage 1 of 5)" in run.out
    assert percentage_in(config_file) == 10
    # Between stages, rollback goes down to the stage below.
    assert rollout("set", "25", *c).code == 0
    assert rollout("rollback", *c).code == 0
    assert percentage_in(config_file) == 10
    assert [e["command"] for e in history(config_file)] == [
        "rollout set 30",
        "rollout rollback",
        "rollout set 25",
        "rollout rollback",
    ]
    assert history(config_file)[1]["before"] == {"rollout.percentage": 30}
    assert history(config_file)[1]["after"] == {"rollout.percentage": 10}
    assert history(config_file)[1]["reason"] == "p95 regression"


def test_rollback_at_stage_0_is_a_no_op(rollout: Rollout, config_file: Path) -> None:
    c = ("-c", str(config_file))
    assert rollout("stage", "0", *c).code == 0
    entries = len(history(config_file))
    before = config_file.read_bytes()
    run = rollout("rollback", *c)
    assert run.code == 0, run.text
    assert "nothing to roll back" in run.out
    assert config_file.read_bytes() == before
    assert len(history(config_file)) == entries


def test_promote_at_the_last_stage_is_a_no_op(rollout: Rollout, config_file: Path) -> None:
    c = ("-c", str(config_file))
    assert rollout("stage", "5", *c).code == 0
    before = config_file.read_bytes()
    run = rollout("promote", *c)
    assert run.code == 0, run.text
    assert "already at the last stage" in run.out
    assert config_file.read_bytes() == before


def test_promote_without_a_proxy_refuses_unless_forced(rollout: Rollout, config_file: Path) -> None:
    c = ("-c", str(config_file))
    original = config_file.read_bytes()
    run = rollout("promote", *c)
    assert run.code == 1, run.text
    assert "cannot judge the promotion criteria: proxy not reachable" in run.err
    assert "--force" in run.out
    assert config_file.read_bytes() == original
    assert history(config_file) == []

    run = rollout("promote", "--force", *c, "--reason", "change window closing")
    assert run.code == 0, run.text
    assert "promoting anyway (--force)" in run.out
    assert "rollout.percentage 10 -> 30 (stage 2 of 5)" in run.out
    assert percentage_in(config_file) == 30
    [entry] = history(config_file)
    assert entry["command"] == "rollout promote --force"
    assert entry["forced"] is True
    assert entry["live"] is None
    assert entry["reason"] == "change window closing"
    assert (entry["before"], entry["after"]) == (
        {"rollout.percentage": 10},
        {"rollout.percentage": 30},
    )


# --- history ----------------------------------------------------------------------------


def test_history_records_every_edit(rollout: Rollout, config_file: Path) -> None:
    c = ("-c", str(config_file))
    started = datetime.now(UTC).replace(microsecond=0)
    assert rollout("set", "30", *c, "--reason", "stage 2 approved in #ops").code == 0
    assert rollout("set", "20", "--feature", "limitUpPrediction", *c).code == 0
    assert rollout("emergency", *c, "--reason", "signal outage").code == 0
    assert rollout("emergency", "--off", *c).code == 0
    assert rollout("stage", "0", *c).code == 0
    lines = (config_file.parent / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON document
    assert [(e["command"], e["before"], e["after"], e["reason"]) for e in entries] == [
        (
            "rollout set 30",
            {"rollout.percentage": 10},
            {"rollout.percentage": 30},
            "stage 2 approved in #ops",
        ),
        (
            "rollout set 20 --feature limitUpPrediction",
            {"rollout.features.limitUpPrediction.percentage": 10},
            {"rollout.features.limitUpPrediction.percentage": 20},
            None,
        ),
        (
            "rollout emergency",
            {"rollout.emergency": False},
            {"rollout.emergency": True},
            "signal outage",
        ),
        (
            "rollout emergency --off",
            {"rollout.emergency": True},
            {"rollout.emergency": False},
            None,
        ),
        ("rollout stage 0", {"rollout.percentage": 30}, {"rollout.percentage": 0}, None),
    ]
    for entry in entries:
        assert entry.keys() >= HISTORY_FIELDS
        when = datetime.fromisoformat(entry["time"])
        assert when.utcoffset() == timedelta(0)
        assert started <= when <= datetime.now(UTC) + timedelta(seconds=1)
        assert entry["user"] == getpass.getuser()
        assert entry["host"] == socket.gethostname()
        assert entry["live"] is None  # no proxy answers on the config's admin port
        assert entry["forced"] is False


def test_edit_without_reason_warns(rollout: Rollout, config_file: Path) -> None:
    run = rollout("set", "30", "-c", str(config_file))
    assert run.code == 0
    assert "no --reason given" in run.out
    run = rollout("set", "50", "-c", str(config_file), "--reason", "ok")
    assert "no --reason given" not in run.out


# --- ConfigMap-style symlinks -----------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["set", "30"], ["stage", "2"], ["emergency"], ["rollback"], ["promote", "--force"]]
)
def test_symlinked_config_is_managed_elsewhere(
    argv: list[str], rollout: Rollout, config_file: Path, tmp_path: Path
) -> None:
    # What a Kubernetes ConfigMap volume looks like: file -> ..data/file, ..data -> ..<ts>
    mount = tmp_path / "mount"
    real_dir = mount / "..2024_05_01_10_00_00.123"
    real_dir.mkdir(parents=True)
    target = real_dir / "rollout.yaml"
    shutil.copyfile(config_file, target)
    (mount / "..data").symlink_to(real_dir.name)
    link = mount / "rollout.yaml"
    link.symlink_to("..data/rollout.yaml")
    original = target.read_bytes()

    run = rollout(*argv, "-c", str(link))
    assert run.code == 2, run.text
    assert "managed elsewhere" in run.err
    assert str(link) in run.err
    assert target.read_bytes() == original
    assert link.is_symlink()
    assert history(link) == []
    assert sorted(p.name for p in real_dir.iterdir()) == ["rollout.yaml"]
    # Reading through the link still works.
    assert rollout("status", "--json", "-c", str(link)).json()["percentage"] == 10


# --- against a running proxy ------------------------------------------------------------


@pytest.fixture
async def apis(upstream: UpstreamFactory) -> tuple[Any, Any]:
    return await upstream(signal_app()), await upstream(legacy_app())


def live_config(signal_url: str, legacy_url: str) -> dict[str, Any]:
    return config_dict(
        signal_url,
        legacy_url,
        rollout={"percentage": 10, "test_sessions": ["qa-tester-1"]},
        promotion={"min_requests": 20, "max_error_rate": 0.01, "max_p95_ms": 200},
    )


async def drive(proxy: ProxyProcess, session: str, count: int) -> str:
    """`count` GETs through the proxy for one session; returns the side that served them."""
    sides = set()
    async with aiohttp.ClientSession() as client:
        for _ in range(count):
            async with client.get(
                proxy.url + "/signals?limit=3", headers={"X-Session-Id": session}
            ) as resp:
                assert resp.status == 200
                await resp.read()
                sides.add(resp.headers["X-Rollout-Upstream"])
    assert len(sides) == 1, sides
    return sides.pop()


async def live_percentage(proxy: ProxyProcess, pct: float, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as client:
        while True:
            async with client.get(proxy.admin_url + "/-/status") as resp:
                if (await resp.json())["percentages"]["default"] == pct:
                    return
            assert time.monotonic() < deadline, f"proxy never applied {pct} %:\n{proxy.logs()}"
            await asyncio.sleep(0.05)


def table_row(text: str, first: str) -> list[str]:
    """The cells of the table row starting with `first` (cells are split on 2+ spaces)."""
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


async def test_status_report_and_promote_against_a_running_proxy(
    apis: tuple[Any, Any],
    serve_proxy: Callable[..., ProxyProcess],
    rollout: Rollout,
    config_file: Path,
) -> None:
    signal, legacy = apis
    proxy = serve_proxy(live_config(server_url(signal), server_url(legacy)))
    path = proxy.config_path
    c = ("-c", str(path))

    # No traffic yet: promotion is refused with the number of requests still missing.
    original = path.read_bytes()
    run = await in_thread(rollout, "promote", *c)
    assert run.code == 1, run.text
    assert "not promoting 10 % -> 30 %" in run.err
    assert "20 more signal requests needed in the window" in run.out
    assert path.read_bytes() == original
    assert history(path) == []

    report = await in_thread(rollout, "report", "--json", *c)
    assert report.code == 0, report.text
    assert report.json()["recommendation"] == "hold"
    assert report.json()["upstreams"]["signal"]["requests"] == 0

    assert await drive(proxy, "qa-tester-1", 25) == "signal"
    assert await drive(proxy, "alice", 5) == "legacy"

    # status: the file's state and the live window figures.
    run = await in_thread(rollout, "status", *c)
    assert run.code == 0, run.text
    assert f"Live ({proxy.admin_url})" in run.out
    assert "proxy not reachable" not in run.out
    assert "effective    default 10 %" in run.out
    assert "guard        armed (on)" in run.out
    sig = table_row(run.out, "signal")
    assert sig[1:4] == ["25", "0", "0.00 %"]
    assert all(re.fullmatch(r"\d+\.\d", ms) for ms in sig[4:7]), sig
    assert table_row(run.out, "legacy")[1:4] == ["5", "0", "0.00 %"]

    run = await in_thread(rollout, "status", "--json", *c)
    doc = run.json()
    assert doc["live_error"] is None
    assert doc["live"]["upstreams"]["signal"]["requests"] == 25
    assert doc["live"]["upstreams"]["legacy"]["requests"] == 5
    assert doc["live"]["upstreams"]["signal"]["error_rate"] == 0
    assert doc["live"]["upstreams"]["signal"]["p95_ms"] is not None
    assert doc["live"]["guard"]["tripped"] is False

    # --admin points a config without a reachable admin port at the running proxy.
    run = await in_thread(
        rollout, "status", "--json", "-c", str(config_file), "--admin", proxy.admin_url + "/"
    )
    assert run.json()["live"]["upstreams"]["signal"]["requests"] == 25

    # report: both sides, the verdict rows and the recommendation.
    run = await in_thread(rollout, "report", *c)
    assert run.code == 0, run.text
    assert f"Signal vs legacy (admin {proxy.admin_url}, this replica, last 60 s)" in run.out
    assert "rollout 10 %, stage 1 of 5" in run.out
    assert table_row(run.out, "signal")[1:4] == ["25", "0", "0.00 %"]
    assert table_row(run.out, "signal")[-1] == "0"  # fallbacks
    assert table_row(run.out, "legacy")[1:4] == ["5", "0", "0.00 %"]
    assert table_row(run.out, "signal requests in window") == [
        "signal requests in window",
        ">= 20",
        "25",
        "pass",
    ]
    assert table_row(run.out, "error rate")[1:] == ["< 1.00 %", "0.00 %", "pass"]
    assert table_row(run.out, "p95 latency")[-1] == "pass"
    # 25 attempts are fewer than the guard's 50: its triggers are not judged yet.
    assert table_row(run.out, "error rate (rollback trigger)")[-1] == "not enough data"
    assert "recommendation: promote to 30 % (`rollout promote`)" in run.out

    run = await in_thread(rollout, "report", "--json", *c)
    assert run.code == 0, run.text
    doc = run.json()
    assert doc["source"].startswith(f"admin {proxy.admin_url}")
    assert doc["recommendation"] == "promote"
    assert doc["upstreams"]["signal"]["requests"] == 25
    assert doc["upstreams"]["legacy"]["requests"] == 5
    assert set(doc["upstreams"]["signal"]) == {
        "requests",
        "errors",
        "error_rate",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "fallbacks",
    }
    assert [c["status"] for c in doc["promotion"]] == ["pass", "pass", "pass"]
    assert [c["status"] for c in doc["rollback"]] == ["not enough data"] * 2
    assert set(doc["promotion"][0]) == {"criterion", "target", "actual", "status"}

    # Enough healthy traffic: promote moves to the next stage, with the evidence recorded.
    before = path.read_text(encoding="utf-8")
    run = await in_thread(rollout, "promote", *c, "--reason", "green for 24 h")
    assert run.code == 0, run.text
    assert "promotion criteria hold on live figures" in run.out
    assert "rollout.percentage 10 -> 30 (stage 2 of 5)" in run.out
    _, old_line, new_line = the_changed_line(before, path.read_text(encoding="utf-8"))
    assert (old_line.strip(), new_line.strip()) == ("percentage: 10", "percentage: 30")
    [entry] = history(path)
    assert entry["command"] == "rollout promote"
    assert entry["forced"] is False
    assert entry["reason"] == "green for 24 h"
    assert entry["live"]["upstreams"]["signal"]["requests"] == 25
    assert entry["live"]["guard_tripped"] is False
    assert isinstance(entry["live"]["generation"], int)
    await live_percentage(proxy, 30)


async def test_smoke_test_and_forced_promotion_against_a_running_proxy(
    apis: tuple[Any, Any],
    serve_proxy: Callable[..., ProxyProcess],
    rollout: Rollout,
) -> None:
    signal, legacy = apis
    proxy = serve_proxy(live_config(server_url(signal), server_url(legacy)))
    c = ("-c", str(proxy.config_path))

    # --force with no traffic: promoted, and the history says it was forced.
    run = await in_thread(rollout, "promote", "--force", *c)
    assert run.code == 0, run.text
    assert "criteria not met; promoting anyway (--force)" in run.out
    assert "20 more signal requests needed" in run.out
    assert percentage_in(proxy.config_path) == 30
    [entry] = history(proxy.config_path)
    assert entry["forced"] is True
    assert entry["command"] == "rollout promote --force"
    assert entry["live"]["upstreams"]["signal"]["requests"] == 0
    await live_percentage(proxy, 30)

    run = await in_thread(rollout, "test", *c)
    assert run.code == 0, run.text
    assert "all 9 checks passed" in run.out
    for target in ("proxy", "signal", "legacy"):
        row = table_row(run.out, target)
        assert row[1] == "/health"
        assert row[2] == "200"
        assert row[-1] == "ok"

    run = await in_thread(rollout, "test", "--json", "--url", proxy.url + "/", *c)
    assert run.code == 0, run.text
    doc = run.json()
    assert doc["ok"] is True
    checks = doc["checks"]
    assert {(ch["target"], ch["path"]) for ch in checks} == {
        (target, path)
        for target in ("proxy", "signal", "legacy")
        for path in ("/health", "/signals?limit=10", "/signals/stats")
    }
    for ch in checks:
        assert set(ch) == {"target", "path", "status", "latency_ms", "served_by", "ok", "error"}
        assert (ch["status"], ch["ok"], ch["error"]) == (200, True, None)
        assert isinstance(ch["latency_ms"], float)
        expected_side = {"signal", "legacy"} if ch["target"] == "proxy" else {ch["target"]}
        assert ch["served_by"] in expected_side

    # Signal goes down: the proxy still answers (fallback), the direct checks fail.
    await signal.close()
    run = await in_thread(rollout, "test", *c)
    assert run.code == 1, run.text
    failed = [line for line in run.err.splitlines() if line.startswith("ERROR")]
    assert len(failed) == 3, run.err
    assert all(line.split()[1] == "signal" for line in failed), run.err
    assert table_row(run.out, "signal")[-1] == "FAILED"
    assert table_row(run.out, "legacy")[-1] == "ok"
    assert table_row(run.out, "proxy")[-1] == "ok"

    run = await in_thread(rollout, "test", "--json", *c)
    assert run.code == 1
    doc = run.json()
    assert doc["ok"] is False
    assert {ch["target"] for ch in doc["checks"] if not ch["ok"]} == {"signal"}
    assert all(ch["error"] for ch in doc["checks"] if not ch["ok"])


def failing_app() -> web.Application:
    """A signal that answers every request with a 500."""

    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    return app


async def test_report_status_and_promote_when_signal_fails(
    upstream: UpstreamFactory,
    serve_proxy: Callable[..., ProxyProcess],
    rollout: Rollout,
) -> None:
    signal = await upstream(failing_app())
    legacy = await upstream(legacy_app())
    data = live_config(server_url(signal), server_url(legacy))
    data["guard"] = {"min_requests": 10}
    proxy = serve_proxy(data)
    c = ("-c", str(proxy.config_path))

    # Test sessions keep reaching signal after the trip; each 500 falls back to legacy.
    assert await drive(proxy, "qa-tester-1", 12) == "legacy"

    run = await in_thread(rollout, "report", *c)
    assert run.code == 1, run.text
    assert "recommendation: ROLL BACK (`rollout rollback`)" in run.err
    signal_row = table_row(run.out, "signal")
    assert signal_row[1:4] == ["12", "12", "100.00 %"]
    assert signal_row[-1] == "12"  # fallbacks
    assert table_row(run.out, "error rate (rollback trigger)")[1:] == [
        "<= 5.00 %",
        "100.00 %",
        "fail",
    ]
    run = await in_thread(rollout, "report", "--json", *c)
    assert run.code == 1
    assert run.json()["recommendation"] == "roll back"
    assert run.json()["upstreams"]["signal"]["fallbacks"] == 12

    run = await in_thread(rollout, "status", *c)
    assert run.code == 0, run.text
    assert "guard TRIPPED: error rate 100.00% > 5.00%" in run.err
    assert "effective    default 0 %" in run.out

    run = await in_thread(rollout, "promote", *c)
    assert run.code == 1, run.text
    assert "the guard is tripped" in run.out
    assert percentage_in(proxy.config_path) == 10

    run = await in_thread(rollout, "rollback", *c, "--reason", "guard tripped")
    assert run.code == 0, run.text
    assert percentage_in(proxy.config_path) == 0
    [entry] = history(proxy.config_path)
    assert entry["live"]["guard_tripped"] is True
    assert entry["live"]["upstreams"]["signal"]["errors"] == 12


def test_report_without_a_proxy_is_an_error(rollout: Rollout, config_file: Path) -> None:
    run = rollout("report", "-c", str(config_file))
    assert run.code == 2, run.text
    assert "no live figures" in run.err


def test_smoke_test_without_anything_running_fails(rollout: Rollout, tmp_path: Path) -> None:
    data = config_dict(f"http://{HOST}:{free_port()}", f"http://{HOST}:{free_port()}")
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    run = rollout("test", "--json", "-c", str(path))
    assert run.code == 1
    doc = run.json()
    assert doc["ok"] is False
    assert len(doc["checks"]) == 9
    assert not any(ch["ok"] for ch in doc["checks"])


def _tls_signal(ca_file: Path, url: str) -> dict[str, Any]:
    return {"url": url, "tls": {"ca_file": str(ca_file), "server_name": "signal.internal"}}


async def test_smoke_test_reports_the_upstream_server_certificate(
    upstream: UpstreamFactory,
    serve_proxy: Callable[..., ProxyProcess],
    rollout: Rollout,
    tmp_path: Path,
) -> None:
    ca = trustme.CA(organization_name="Example Internal CA")
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    expires = datetime.now(UTC) + timedelta(days=5, hours=1)
    cert = ca.issue_cert("signal.internal", common_name="signal.internal", not_after=expires)
    legacy = await upstream(legacy_app())
    async with tls_upstream("signal", cert) as signal:
        data = live_config("http://unused", server_url(legacy))
        data["upstreams"]["signal"] = _tls_signal(ca_file, signal.url)
        proxy = serve_proxy(data)
        c = ("-c", str(proxy.config_path))

        run = await in_thread(rollout, "test", *c)
        assert run.code == 0, run.text  # expiring soon is a warning, not a failure
        assert "all 9 checks passed" in run.out
        assert table_row(run.out, "signal")[-1] == "ok"  # reached with its CA and name
        [warning] = [line for line in run.out.splitlines() if line.startswith("WARNING")]
        assert warning.startswith("WARNING  signal certificate (signal.internal): O=trustme")
        assert "CN=signal.internal, issuer O=Example Internal CA" in warning
        assert warning.endswith(": 5 days left, within 14 days")

        run = await in_thread(rollout, "test", "--json", *c)
        assert run.code == 0, run.text
        [peer] = run.json()["certificates"]
        assert peer["upstream"] == "signal"
        assert peer["server_name"] == "signal.internal"
        assert peer["subject"].endswith(", CN=signal.internal")
        assert peer["not_after"] == expires.strftime("%Y-%m-%d %H:%M UTC")
        assert (peer["days_left"], peer["status"], peer["error"]) == (5, "expiring", None)
        assert signal.server_names.count("signal.internal") == signal.handshakes


@pytest.mark.parametrize("verify", [True, False])
def test_smoke_test_with_an_untrusted_upstream_certificate(
    rollout: Rollout, tmp_path: Path, verify: bool
) -> None:
    other_ca = write_ca(trustme.CA(), tmp_path / "other-ca.pem")
    cert = trustme.CA().issue_cert("signal.internal", not_after=datetime(2031, 5, 17, tzinfo=UTC))

    async def run_it() -> Run:
        async with tls_upstream("signal", cert) as signal:
            data = config_dict("http://unused", f"http://{HOST}:{free_port()}")
            data["upstreams"]["signal"] = _tls_signal(other_ca, signal.url)
            data["upstreams"]["signal"]["tls"]["verify"] = verify
            path = write_config(tmp_path / "rollout.yaml", data)
            return await in_thread(rollout, "test", "--json", "-c", str(path))

    run = asyncio.run(run_it())
    assert run.code == 1  # legacy and the proxy are down either way
    doc = run.json()
    [peer] = doc["certificates"]
    signal_checks = [ch for ch in doc["checks"] if ch["target"] == "signal"]
    if verify:
        assert (peer["upstream"], peer["status"], peer["subject"]) == ("signal", "error", None)
        assert peer["error"].startswith("certificate verify failed: unable to get local issuer")
        assert not any(ch["ok"] for ch in signal_checks)
    else:
        # Not checked, still read: the certificate's binary form is there without verify.
        assert (peer["status"], peer["error"]) == ("ok", None)
        assert peer["subject"].startswith("O=trustme")
        assert peer["not_after"] == "2031-05-17 00:00 UTC"
        assert all(ch["ok"] for ch in signal_checks)


def test_smoke_test_speaks_https_to_a_listener_with_tls(config_file: Path) -> None:
    config = load_config(config_file)
    assert proxy_url(config, None) == f"http://127.0.0.1:{config.listen.port}"
    # `listen.tls` (SPEC 2) is read by name: a listener carrying it is reached over https.
    listen = SimpleNamespace(host="0.0.0.0", port=8443, tls=SimpleNamespace(cert_file="x"))
    assert proxy_url(SimpleNamespace(listen=listen), None) == "https://127.0.0.1:8443"  # type: ignore[arg-type]
    assert proxy_url(config, "https://proxy.example/") == "https://proxy.example"


async def test_promote_refuses_figures_from_a_percentage_the_proxy_has_not_applied(
    apis: tuple[Any, Any],
    serve_proxy: Callable[..., ProxyProcess],
    rollout: Rollout,
) -> None:
    signal, legacy = apis
    # No watcher: the proxy keeps serving 10 % after the file moves to 12 %.
    proxy = serve_proxy(live_config(server_url(signal), server_url(legacy)), "--poll-interval", "0")
    c = ("-c", str(proxy.config_path))
    assert await drive(proxy, "qa-tester-1", 25) == "signal"
    assert (await in_thread(rollout, "set", "12", *c)).code == 0
    before = proxy.config_path.read_bytes()
    run = await in_thread(rollout, "promote", *c)
    assert run.code == 1, run.text
    assert "the proxy serves 10 %, not the file's 12 %" in run.out
    assert proxy.config_path.read_bytes() == before
