"""Sample upstreams: a Signal API and a Legacy API for `rollout demo`, `rollout test` and tests.

Both serve the same paths with the same JSON shapes, built from the same seeded pool of
market signals, so a request answered by either side differs only in:

- ``source`` (and ``service`` on ``/health``): ``"signal"`` or ``"legacy"``, also sent as the
  ``X-Served-By`` header;
- ``generated_at`` timestamps, which follow the wall clock;
- one deliberate difference, there for the shadow comparison (SPEC 11) to find:
  **signal rounds each record's ``confidence`` to 2 decimals, legacy gives 3**
  (``0.93`` against ``0.927``). ``/signals/stats`` holds only counts and stays identical.

The legacy app always uses ``DEFAULT_SEED``; compare it with ``signal_app()`` at that seed.

Paths: ``GET /health``, ``GET /signals?limit=N`` (1-500, default 10), ``GET /signals/stats``,
``GET /signals/anomaly`` and ``GET /signals/limit-up`` (one strategy each, same ``limit``),
``/echo`` (any method), which reports what arrived so tests can check what the proxy
forwarded, and two streams (SPEC 12): ``GET /signals/live`` (server-sent events) and
``/signals/subscribe`` (WebSocket), each pushing ``count`` signals (default 60) ``every``
seconds (default 1). Anything else is a JSON 404.

Either app can be made to fail on purpose (``rollout demo --break-signal``): its
``Faults`` (``app[FAULTS]``) answer a share of requests with a JSON 500, so the guard and
the autopilot have something to roll back from.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import WSMsgType, web

DEFAULT_SEED = 7
POOL_SIZE = 500
DEFAULT_LIMIT = 10
MAX_LIMIT = POOL_SIZE
MAX_STREAM_EVENTS = 3600
ECHO_CHUNK_BYTES = 64 * 1024

SYMBOLS = ("sh600000", "sz000001", "sh601318", "sh600519", "sz000858", "sz300750", "sh601012")
SIGNAL_TYPES = {
    "anomaly_detection": ("volume_surge", "price_spike", "unusual_turnover"),
    "limit_up_prediction": ("limit_up_candidate", "limit_up_breakout"),
    "trend_following": ("breakout", "reversal"),
}
FEATURE_STRATEGIES = {
    "/signals/anomaly": "anomaly_detection",
    "/signals/limit-up": "limit_up_prediction",
}

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Record:
    id: str
    symbol: str
    strategy: str
    signal_type: str
    confidence: float  # unrounded: each side applies its own rounding
    price: float
    age_seconds: int  # generated_at = request time minus this


@dataclass(frozen=True, slots=True)
class _Sample:
    source: str
    confidence_digits: int
    records: tuple[_Record, ...]


SAMPLE = web.AppKey("sample", _Sample)


@dataclass(slots=True)
class Faults:
    """The failure switch: `failure_rate` of requests (0-1) are answered 500.

    Mutable on purpose, and the only mutable thing in an app: the demo flips it on a
    running server (an aiohttp app's own items are frozen once it starts). Seeded, so a
    test sees the same sequence every run.
    """

    failure_rate: float = 0.0
    seed: int = DEFAULT_SEED
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def should_fail(self) -> bool:
        return self.failure_rate > 0 and self._rng.random() < self.failure_rate


FAULTS = web.AppKey("faults", Faults)


def _make_pool(seed: int) -> tuple[_Record, ...]:
    rng = random.Random(seed)
    records = []
    for n in range(POOL_SIZE):
        strategy = rng.choice(tuple(SIGNAL_TYPES))
        records.append(
            _Record(
                id=f"sig-{seed}-{n + 1:06d}",
                symbol=rng.choice(SYMBOLS),
                strategy=strategy,
                signal_type=rng.choice(SIGNAL_TYPES[strategy]),
                confidence=rng.uniform(0.5, 0.999),
                price=round(rng.uniform(3.0, 1800.0), 2),
                age_seconds=n * 7 + rng.randrange(7),
            )
        )
    return tuple(records)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _record_json(sample: _Sample, record: _Record, now: datetime) -> Json:
    return {
        "id": record.id,
        "symbol": record.symbol,
        "strategy": record.strategy,
        "signal_type": record.signal_type,
        "confidence": round(record.confidence, sample.confidence_digits),
        "price": record.price,
        "generated_at": _iso(now - timedelta(seconds=record.age_seconds)),
    }


def _answer(request: web.Request, body: Json, status: int = 200) -> web.Response:
    return web.json_response({**body, "source": request.app[SAMPLE].source}, status=status)


def _parse_limit(request: web.Request) -> int | web.Response:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except ValueError:
        error = f"query parameter 'limit' must be an integer, got {raw[:50]!r}"
        return _answer(request, {"error": error, "parameter": "limit"}, status=400)
    return min(max(limit, 1), MAX_LIMIT)


async def health(request: web.Request) -> web.Response:
    now = datetime.now(UTC)
    return _answer(
        request, {"status": "ok", "service": request.app[SAMPLE].source, "time": _iso(now)}
    )


async def signals(request: web.Request) -> web.Response:
    limit = _parse_limit(request)
    if isinstance(limit, web.Response):
        return limit
    sample = request.app[SAMPLE]
    strategy = FEATURE_STRATEGIES.get(request.path)
    chosen = [r for r in sample.records if strategy is None or r.strategy == strategy][:limit]
    now = datetime.now(UTC)
    body: Json = {
        "signals": [_record_json(sample, r, now) for r in chosen],
        "count": len(chosen),
        "generated_at": _iso(now),
    }
    if strategy is not None:
        body["strategy"] = strategy
    return _answer(request, body)


async def stats(request: web.Request) -> web.Response:
    records = request.app[SAMPLE].records
    body: Json = {
        "total": len(records),
        "by_strategy": dict(Counter(r.strategy for r in records)),
        "by_signal_type": dict(Counter(r.signal_type for r in records)),
        "by_symbol": dict(Counter(r.symbol for r in records)),
        "generated_at": _iso(datetime.now(UTC)),
    }
    return _answer(request, body)


async def echo(request: web.Request) -> web.Response:
    # Hashed chunk by chunk so a very large upload never sits in memory.
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_chunked(ECHO_CHUNK_BYTES):
        digest.update(chunk)
        length += len(chunk)
    body: Json = {
        "method": request.method,
        "path": request.raw_path,
        "headers": [[name, value] for name, value in request.headers.items()],
        "body_sha256": digest.hexdigest(),
        "body_length": length,
    }
    return _answer(request, body)


def _stream_params(request: web.Request) -> tuple[int, float] | web.Response:
    """`count` events (1-3600, default 60), one every `every` seconds (0.01-60, default 1)."""
    try:
        count = min(max(int(request.query.get("count", "60")), 1), MAX_STREAM_EVENTS)
        every = min(max(float(request.query.get("every", "1")), 0.01), 60.0)
    except ValueError:
        error = "query parameters 'count' (integer) and 'every' (seconds) must be numbers"
        return _answer(request, {"error": error}, status=400)
    return count, every


def _live_record(request: web.Request, n: int) -> Json:
    sample = request.app[SAMPLE]
    record = sample.records[n % len(sample.records)]
    return {
        "seq": n,
        "source": sample.source,
        "signal": _record_json(sample, record, datetime.now(UTC)),
    }


async def live(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one signal per event, `count` of them, `every` seconds apart."""
    params = _stream_params(request)
    if isinstance(params, web.Response):
        return params
    count, every = params
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for n in range(count):
        if n:
            await asyncio.sleep(every)
        event = json.dumps(_live_record(request, n))
        await response.write(f"id: {n}\nevent: signal\ndata: {event}\n\n".encode())
    await response.write_eof()
    return response


async def subscribe(request: web.Request) -> web.StreamResponse:
    """WebSocket: pushes `count` signals `every` seconds apart; answers "ping" with "pong"."""
    params = _stream_params(request)
    if isinstance(params, web.Response):
        return params
    count, every = params
    ws = web.WebSocketResponse()
    await ws.prepare(request)

    async def push() -> None:
        for n in range(count):
            if n:
                await asyncio.sleep(every)
            await ws.send_json(_live_record(request, n))
        await ws.close(message=b"stream complete")

    pusher = asyncio.create_task(push())
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT and message.data == "ping":
                await ws.send_str("pong")
    finally:
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher
    return ws


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _injected_failures(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.app[FAULTS].should_fail():
        body = {"error": "injected failure (rollout demo --break-signal)"}
        return _answer(request, body, status=500)
    return await handler(request)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text 404/405 into JSON, like every other answer of these APIs."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        body = {"error": (exc.reason or "error").lower(), "path": request.path}
        response = _answer(request, body, status=exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


async def _mark_served_by(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Served-By"] = request.app[SAMPLE].source


def _build_app(source: str, seed: int, confidence_digits: int) -> web.Application:
    app = web.Application(middlewares=[_json_errors, _injected_failures])
    app[SAMPLE] = _Sample(source, confidence_digits, _make_pool(seed))
    app[FAULTS] = Faults()
    app.on_response_prepare.append(_mark_served_by)
    app.router.add_get("/health", health)
    app.router.add_get("/signals", signals)
    app.router.add_get("/signals/stats", stats)
    app.router.add_get("/signals/live", live)
    app.router.add_get("/signals/subscribe", subscribe)
    for path in FEATURE_STRATEGIES:
        app.router.add_get(path, signals)
    app.router.add_route("*", "/echo", echo)
    return app


def signal_app(*, seed: int = DEFAULT_SEED) -> web.Application:
    """The sample Signal API; `confidence` rounded to 2 decimals."""
    return _build_app("signal", seed, confidence_digits=2)


def legacy_app() -> web.Application:
    """The sample Legacy API; `confidence` rounded to 3 decimals."""
    return _build_app("legacy", DEFAULT_SEED, confidence_digits=3)


async def start_apis(
    host: str, signal_port: int, legacy_port: int, *, signal_faults: Faults | None = None
) -> list[web.AppRunner]:
    """Serve both sample APIs; the caller owns the runners and must `await runner.cleanup()`.

    `signal_faults`: the signal app's failure switch, kept by the caller to flip later.
    """
    signal = signal_app()
    if signal_faults is not None:
        signal[FAULTS] = signal_faults
    runners: list[web.AppRunner] = []
    try:
        for app, port in ((signal, signal_port), (legacy_app(), legacy_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port).start()
    except BaseException:
        # A port already taken must not leave the other API listening.
        for runner in runners:
            await runner.cleanup()
        raise
    return runners
