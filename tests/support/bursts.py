"""Bounded bursts of requests whose figures are known in advance, for the autopilot's sources.

The proxy runs at 0 % with the test session `to-signal` (config_dict's default), so who
serves a request is chosen by its session alone. The upstreams (`timed_app`) sleep for
the `X-Delay-Ms` a request carries (latencies spread over the histogram's buckets) and,
where `failing`, answer 500 to `X-Fail: 1`: a marked GET falls back to legacy, a marked
POST (never replayed) returns signal's 500. So a `Burst` knows exactly what the counters
must say: attempts, errors, fallbacks and how many observations each side's histogram got.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web

TEST_SESSION = "to-signal"
FAIL_HEADER = "X-Fail"
DELAY_HEADER = "X-Delay-Ms"
# Milliseconds, spread over LATENCY_BUCKETS (0.005 ... 0.2, 0.3, 0.5 ...).
DELAYS_MS = (0, 3, 15, 40, 80, 150, 260)


def timed_app(*, failing: bool = False) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        delay = int(request.headers.get(DELAY_HEADER, "0"))
        if delay:
            await asyncio.sleep(delay / 1000)
        if failing and request.headers.get(FAIL_HEADER) == "1":
            return web.json_response({"error": "marked to fail"}, status=500)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@dataclass(frozen=True)
class Planned:
    session: str
    method: str
    fail: bool
    delay_ms: int


@dataclass(frozen=True)
class Burst:
    """Requests of four kinds: legacy's users, signal's test session answered, and the
    test session's marked GETs (fall back) and marked POSTs (signal's 500 returned)."""

    legacy: int
    signal_ok: int
    failed_gets: int
    failed_posts: int
    prefix: str = "user"

    def requests(self) -> list[Planned]:
        out = []
        for i in range(self.legacy):
            out.append(Planned(f"{self.prefix}-{i}", "GET", False, DELAYS_MS[i % len(DELAYS_MS)]))
        for i in range(self.signal_ok):
            out.append(Planned(TEST_SESSION, "GET", False, DELAYS_MS[(i + 3) % len(DELAYS_MS)]))
        out += [Planned(TEST_SESSION, "GET", True, 0)] * self.failed_gets
        out += [Planned(TEST_SESSION, "POST", True, 0)] * self.failed_posts
        return out

    def statuses(self) -> dict[int, int]:
        """What the clients see: every GET 200, the marked POSTs signal's 500."""
        out = {200: self.legacy + self.signal_ok + self.failed_gets}
        if self.failed_posts:
            out[500] = self.failed_posts
        return out

    # The figures the counters must give for this burst alone.

    @property
    def signal_attempts(self) -> int:
        return self.signal_ok + self.failed_gets + self.failed_posts

    @property
    def signal_errors(self) -> int:
        return self.failed_gets + self.failed_posts

    @property
    def fallbacks(self) -> int:
        return self.failed_gets

    @property
    def legacy_attempts(self) -> int:
        return self.legacy + self.failed_gets

    @property
    def signal_observations(self) -> int:
        """Responses signal served (the fallbacks' are legacy's)."""
        return self.signal_ok + self.failed_posts


async def send(http: aiohttp.ClientSession, urls: Sequence[str], burst: Burst) -> dict[int, int]:
    """The burst, spread round-robin over `urls`, 16 at a time; statuses seen."""
    limit = asyncio.Semaphore(16)
    statuses: dict[int, int] = {}

    async def one(i: int, r: Planned) -> None:
        headers = {"X-Session-Id": r.session, DELAY_HEADER: str(r.delay_ms)}
        if r.fail:
            headers[FAIL_HEADER] = "1"
        url = urls[i % len(urls)] + "/work"
        body = b"x" * 10 if r.method == "POST" else None
        async with limit, http.request(r.method, url, headers=headers, data=body) as resp:
            await resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1

    requests = burst.requests()
    await asyncio.wait_for(asyncio.gather(*(one(i, r) for i, r in enumerate(requests))), 120)
    return statuses
