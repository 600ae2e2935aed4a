"""SPEC 12 end to end: WebSocket connections through the real `rollout serve`.

Signal and legacy are `websockets` servers that tag each reply with their side; clients
are `websockets` (and aiohttp's for the basic exchange). Session ids are chosen by their
bucket (`proxy.rollout.routing.bucket`, seed `rollout`), so each test knows which side a
session must reach. The guard is off except where it is under test: a slow handshake on
a loaded machine must not trip it and drain connections another test is watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from proxy.rollout.routing import bucket
from tests.support import HOST, ProxyProcess, config_dict, free_port
from tests.support.admin import (
    admin_status,
    apply_config,
    metric_sum,
    scrape,
    wait_for_metric,
)
from tests.support.websocket import (
    WAIT,
    Refusal,
    WsUpstream,
    closed_with,
    echo,
    expected_side,
    raw_websocket,
    sessions_in,
    side_of,
    websocket_upstream,
    ws_clients,
    ws_url,
)

pytestmark = pytest.mark.e2e

ServeProxy = Callable[..., ProxyProcess]
Opener = Callable[..., Any]
SERVICE_RESTART = 1012
GOING_AWAY = 1001


@pytest.fixture
async def sides() -> AsyncIterator[Callable[..., Any]]:
    """`make(signal_refuse=None)`: start signal and legacy upstreams, closed at teardown."""
    stack = contextlib.AsyncExitStack()

    async def make(signal_refuse: Refusal | None = None) -> tuple[WsUpstream, WsUpstream]:
        sig = await stack.enter_async_context(websocket_upstream("signal", signal_refuse))
        leg = await stack.enter_async_context(websocket_upstream("legacy"))
        return sig, leg

    yield make
    await stack.aclose()


async def start_proxy(
    serve_proxy: ServeProxy, signal_url: str, legacy_url: str, **sections: Any
) -> ProxyProcess:
    sections.setdefault("guard", {"enabled": False})
    data = config_dict(signal_url, legacy_url, **sections)
    return await asyncio.to_thread(serve_proxy, data)


def with_rollout(proxy: ProxyProcess, **rollout: Any) -> dict[str, Any]:
    return {**proxy.data, "rollout": {**proxy.data["rollout"], **rollout}}


async def assert_echoes(ws: ClientConnection, side: str, text: str = "still-there") -> None:
    assert await echo(ws, text) == f"{side}:{text}"


# --- 1. the exchange ---------------------------------------------------------------------


async def test_websockets_client_exchange_passes_through_untouched(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url)
    big = os.urandom(1024 * 1024)
    async with ws_clients(proxy) as open_ws:
        ws = await open_ws("to-signal")  # a test session: signal
        assert side_of(ws) == "signal"
        assert await echo(ws, "hello") == "signal:hello"
        assert await echo(ws, b"\x00\x01\xfe\xff") == b"signal:\x00\x01\xfe\xff"
        assert await echo(ws, big) == b"signal:" + big
        # A fragmented message each way: reassembled whole on the other side.
        await ws.send(["frag-1 ", "frag-2 ", "frag-3"])
        assert await asyncio.wait_for(ws.recv(), WAIT) == "signal:frag-1 frag-2 frag-3"
        assert await echo(ws, "!fragments") == "signal:one-two-three"
        # Pings both ways: the client's answered by the upstream, the upstream's by us.
        latency = await asyncio.wait_for(await ws.ping(b"from-client"), WAIT)
        assert latency >= 0
        assert await echo(ws, "!ping") == "signal:pong"

        # The client closes with 4000 "bye": the upstream receives exactly that.
        await ws.close(4000, "bye")
        [peer] = sig.peers_of("to-signal")
        await asyncio.wait_for(peer.closed.wait(), WAIT)
        assert (peer.close_code, peer.close_reason) == (4000, "bye")

        # The upstream closes with 4001 "asked": the client receives exactly that.
        ws = await open_ws("bob")  # bucket 1133 >= 0 %: legacy
        assert side_of(ws) == "legacy"
        await ws.send("!close 4001 asked")
        assert await closed_with(ws) == (4001, "asked")
    [peer] = leg.peers_of("bob")
    await asyncio.wait_for(peer.closed.wait(), WAIT)
    assert peer.close_code == 4001  # its own close, answered by the client through us


async def test_aiohttp_client_exchange(sides: Callable[..., Any], serve_proxy: ServeProxy) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url)
    switched: list[aiohttp.ClientResponse] = []

    async def on_request_end(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
        switched.append(params.response)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as client,
        client.ws_connect(
            ws_url(proxy),
            headers={"X-Session-Id": "to-signal"},
            timeout=aiohttp.ClientWSTimeout(ws_close=WAIT),
        ) as ws,
    ):
        assert [r.status for r in switched] == [101]
        assert switched[0].headers["X-Rollout-Upstream"] == "signal"
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=WAIT) == "signal:hello"
        await ws.send_bytes(b"\x00bin")
        assert await ws.receive_bytes(timeout=WAIT) == b"signal:\x00bin"
        big = os.urandom(1024 * 1024)
        await ws.send_bytes(big)
        assert await ws.receive_bytes(timeout=WAIT) == b"signal:" + big
        await ws.close(code=4000, message=b"bye")
    [peer] = sig.peers_of("to-signal")
    await asyncio.wait_for(peer.closed.wait(), WAIT)
    assert (peer.close_code, peer.close_reason) == (4000, "bye")


# --- 2. the 101's headers and the session --------------------------------------------------


async def test_the_101_names_the_side_and_mints_a_session_cookie(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url, rollout={"percentage": 50})
    async with ws_clients(proxy) as open_ws:
        # A cookie-carried session routes as the header does: bob 1133 < 5000, alice 9177.
        for sid, side in [("bob", "signal"), ("alice", "legacy")]:
            by_header = await open_ws(sid)
            by_cookie = await open_ws(cookie=f"session_id={sid}")
            for ws in (by_header, by_cookie):
                assert side_of(ws) == side
                assert ws.response is not None
                assert "Set-Cookie" not in ws.response.headers
                await assert_echoes(ws, side)
        # No session id: one is minted, set as a cookie, sent upstream, routed by its bucket.
        minted_ws = await open_ws()
        assert minted_ws.response is not None
        cookie: SimpleCookie = SimpleCookie(minted_ws.response.headers["Set-Cookie"])
        minted = cookie["session_id"].value
        assert minted
        side = expected_side(minted, 50)
        assert side_of(minted_ws) == side
        await assert_echoes(minted_ws, side)
        upstream = sig if side == "signal" else leg
        assert len(upstream.peers_of(minted)) == 1  # the upstream saw it in X-Session-Id
        # The client's reconnect with that cookie lands on the same side.
        again = await open_ws(cookie=f"session_id={minted}")
        assert side_of(again) == side
        assert again.response is not None
        assert "Set-Cookie" not in again.response.headers


# --- 3. many connections at once ---------------------------------------------------------


async def test_100_connections_of_100_messages_keep_every_message_in_order(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url, rollout={"percentage": 50})
    connections, messages = 100, 100
    sessions = [f"many-{i}" for i in range(connections)]

    async def one(open_ws: Opener, sid: str) -> tuple[str | None, list[str | bytes]]:
        ws = await open_ws(sid, open_timeout=60)

        async def send_all() -> None:
            for n in range(messages):
                await ws.send(f"{sid}#{n}")

        async def receive_all() -> list[str | bytes]:
            return [await ws.recv() for _ in range(messages)]

        _, received = await asyncio.gather(send_all(), receive_all())
        return side_of(ws), received

    async with ws_clients(proxy) as open_ws, asyncio.timeout(120):
        results = await asyncio.gather(*(one(open_ws, sid) for sid in sessions))
    on_signal = 0
    for sid, (side, received) in zip(sessions, results, strict=True):
        assert side == expected_side(sid, 50)
        assert received == [f"{side}:{sid}#{n}" for n in range(messages)]
        on_signal += side == "signal"
    assert 0 < on_signal < connections  # both sides carried some
    assert len(sig.peers) + len(leg.peers) == connections


# --- 4. sticky at 0, 50 and 100 % ----------------------------------------------------------


async def test_sessions_stick_to_the_side_their_bucket_chooses(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url, rollout={"percentage": 0})
    sessions = ["alice", "bob", "carol", "qa-tester-1", "session-000001"]
    sessions += [f"sticky-{i}" for i in range(10)]
    assert bucket("qa-tester-1", "rollout") == 3492  # the SPEC 3 vectors hold
    for pct in (0, 50, 100):
        if pct:
            await apply_config(proxy, with_rollout(proxy, percentage=pct))
        seen: set[str] = set()
        async with ws_clients(proxy) as open_ws:
            for sid in sessions:
                want = expected_side(sid, pct)
                for _ in range(3):  # every reconnect: the same side
                    ws = await open_ws(sid)
                    assert side_of(ws) == want, (sid, pct)
                    await assert_echoes(ws, want, sid)
                    await ws.close()
                seen.add(want)
        assert seen == (
            {"legacy"} if pct == 0 else {"signal"} if pct == 100 else {"signal", "legacy"}
        )


# --- 5. fallback -------------------------------------------------------------------------


async def test_handshake_falls_back_to_legacy_when_signal_refuses_the_connection(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    _, leg = await sides()
    proxy = await start_proxy(serve_proxy, f"http://{HOST}:{free_port()}", leg.url)
    async with ws_clients(proxy) as open_ws:
        ws = await open_ws("to-signal")
        assert ws.response is not None
        assert ws.response.headers["X-Rollout-Upstream"] == "legacy"
        assert ws.response.headers["X-Rollout-Fallback"] == "connect"
        await assert_echoes(ws, "legacy")
    assert metric_sum(await scrape(proxy), "rollout_fallbacks_total", reason="connect") == 1


async def test_handshake_falls_back_to_legacy_when_signal_answers_503(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides(signal_refuse=lambda path: 503)
    proxy = await start_proxy(serve_proxy, sig.url, leg.url)
    async with ws_clients(proxy) as open_ws:
        ws = await open_ws("to-signal")
        assert ws.response is not None
        assert ws.response.headers["X-Rollout-Upstream"] == "legacy"
        assert ws.response.headers["X-Rollout-Fallback"] == "status"
        await assert_echoes(ws, "legacy")
    assert sig.handshakes == 1  # signal was asked once, answered 503
    assert sig.peers == []
    assert len(leg.peers) == 1


# --- 6, 7. the cap and the switch ----------------------------------------------------------


async def test_upgrades_beyond_max_connections_get_503(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url, upgrade={"max_connections": 2})
    async with ws_clients(proxy) as open_ws:
        first = await open_ws("one")
        await open_ws("two")
        with pytest.raises(InvalidStatus) as refused:
            await open_ws("three")
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "1"
        text = await scrape(proxy)
        assert metric_sum(text, "rollout_upgrades_total", result="limit") == 1
        assert metric_sum(text, "rollout_upgraded_connections") == 2
        # One closes: there is room again.
        await first.close()
        await wait_for_metric(proxy, 1, "rollout_upgraded_connections")
        await assert_echoes(await open_ws("four"), "legacy")
    assert len(leg.peers) == 3


async def test_upgrades_disabled_answer_501(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url, upgrade={"enabled": False})
    async with ws_clients(proxy) as open_ws:
        with pytest.raises(InvalidStatus) as refused:
            await open_ws("to-signal")
    assert refused.value.response.status_code == 501
    assert b"upgrade.enabled: false" in refused.value.response.body
    assert sig.handshakes == leg.handshakes == 0
    assert metric_sum(await scrape(proxy), "rollout_upgrades_total", result="refused") == 1


# --- 8. idle timeout ---------------------------------------------------------------------


async def test_idle_connection_is_closed_and_a_busy_one_is_not(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url, upgrade={"idle_timeout": 2})
    async with ws_clients(proxy) as open_ws:
        silent = await open_ws("silent")
        busy = await open_ws("busy")

        async def keep_talking() -> list[str | bytes]:
            replies = []
            for n in range(25):  # every 0.2 s for 5 s: well past 2 s idle in total
                replies.append(await echo(busy, f"tick-{n}"))
                await asyncio.sleep(0.2)
            return replies

        talking = asyncio.create_task(keep_talking())
        code, _ = await closed_with(silent)
        assert code == 1006  # no close frame: the proxy closed both TCP connections
        replies = await asyncio.wait_for(talking, WAIT + 10)
        assert replies == [f"legacy:tick-{n}" for n in range(25)]
        await assert_echoes(busy, "legacy")
    [peer] = leg.peers_of("silent")
    await asyncio.wait_for(peer.closed.wait(), WAIT)  # the upstream side closed too


# --- 9. drain when routing moves a session -------------------------------------------------


async def test_emergency_closes_signals_connections_with_1012_and_leaves_legacys(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url, rollout={"percentage": 50})
    on_signal = sessions_in(0, 5000, 3, prefix="em")
    on_legacy = sessions_in(5000, 10000, 3, prefix="em")
    async with ws_clients(proxy) as open_ws:
        signal_ws = [await open_ws(sid) for sid in on_signal]
        legacy_ws = [await open_ws(sid) for sid in on_legacy]
        assert [side_of(ws) for ws in signal_ws] == ["signal"] * 3
        assert [side_of(ws) for ws in legacy_ws] == ["legacy"] * 3
        for ws in signal_ws:
            await assert_echoes(ws, "signal")

        await apply_config(proxy, with_rollout(proxy, emergency=True))
        for ws in signal_ws:
            assert await closed_with(ws) == (SERVICE_RESTART, "emergency")
        for ws in legacy_ws:
            await assert_echoes(ws, "legacy")
        for sid in on_signal:  # the upstream side was closed too
            await asyncio.wait_for(sig.peers_of(sid)[0].closed.wait(), WAIT)
        # The reconnect lands where routing now says.
        await assert_echoes(await open_ws(on_signal[0]), "legacy")
        text = await scrape(proxy)
        assert metric_sum(text, "rollout_upgraded_drained_total", reason="emergency") == 3
        assert metric_sum(text, "rollout_upgraded_connections", upstream="signal") == 0


async def test_a_lowered_percentage_closes_exactly_the_sessions_it_moves(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url, rollout={"percentage": 80})
    staying = sessions_in(0, 3000, 3, prefix="rb")  # signal at 80 % and at 30 %
    moving = sessions_in(3000, 8000, 3, prefix="rb")  # signal at 80 %, legacy at 30 %
    legacy = sessions_in(8000, 10000, 2, prefix="rb")
    async with ws_clients(proxy) as open_ws:
        staying_ws = [await open_ws(sid) for sid in staying]
        moving_ws = [await open_ws(sid) for sid in moving]
        legacy_ws = [await open_ws(sid) for sid in legacy]
        assert [side_of(ws) for ws in staying_ws + moving_ws] == ["signal"] * 6

        await apply_config(proxy, with_rollout(proxy, percentage=30))
        for ws in moving_ws:
            assert await closed_with(ws) == (SERVICE_RESTART, "rollback")
        for ws in staying_ws:
            await assert_echoes(ws, "signal")
        for ws in legacy_ws:
            await assert_echoes(ws, "legacy")
        assert metric_sum(await scrape(proxy), "rollout_upgraded_drained_total") == 3

        # Raising the percentage never cuts a connection (legacy's stay on legacy).
        await apply_config(proxy, with_rollout(proxy, percentage=100))
        for ws in staying_ws:
            await assert_echoes(ws, "signal")
        for ws in legacy_ws:
            await assert_echoes(ws, "legacy")
        text = await scrape(proxy)
        assert metric_sum(text, "rollout_upgraded_drained_total", reason="rollback") == 3
        assert metric_sum(text, "rollout_upgraded_drained_total") == 3
        assert metric_sum(text, "rollout_upgraded_connections") == 5


async def test_drain_on_rollback_false_closes_nothing_on_emergency(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(
        serve_proxy,
        sig.url,
        leg.url,
        rollout={"percentage": 100},
        upgrade={"drain_on_rollback": False},
    )
    async with ws_clients(proxy) as open_ws:
        kept = [await open_ws(sid) for sid in ("alice", "bob", "carol")]
        await apply_config(proxy, with_rollout(proxy, emergency=True))
        for ws in kept:
            await assert_echoes(ws, "signal")  # still on the side chosen at its handshake
        await assert_echoes(await open_ws("alice"), "legacy")  # new ones follow routing
        text = await scrape(proxy)
        assert metric_sum(text, "rollout_upgraded_drained_total") == 0
        assert metric_sum(text, "rollout_upgraded_connections", upstream="signal") == 3


# --- 10. SIGTERM -------------------------------------------------------------------------


async def test_sigterm_closes_upgraded_connections_with_1001_and_exits_0(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url, rollout={"percentage": 50})
    async with ws_clients(proxy) as open_ws:
        clients = [await open_ws(sid) for sid in ("bob", "alice")]  # signal, legacy
        assert [side_of(ws) for ws in clients] == ["signal", "legacy"]
        # One client that never answers a close frame: the proxy waits for it, so the
        # admin listener is still up to be read after the close frames went out.
        raw = await raw_websocket(proxy.port, "qa-tester-1")
        try:
            assert raw.status == 101
            proxy.signal(signal.SIGTERM)
            for ws in clients:
                assert await closed_with(ws) == (GOING_AWAY, "shutdown")
            assert await raw.read_close() == (GOING_AWAY, "shutdown")
            text = await scrape(proxy)
            assert metric_sum(text, "rollout_upgraded_drained_total", reason="shutdown") == 3
        finally:
            await raw.aclose()
    assert proxy.proc is not None
    assert await asyncio.to_thread(proxy.proc.wait, 30) == 0
    assert "closing 3 upgraded connections" in proxy.logs()


# --- 11. metrics -------------------------------------------------------------------------


async def test_upgraded_connections_are_counted(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides()
    proxy = await start_proxy(serve_proxy, sig.url, leg.url, rollout={"percentage": 50})
    up_payload = down_payload = 0
    async with ws_clients(proxy) as open_ws:
        # No compression: the bytes on the wire are at least the payloads.
        ws = await open_ws("bob", compression=None)
        other = await open_ws("alice", compression=None)
        text = await scrape(proxy)
        assert metric_sum(text, "rollout_upgraded_connections", upstream="signal") == 1
        assert metric_sum(text, "rollout_upgraded_connections", upstream="legacy") == 1
        status = await admin_status(proxy)
        assert [status["upstreams"][s]["upgraded"] for s in ("signal", "legacy")] == [1, 1]
        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "proxy", "status", "-c", str(proxy.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert "websockets   signal 1 open, legacy 1 open" in cli.stdout
        for size in (10, 1000, 100_000):
            payload = os.urandom(size)
            reply = await echo(ws, payload)
            up_payload += size
            down_payload += len(reply)
        await ws.close()
        await wait_for_metric(proxy, 0, "rollout_upgraded_connections", upstream="signal")
        text = await scrape(proxy)
        assert metric_sum(text, "rollout_upgraded_connections", upstream="legacy") == 1
        await other.close()
    await wait_for_metric(proxy, 0, "rollout_upgraded_connections")
    text = await scrape(proxy)
    for side in ("signal", "legacy"):
        assert metric_sum(text, "rollout_upgrades_total", upstream=side, result="switched") == 1
        assert (
            metric_sum(text, "rollout_requests_total", upstream=side, method="GET", code="101") == 1
        )
    bytes_total = "rollout_upgraded_bytes_total"
    assert metric_sum(text, bytes_total, upstream="signal", direction="upstream") >= up_payload
    assert metric_sum(text, bytes_total, upstream="signal", direction="downstream") >= down_payload
    assert metric_sum(text, bytes_total, upstream="legacy", direction="upstream") > 0  # its close
    assert metric_sum(text, bytes_total, upstream="legacy") < 1000  # only the closing handshake


# --- 12. the guard -----------------------------------------------------------------------


async def test_failing_handshakes_trip_the_guard_which_drains_signal_connections(
    sides: Callable[..., Any], serve_proxy: ServeProxy
) -> None:
    sig, leg = await sides(signal_refuse=lambda path: 500 if path == "/fail" else None)
    min_requests = 5
    proxy = await start_proxy(
        serve_proxy,
        sig.url,
        leg.url,
        rollout={"percentage": 100},
        guard={"enabled": True, "min_requests": min_requests, "window_seconds": 60},
    )
    async with ws_clients(proxy) as open_ws:
        kept = await open_ws("bob")  # one good handshake: signal
        assert side_of(kept) == "signal"
        fallbacks = []
        for n in range(min_requests + 2):
            ws = await open_ws(f"guard-{n}", path="/fail")
            assert side_of(ws) == "legacy"
            assert ws.response is not None
            fallbacks.append(ws.response.headers.get("X-Rollout-Fallback"))
            await ws.close()
        # Handshakes 2..5 failed on signal and fell back; then the guard had tripped and
        # routed the rest straight to legacy.
        assert fallbacks == ["status"] * (min_requests - 1) + [None] * 3
        assert sig.handshakes == min_requests
        doc = await admin_status(proxy)
        assert doc["guard"]["tripped"] is True
        assert doc["guard"]["figures"]["requests"] == min_requests
        assert await closed_with(kept) == (SERVICE_RESTART, "guard")
        text = await scrape(proxy)
        assert metric_sum(text, "rollout_guard_tripped") == 1
        assert metric_sum(text, "rollout_upgraded_drained_total", reason="guard") == 1
