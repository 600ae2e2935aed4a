from __future__ import annotations

import hashlib
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from yarl import URL

from proxy.demo.apis import (
    FAULTS,
    MAX_LIMIT,
    SIGNAL_TYPES,
    Faults,
    legacy_app,
    signal_app,
    start_apis,
)

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

SIDES = {"signal": signal_app, "legacy": legacy_app}
RECORD_KEYS = {"id", "symbol", "strategy", "signal_type", "confidence", "price", "generated_at"}


@pytest.fixture(params=sorted(SIDES))
async def side(request: pytest.FixtureRequest, aiohttp_client: ClientFactory) -> tuple[str, Client]:
    name: str = request.param
    return name, await aiohttp_client(SIDES[name]())


async def get_json(client: Client, path: str, status: int = 200) -> Any:
    resp = await client.get(path)
    assert resp.status == status
    assert resp.content_type == "application/json"
    return await resp.json()


def strip_volatile(body: Any) -> Any:
    """Drop what is allowed to differ between two answers: source and timestamps."""
    if isinstance(body, dict):
        return {
            k: strip_volatile(v)
            for k, v in body.items()
            if k not in {"source", "generated_at", "time", "service"}
        }
    if isinstance(body, list):
        return [strip_volatile(v) for v in body]
    return body


async def test_health(side: tuple[str, Client]) -> None:
    name, client = side
    resp = await client.get("/health")
    assert resp.status == 200
    assert resp.headers["X-Served-By"] == name
    body = await resp.json()
    assert body["status"] == "ok"
    assert body["service"] == name
    assert body["source"] == name


async def test_signals_shape(side: tuple[str, Client]) -> None:
    name, client = side
    body = await get_json(client, "/signals")
    assert body["source"] == name
    assert body["count"] == 10
    assert len(body["signals"]) == 10
    datetime.fromisoformat(body["generated_at"])
    for record in body["signals"]:
        assert set(record) == RECORD_KEYS
        assert record["signal_type"] in SIGNAL_TYPES[record["strategy"]]
        assert 0.5 <= record["confidence"] < 1
        assert record["symbol"][:2] in {"sh", "sz"}
        datetime.fromisoformat(record["generated_at"])
    assert len({r["id"] for r in body["signals"]}) == 10


@pytest.mark.parametrize(
    ("query", "expected"), [("limit=3", 3), ("limit=0", 1), ("limit=-4", 1), ("limit=9999", 500)]
)
async def test_limit_is_clamped(side: tuple[str, Client], query: str, expected: int) -> None:
    _, client = side
    body = await get_json(client, f"/signals?{query}")
    assert body["count"] == expected == len(body["signals"])
    assert expected <= MAX_LIMIT


@pytest.mark.parametrize("bad", ["abc", "1.5", ""])
async def test_bad_limit_is_400(side: tuple[str, Client], bad: str) -> None:
    name, client = side
    resp = await client.get("/signals", params={"limit": bad})
    assert resp.status == 400
    assert resp.headers["X-Served-By"] == name
    body = await resp.json()
    assert body["parameter"] == "limit"
    assert "limit" in body["error"]


async def test_records_are_deterministic(aiohttp_client: ClientFactory) -> None:
    first = await get_json(await aiohttp_client(signal_app()), "/signals?limit=50")
    again = await get_json(await aiohttp_client(signal_app()), "/signals?limit=50")
    other = await get_json(await aiohttp_client(signal_app(seed=8)), "/signals?limit=50")
    assert strip_volatile(first) == strip_volatile(again)
    assert strip_volatile(first) != strip_volatile(other)
    strategies = {r["strategy"] for r in first["signals"]}
    assert {"anomaly_detection", "limit_up_prediction"} <= strategies


async def test_stats(side: tuple[str, Client]) -> None:
    name, client = side
    body = await get_json(client, "/signals/stats")
    assert body["source"] == name
    for key in ("by_strategy", "by_signal_type", "by_symbol"):
        assert sum(body[key].values()) == body["total"] > 0
    assert {"anomaly_detection", "limit_up_prediction"} <= set(body["by_strategy"])
    assert "sh600000" in body["by_symbol"]


@pytest.mark.parametrize(
    ("path", "strategy"),
    [("/signals/anomaly", "anomaly_detection"), ("/signals/limit-up", "limit_up_prediction")],
)
async def test_feature_paths_filter_by_strategy(
    side: tuple[str, Client], path: str, strategy: str
) -> None:
    _, client = side
    body = await get_json(client, f"{path}?limit=20")
    assert body["strategy"] == strategy
    assert body["count"] == 20 == len(body["signals"])
    assert {r["strategy"] for r in body["signals"]} == {strategy}


async def test_unknown_path_is_json_404(side: tuple[str, Client]) -> None:
    name, client = side
    resp = await client.get("/nope/here")
    assert resp.status == 404
    assert resp.headers["X-Served-By"] == name
    assert await resp.json() == {"error": "not found", "path": "/nope/here", "source": name}


async def test_wrong_method_is_json_405(side: tuple[str, Client]) -> None:
    _, client = side
    resp = await client.post("/health")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]
    assert (await resp.json())["error"] == "method not allowed"


@pytest.mark.parametrize("path", ["/health", "/signals?limit=40", "/signals/stats"])
async def test_sides_differ_only_in_confidence_rounding(
    aiohttp_client: ClientFactory, path: str
) -> None:
    signal = await get_json(await aiohttp_client(signal_app()), path)
    legacy = await get_json(await aiohttp_client(legacy_app()), path)
    assert (signal["source"], legacy["source"]) == ("signal", "legacy")
    if "signals" not in signal:
        assert strip_volatile(signal) == strip_volatile(legacy)
        return
    rounded = 0
    for sig, leg in zip(signal["signals"], legacy["signals"], strict=True):
        assert sig["confidence"] == round(sig["confidence"], 2)
        assert abs(sig["confidence"] - leg["confidence"]) <= 0.0051
        rounded += sig["confidence"] != leg["confidence"]
        sig["confidence"] = leg["confidence"] = None
    assert rounded > 0
    assert strip_volatile(signal) == strip_volatile(legacy)


async def test_echo_hashes_the_body(side: tuple[str, Client]) -> None:
    name, client = side
    payload = bytes(range(256)) * 5000

    async def chunks() -> AsyncIterator[bytes]:
        # Streamed in pieces, as a big upload through the proxy arrives.
        for start in range(0, len(payload), 100_000):
            yield payload[start : start + 100_000]

    resp = await client.put("/echo", data=chunks(), headers={"X-Test": "1"})
    assert resp.status == 200
    assert resp.headers["X-Served-By"] == name
    body = await resp.json()
    assert body["method"] == "PUT"
    assert body["body_length"] == len(payload)
    assert body["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert ["X-Test", "1"] in body["headers"]
    assert body["source"] == name


async def test_echo_keeps_raw_path_and_empty_body(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(signal_app())
    # encoded=True keeps the client from re-quoting, so the server sees these exact bytes.
    resp = await client.request("DELETE", URL("/echo?q=a%2Fb&q=%7E", encoded=True))
    body = await resp.json()
    assert body["method"] == "DELETE"
    assert body["path"] == "/echo?q=a%2Fb&q=%7E"
    assert body["body_length"] == 0
    assert body["body_sha256"] == hashlib.sha256(b"").hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_start_apis_serves_both_over_http() -> None:
    ports = {"signal": free_port(), "legacy": free_port()}
    runners = await start_apis("127.0.0.1", ports["signal"], ports["legacy"])
    try:
        async with aiohttp.ClientSession() as session:
            for name, port in ports.items():
                async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                    assert resp.status == 200
                    assert resp.headers["X-Served-By"] == name
                    assert (await resp.json())["service"] == name
    finally:
        for runner in runners:
            await runner.cleanup()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{ports['signal']}/health")


async def test_start_apis_releases_first_port_when_second_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        signal_port = free_port()
        with pytest.raises(OSError, match="address already in use"):
            await start_apis("127.0.0.1", signal_port, taken.getsockname()[1])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", signal_port))


async def statuses(client: Client, requests: int) -> Counter[int]:
    seen: Counter[int] = Counter()
    for n in range(requests):
        resp = await client.get(("/signals?limit=2", "/signals/stats", "/health")[n % 3])
        seen[resp.status] += 1
        await resp.read()
    return seen


async def test_failure_switch_fails_its_share(aiohttp_client: ClientFactory) -> None:
    app = signal_app()
    client = await aiohttp_client(app)
    assert await statuses(client, 100) == {200: 100}  # off by default
    app[FAULTS].failure_rate = 0.15  # flipped on a running server, as the demo does
    seen = await statuses(client, 600)
    assert set(seen) == {200, 500}
    assert 0.10 < seen[500] / 600 < 0.20
    app[FAULTS].failure_rate = 0.0
    assert await statuses(client, 100) == {200: 100}


async def test_injected_failure_is_a_json_500_from_its_side(
    aiohttp_client: ClientFactory,
) -> None:
    app = legacy_app()
    app[FAULTS].failure_rate = 1.0
    client = await aiohttp_client(app)
    resp = await client.get("/signals")
    assert resp.status == 500
    assert resp.headers["X-Served-By"] == "legacy"
    body = await resp.json()
    assert body["source"] == "legacy"
    assert "--break-signal" in body["error"]


def test_faults_are_seeded() -> None:
    first, again = Faults(failure_rate=0.5), Faults(failure_rate=0.5)
    assert [first.should_fail() for _ in range(50)] == [again.should_fail() for _ in range(50)]
    assert not any(Faults(failure_rate=0.0).should_fail() for _ in range(50))


async def test_start_apis_hands_over_the_signal_failure_switch() -> None:
    ports = {"signal": free_port(), "legacy": free_port()}
    faults = Faults()
    runners = await start_apis("127.0.0.1", ports["signal"], ports["legacy"], signal_faults=faults)
    try:
        faults.failure_rate = 1.0
        async with aiohttp.ClientSession() as session:
            for name, status in (("signal", 500), ("legacy", 200)):
                async with session.get(f"http://127.0.0.1:{ports[name]}/health") as resp:
                    assert resp.status == status
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_live_is_an_event_stream_of_signals(side: tuple[str, Client]) -> None:
    name, client = side
    resp = await client.get("/signals/live?count=3&every=0.01")
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    events = [e for e in (await resp.text()).split("\n\n") if e]
    assert [e.splitlines()[0] for e in events] == ["id: 0", "id: 1", "id: 2"]
    data = [json.loads(e.splitlines()[2].removeprefix("data: ")) for e in events]
    assert [d["seq"] for d in data] == [0, 1, 2]
    assert all(set(d["signal"]) >= RECORD_KEYS and d["source"] == name for d in data)


async def test_subscribe_pushes_signals_and_answers_ping(side: tuple[str, Client]) -> None:
    name, client = side
    async with client.ws_connect("/signals/subscribe?count=2&every=0.01") as ws:
        await ws.send_str("ping")
        got = [await ws.receive() for _ in range(3)]
        texts = [m.data for m in got if m.type == aiohttp.WSMsgType.TEXT]
        assert "pong" in texts
        pushed = [json.loads(t) for t in texts if t != "pong"]
        assert [p["seq"] for p in pushed] == [0, 1]
        assert pushed[0]["source"] == name
        closing = await ws.receive()
        assert closing.type == aiohttp.WSMsgType.CLOSE


async def test_stream_parameters_are_checked(side: tuple[str, Client]) -> None:
    _, client = side
    body = await get_json(client, "/signals/live?count=many", status=400)
    assert "count" in body["error"]
