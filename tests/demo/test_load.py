"""The demo's built-in load against real aiohttp servers: bounded, stoppable, counted."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import pytest
from aiohttp import web

from proxy.demo.load import (
    LOAD_PATHS,
    TEST_SESSION,
    Load,
    LoadFigures,
    LoadPlan,
    traffic_line,
)
from tests.support import UpstreamFactory, free_port, server_url

SESSION = re.compile(r"demo-user-\d{4}")


class FakeProxy:
    """Answers like the proxy would: `X-Rollout-Upstream` by session, signal for the tester."""

    def __init__(self, *, hold: asyncio.Event | None = None, status: int = 200) -> None:
        self.sessions: Counter[str] = Counter()
        self.paths: Counter[str] = Counter()
        self.in_flight = 0
        self.most_in_flight = 0
        self.arrived = asyncio.Event()
        self.hold = hold
        self.status = status

    async def handle(self, request: web.Request) -> web.Response:
        session = request.headers.get("X-Session-Id", "")
        self.sessions[session] += 1
        self.paths[request.path_qs] += 1
        self.arrived.set()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hold is not None:
                await asyncio.wait_for(self.hold.wait(), 10)
        finally:
            self.in_flight -= 1
        upstream = "signal" if session == TEST_SESSION else "legacy"
        headers = {"X-Rollout-Upstream": upstream}
        if session.endswith("7"):
            headers["X-Rollout-Fallback"] = "status"
        return web.json_response({"ok": True}, status=self.status, headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app


async def run_bounded(load: Load, stop: asyncio.Event | None = None) -> LoadFigures:
    return await asyncio.wait_for(load.run(stop or asyncio.Event()), 60)


async def test_sends_max_requests_and_counts_by_upstream(upstream: UpstreamFactory) -> None:
    fake = FakeProxy()
    server = await upstream(fake.app())
    plan = LoadPlan(base_url=server_url(server), rate=200, max_requests=300, test_share=0.2)
    figures = await run_bounded(Load(plan))
    assert figures.sent == figures.answered == 300 == sum(fake.sessions.values())
    assert figures.errors == figures.skipped == figures.in_flight == 0
    assert figures.by_upstream == {
        "signal": fake.sessions[TEST_SESSION],
        "legacy": 300 - fake.sessions[TEST_SESSION],
    }
    assert 0.12 < fake.sessions[TEST_SESSION] / 300 < 0.28
    assert figures.fallbacks == sum(n for s, n in fake.sessions.items() if s.endswith("7")) > 0
    users = set(fake.sessions) - {TEST_SESSION}
    assert all(SESSION.fullmatch(s) for s in users)
    assert len(users) > 100  # spread over many sessions, so routing shares follow buckets
    assert set(fake.paths) == set(LOAD_PATHS)


async def test_users_stay_within_the_plan(upstream: UpstreamFactory) -> None:
    fake = FakeProxy()
    server = await upstream(fake.app())
    plan = LoadPlan(base_url=server_url(server), users=5, rate=200, max_requests=100)
    await run_bounded(Load(plan))
    assert set(fake.sessions) <= {f"demo-user-{n:04d}" for n in range(5)} | {TEST_SESSION}


async def test_stops_by_itself_after_max_duration(upstream: UpstreamFactory) -> None:
    fake = FakeProxy()
    server = await upstream(fake.app())
    plan = LoadPlan(base_url=server_url(server), rate=20, max_duration=0.5)
    figures = await run_bounded(Load(plan))
    # The schedule sends at most rate * duration (+1 for the first, at time 0).
    assert 0 < figures.sent <= 11
    assert figures.answered == figures.sent


async def test_stops_on_the_event(upstream: UpstreamFactory) -> None:
    fake = FakeProxy()
    server = await upstream(fake.app())
    load = Load(LoadPlan(base_url=server_url(server), rate=50, max_duration=600))
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop))
    await asyncio.wait_for(fake.arrived.wait(), 30)
    stop.set()
    figures = await asyncio.wait_for(running, 30)
    assert figures.sent >= 1
    assert figures.in_flight == 0


async def test_never_more_than_max_in_flight(upstream: UpstreamFactory) -> None:
    hold = asyncio.Event()
    fake = FakeProxy(hold=hold)
    server = await upstream(fake.app())
    plan = LoadPlan(base_url=server_url(server), rate=200, max_in_flight=3, max_requests=60)
    load = Load(plan)
    running = asyncio.create_task(load.run(asyncio.Event()))
    for _ in range(200):  # until the load has had the chance to exceed its cap
        if load.figures().skipped >= 5:
            break
        await asyncio.sleep(0.05)
    hold.set()
    figures = await asyncio.wait_for(running, 60)
    assert fake.most_in_flight == 3
    assert figures.skipped >= 5
    assert figures.sent + figures.skipped == 60


async def test_failures_are_counted_not_raised(upstream: UpstreamFactory) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    figures = await run_bounded(Load(LoadPlan(base_url=closed, rate=100, max_requests=10)))
    assert figures.sent == figures.failed == figures.errors == 10
    assert figures.answered == 0

    server = await upstream(FakeProxy(status=503).app())
    plan = LoadPlan(base_url=server_url(server), rate=100, max_requests=10)
    figures = await run_bounded(Load(plan))
    assert figures.answered == figures.server_errors == figures.errors == 10


def test_since_gives_the_period() -> None:
    earlier = LoadFigures(sent=10, answered=9, failed=1, by_upstream={"signal": 3, "legacy": 6})
    later = LoadFigures(
        sent=30, answered=27, failed=2, server_errors=1, fallbacks=4,
        by_upstream={"signal": 10, "legacy": 17, "none": 0}, in_flight=2,
    )  # fmt: skip
    assert later.since(earlier) == LoadFigures(
        sent=20, answered=18, failed=1, server_errors=1, fallbacks=4,
        by_upstream={"signal": 7, "legacy": 11, "none": 0}, in_flight=2,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("period", "line"),
    [
        (
            LoadFigures(sent=812, answered=800, by_upstream={"signal": 248, "legacy": 552}),
            "traffic: 812 req in 10 s, signal 31 %, fallbacks 0, errors 0.0 %",
        ),
        (
            LoadFigures(sent=100, answered=90, failed=10, server_errors=9, fallbacks=3),
            "traffic: 100 req in 10 s, signal 0 %, fallbacks 3, errors 19.0 %",
        ),
        (LoadFigures(), "traffic: 0 req in 10 s, signal 0 %, fallbacks 0, errors 0.0 %"),
    ],
)
def test_traffic_line(period: LoadFigures, line: str) -> None:
    assert traffic_line(period, 10.0) == line
