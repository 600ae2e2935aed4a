"""`rollout autopilot` end to end (SPEC 13): a real fleet, a real Prometheus, real processes.

Two `rollout serve` replicas read one config file (each on its own ports), in front of
stand-in Signal and Legacy APIs whose health the test turns while a bounded load runs.
Prometheus (the Debian package, 1 s scrapes) scrapes both; the autopilot reads every
replica's figures from it, analyses every 2 s and writes the one file. Every wait is
bounded; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.config.load import load_config
from tests.support import HOST, ProxyProcess, UpstreamFactory, config_dict, server_url, write_config
from tests.support.autopilot import (
    TEST_SESSION,
    AutopilotProcess,
    Health,
    Hooks,
    api_app,
    eventually,
    fleet_replicas,
    history,
    pilot_events,
    promotions,
    run_cli,
    running_load,
    saved_state,
    served_percentage,
)
from tests.support.prometheus import PrometheusServer

pytestmark = pytest.mark.e2e

# Short everything: an analysis every 2 s (two scrapes), a 2 s bake, 2 passes to promote.
AUTOPILOT = {
    "enabled": True,
    "interval": 2,
    "bake": 2,
    "checks": 2,
    "failure_limit": 2,
    "min_requests": 15,
    "max_inconclusive": 3,
    "max_errors": 3,
    "gates": [80],
}
# The proxies' own guard must not decide these tests by itself (a long window, a high bar);
# the autopilot's failure criteria are the guard's thresholds all the same (SPEC 13).
GUARD = {"enabled": True, "window_seconds": 60, "min_requests": 1000, "max_error_rate": 0.05}


@dataclass
class Fleet:
    config_path: Path
    replicas: list[ProxyProcess]
    prometheus: PrometheusServer
    signal: Health
    legacy: Health
    hooks: Hooks
    hooks_url: str
    pilots: list[AutopilotProcess] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def autopilot(self, *extra: str) -> AutopilotProcess:
        n = len(self.pilots)
        pilot = AutopilotProcess(self.config_path, self.config_path.parent / f"autopilot-{n}.log")
        self.pilots.append(pilot)
        return pilot.start(*extra)

    def percentage(self) -> float:
        return load_config(self.config_path).rollout.percentage

    def explain(self) -> str:
        out = [f"file: {self.percentage():g} %", f"history: {pilot_events(self.config_path)}"]
        out += [f"--- autopilot {i}:\n{p.output()[-3000:]}" for i, p in enumerate(self.pilots)]
        out.append(f"state: {json.dumps(saved_state(self.config_path))[-1500:]}")
        return "\n".join(out)


@pytest.fixture
async def fleet(upstream: UpstreamFactory, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[Fleet] = []

    async def make(
        *,
        percentage: float = 0,
        autopilot: dict[str, Any] | None = None,
        promotion: dict[str, Any] | None = None,
        guard: dict[str, Any] | None = None,
        prometheus: bool = True,
    ) -> Fleet:
        signal_health, legacy_health, hooks = Health(), Health(), Hooks()
        signal_api = await upstream(api_app("signal", signal_health))
        legacy_api = await upstream(api_app("legacy", legacy_health))
        hooks_server = await upstream(hooks.app())
        hooks_url = server_url(hooks_server)
        data = config_dict(
            server_url(signal_api),
            server_url(legacy_api),
            rollout={"percentage": percentage, "test_sessions": [TEST_SESSION]},
            guard={**GUARD, **(guard or {})},
            promotion={"min_requests": 10, **(promotion or {})},
        )
        replicas = fleet_replicas(tmp_path, data)
        targets = [f"{HOST}:{r.admin_port}" for r in replicas]
        prom = PrometheusServer(tmp_path / "prometheus", targets)
        await asyncio.to_thread(prom.start)
        data["autopilot"] = {
            **AUTOPILOT,
            "prometheus": prom.url if prometheus else None,
            "webhooks": {"events": [f"{hooks_url}/events"]},
            **(autopilot or {}),
        }
        write_config(replicas[0].config_path, data)
        for r in replicas:
            await asyncio.to_thread(r.start)
        f = Fleet(
            replicas[0].config_path, replicas, prom, signal_health, legacy_health, hooks, hooks_url
        )
        made.append(f)
        await asyncio.to_thread(prom.wait_for_scrapes, 1)
        return f

    yield make
    for f in made:
        for pilot in f.pilots:
            pilot.stop()
        for r in f.replicas:
            r.stop()
        f.prometheus.stop()


# --- the walk -----------------------------------------------------------------------------


async def test_healthy_signal_walks_to_the_gate_and_approve_lets_it_on(
    fleet: Callable[..., Any],
) -> None:
    f: Fleet = await fleet()
    async with _load(f):
        pilot = f.autopilot()
        await eventually(
            lambda: "gate" in f.hooks.kinds(), timeout=120, what="a gate at 80 %", explain=f.explain
        )
        assert promotions(f.config_path) == [(0, 10), (10, 30), (30, 50)]
        assert f.percentage() == 50
        # Stopped at the gate: it stays there while no one approves.
        await asyncio.sleep(5)
        assert f.percentage() == 50
        assert f.hooks.kinds().count("gate") == 1, f.hooks.kinds()

        status = run_cli(f.config_path, "autopilot", "status")
        assert status.returncode == 0, status.stderr
        assert "rollout approve" in status.stdout, status.stdout

        approve = run_cli(f.config_path, "approve", "--reason", "80 % agreed in #ops")
        assert approve.returncode == 0, approve.stderr
        await eventually(
            lambda: f.percentage() == 80, timeout=60, what="promoted to 80", explain=f.explain
        )
        # The events webhook posts from a background thread: its post may trail the file.
        await eventually(
            lambda: 80 in [e["percentage"] for e in f.hooks.events if e["event"] == "promote"],
            timeout=30,
            what="the promotion to 80 posted",
            explain=f.explain,
        )
    assert promotions(f.config_path)[-1] == (50, 80)
    kinds = f.hooks.kinds()
    assert kinds.index("approve") < len(kinds) - 1 - kinds[::-1].index("promote"), kinds
    promoted = [e for e in f.hooks.events if e["event"] == "promote"]
    assert [e["percentage"] for e in promoted] == [10, 30, 50, 80]
    for event in promoted:
        assert set(event) == {"event", "stage", "percentage", "figures", "reason", "time"}
        assert event["figures"]["outcome"] == "pass", event
        assert event["figures"]["signal"]["attempts"] >= AUTOPILOT["min_requests"], event
    # Both replicas serve what the file says.
    async with aiohttp.ClientSession() as http:
        for r in f.replicas:
            await eventually_async(lambda r=r: _served(http, r, 80), timeout=10)
    assert pilot.stop() == 0, pilot.output()
    assert "Traceback" not in pilot.output()


async def test_errors_at_30_roll_the_whole_fleet_back(fleet: Callable[..., Any]) -> None:
    f: Fleet = await fleet(percentage=10)
    async with _load(f):
        f.autopilot()
        await eventually(
            lambda: f.percentage() == 30, timeout=90, what="promoted to 30", explain=f.explain
        )
        f.signal.set(fail=2, per=25)  # 8 % of signal's answers are 500 from now on
        await eventually(
            lambda: "rollback" in f.hooks.kinds(), timeout=60, what="a rollback", explain=f.explain
        )
        assert f.percentage() == 10
        rollback = next(e for e in f.hooks.events if e["event"] == "rollback")
        assert rollback["percentage"] == 10
        assert rollback["stage"] == 1
        assert rollback["figures"]["outcome"] == "fail"
        assert rollback["figures"]["signal"]["error_rate"] > 0.05, rollback
        # Rolled back within failure_limit analyses of the breakage: the analyses between
        # the promotion to 30 and the rollback that failed are exactly failure_limit.
        lines = [e for e in history(f.config_path) if e.get("event") == "rollback"]
        assert len(lines) == 1
        assert lines[0]["figures"]["outcome"] == "fail"
        async with aiohttp.ClientSession() as http:
            for r in f.replicas:
                await eventually_async(lambda r=r: _served(http, r, 10), timeout=10)
        # Paused after the rollback: it does not promote again by itself.
        await asyncio.sleep(6)
        assert f.percentage() == 10
        status = run_cli(f.config_path, "autopilot", "status", "--json")
        view = json.loads(status.stdout)
        assert view["pause"] == "rollback", view
    assert promotions(f.config_path) == [(10, 30)]


async def test_worse_than_legacy_but_inside_the_thresholds_is_not_promoted(
    fleet: Callable[..., Any],
) -> None:
    # Both sides inside every fixed threshold (p95 < 400 ms), but signal ~1.5x slower
    # than legacy: buckets 0.2-0.3 s against 0.1-0.2 s give p95s of ~295 and ~195 ms.
    f: Fleet = await fleet(
        percentage=50,
        promotion={"max_p95_ms": 400},
        guard={"max_p95_ms": 2000},
        autopilot={"bake": 0, "checks": 1},
    )
    f.signal.set(delay=0.23)
    f.legacy.set(delay=0.13)
    async with _load(f, concurrency=64):
        f.autopilot()
        await eventually(
            lambda: _analyses(f, "hold") >= 3, timeout=90, what="3 held analyses", explain=f.explain
        )
    assert f.percentage() == 50
    assert promotions(f.config_path) == []
    held = [
        a
        for a in saved_state(f.config_path)["controller"]["analyses"]
        if a["analysis"]["outcome"] == "hold"
    ]
    assert "p95 ratio to legacy's" in held[-1]["analysis"]["reason"], held[-1]
    checks = {(c["name"], c["kind"]): c for c in held[-1]["analysis"]["checks"]}
    assert checks[("signal p95", "pass")]["ok"] is True  # inside the fixed threshold
    assert checks[("p95 ratio to legacy's", "pass")]["ok"] is False


async def test_too_little_traffic_is_inconclusive_then_pauses(fleet: Callable[..., Any]) -> None:
    f: Fleet = await fleet(percentage=10, autopilot={"bake": 0, "checks": 1})
    async with _load(f, rate=2):  # a few requests per interval: far below min_requests
        f.autopilot()
        await eventually(
            lambda: "pause" in f.hooks.kinds(), timeout=60, what="a pause", explain=f.explain
        )
    assert f.percentage() == 10
    assert promotions(f.config_path) == []
    pause = next(e for e in f.hooks.events if e["event"] == "pause")
    assert "inconclusive" in pause["reason"], pause
    outcomes = [
        a["analysis"]["outcome"] for a in saved_state(f.config_path)["controller"]["analyses"]
    ]
    assert outcomes.count("inconclusive") >= AUTOPILOT["max_inconclusive"], outcomes
    assert "fail" not in outcomes


async def test_killed_mid_bake_resumes_without_promoting_twice(fleet: Callable[..., Any]) -> None:
    f: Fleet = await fleet(percentage=10, autopilot={"bake": 8})
    async with _load(f):
        first = f.autopilot()
        await eventually(
            lambda: _passes(f) >= 1, timeout=60, what="a pass at 10 %", explain=f.explain
        )
        entered = saved_state(f.config_path)["controller"]["state"]["stage_entered_at"]
        first.stop(signal.SIGKILL)
        second = f.autopilot()
        await eventually(
            lambda: "resumes at 10 %" in second.output(),
            timeout=20,
            what="resumed",
            explain=f.explain,
        )
        # The bake goes on from when 10 % was entered: not started again.
        resumed = saved_state(f.config_path)["controller"]["state"]
        assert resumed["percentage"] == 10
        assert resumed["stage_entered_at"] == entered
        await eventually(
            lambda: f.percentage() == 30, timeout=90, what="promoted to 30", explain=f.explain
        )
        await eventually(
            lambda: "promote" in f.hooks.kinds(), timeout=30, what="posted", explain=f.explain
        )
    assert promotions(f.config_path).count((10, 30)) == 1
    assert [e["percentage"] for e in f.hooks.events if e["event"] == "promote"] == [30]


async def test_a_persons_change_stands_and_the_bake_restarts(fleet: Callable[..., Any]) -> None:
    f: Fleet = await fleet(percentage=30, autopilot={"bake": 10})
    async with _load(f):
        f.autopilot()
        await eventually(
            lambda: _analyses(f) >= 1, timeout=60, what="baking at 30", explain=f.explain
        )
        moved = run_cli(f.config_path, "set", "10", "--reason", "customer complaint")
        assert moved.returncode == 0, moved.stderr
        changed_at = time.time()
        await eventually(
            lambda: "human_change" in f.hooks.kinds(), timeout=30, what="noticed", explain=f.explain
        )
        assert f.percentage() == 10
        # The state is saved after the tick's posts are queued: wait for it too.
        await eventually(
            lambda: saved_state(f.config_path)["controller"]["state"]["percentage"] == 10,
            timeout=10,
            what="the state saved",
            explain=f.explain,
        )
        state = saved_state(f.config_path)["controller"]["state"]
        assert state["stage_entered_at"] >= changed_at - 1
        # It carries on from 10 after a full bake, never straight back to 30.
        await eventually(
            lambda: f.percentage() == 30, timeout=90, what="promoted again", explain=f.explain
        )
        await eventually(
            lambda: "promote" in f.hooks.kinds(), timeout=30, what="posted", explain=f.explain
        )
    lines = history(f.config_path)
    person = next(i for i, e in enumerate(lines) if e["command"].startswith("rollout set"))
    noticed = next(i for i, e in enumerate(lines) if e.get("event") == "human_change")
    assert person < noticed
    assert lines[noticed]["after"]["rollout.percentage"] == 10
    promote = next(e for e in f.hooks.events if e["event"] == "promote")
    human = next(e for e in f.hooks.events if e["event"] == "human_change")
    assert _epoch(promote["time"]) - _epoch(human["time"]) >= 10 - 1.5  # a whole bake


async def test_dry_run_writes_nothing(fleet: Callable[..., Any]) -> None:
    f: Fleet = await fleet(percentage=10, autopilot={"bake": 0, "checks": 1})
    before = f.config_path.read_bytes()
    async with _load(f):
        pilot = f.autopilot("--dry-run")
        await eventually(
            lambda: "would promote 10 % -> 30 %" in pilot.output(),
            timeout=60,
            what="a promotion decided",
            explain=f.explain,
        )
        assert pilot.stop() == 0
    assert f.config_path.read_bytes() == before
    directory = f.config_path.parent
    assert not (directory / "rollout-history.jsonl").exists()
    assert not (directory / "rollout-autopilot.json").exists()
    assert f.hooks.events == []


async def test_once_exit_codes(fleet: Callable[..., Any]) -> None:
    f: Fleet = await fleet(percentage=10, prometheus=False, autopilot={"interval": 1.5})
    admin = f.replicas[0].admin_url
    async with _load(f, urls=[f.replicas[0].url]):
        ok = await asyncio.to_thread(
            run_cli, f.config_path, "autopilot", "--once", "--admin", admin
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "pass" in ok.stdout
        f.signal.set(fail=5, per=25)  # 20 %
        failed = await asyncio.to_thread(
            run_cli, f.config_path, "autopilot", "--once", "--admin", admin
        )
        assert failed.returncode == 1, failed.stdout + failed.stderr
    quiet = await asyncio.to_thread(run_cli, f.config_path, "autopilot", "--once", "--admin", admin)
    assert quiet.returncode == 3, quiet.stdout + quiet.stderr
    f.replicas[0].stop()
    down = await asyncio.to_thread(run_cli, f.config_path, "autopilot", "--once", "--admin", admin)
    assert down.returncode == 4, down.stdout + down.stderr
    assert "Traceback" not in down.stdout + down.stderr


async def test_one_controller_per_config(fleet: Callable[..., Any]) -> None:
    f: Fleet = await fleet(percentage=10)
    first = f.autopilot()
    await eventually(
        lambda: (
            (f.config_path.parent / "rollout-autopilot.lock").exists()
            and "autopilot starts" in first.output()
        ),
        timeout=30,
        what="the first controller running",
        explain=f.explain,
    )
    second = await asyncio.to_thread(run_cli, f.config_path, "autopilot")
    assert second.returncode == 1, second.stdout + second.stderr
    assert first.proc is not None
    assert f"pid {first.proc.pid}" in second.stderr, second.stderr
    assert first.stop() == 0


async def test_disabled_autopilot_exits_2(fleet: Callable[..., Any]) -> None:
    f: Fleet = await fleet(autopilot={"enabled": False})
    done = await asyncio.to_thread(run_cli, f.config_path, "autopilot")
    assert done.returncode == 2
    assert "autopilot.enabled is false" in done.stderr


async def test_a_confirm_hook_that_says_no_holds_the_promotion(fleet: Callable[..., Any]) -> None:
    f: Fleet = await fleet(percentage=10, autopilot={"bake": 0, "checks": 1})
    data = _config_data(f)
    data["autopilot"]["webhooks"]["confirm"] = [f"{f.hooks_url}/confirm"]
    write_config(f.config_path, data)
    f.hooks.confirm_status = 409
    async with _load(f):
        pilot = f.autopilot()
        await eventually(
            lambda: len(f.hooks.confirms) >= 2,
            timeout=60,
            what="two confirm posts",
            explain=f.explain,
        )
        assert f.percentage() == 10
        assert "promotion held: confirm hook" in pilot.output()
        f.hooks.confirm_status = 200
        await eventually(
            lambda: f.percentage() == 30,
            timeout=60,
            what="promoted once confirmed",
            explain=f.explain,
        )
    assert f.hooks.confirms[0]["event"] == "promote"
    assert f.hooks.confirms[0]["percentage"] == 30


# --- helpers ------------------------------------------------------------------------------


def _load(f: Fleet, *, urls: list[str] | None = None, **kwargs: Any) -> Any:
    return running_load(urls or f.urls, **kwargs)


def _analyses(f: Fleet, outcome: str | None = None) -> int:
    state = saved_state(f.config_path).get("controller") or {}
    entries = state.get("analyses", [])
    return sum(1 for a in entries if outcome is None or a["analysis"]["outcome"] == outcome)


def _passes(f: Fleet) -> int:
    state = saved_state(f.config_path).get("controller") or {}
    return int(state.get("state", {}).get("passes", 0))


def _config_data(f: Fleet) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(f.config_path.read_text(encoding="utf-8"))
    return data


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def _served(http: aiohttp.ClientSession, replica: ProxyProcess, pct: float) -> bool:
    return await served_percentage(http, replica) == pct


async def eventually_async(check: Callable[[], Any], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s")
        await asyncio.sleep(0.2)
