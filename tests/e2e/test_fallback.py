"""SPEC 5 end to end: every row of the fallback table against real upstreams and `rollout serve`.

Signal misbehaves in one of four ways (down, slow, reset before headers, 5xx); legacy
verifies the body it receives against the hash the client declared, so a replay that
lost or changed a byte would fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support import HOST, ProxyProcess, UpstreamFactory, config_dict, free_port, server_url

SIGNAL_TIMEOUT = 0.5
BODY = os.urandom(64 * 1024)
BODY_SHA = hashlib.sha256(BODY).hexdigest()


@dataclass
class Counts:
    signal: int = 0
    legacy: int = 0
    legacy_bodies: list[str] = field(default_factory=list)


COUNTS = web.AppKey("counts", Counts)


async def _legacy_handler(request: web.Request) -> web.Response:
    counts = request.app[COUNTS]
    counts.legacy += 1
    digest = hashlib.sha256()
    async for chunk in request.content.iter_chunked(65536):
        digest.update(chunk)
    actual = digest.hexdigest()
    counts.legacy_bodies.append(actual)
    expected = request.headers.get("X-Body-Sha256")
    if expected is not None and expected != actual:
        return web.json_response({"error": "body hash mismatch"}, status=400)
    return web.json_response({"served_by": "legacy", "method": request.method, "sha": actual})


def legacy_app(counts: Counts) -> web.Application:
    app = web.Application()
    app[COUNTS] = counts
    app.router.add_route("*", "/{tail:.*}", _legacy_handler)
    return app


def signal_app(counts: Counts, behaviour: str) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        counts.signal += 1
        await request.read()
        if behaviour == "slow":
            await asyncio.sleep(SIGNAL_TIMEOUT * 6)
        if behaviour == "status":
            return web.json_response({"served_by": "signal", "error": "boom"}, status=503)
        return web.json_response({"served_by": "signal"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@contextlib.asynccontextmanager
async def resetting_server(counts: Counts) -> AsyncIterator[str]:
    """Reads the request head, then resets the connection before any response byte."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts.signal += 1
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    server = await asyncio.start_server(on_client, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.close()
        await server.wait_closed()


Scenario = Callable[..., Any]


@pytest.fixture
async def scenario(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> AsyncIterator[Callable[..., Any]]:
    """Start legacy, a signal that behaves as asked, and the proxy in front of them."""
    stack = contextlib.AsyncExitStack()

    async def make(behaviour: str, **sections: Any) -> tuple[ProxyProcess, Counts]:
        counts = Counts()
        legacy = await upstream(legacy_app(counts))
        if behaviour == "down":
            signal_url = f"http://{HOST}:{free_port()}"
        elif behaviour == "reset":
            signal_url = await stack.enter_async_context(resetting_server(counts))
        else:
            signal_url = server_url(await upstream(signal_app(counts, behaviour)))
        data = config_dict(
            signal_url,
            server_url(legacy),
            timeouts={"connect": 1.0, "signal": SIGNAL_TIMEOUT, "total": 10.0},
            **sections,
        )
        return serve_proxy(data), counts

    yield make
    await stack.aclose()


async def send(
    proxy: ProxyProcess, method: str, body: bytes | None = None, *, session: str = "to-signal"
) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"X-Session-Id": session}
    if body is not None:
        headers["X-Body-Sha256"] = hashlib.sha256(body).hexdigest()
    timeout = aiohttp.ClientTimeout(total=20)
    async with (
        aiohttp.ClientSession(timeout=timeout) as client,
        client.request(method, proxy.url + "/signals", data=body, headers=headers) as resp,
    ):
        payload = await resp.json(content_type=None)
        return resp.status, dict(resp.headers), payload


FAILURES = ["down", "slow", "reset", "status"]
REASON = {"down": "connect", "slow": "timeout", "reset": "reset", "status": "status"}


@pytest.mark.parametrize("behaviour", FAILURES)
@pytest.mark.parametrize(
    ("method", "body"), [("GET", None), ("PUT", BODY), ("DELETE", None), ("OPTIONS", None)]
)
async def test_replayable_methods_fall_back_on_every_failure(
    scenario: Scenario, behaviour: str, method: str, body: bytes | None
) -> None:
    proxy, counts = await scenario(behaviour)
    status, headers, payload = await send(proxy, method, body)
    assert status == 200, payload
    assert payload["served_by"] == "legacy"
    assert headers["X-Rollout-Upstream"] == "legacy"
    assert headers["X-Rollout-Fallback"] == REASON[behaviour]
    assert counts.legacy == 1  # replayed exactly once
    if body is not None:
        assert payload["sha"] == BODY_SHA


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_unsafe_methods_fall_back_only_when_nothing_was_sent(
    scenario: Scenario, method: str
) -> None:
    proxy, counts = await scenario("down")
    status, headers, payload = await send(proxy, method, BODY)
    assert status == 200
    assert payload == {"served_by": "legacy", "method": method, "sha": BODY_SHA}
    assert headers["X-Rollout-Fallback"] == "connect"
    assert counts.legacy == 1


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_unsafe_method_timeout_is_504_not_replayed(scenario: Scenario, method: str) -> None:
    proxy, counts = await scenario("slow")
    status, headers, payload = await send(proxy, method, BODY)
    assert status == 504
    assert payload == {"error": "upstream timed out", "upstream": "signal"}
    assert headers["X-Rollout-Upstream"] == "signal"
    assert "X-Rollout-Fallback" not in headers
    assert counts.legacy == 0


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_unsafe_method_reset_is_502_not_replayed(scenario: Scenario, method: str) -> None:
    proxy, counts = await scenario("reset")
    status, _, payload = await send(proxy, method, BODY)
    assert status == 502
    assert payload == {"error": "upstream connection failed", "upstream": "signal"}
    assert counts.legacy == 0
    assert counts.signal == 1  # a POST is never retried, not even on the same upstream


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_unsafe_method_gets_signals_error_status(scenario: Scenario, method: str) -> None:
    proxy, counts = await scenario("status")
    status, headers, payload = await send(proxy, method, BODY)
    assert status == 503
    assert payload["served_by"] == "signal"
    assert headers["X-Rollout-Upstream"] == "signal"
    assert counts.legacy == 0


async def test_body_over_the_buffer_limit_is_not_replayed_after_sending(
    scenario: Scenario,
) -> None:
    proxy, counts = await scenario("status", fallback={"max_body_bytes": 1024})
    status, headers, _ = await send(proxy, "PUT", BODY)
    assert status == 503
    assert headers["X-Rollout-Upstream"] == "signal"
    assert counts.legacy == 0


async def test_streamed_body_still_falls_back_when_signal_is_down(scenario: Scenario) -> None:
    proxy, _ = await scenario("down", fallback={"max_body_bytes": 1024})
    status, headers, payload = await send(proxy, "POST", BODY)
    assert status == 200
    assert payload["sha"] == BODY_SHA  # the unbuffered stream was not consumed by signal
    assert headers["X-Rollout-Fallback"] == "connect"


async def test_fallback_disabled_returns_signals_answer(scenario: Scenario) -> None:
    proxy, counts = await scenario("status", fallback={"enabled": False})
    status, headers, _ = await send(proxy, "GET")
    assert status == 503
    assert headers["X-Rollout-Upstream"] == "signal"
    assert counts.legacy == 0


async def test_fallback_disabled_signal_down_is_502(scenario: Scenario) -> None:
    proxy, counts = await scenario("down", fallback={"enabled": False})
    status, _, payload = await send(proxy, "GET")
    assert status == 502
    assert payload == {"error": "upstream unreachable", "upstream": "signal"}
    assert counts.legacy == 0


async def test_status_not_listed_is_returned(scenario: Scenario) -> None:
    proxy, counts = await scenario("status", fallback={"statuses": [500]})
    status, _, _ = await send(proxy, "GET")
    assert status == 503
    assert counts.legacy == 0


async def test_legacy_sessions_never_touch_signal(scenario: Scenario) -> None:
    proxy, counts = await scenario("status")
    status, headers, _ = await send(proxy, "GET", session="someone-else")
    assert status == 200
    assert headers["X-Rollout-Upstream"] == "legacy"
    assert "X-Rollout-Fallback" not in headers
    assert counts.signal == 0


async def test_both_down_is_a_clean_json_502(
    serve_proxy: Callable[..., ProxyProcess],
) -> None:
    data = config_dict(f"http://{HOST}:{free_port()}", f"http://{HOST}:{free_port()}")
    proxy = serve_proxy(data)
    status, headers, payload = await send(proxy, "GET")
    assert status == 502
    assert payload == {"error": "upstream unreachable", "upstream": "legacy"}
    assert headers["X-Rollout-Fallback"] == "connect"
    assert headers["Content-Type"].startswith("application/json")


async def test_fallbacks_are_counted_in_metrics(scenario: Scenario) -> None:
    proxy, _ = await scenario("status")
    for _ in range(3):
        await send(proxy, "GET")
    async with aiohttp.ClientSession() as client, client.get(proxy.admin_url + "/metrics") as r:
        text = await r.text()
    assert 'rollout_fallbacks_total{feature="default",reason="status"} 3.0' in text
    assert 'rollout_upstream_errors_total{reason="status",upstream="signal"} 3.0' in text
    assert (
        'rollout_requests_total{code="200",feature="default",method="GET",upstream="legacy"} 3.0'
        in text
    )
