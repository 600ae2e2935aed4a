"""Gradual rollback end to end (SPEC 14): `rollout rollback --gradual` against a running
`rollout serve`, and the autopilot's `on_failure: gradual` with real processes.

The proxy polls its file every 0.2 s and a step lasts at least 2 s, so each step shows in
`/-/status`. Every wait is bounded; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy.config.load import load_config
from tests.support import ProxyProcess, UpstreamFactory, config_dict, server_url, write_config
from tests.support.autopilot import (
    AutopilotProcess,
    Health,
    Hooks,
    api_app,
    eventually,
    history,
    pilot_events,
    run_cli,
    running_load,
    saved_state,
)
from tests.support.gradual import (
    WalkProcess,
    served,
    status,
    wait_for_lines,
    wait_served,
    watch_served,
)

pytestmark = pytest.mark.e2e

Serve = Callable[..., ProxyProcess]


@pytest.fixture
def walks(tmp_path: Path) -> Iterator[Callable[..., WalkProcess]]:
    started: list[WalkProcess] = []

    def start(config_path: Path, *args: str) -> WalkProcess:
        log = tmp_path / f"walk-{len(started)}.log"
        walk = WalkProcess(config_path, ("-c", str(config_path), *args), log)
        started.append(walk)
        return walk.start()

    yield start
    for walk in started:
        walk.kill()


async def proxy_at(
    upstream: UpstreamFactory, serve_proxy: Serve, percentage: float
) -> ProxyProcess:
    signal_api = await upstream(api_app("signal", Health()))
    legacy_api = await upstream(api_app("legacy", Health()))
    data = config_dict(
        server_url(signal_api), server_url(legacy_api), rollout={"percentage": percentage}
    )
    return await asyncio.to_thread(serve_proxy, data, "--poll-interval", "0.2")


def percentages(config_path: Path) -> list[tuple[float, float]]:
    return [
        (e["before"]["rollout.percentage"], e["after"]["rollout.percentage"])
        for e in history(config_path)
    ]


async def test_each_step_shows_in_the_proxy_and_the_history(
    upstream: UpstreamFactory, serve_proxy: Serve, walks: Callable[..., WalkProcess]
) -> None:
    proxy = await proxy_at(upstream, serve_proxy, 50)
    path = proxy.config_path
    walk = walks(path, "--step", "10", "--every", "2", "--to", "20", "--reason", "p95 up")
    seen = await asyncio.to_thread(watch_served, proxy.admin_url, walk)
    assert walk.wait() == 0, walk.output()
    assert seen == [50, 40, 30, 20], walk.output()
    assert percentages(path) == [(50, 40), (40, 30), (30, 20)]
    lines = history(path)
    assert [e["command"] for e in lines] == [
        "rollout rollback --gradual --step 10 --every 2 --to 20"
    ] * 3
    assert [e["reason"] for e in lines] == [
        f"p95 up (step {k} of 3, 50 % -> 20 %)" for k in (1, 2, 3)
    ]
    assert lines[0]["live"]["generation"] >= 1  # the evidence the walk started on
    out = walk.output()
    assert "step 1 of 3: rollout.percentage 50 -> 40; next step (30 %) in 2 s" in out
    assert "step 3 of 3: rollout.percentage 30 -> 20" in out
    assert load_config(path).rollout.percentage == 20


async def test_to_the_previous_stage_by_default(
    upstream: UpstreamFactory, serve_proxy: Serve, walks: Callable[..., WalkProcess]
) -> None:
    proxy = await proxy_at(upstream, serve_proxy, 50)
    walk = walks(proxy.config_path, "--step", "15", "--every", "0")
    assert await asyncio.to_thread(walk.wait) == 0, walk.output()
    assert percentages(proxy.config_path) == [(50, 35), (35, 30)]  # the last step is shorter
    await asyncio.to_thread(wait_served, proxy.admin_url, 30)


@pytest.mark.parametrize(
    ("sig", "code", "said"),
    [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")],
    ids=["SIGINT", "SIGTERM"],
)
async def test_a_signal_while_waiting_leaves_the_last_step(
    upstream: UpstreamFactory,
    serve_proxy: Serve,
    walks: Callable[..., WalkProcess],
    sig: signal.Signals,
    code: int,
    said: str,
) -> None:
    proxy = await proxy_at(upstream, serve_proxy, 50)
    path = proxy.config_path
    walk = walks(path, "--step", "5", "--every", "120")
    await asyncio.to_thread(wait_for_lines, path, 1)  # step 1 written; 120 s to the next
    await asyncio.to_thread(wait_served, proxy.admin_url, 45)
    walk.signal(sig)
    assert await asyncio.to_thread(walk.wait, 20) == code, walk.output()
    assert f"stopped by {said} at 45 % (step 1 of 4); the rest not applied" in walk.output()
    assert percentages(path) == [(50, 45)]
    assert load_config(path).rollout.percentage == 45
    await asyncio.sleep(1)  # five reload polls: the proxy stays at the last step
    assert await asyncio.to_thread(served, proxy.admin_url) == 45


async def test_a_persons_set_during_the_walk_stops_it_unoverwritten(
    upstream: UpstreamFactory, serve_proxy: Serve, walks: Callable[..., WalkProcess]
) -> None:
    proxy = await proxy_at(upstream, serve_proxy, 50)
    path = proxy.config_path
    # 8 s between steps: time for `rollout set` to land before the second step.
    walk = walks(path, "--step", "10", "--every", "8")
    await asyncio.to_thread(wait_for_lines, path, 1)
    person = await asyncio.to_thread(run_cli, path, "set", "45", "--reason", "I take it from here")
    assert person.returncode == 0, person.stderr
    assert await asyncio.to_thread(walk.wait, 30) == 1, walk.output()
    out = walk.output()
    assert "now says 45 %, not the 40 % this walk left" in out, out
    assert "stopped at 40 % (step 1 of 2), the rest not applied" in out, out
    assert load_config(path).rollout.percentage == 45
    assert [e["command"].split(" --")[0] for e in history(path)] == [
        "rollout rollback",
        "rollout set 45",
    ]
    await asyncio.to_thread(wait_served, proxy.admin_url, 45)


async def test_emergency_stays_instant_during_a_walk(
    upstream: UpstreamFactory, serve_proxy: Serve, walks: Callable[..., WalkProcess]
) -> None:
    proxy = await proxy_at(upstream, serve_proxy, 50)
    path = proxy.config_path
    walk = walks(path, "--step", "10", "--every", "120")
    await asyncio.to_thread(wait_for_lines, path, 1)
    stopped = await asyncio.to_thread(run_cli, path, "emergency", "--reason", "signal down")
    assert stopped.returncode == 0, stopped.stderr
    # One write: everything goes to legacy now, not at the walk's pace.
    [step, emergency] = history(path)
    assert step["command"].startswith("rollout rollback --gradual")
    assert emergency["command"] == "rollout emergency"
    assert (emergency["before"], emergency["after"]) == (
        {"rollout.emergency": False},
        {"rollout.emergency": True},
    )
    await eventually(
        lambda: bool(status(proxy.admin_url)["emergency"]),
        timeout=15,
        what="the proxy in emergency",
    )
    assert walk.running()  # the walk still waits for its next step; the emergency did not
    walk.signal(signal.SIGINT)
    assert await asyncio.to_thread(walk.wait, 20) == 130


def test_refusals_write_nothing(tmp_path: Path) -> None:
    data = config_dict("http://127.0.0.1:1", "http://127.0.0.1:2", rollout={"percentage": 30})
    path = tmp_path / "rollout.yaml"
    write_config(path, data)
    before = path.read_bytes()
    cases = [
        (["--gradual", "--to", "30"], "--to 30 is not below the current 30 %"),
        (["--gradual", "--to", "-5"], "--to -5 is not within 0-100"),
        (["--gradual", "--to", "1.234"], "--to 1.234 has more than two decimals"),
        (["--gradual", "--step", "0"], "--step 0 must be more than 0"),
        (["--gradual", "--every", "-1"], "--every -1 must be 0 or more seconds"),
        (["--gradual", "--every", "inf"], "--every inf must be 0 or more seconds"),
        (["--step", "5"], "--step only with --gradual"),
    ]
    for args, said in cases:
        done = run_cli(path, "rollback", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert said in done.stderr, (args, done.stderr)
    assert path.read_bytes() == before
    assert history(path) == []


# --- the autopilot's on_failure: gradual -------------------------------------------------


async def test_the_autopilot_walks_down_in_steps_when_signal_fails(
    upstream: UpstreamFactory, serve_proxy: Serve, tmp_path: Path
) -> None:
    signal_health, hooks = Health(), Hooks()
    signal_api = await upstream(api_app("signal", signal_health))
    legacy_api = await upstream(api_app("legacy", Health()))
    hooks_url = server_url(await upstream(hooks.app()))
    data = config_dict(
        server_url(signal_api),
        server_url(legacy_api),
        rollout={"percentage": 50},
        # The proxy's own guard stays out of it: the autopilot's analysis decides.
        guard={"min_requests": 100000},
        autopilot={
            "enabled": True,
            "interval": 1,
            "bake": 3600,
            "failure_limit": 2,
            "min_requests": 10,
            "on_failure": "gradual",
            "prometheus": None,
            "webhooks": {"events": [f"{hooks_url}/events"]},
        },
    )
    proxy = await asyncio.to_thread(serve_proxy, data, "--poll-interval", "0.2")
    path = proxy.config_path
    pilot = AutopilotProcess(path, tmp_path / "autopilot.log")

    def explain() -> str:
        return f"history: {pilot_events(path)}\n{pilot.output()[-3000:]}"

    try:
        async with running_load([proxy.url], rate=150):
            signal_health.set(fail=5, per=25)  # 20 % of signal's answers fail
            pilot.start()
            await eventually(
                lambda: load_config(path).rollout.percentage == 30,
                timeout=90,
                what="walked down to 30 %",
                explain=explain,
            )
            await eventually(
                lambda: (
                    [e["percentage"] for e in hooks.events if e["event"] == "rollback"]
                    == [45, 40, 35, 30]
                ),
                timeout=20,
                what="four rollback posts",
                explain=explain,
            )
            await asyncio.to_thread(wait_served, proxy.admin_url, 30)
            await asyncio.sleep(3)  # three more analyses: paused, nothing more moves
            assert load_config(path).rollout.percentage == 30
    finally:
        assert pilot.stop() == 0, pilot.output()
    steps = [(b, a) for event, b, a in pilot_events(path) if event == "rollback"]
    assert steps == [
        ({"rollout.percentage": b}, {"rollout.percentage": a})
        for b, a in [(50, 45), (45, 40), (40, 35), (35, 30)]
    ]
    assert "human_change" not in [event for event, _, _ in pilot_events(path)]
    first = next(e for e in history(path) if e.get("event") == "rollback")
    assert first["figures"]["outcome"] == "fail"
    assert first["reason"].startswith("step 1 of 4 of the gradual rollback 50 % -> 30 %")
    state = saved_state(path)["controller"]["state"]
    assert state["pause"] == "rollback"
    assert state["pause_reason"].startswith("rolled back 50 % -> 30 % in 4 steps")
    assert "not available yet" not in pilot.output()
    assert "Traceback" not in pilot.output()
