"""`rollout report --markdown`: the progress report over a scripted history, against a real
`rollout serve` with real upstreams, read back with a Markdown parser (GFM tables).

The history is scripted line by line in the shapes the CLI and the autopilot write (the
autopilot's figures are real `analyse()` documents); the live parts come from the running
proxy. Builder-only cases (Prometheus' guard figures, the next step without an autopilot)
call `build_report` with values.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config.load import load_config
from proxy.config.values import AutopilotConfig, GuardConfig, PromotionConfig
from proxy.control import cli
from proxy.control.figures import SideFigures
from proxy.control.progress import build_report
from proxy.control.progress_inputs import (
    GuardNow,
    Live,
    PilotNow,
    ReportInputs,
    Smoke,
    parse_duration,
)
from proxy.control.smoke import Check as SmokeCheck
from proxy.demo.apis import legacy_app, signal_app
from proxy.records.history import HISTORY_FILE
from proxy.records.pilot_document import state_document
from proxy.records.pilot_state import write_controller
from proxy.rollout.analysis import Sample, SideSample, analyse
from proxy.rollout.pilot import PilotState
from tests.support import (
    HOST,
    ProxyProcess,
    UpstreamFactory,
    config_dict,
    free_port,
    metric_value,
    server_url,
    write_config,
)
from tests.support.markdown import Document, parse
from tests.support.prometheus import PrometheusServer

HOUR = 3600.0
PIPE_REASON = "kick-off | agreed in #ops"
HTML_REASON = "signal fixed in <b>v2.1</b>, *really*"


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "ROLLOUT_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def rollout(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """`rollout ARGS...` in-process: exit code, stdout, stderr."""

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


# --- the scripted history ----------------------------------------------------------------

AUTOPILOT = AutopilotConfig(enabled=True, min_requests=100)


def analysis(attempts: int, errors: int, p95: float, *, tripped: bool = False) -> Any:
    """A real analysis document, as the autopilot records it."""
    sample = Sample(
        signal=SideSample(attempts, errors, p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95 * 1.2),
        legacy=SideSample(900, 2, p50_ms=19.0, p95_ms=38.0, p99_ms=45.0),
        guard_tripped=tripped,
        seconds=60.0,
    )
    return analyse(sample, AUTOPILOT, PromotionConfig(), GuardConfig()).as_document()


PASSING = analysis(240, 1, 42.0)
TRIPPED = analysis(300, 45, 120.0, tripped=True)


def window(requests: int, errors: int, p95: float | None) -> dict[str, Any]:
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        "p50_ms": None if p95 is None else p95 / 2,
        "p95_ms": p95,
        "p99_ms": p95,
    }


def person(
    at: float,
    user: str,
    command: str,
    before: Any,
    after: Any,
    reason: str | None,
    live: Any = None,
) -> dict[str, Any]:
    return {
        "time": datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds"),
        "user": user,
        "host": {"ana": "ops1", "bob": "ops2", "carol": "ops3"}[user],
        "command": command,
        "before": before,
        "after": after,
        "reason": reason,
        "forced": False,
        "live": live,
    }


def pilot(
    at: float, event: str, before: float | None, after: float | None, reason: str, figures: Any
) -> dict[str, Any]:
    entry = person(at, "ana", "autopilot", None, None, reason)
    entry["user"], entry["host"] = "svc-rollout", "ops9"
    if before is not None:
        entry["before"] = {"rollout.percentage": before}
        entry["after"] = {"rollout.percentage": after}
    entry["event"] = event
    entry["figures"] = figures
    return entry


def scripted_history(now: float) -> list[dict[str, Any]]:
    """30 h of a migration: a rollback before the day, a person's promotion, the autopilot
    promoting, a guard trip that rolls it back and pauses it, a resume, a gate and an
    approval, up to 50 %."""
    pct = "rollout.percentage"
    live = {
        "generation": 4,
        "guard_tripped": False,
        "upstreams": {"signal": window(150, 0, 40.0), "legacy": window(1400, 1, 35.0)},
    }
    return [
        person(now - 30 * HOUR, "carol", "rollout rollback", {pct: 10}, {pct: 0}, "freeze"),
        person(now - 5 * HOUR, "ana", "rollout promote", {pct: 0}, {pct: 10}, PIPE_REASON, live),
        pilot(now - 4 * HOUR, "promote", 10, 30, "3 passing analyses after a bake", PASSING),
        pilot(now - 3 * HOUR, "rollback", 30, 10, "2 failing analyses in a row", TRIPPED),
        pilot(now - 3 * HOUR + 10, "pause", None, None, "rolled back to 10 %", TRIPPED),
        person(
            now - 2 * HOUR,
            "bob",
            "rollout resume",
            {"autopilot.paused": True, "autopilot.resumes": 0},
            {"autopilot.paused": False, "autopilot.resumes": 1},
            HTML_REASON,
        ),
        pilot(now - 2 * HOUR + 60, "resume", None, None, "`rollout resume` by a person", PASSING),
        pilot(now - 1 * HOUR, "promote", 10, 30, "3 passing analyses after a bake", PASSING),
        pilot(now - 0.7 * HOUR, "gate", None, None, "waiting at the gate to 50 %", PASSING),
        person(
            now - 0.5 * HOUR,
            "bob",
            "rollout approve",
            {"autopilot.approvals": 0},
            {"autopilot.approvals": 1},
            "go to 50 %, agreed with the desk",
        ),
        pilot(now - 0.5 * HOUR + 30, "approve", None, None, "approval used", PASSING),
        pilot(now - 0.5 * HOUR + 31, "promote", 30, 50, "approved: promoting to 50 %", PASSING),
    ]


def write_history(config_path: Path, entries: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(e) + "\n" for e in entries)
    (config_path.parent / HISTORY_FILE).write_text(text, encoding="utf-8")


def when(entry: dict[str, Any]) -> str:
    return datetime.fromisoformat(entry["time"]).strftime("%Y-%m-%d %H:%M:%S UTC")


def write_autopilot_state(config_path: Path, now: float) -> None:
    """The controller's part as it leaves it: at 50 %, 2 minutes baked, 1 pass."""
    state = PilotState(
        percentage=50, emergency=False, stage_entered_at=now - 120, passes=1, approvals_used=1
    )
    write_controller(
        config_path,
        {
            "state": state_document(state),
            "analyses": [],
            "next_at": None,
            "held": None,
            "next_action": "promote to 80 % after the next passing analysis",
            "pending": None,
            "pid": 1,
            "updated_at": now,
        },
    )


# --- against a running proxy --------------------------------------------------------------


def live_config(signal_url: str, legacy_url: str) -> dict[str, Any]:
    return config_dict(
        signal_url,
        legacy_url,
        rollout={"percentage": 50, "test_sessions": ["qa-tester-1"]},
        promotion={"min_requests": 20, "max_error_rate": 0.01, "max_p95_ms": 200},
        autopilot={"enabled": True, "gates": [50]},
        shadow={"enabled": True, "percentage": 100},
    )


async def drive(proxy: ProxyProcess, session: str, count: int) -> set[str]:
    sides = set()
    async with aiohttp.ClientSession() as client:
        for _ in range(count):
            async with client.get(
                proxy.url + "/signals?limit=3", headers={"X-Session-Id": session}
            ) as resp:
                assert resp.status == 200
                await resp.read()
                sides.add(resp.headers["X-Rollout-Upstream"])
    return sides


async def shadow_compared(proxy: ProxyProcess, count: int, within: float = 15.0) -> str:
    """/metrics once `count` mirrors have been compared (they run after the responses)."""
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as client:
        while True:
            async with client.get(proxy.admin_url + "/metrics") as resp:
                text = await resp.text()
            done = sum(
                metric_value(text, "rollout_shadow_requests_total", feature="default", result=r)
                or 0
                for r in ("match", "mismatch", "error")
            )
            if done >= count:
                return text
            assert time.monotonic() < deadline, f"{done} of {count} compared:\n{proxy.logs()}"
            await asyncio.sleep(0.05)


@pytest.mark.e2e
async def test_report_over_a_scripted_history_and_a_running_proxy(
    upstream: UpstreamFactory,
    serve_proxy: Callable[..., ProxyProcess],
    rollout: Callable[..., Run],
) -> None:
    signal, legacy = await upstream(signal_app()), await upstream(legacy_app())
    proxy = serve_proxy(live_config(server_url(signal), server_url(legacy)))
    path = proxy.config_path
    now = time.time()
    history = scripted_history(now)
    write_history(path, history)
    write_autopilot_state(path, now)

    assert await drive(proxy, "qa-tester-1", 25) == {"signal"}
    assert await drive(proxy, "alice", 5) == {"legacy"}  # bucket 9177: legacy at 50 %
    metrics = await shadow_compared(proxy, 5)

    run = await asyncio.to_thread(rollout, "report", "--markdown", "-c", str(path))
    assert run.code == 0, run.out + run.err
    doc = parse(run.out)
    assert doc.title == "Rollout progress report"
    assert doc.order == [
        "Summary",
        "Stages reached",
        "Changes",
        "Figures per stage",
        "Autopilot decisions",
        "Guard trips",
        "Fallbacks",
        "Shadow comparison",
        "Smoke test",
        "Next step",
    ]
    in_range = history[1:]  # the rollback 30 h ago is outside the default 24 h

    summary = doc.sections["Summary"].text
    assert "Stage: stage 3 of 5, 50 % to signal" in summary
    assert f"Reached: {when(history[-1])} by autopilot (promote)" in summary
    assert "Emergency: off" in summary
    assert "Guard: armed" in summary
    assert f"Live figures: admin {proxy.admin_url}, this replica, last 60 s" in summary

    # Stages: where the range started (reached before it, by carol), then every move.
    stages = doc.sections["Stages reached"].table
    assert stages.header == ["Stage", "Percentage", "Reached at", "By"]
    assert stages.column("Percentage") == ["0 %", "10 %", "30 %", "10 %", "30 %", "50 %"]
    assert stages.rows[0][2:] == [
        f"{when(history[0])} (before this range)",
        "carol@ops3 (rollout rollback)",
    ]
    assert stages.rows[1][2:] == [when(history[1]), "ana@ops1 (rollout promote)"]
    assert stages.rows[3][2:] == [when(history[3]), "autopilot (rollback)"]

    # Changes: every line of the range in order, who, what, the change and the reason
    # (a `|` and HTML in a reason stay text in their own cell).
    changes = doc.sections["Changes"].table
    assert changes.header == ["Time", "Who", "Command or event", "Change", "Reason"]
    assert changes.column("Time") == [when(e) for e in in_range]
    assert changes.column("Who") == [
        "autopilot" if e["command"] == "autopilot" else f"{e['user']}@{e['host']}" for e in in_range
    ]
    assert changes.column("Command or event") == [e.get("event", e["command"]) for e in in_range]
    assert changes.column("Reason") == [e["reason"] for e in in_range]
    assert changes.rows[0][3] == "rollout.percentage 0 -> 10"
    assert changes.rows[4][3] == "autopilot.paused true -> false, autopilot.resumes 0 -> 1"
    assert changes.rows[3][3] == "-"  # the pause moves nothing
    assert PIPE_REASON in changes.rows[0]
    assert HTML_REASON in changes.rows[4]

    # Figures per stage: the person's live window, each decision's analysis, the live row.
    figures = doc.sections["Figures per stage"].table
    assert figures.header == [
        "Stage",
        "Time",
        "Figures from",
        "Signal requests",
        "Error rate",
        "p95",
        "Promotion criteria",
        "Guard triggers",
        "Verdict",
    ]
    decisions = [e for e in in_range if e["command"] == "autopilot"]
    assert len(figures.rows) == 1 + len(decisions) + 1
    person_row = figures.rows[0]
    assert person_row[:3] == ["0 %", when(history[1]), "rollout promote: live window at the change"]
    assert person_row[3:6] == ["150", "0.00 %", "40 ms"]
    assert person_row[6:] == ["✅ met", "✅ clear", "promote"]
    for row, entry in zip(figures.rows[1:-1], decisions, strict=True):
        assert row[1] == when(entry)
        assert row[2] == f"autopilot {entry['event']} analysis over 60 s"
        signal_doc = entry["figures"]["signal"]
        assert row[3] == str(signal_doc["attempts"])
        assert row[4] == f"{signal_doc['error_rate'] * 100:.2f} %"
        assert row[5] == f"{signal_doc['p95_ms']:.0f} ms"
        assert row[8] == entry["figures"]["outcome"]
    trip_row = figures.rows[2]  # the rollback's analysis, at 30 %
    assert trip_row[0] == "30 %"
    assert trip_row[3:6] == ["300", "15.00 %", "120 ms"]
    assert trip_row[7] == "❌ a proxy's guard is tripped"
    assert trip_row[8] == "fail"
    assert figures.rows[1][6:8] == ["✅ met", "✅ clear"]
    live_row = figures.rows[-1]
    assert live_row[0] == "50 % (now)"
    assert live_row[2] == f"live: admin {proxy.admin_url}, this replica, last 60 s"
    assert live_row[3:5] == ["25", "0.00 %"]  # exactly what was sent to signal
    assert live_row[6] == "✅ met"  # 25 >= promotion.min_requests 20
    assert live_row[7].startswith("⚪ not judged")  # fewer than the guard's 50
    assert live_row[8] == "promote"

    # The autopilot's decisions, in order, each with its analysis and reason.
    table = doc.sections["Autopilot decisions"].table
    assert table.header == ["Time", "Decision", "Percentage", "Analysis", "Reason"]
    assert table.column("Decision") == [e["event"] for e in decisions]
    assert table.column("Decision") == [
        "promote",
        "rollback",
        "pause",
        "resume",
        "promote",
        "gate",
        "approve",
        "promote",
    ]
    assert table.column("Reason") == [e["reason"] for e in decisions]
    assert table.column("Percentage")[:3] == ["10 % -> 30 %", "30 % -> 10 %", "10 %"]
    assert table.rows[0][3].startswith("pass: 240 signal attempts in 60 s; signal error rate")
    assert table.rows[1][3].startswith("fail: 300 signal attempts in 60 s")

    # Guard trips: the two lines whose analysis saw a tripped guard, and the state now.
    guard = doc.sections["Guard trips"]
    assert guard.table.column("Time") == [when(history[3]), when(history[4])]
    assert guard.table.column("What was seen") == ["a proxy's guard is tripped"] * 2
    assert guard.table.column("Percentage") == ["30 %", "10 %"]
    assert "Now: armed." in guard.text

    assert (
        "No request fell back to legacy since the proxy started" in doc.sections["Fallbacks"].text
    )

    shadow = doc.sections["Shadow comparison"].table
    assert shadow.header == [
        "Feature",
        "Compared",
        "Match",
        "Mismatch",
        "Errors",
        "Dropped",
        "Match rate",
    ]
    [row] = shadow.rows
    shadow_total = "rollout_shadow_requests_total"
    match = metric_value(metrics, shadow_total, feature="default", result="match") or 0
    assert row[0] == "default"
    # The report read /metrics after `shadow_compared` did: at least as many as then.
    assert int(row[1]) >= 5
    assert int(row[2]) >= match
    assert row[6].endswith("%")

    smoke = doc.sections["Smoke test"]
    assert smoke.table.header == ["Target", "Path", "Status", "ms", "Served by", "Result"]
    assert len(smoke.table.rows) == 9
    assert smoke.table.column("Status") == ["200"] * 9
    assert smoke.table.column("Result") == ["✅ ok"] * 9
    assert "✅ All 9 checks passed." in smoke.text

    # No controller holds the lock: the next action from the state file, and that fact.
    step = doc.sections["Next step"].text
    assert "Autopilot: promote to 80 % after bake" in step
    assert "2 more passing analyses" in step
    assert "No controller runs now" in step

    # --no-smoke: said so, no smoke traffic, the rest unchanged.
    run = await asyncio.to_thread(rollout, "report", "--markdown", "--no-smoke", "-c", str(path))
    assert run.code == 0, run.out + run.err
    again = parse(run.out)
    assert again.sections["Smoke test"].tables == []
    assert again.sections["Smoke test"].text == "Not run: --no-smoke."
    assert again.sections["Changes"].table.rows == changes.rows

    # A person's pause the controller has not seen yet: the next step says it stops.
    run = await asyncio.to_thread(
        rollout, "pause", "--reason", "load test | tonight", "-c", str(path)
    )
    assert run.code == 0, run.out + run.err
    run = await asyncio.to_thread(rollout, "report", "--markdown", "--no-smoke", "-c", str(path))
    paused = parse(run.out)
    last = paused.sections["Changes"].table.rows[-1]
    assert last[2:] == ["rollout pause", "autopilot.paused false -> true", "load test | tonight"]
    step = paused.sections["Next step"].text
    assert "Autopilot: stop at its next analysis: paused by " in step
    assert "(load test | tonight); waits for rollout resume." in step


def failing_signal() -> web.Application:
    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    return app


@pytest.mark.e2e
async def test_a_failing_signal_shows_fallbacks_a_tripped_guard_and_a_failed_smoke_test(
    upstream: UpstreamFactory,
    serve_proxy: Callable[..., ProxyProcess],
    rollout: Callable[..., Run],
) -> None:
    signal, legacy = await upstream(failing_signal()), await upstream(legacy_app())
    data = config_dict(
        server_url(signal),
        server_url(legacy),
        rollout={"percentage": 10, "test_sessions": ["qa-tester-1"]},
        guard={"min_requests": 10},
    )
    proxy = serve_proxy(data)
    assert await drive(proxy, "qa-tester-1", 12) == {"legacy"}  # every one fell back

    run = await asyncio.to_thread(rollout, "report", "--markdown", "-c", str(proxy.config_path))
    assert run.code == 1, run.out + run.err  # the smoke test failed, the guard is breached
    doc = parse(run.out)
    assert "Guard: TRIPPED since" in doc.sections["Summary"].text
    assert "Now: TRIPPED since" in doc.sections["Guard trips"].text
    assert "No guard trip recorded in the history" in doc.sections["Guard trips"].text
    fallbacks = doc.sections["Fallbacks"].text
    assert "12 requests fell back to legacy since the proxy started" in fallbacks
    assert "by reason: status 12" in fallbacks
    [live_row] = doc.sections["Figures per stage"].table.rows
    assert live_row[3:5] == ["12", "100.00 %"]
    assert live_row[7].startswith("❌ guard tripped")
    assert live_row[8] == "roll back"

    smoke = doc.sections["Smoke test"]
    results = {f"{row[0]} {row[1]}": row[-1] for row in smoke.table.rows}
    assert [k for k, v in results.items() if v.startswith("❌")] == [
        "signal /health",
        "signal /signals?limit=10",
        "signal /signals/stats",
    ]
    assert results["signal /health"] == "❌ failed: HTTP 500"
    assert "❌ 3 of 9 checks failed." in smoke.text
    # Nothing in the history, no autopilot: the next step is the live blockers.
    assert "No change recorded in this range." in doc.sections["Changes"].text
    step = doc.sections["Next step"].text
    assert "Promote to 30 % (rollout promote) waits for:" in step
    assert "the guard is tripped" in step


@pytest.mark.e2e
async def test_from_prometheus_over_two_replicas(
    upstream: UpstreamFactory,
    serve_proxy: Callable[..., ProxyProcess],
    rollout: Callable[..., Run],
    tmp_path: Path,
) -> None:
    """`--prometheus`: the current stage over `--window`, fallbacks and the guard's state
    changes over `--since`, summed over both replicas; the history beside the configs."""
    signal, legacy = await upstream(failing_signal()), await upstream(legacy_app())
    data = config_dict(
        server_url(signal),
        server_url(legacy),
        rollout={"percentage": 10, "test_sessions": ["qa-tester-1"]},
        guard={"min_requests": 10},
    )
    second = {**data, "listen": {"host": HOST, "port": free_port()}}
    second["admin"] = {"host": HOST, "port": free_port()}
    tripping, quiet = serve_proxy(data), serve_proxy(second)
    history = scripted_history(time.time())
    write_history(tripping.config_path, history)
    targets = [f"{HOST}:{p.admin_port}" for p in (tripping, quiet)]
    (tmp_path / "prom").mkdir()
    prom = PrometheusServer(tmp_path / "prom", targets)
    await asyncio.to_thread(prom.start)
    try:
        await asyncio.to_thread(prom.wait_for_scrapes, 1)  # both guards armed: 0
        assert await drive(tripping, "qa-tester-1", 12) == {"legacy"}
        await asyncio.to_thread(prom.wait_for_scrapes, 2, after=time.time())
        run = await asyncio.to_thread(
            rollout,
            "report",
            "--markdown",
            "--prometheus",
            prom.url,
            "--window",
            "5m",
            "--since",
            "1h",
            "--no-smoke",
            "-c",
            str(quiet.config_path),
        )
    finally:
        await asyncio.to_thread(prom.stop)
    assert run.code == 1, run.out + run.err  # signal's figures breach the guard
    doc = parse(run.out)
    summary = doc.sections["Summary"].text
    assert f"Live figures: Prometheus {prom.url}, all replicas, last 5m" in summary
    assert "Guard: TRIPPED on 1 replica(s)" in summary
    [live_row] = doc.sections["Figures per stage"].table.rows[-1:]
    assert live_row[0] == "10 % (now)"
    assert live_row[3:5] == ["12", "100.00 %"]  # signal attempts: 0 served + 12 fallbacks
    assert live_row[8] == "roll back"
    guard = doc.sections["Guard trips"].text
    assert "Now: TRIPPED on 1 replica(s)." in guard
    assert "Over the last 1h the guard changed state 1 time(s) across replicas" in guard
    fallbacks = doc.sections["Fallbacks"].text
    assert fallbacks.startswith("12 requests fell back to legacy over the last 1h, all replicas.")
    # The history (beside both configs) over the last hour: from the gate on.
    changes = doc.sections["Changes"].table
    assert changes.column("Time") == [when(e) for e in history[-4:]]
    assert "rollout_guard_tripped is 1 on 1 replica(s)" in doc.sections["Next step"].text


# --- without a proxy --------------------------------------------------------------------


def offline_config(tmp_path: Path) -> Path:
    """A config whose proxy and admin ports nothing listens on."""
    data = config_dict("http://127.0.0.1:9", "http://127.0.0.1:9")
    data["listen"]["port"], data["admin"]["port"] = free_port(), free_port()
    data["rollout"]["percentage"] = 50
    return write_config(tmp_path / "rollout.yaml", data)


def test_without_a_proxy_the_history_still_makes_the_report(
    tmp_path: Path, rollout: Callable[..., Run]
) -> None:
    path = offline_config(tmp_path)
    history = scripted_history(time.time())
    write_history(path, history)
    with (path.parent / HISTORY_FILE).open("a", encoding="utf-8") as file:
        file.write('{"time": "2026-12-0\n')  # a line cut short by a full disk

    run = rollout("report", "--markdown", "-c", str(path))
    assert run.code == 0, run.out + run.err
    doc = parse(run.out)
    assert f"History line {len(history) + 1} is not an entry and is left out." in run.out
    assert "Live figures: unavailable: " in doc.sections["Summary"].text
    assert "Connection refused" in doc.sections["Summary"].text
    assert len(doc.sections["Changes"].table.rows) == len(history) - 1
    assert len(doc.sections["Autopilot decisions"].table.rows) == 8
    # The figures the history recorded are there; the live row is not.
    figures = doc.sections["Figures per stage"]
    assert len(figures.table.rows) == 9
    assert "The current stage: no live figures (the summary says why)." in figures.text
    assert doc.sections["Fallbacks"].text == "Unknown: no live figures (the summary says why)."
    smoke = doc.sections["Smoke test"].text
    assert smoke.startswith("Not run: the proxy at http://127.0.0.1:")
    assert "is unreachable" in smoke
    assert "Next step" in doc.sections
    assert "autopilot.enabled: false" in doc.sections["Summary"].text


@pytest.mark.parametrize(
    ("since", "changes", "stages"),
    [
        ("7d", 12, ["10 %", "0 %", "10 %", "30 %", "10 %", "30 %", "50 %"]),
        ("24h", 11, ["0 %", "10 %", "30 %", "10 %", "30 %", "50 %"]),
        ("90m", 5, ["10 %", "30 %", "50 %"]),
        ("10m", 0, []),
    ],
)
def test_since_selects_the_history_range(
    tmp_path: Path, rollout: Callable[..., Run], since: str, changes: int, stages: list[str]
) -> None:
    path = offline_config(tmp_path)
    history = scripted_history(time.time())
    write_history(path, history)

    run = rollout("report", "--markdown", "--since", since, "--no-smoke", "-c", str(path))
    assert run.code == 0, run.out + run.err
    doc = parse(run.out)
    assert f"(last {since})" in run.out.splitlines()[2]
    section = doc.sections["Changes"]
    if changes:
        assert section.table.column("Time") == [when(e) for e in history[-changes:]]
    else:
        assert section.text == "No change recorded in this range."
    reached = doc.sections["Stages reached"]
    if stages:
        assert reached.table.column("Percentage") == stages
    else:
        assert (
            "No stage change in this range: the rollout stayed at stage 3 of 5, 50 %"
            in reached.text
        )
        assert reached.table.column("Reached at") == [f"{when(history[-1])} (before this range)"]


# --- usage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("24h", 86400), ("7d", 604800), ("45s", 45), ("2w", 1209600), (" 1h ", 3600)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "h", "1.5h", "0h", "-3h", "3x", "24 h", "1h30m"])
def test_parse_duration_refuses_what_is_not_one(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration") as caught:
        parse_duration(text)
    assert repr(text) in str(caught.value)


def test_a_bad_since_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = offline_config(tmp_path)
    with pytest.raises(SystemExit) as caught:
        cli.main(["report", "--markdown", "--since", "3x", "-c", str(path)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "argument --since: '3x' is not a duration" in err
    assert "30m, 24h, 7d" in err


def test_since_and_no_smoke_need_markdown_and_markdown_is_not_json(
    tmp_path: Path, rollout: Callable[..., Run]
) -> None:
    path = str(offline_config(tmp_path))
    for argv in (["--since", "1h"], ["--no-smoke"]):
        run = rollout("report", *argv, "-c", path)
        assert run.code == 2
        assert "--since and --no-smoke belong to the progress report: add --markdown" in run.err
    run = rollout("report", "--markdown", "--json", "-c", path)
    assert run.code == 2
    assert "--markdown and --json" in run.err
    assert run.out == ""


# --- the builder alone ------------------------------------------------------------------


def side(requests: int, errors: int, p95: float | None, fallbacks: int = 0) -> SideFigures:
    rate = errors / requests if requests else 0.0
    return SideFigures(requests, errors, rate, p95, p95, p95, fallbacks)


def inputs(tmp_path: Path, live: Live | None, **changes: Any) -> ReportInputs:
    config = load_config(offline_config(tmp_path))
    now = 1_800_000_000.0
    values: dict[str, Any] = {
        "config": config,
        "config_path": "/etc/rollout/rollout.yaml",
        "entries": [],
        "since": "24h",
        "start": now - 86400,
        "now": now,
        "live": live,
        "live_error": None if live else "admin down",
        "smoke": Smoke(not_run="--no-smoke"),
        "pilot": PilotNow(enabled=False, next_action=None, running=None),
    }
    values.update(changes)
    return ReportInputs(**values)


def prometheus_live(signal: SideFigures, *, tripped: int, changes: int) -> Live:
    return Live(
        source="Prometheus http://prom:9090, all replicas, last 5m",
        figures={"signal": signal, "legacy": side(900, 0, 30.0)},
        served=None,
        guard=GuardNow(
            enabled=None,
            tripped=tripped > 0,
            reason=f"rollout_guard_tripped is 1 on {tripped} replica(s)" if tripped else None,
            replicas_tripped=tripped,
            changes=changes,
        ),
        fallbacks=7,
        fallback_reasons={},
        shadow={"anomalyDetection": {"match": 90, "mismatch": 10, "dropped": 3}},
        counted="over the last 24h, all replicas",
    )


def test_prometheus_figures_guard_changes_and_ready_to_promote(tmp_path: Path) -> None:
    live = prometheus_live(side(400, 1, 80.0), tripped=0, changes=2)
    doc: Document = parse(build_report(inputs(tmp_path, live)))
    assert "Guard: armed on every replica" in doc.sections["Summary"].text
    guard = doc.sections["Guard trips"].text
    assert "the guard changed state 2 time(s) across replicas" in guard
    assert "changes(rollout_guard_tripped[24h])" in guard
    assert doc.sections["Fallbacks"].text.startswith(
        "7 requests fell back to legacy over the last 24h, all replicas."
    )
    [row] = doc.sections["Shadow comparison"].table.rows
    assert row == ["anomalyDetection", "100", "90", "10", "0", "3", "90.0 %"]
    assert doc.sections["Next step"].text == (
        "Ready to promote to 80 %: the criteria hold on live figures (rollout promote)."
    )


def test_next_step_lists_the_blockers_and_a_tripped_replica(tmp_path: Path) -> None:
    live = prometheus_live(side(30, 0, 80.0), tripped=1, changes=1)
    doc = parse(build_report(inputs(tmp_path, live)))
    assert "Guard: TRIPPED on 1 replica(s)" in doc.sections["Summary"].text
    step = doc.sections["Next step"]
    assert step.paragraphs[0] == "Promote to 80 % (rollout promote) waits for:"
    # `rollout promote`'s own reasons (promotion_blockers), one list item each.
    assert step.paragraphs[1:] == [
        "the guard is tripped: rollout_guard_tripped is 1 on 1 replica(s)",
        "signal requests in window: 30, needs >= 100",
        "error rate: 0.00 %, needs < 1.00 %",
        "p95 latency: 80 ms, needs < 200 ms",
        "70 more signal requests needed in the window (low traffic is not a pass)",
    ]


def test_at_the_last_stage_nothing_is_left_to_promote(tmp_path: Path) -> None:
    report = inputs(tmp_path, None)
    config = report.config
    last = replace(config, rollout=replace(config.rollout, percentage=100.0))
    doc = parse(build_report(replace(report, config=last)))
    assert doc.sections["Next step"].text == "At the last stage (100 %): nothing more to promote."


def test_smoke_failures_and_escaping_stay_in_their_cells(tmp_path: Path) -> None:
    checks = (
        SmokeCheck("proxy", "/health", 200, 3.2, "legacy", None),
        SmokeCheck("signal", "/health", None, 1.0, None, "refused | <script>x</script>"),
    )
    reason = "a | b || c\nsecond line `code` *x* _y_ [l](u)"
    pct = "rollout.percentage"
    entry = person(1_800_000_000.0 - 60, "ana", "rollout set 30", {pct: 10}, {pct: 30}, reason)
    doc = parse(build_report(inputs(tmp_path, None, smoke=Smoke(checks=checks), entries=[entry])))
    rows = doc.sections["Smoke test"].table.rows
    assert rows[0][-1] == "✅ ok"
    assert rows[1][-1] == "❌ failed: refused | <script>x</script>"
    assert "❌ 1 of 2 checks failed." in doc.sections["Smoke test"].text
    [change] = doc.sections["Changes"].table.rows
    assert change[-1] == "a | b || c second line `code` *x* _y_ [l](u)"
    assert change[2] == "rollout set 30"


def test_a_human_change_is_a_move_only_when_no_cli_line_made_it(tmp_path: Path) -> None:
    """The autopilot records a person's change as `human_change`: after `rollout set` it
    repeats the CLI's move (one stage row); an edit by hand is a move of its own."""
    now = 1_800_000_000.0
    pct, emergency = "rollout.percentage", "rollout.emergency"
    noticed = {pct: 30, emergency: False}, {pct: 10, emergency: False}

    def human_change(at: float, before: dict[str, Any], after: dict[str, Any]) -> Any:
        entry = pilot(at, "human_change", None, None, "a person changed it", None)
        entry["before"], entry["after"] = before, after
        return entry

    by_cli = [
        pilot(now - 600, "promote", 10, 30, "baked", PASSING),
        person(now - 300, "ana", "rollout set 10", {pct: 30}, {pct: 10}, "back off"),
        human_change(now - 290, *noticed),
    ]
    by_hand = [by_cli[0], human_change(now - 290, *noticed)]
    for history, by in (
        (by_cli, "ana@ops1 (rollout set 10)"),
        (
            by_hand,
            "a person, editing the file outside the CLI (seen by the autopilot: human_change)",
        ),
    ):
        report = inputs(tmp_path, None, entries=history, now=now, start=now - 3600)
        doc = parse(build_report(report))
        stages = doc.sections["Stages reached"].table
        assert stages.column("Percentage") == ["10 %", "30 %", "10 %"]
        assert stages.rows[-1][-1] == by
        decisions = doc.sections["Autopilot decisions"].table
        assert decisions.column("Decision")[-1] == "human_change"
        assert decisions.rows[-1][2] == "30 % -> 10 %"
        changes = doc.sections["Changes"].table
        assert (
            changes.rows[-1][3] == "rollout.percentage 30 -> 10, rollout.emergency false -> false"
        )


def test_damaged_figures_in_a_history_line_do_not_stop_the_report(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    damaged = pilot(now - 60, "promote", 10, 30, "baked", {"outcome": "pass", "signal": "?"})
    pct = "rollout.percentage"
    unreadable = {"upstreams": {"signal": {"requests": "x"}}}
    odd_live = person(now - 30, "ana", "rollout set 50", {pct: 30}, {pct: 50}, None, unreadable)
    report = inputs(tmp_path, None, entries=[damaged, odd_live], now=now, start=now - 3600)
    doc = parse(build_report(report))
    [row] = doc.sections["Figures per stage"].table.rows  # the person's unreadable window: none
    assert row[3:6] == ["n/a", "n/a", "n/a"]
    assert row[6:] == ["⚪ not judged", "⚪ not judged", "pass"]
    assert doc.sections["Autopilot decisions"].table.rows[0][3] == "pass:"  # `rollout history`'s
    assert len(doc.sections["Changes"].table.rows) == 2
