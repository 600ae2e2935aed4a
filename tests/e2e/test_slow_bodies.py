"""SPEC 12 streaming through the real `rollout serve`: a body is forwarded as it arrives,
and once it streams only silence (`timeouts.idle`) bounds it, never `timeouts.total`.

Order is asserted, never a duration: the client must hold the first byte while the
upstream is still held back from writing the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from tests.support import ProxyProcess, UpstreamFactory, config_dict, server_url

pytestmark = pytest.mark.e2e

ServeProxy = Callable[..., ProxyProcess]
BOUND = 30.0  # a hang fails the test instead of stalling the suite


def held_back(release: asyncio.Event, *, length: bool) -> web.Application:
    """One byte, then the rest only once `release` is set (a drip, an SSE heartbeat)."""

    async def drip(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if length:
            resp.content_length = 4
        await resp.prepare(request)
        await resp.write(b"a")
        await asyncio.wait_for(release.wait(), BOUND)
        await resp.write(b"bcd")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/drip", drip)
    return app


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_first_byte_reaches_the_client_before_the_upstream_writes_the_rest(
    upstream: UpstreamFactory, serve_proxy: ServeProxy, length: bool
) -> None:
    release = asyncio.Event()
    legacy = await upstream(held_back(release, length=length))
    proxy = await asyncio.to_thread(
        serve_proxy, config_dict(server_url(legacy), server_url(legacy))
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.url}/drip", headers={"X-Session-Id": "alice"}) as resp,
    ):
        assert resp.status == 200
        first = await asyncio.wait_for(resp.content.readexactly(1), BOUND)
        assert first == b"a"
        assert not release.is_set()  # the upstream has not written the rest yet
        release.set()
        assert await asyncio.wait_for(resp.content.read(), BOUND) == b"bcd"


def ticking(events: int, every: float) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for n in range(events):
            await resp.write(b"data: %d\n\n" % n)
            await asyncio.sleep(every)
        await resp.write_eof()
        return resp

    async def silent(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 0\n\n")
        await asyncio.sleep(BOUND * 2)
        return resp

    app = web.Application()
    app.router.add_get("/events", stream)
    app.router.add_get("/silent", silent)
    return app


async def test_an_event_stream_outlasts_timeouts_total(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    # 12 events 0.5 s apart: at least 5.5 s, more than the 2 s total; never 5 s silent.
    legacy = await upstream(ticking(12, 0.5))
    data = config_dict(
        server_url(legacy),
        server_url(legacy),
        timeouts={"signal": 1.0, "total": 2.0, "idle": 5.0},
    )
    proxy = await asyncio.to_thread(serve_proxy, data)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.url}/events", headers={"X-Session-Id": "alice"}) as resp,
    ):
        body = await asyncio.wait_for(resp.read(), BOUND * 2)
    assert body == b"".join(b"data: %d\n\n" % n for n in range(12))
    assert "aborting" not in proxy.logs()


async def test_a_silent_stream_is_cut_after_timeouts_idle(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    legacy = await upstream(ticking(1, 0))
    data = config_dict(server_url(legacy), server_url(legacy), timeouts={"idle": 1.0})
    proxy = await asyncio.to_thread(serve_proxy, data)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.url}/silent", headers={"X-Session-Id": "alice"}) as resp,
    ):
        assert await asyncio.wait_for(resp.content.readexactly(9), BOUND) == b"data: 0\n\n"
        # The upstream stays silent: the proxy ends the response as incomplete (no final
        # chunk), long before the upstream would.
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), BOUND)
    assert "no byte in 1 s" in proxy.logs()


def counting() -> tuple[web.Application, list[bytes]]:
    """An upstream that keeps every request body it receives whole."""
    bodies: list[bytes] = []

    async def keep(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/upload", keep)
    return app, bodies


@pytest.mark.parametrize("streamed", [False, True], ids=["buffered", "streamed"])
async def test_a_client_silent_mid_upload_is_closed_after_timeouts_idle(
    upstream: UpstreamFactory, serve_proxy: ServeProxy, streamed: bool
) -> None:
    app, bodies = counting()
    legacy = await upstream(app)
    # `max_body_bytes: 4` makes the 100-byte body a streamed one (it goes upstream as it
    # comes); with the default it is buffered for replay and nothing is sent yet.
    fallback = {"max_body_bytes": 4} if streamed else {}
    data = config_dict(
        server_url(legacy),
        server_url(legacy),
        timeouts={"idle": 1.0, "total": 60.0},  # longer than BOUND: only idle can end it
        fallback=fallback,
    )
    proxy = await asyncio.to_thread(serve_proxy, data)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nX-Session-Id: alice\r\n"
            b"Content-Length: 100\r\n\r\n" + b"x" * 10
        )
        await writer.drain()
        # The client never sends the other 90 bytes: the proxy closes the connection
        # (long before `timeouts.total`; the bound only stops a hang).
        assert await asyncio.wait_for(reader.read(), BOUND) == b""
    finally:
        writer.close()
    # The upstream got no complete body: nothing half-sent was taken for a request.
    assert bodies == []
