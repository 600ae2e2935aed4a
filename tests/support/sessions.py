"""Known sessions sent through the proxy, for the who-moves preview's tests.

Each session id sends a known number of requests, so the test knows exactly which
buckets saw how many requests and sessions; ids the proxy mints are read back from
`Set-Cookie`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from http.cookies import SimpleCookie

import aiohttp
from aiohttp import web

from proxy.rollout.routing import bucket

CONCURRENCY = 16


def ok_app(name: str) -> web.Application:
    """An upstream that answers every path 200 with its name."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


def plan_of(count: int, prefix: str = "user") -> dict[str, int]:
    """`count` ids, each sending 1 to 4 requests (some sessions busier than others)."""
    return {f"{prefix}-{n:04d}": 1 + n % 4 for n in range(count)}


async def send_sessions(url: str, plan: Mapping[str, int], *, path: str = "/signals") -> int:
    """Every id's requests, at most `CONCURRENCY` at once; returns the requests sent."""
    gate = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession() as client:

        async def one(session_id: str) -> None:
            async with (
                gate,
                client.get(url + path, headers={"X-Session-Id": session_id}) as resp,
            ):
                assert resp.status == 200, await resp.text()
                await resp.read()

        await asyncio.gather(*(one(i) for i, n in plan.items() for _ in range(n)))
    return sum(plan.values())


async def mint_sessions(url: str, count: int, cookie: str = "session_id") -> list[str]:
    """`count` requests without a session id; the ids the proxy minted for them."""
    minted = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        for _ in range(count):
            async with client.get(url + "/signals") as resp:
                assert resp.status == 200
                jar: SimpleCookie = SimpleCookie()
                jar.load(resp.headers["Set-Cookie"])
                minted.append(jar[cookie].value)
    return minted


def in_buckets(
    plan: Mapping[str, int], start: int, stop: int, seed: str = "rollout"
) -> dict[str, int]:
    """The part of `plan` whose buckets lie in [start, stop)."""
    return {i: n for i, n in plan.items() if start <= bucket(i, seed) < stop}
