"""What runs beside the proxy in `rollout demo --autopilot`: the controller thread, the
traffic lines and the --break-signal watcher, against real aiohttp servers."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from aiohttp import web

from proxy.demo.apis import Faults
from proxy.demo.load import LoadPlan
from proxy.demo.pilot import BREAK_RATE, PilotedDemo, PilotPlan, live_percentage
from tests.support import UpstreamFactory, free_port, server_url


class FakeProxy:
    """The proxy's public side (answers every path) and its `/-/status` percentage."""

    def __init__(self) -> None:
        self.percentage = 0.0
        self.requests = 0
        self.status_reads = 0

    async def public(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response({}, headers={"X-Rollout-Upstream": "legacy"})

    async def status(self, request: web.Request) -> web.Response:
        self.status_reads += 1
        return web.json_response({"percentages": {"default": self.percentage}})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/-/status", self.status)
        app.router.add_get("/{tail:.*}", self.public)
        return app


def plan_for(url: str, runner: object, **overrides: object) -> PilotPlan:
    values: dict[str, object] = {
        "config_path": Path("/nonexistent/rollout.yaml"),
        "proxy_url": url,
        "admin_url": url,
        "runner": runner,
        "load": LoadPlan(base_url=url, rate=50),
        "report_every": 0.2,
        "join_seconds": 10.0,
        **overrides,
    }
    return PilotPlan(**values)  # type: ignore[arg-type]


async def wait_for(check: object, what: str, seconds: float = 30.0) -> None:
    assert callable(check)
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_runner_gets_the_config_and_is_stopped(
    upstream: UpstreamFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeProxy()
    url = server_url(await upstream(fake.app()))
    calls: list[Path] = []
    started = threading.Event()

    def runner(path: Path, stop: threading.Event) -> int:
        calls.append(path)
        started.set()
        stop.wait(30)
        return 0 if stop.is_set() else 9

    pilot = PilotedDemo(plan_for(url, runner), Faults())
    pilot.start()
    await wait_for(lambda: started.is_set() and fake.requests >= 10, "runner and load")
    await wait_for(lambda: "traffic: " in capsys.readouterr().out, "a traffic line")
    await asyncio.wait_for(pilot.stop(), 30)
    assert calls == [Path("/nonexistent/rollout.yaml")]
    figures = pilot.load.figures()
    assert figures.answered >= 10
    assert figures.in_flight == 0
    assert "autopilot exited" not in capsys.readouterr().out  # stopped, not exited


@pytest.mark.parametrize(("outcome", "code"), [("returns", 3), ("raises", 1)])
async def test_runner_ending_by_itself_is_reported(
    upstream: UpstreamFactory,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    outcome: str,
    code: int,
) -> None:
    url = server_url(await upstream(FakeProxy().app()))

    def runner(path: Path, stop: threading.Event) -> int:
        if outcome == "raises":
            raise RuntimeError("controller bug")
        return 3

    pilot = PilotedDemo(plan_for(url, runner), Faults())
    pilot.start()
    out: list[str] = []
    await wait_for(
        lambda: out.append(capsys.readouterr().out) or "autopilot exited" in "".join(out),
        "the exit line",
    )
    await asyncio.wait_for(pilot.stop(), 30)
    assert f"autopilot exited with {code}; the proxy keeps serving" in "".join(out)
    assert ("controller bug" in caplog.text) == (outcome == "raises")


async def test_a_runner_that_ignores_stop_is_left_behind(
    upstream: UpstreamFactory, caplog: pytest.LogCaptureFixture
) -> None:
    url = server_url(await upstream(FakeProxy().app()))
    release = threading.Event()
    entered = threading.Event()

    def runner(path: Path, stop: threading.Event) -> int:
        entered.set()
        release.wait(30)  # deaf to `stop`, like a controller stuck in a read
        return 0

    pilot = PilotedDemo(plan_for(url, runner, join_seconds=0.3), Faults())
    pilot.start()
    await wait_for(entered.is_set, "the runner")
    await asyncio.wait_for(pilot.stop(), 30)
    assert "did not stop within 0.3 s" in caplog.text
    release.set()


async def test_break_signal_fails_signal_once_the_live_percentage_is_30(
    upstream: UpstreamFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeProxy()
    url = server_url(await upstream(fake.app()))
    faults = Faults()
    pilot = PilotedDemo(
        plan_for(url, lambda path, stop: int(not stop.wait(30)), break_signal=True), faults
    )
    pilot.start()
    fake.percentage = 10
    await wait_for(lambda: fake.status_reads >= 2, "two status reads")
    assert faults.failure_rate == 0
    fake.percentage = 30
    await wait_for(lambda: faults.failure_rate > 0, "the breakage")
    await asyncio.wait_for(pilot.stop(), 30)
    assert faults.failure_rate == BREAK_RATE
    out = capsys.readouterr().out
    assert "signal API now fails 15 % of requests (--break-signal)" in out


async def test_without_break_signal_nothing_fails(upstream: UpstreamFactory) -> None:
    fake = FakeProxy()
    fake.percentage = 100
    url = server_url(await upstream(fake.app()))
    faults = Faults()
    pilot = PilotedDemo(plan_for(url, lambda path, stop: int(not stop.wait(30))), faults)
    pilot.start()
    await wait_for(lambda: fake.requests >= 20, "some load")
    await asyncio.wait_for(pilot.stop(), 30)
    assert fake.status_reads == 0
    assert faults.failure_rate == 0


async def test_live_percentage(upstream: UpstreamFactory) -> None:
    import aiohttp

    fake = FakeProxy()
    fake.percentage = 42.5
    good = server_url(await upstream(fake.app()))

    async def broken(request: web.Request) -> web.Response:
        return web.Response(text="not json")

    bad_app = web.Application()
    bad_app.router.add_get("/-/status", broken)
    bad = server_url(await upstream(bad_app))
    async with aiohttp.ClientSession() as http:
        assert await live_percentage(http, good) == 42.5
        assert await live_percentage(http, bad) is None
        assert await live_percentage(http, f"http://127.0.0.1:{free_port()}") is None
        assert await live_percentage(http, good + "/nowhere") is None
