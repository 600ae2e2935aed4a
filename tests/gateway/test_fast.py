"""The handler's fast path (proxy.gateway.fast): the common request carried by callbacks,
and every hand-over to the coroutine path where it stands.

The gateway runs in-process (the composition `proxy.app.serve` builds: runtime, relay
chain, public server) on a free loopback port, in front of real servers on loopback; a
spy on `fast.carry` says which path each request took. A request is only ever carried
by callbacks on a pooled connection, so each test's first request (which opens the
connection) goes the coroutine way and the ones after it the fast way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import build_runtime
from proxy.config.load import parse_config
from proxy.gateway import fast
from proxy.gateway.handler import make_handler
from proxy.gateway.relay import relay_response
from proxy.gateway.shadow import mirrored
from proxy.gateway.state import Runtime
from proxy.gateway.upgrade import switching
from proxy.http.server import HttpServer
from tests.support import HOST, UpstreamFactory, config_dict, free_port, server_url


@dataclass
class Gateway:
    url: str
    runtime: Runtime
    paths: list[bool] = field(default_factory=list)  # per request: carried by callbacks?

    def sample(self, name: str, **labels: str) -> float:
        text = generate_latest(self.runtime.metrics.exposition).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return sample.value
        return 0.0


Start = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    servers: list[HttpServer] = []
    runtimes: list[Runtime] = []

    async def start(signal_url: str, legacy_url: str, **sections: Any) -> Gateway:
        data = config_dict(signal_url, legacy_url, **sections)
        path = tmp_path / "rollout.yaml"
        path.write_text(yaml.safe_dump(data))
        config = parse_config(path.read_text())
        runtime = build_runtime(path, config)
        relay = switching(
            mirrored(relay_response, runtime.shadow, runtime.pool, runtime.metrics.shadow_result),
            runtime.upgrades,
        )
        server = HttpServer(make_handler(runtime, relay), keepalive=30.0)
        port = free_port()
        await server.start(HOST, port)
        servers.append(server)
        runtimes.append(runtime)
        result = Gateway(f"http://{HOST}:{port}", runtime)
        real = fast.carry

        def spy(*args: Any) -> bool:
            taken = real(*args)
            result.paths.append(taken)
            return taken

        monkeypatch.setattr(fast, "carry", spy)
        return result

    yield start
    for server in servers:
        server.stop_listening()
        server.close_all()
    for runtime in runtimes:
        runtime.close_pools()


def _app(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def _ok(request: web.Request) -> web.Response:
    return web.json_response(
        {"path": request.path_qs, "forwarded_for": request.headers.get("X-Forwarded-For")}
    )


async def _get(
    session: aiohttp.ClientSession, url: str, sid: str = "s-1"
) -> tuple[int, dict[str, str], bytes]:
    async with session.get(url, headers={"X-Session-Id": sid}) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_requests_on_a_pooled_connection_are_carried_by_callbacks(
    gateway: Start, upstream: UpstreamFactory
) -> None:
    signal = await upstream(_app(_ok))
    legacy = await upstream(_app(_ok))
    gw = await gateway(server_url(signal), server_url(legacy))
    async with aiohttp.ClientSession() as session:
        answers = [await _get(session, f"{gw.url}/signals?limit={n}") for n in range(3)]
    assert gw.paths == [False, True, True]
    for n, (status, headers, body) in enumerate(answers):
        assert status == 200
        assert headers["X-Rollout-Upstream"] == "legacy"
        assert f'"path": "/signals?limit={n}"' in body.decode()
        assert '"forwarded_for": "127.0.0.1"' in body.decode()
    labels = {"upstream": "legacy", "feature": "default", "method": "GET", "code": "200"}
    assert gw.sample("rollout_requests_total", **labels) == 3
    assert gw.sample("rollout_request_duration_seconds_count", upstream="legacy") == 3
    assert gw.runtime.active == 0
    assert gw.runtime.legacy_window.totals() == (3, 0)


async def test_a_pooled_connection_found_dead_is_retried_on_a_fresh_one(
    gateway: Start, upstream: UpstreamFactory
) -> None:
    """An upstream that closes a kept-alive connection when the second request arrives,
    without a byte back: what an upstream's keep-alive timeout looks like to the proxy."""
    answered: list[int] = []
    handlers: list[asyncio.Task[None]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        requests = 0
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                requests += 1
                if requests == 2:
                    writer.transport.abort()
                    return
                answered.append(requests)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the proxy closed its pooled connection at the end
        finally:
            writer.close()

    raw = await asyncio.start_server(serve, HOST, 0)
    port = raw.sockets[0].getsockname()[1]
    legacy = await upstream(_app(_ok))
    gw = await gateway(f"http://{HOST}:{port}", server_url(legacy), rollout={"percentage": 100})
    try:
        async with aiohttp.ClientSession() as session:
            first = await _get(session, gw.url + "/a")
            second = await _get(session, gw.url + "/b")
    finally:
        raw.close()
        gw.runtime.close_pools()
        await asyncio.wait_for(asyncio.gather(*handlers), 5)
    assert gw.paths == [False, True]
    assert first[0] == second[0] == 200
    assert second[2] == b"ok"
    assert "X-Rollout-Fallback" not in second[1]  # retried, not fallen back
    assert second[1]["X-Rollout-Upstream"] == "signal"
    assert answered == [1, 1]  # the second answer came from a second connection
    assert gw.sample("rollout_upstream_errors_total", upstream="signal", reason="reset") == 0
    assert gw.runtime.guard.window.totals() == (2, 0)  # the dead connection is no attempt


async def test_a_failed_callback_attempt_falls_back_through_the_coroutine_path(
    gateway: Start, upstream: UpstreamFactory
) -> None:
    calls = 0

    async def failing_after_one(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=200 if calls == 1 else 503, text="signal")

    signal = await upstream(_app(failing_after_one))
    legacy = await upstream(_app(_ok))
    gw = await gateway(server_url(signal), server_url(legacy), rollout={"percentage": 100})
    async with aiohttp.ClientSession() as session:
        answers = [await _get(session, f"{gw.url}/x{n}") for n in range(3)]
    # The third finds no pooled signal connection: a replayed attempt's is dropped.
    assert gw.paths == [False, True, False]
    assert answers[0][1]["X-Rollout-Upstream"] == "signal"
    for status, headers, _ in answers[1:]:
        assert status == 200
        assert headers["X-Rollout-Upstream"] == "legacy"
        assert headers["X-Rollout-Fallback"] == "status"
    assert gw.sample("rollout_fallbacks_total", feature="default", reason="status") == 2
    assert gw.sample("rollout_upstream_errors_total", upstream="signal", reason="status") == 2
    assert gw.runtime.guard.window.totals() == (3, 2)
    assert gw.runtime.active == 0


async def test_an_answer_to_stream_is_relayed_by_the_coroutine_path(
    gateway: Start, upstream: UpstreamFactory
) -> None:
    big = bytes(range(256)) * 1024  # 256 KiB: more than one write, never buffered whole

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for offset in range(0, len(big), 64 * 1024):
            await resp.write(big[offset : offset + 64 * 1024])
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    legacy = await upstream(_app(chunked))
    gw = await gateway(server_url(legacy), server_url(legacy))
    async with aiohttp.ClientSession() as session:
        answers = [await _get(session, gw.url + "/stream") for _ in range(3)]
    assert gw.paths == [False, True, True]
    for status, headers, body in answers:
        assert status == 200
        assert headers["Transfer-Encoding"] == "chunked"
        assert body == big
    assert gw.runtime.active == 0


async def test_a_silent_upstream_times_out_a_callback_attempt(
    gateway: Start, upstream: UpstreamFactory
) -> None:
    """The second request follows the first at once, so the timer the first armed is still
    pending: when it fires it must re-arm for the second's deadline, not time it out early
    nor forget it."""
    calls = 0

    async def slow_second(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 2:
            await asyncio.sleep(10)
        return web.Response(text="signal")

    signal = await upstream(_app(slow_second))
    legacy = await upstream(_app(_ok))
    gw = await gateway(
        server_url(signal),
        server_url(legacy),
        rollout={"percentage": 100},
        timeouts={"connect": 1.0, "signal": 0.5, "total": 10.0},
    )
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        first = await _get(session, gw.url + "/one")
        started = loop.time()
        second = await _get(session, gw.url + "/two")
        waited = loop.time() - started
    assert gw.paths == [False, True]
    assert first[1]["X-Rollout-Upstream"] == "signal"
    assert second[0] == 200
    assert second[1]["X-Rollout-Upstream"] == "legacy"
    assert second[1]["X-Rollout-Fallback"] == "timeout"
    assert waited >= 0.5  # never before its own deadline (an upper bound would be a timing)
    assert gw.sample("rollout_upstream_errors_total", upstream="signal", reason="timeout") == 1


async def test_legacy_silent_past_the_total_budget_is_a_504(
    gateway: Start, upstream: UpstreamFactory
) -> None:
    calls = 0

    async def slow_second(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 2:
            await asyncio.sleep(10)
        return web.Response(text="legacy")

    legacy = await upstream(_app(slow_second))
    gw = await gateway(
        server_url(legacy),
        server_url(legacy),
        timeouts={"connect": 1.0, "signal": 0.5, "total": 0.6},
    )
    async with aiohttp.ClientSession() as session:
        await _get(session, gw.url + "/one")
        status, headers, body = await _get(session, gw.url + "/two")
    assert gw.paths == [False, True]
    assert status == 504
    assert headers["X-Rollout-Upstream"] == "legacy"
    assert b"upstream timed out" in body
    assert gw.sample("rollout_requests_total", upstream="legacy", code="504") == 1
    assert gw.runtime.active == 0


async def test_an_exception_in_a_callback_answers_500_and_leaks_nothing(
    gateway: Start,
    upstream: UpstreamFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    legacy = await upstream(_app(_ok))
    gw = await gateway(server_url(legacy), server_url(legacy))

    def broken(*args: Any) -> int | None:
        raise RuntimeError("a bug in the relay")

    async with aiohttp.ClientSession() as session:
        assert (await _get(session, gw.url + "/one"))[0] == 200
        monkeypatch.setattr(fast, "relay_complete", broken)
        with caplog.at_level(logging.ERROR, logger="rollout.server"):
            status, headers, body = await _get(session, gw.url + "/two")
    assert gw.paths == [False, True]
    assert status == 500
    assert headers["Connection"] == "close"
    assert b'"internal error"' in body
    assert "a bug in the relay" in caplog.text
    assert gw.runtime.active == 0  # the request left the gateway: a drain does not hang


async def test_a_request_meets_at_most_one_dead_pooled_connection(
    gateway: Start, upstream: UpstreamFactory
) -> None:
    """With two pooled connections both dead, the request found dead on the first is
    retried on a new connection, never on the second pooled one: an upstream sees it at
    most twice (RFC 9112 9.3.1 allows one retry)."""
    seen: list[bytes] = []
    handlers: list[asyncio.Task[None]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        requests = 0
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                seen.append(head.split(b" ", 2)[1])
                requests += 1
                if requests == 2:
                    writer.transport.abort()
                    return
                await asyncio.sleep(0.05)  # the first two overlap: two connections
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    raw = await asyncio.start_server(serve, HOST, 0)
    port = raw.sockets[0].getsockname()[1]
    legacy = await upstream(_app(_ok))
    gw = await gateway(f"http://{HOST}:{port}", server_url(legacy), rollout={"percentage": 100})
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(_get(session, gw.url + "/a"), _get(session, gw.url + "/b"))
            assert len(gw.runtime.pool(gw.runtime.store.config.upstreams.signal)._idle) == 2
            status, headers, body = await _get(session, gw.url + "/c")
    finally:
        raw.close()
        gw.runtime.close_pools()
        await asyncio.wait_for(asyncio.gather(*handlers), 5)
    assert gw.paths[-1] is True
    assert (status, body) == (200, b"ok")
    assert "X-Rollout-Fallback" not in headers
    assert seen.count(b"/c") == 2
