"""The autopilot's figure sources against real processes: `rollout serve` and Prometheus.

Two reads around a burst of known requests (tests/support/bursts.py) must give exactly
that burst's figures: from one admin listener, and from a real Prometheus (1 s scrapes)
summing two replicas. Prometheus also checks `histogram_quantile`: on an exporter serving
chosen buckets, and on the proxies' own buckets (their deltas included), its answers must
equal ours. Every source that cannot be read raises FiguresError with one line.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config.load import load_config
from proxy.control.prometheus import Row, query
from proxy.control.sources import (
    QUERIES,
    READ,
    AdminSource,
    FiguresError,
    PrometheusSource,
    source_for,
)
from proxy.rollout.counters import Counters, histogram_quantile, sample_between
from tests.support import (
    HOST,
    ProxyProcess,
    UpstreamFactory,
    config_dict,
    free_port,
    server_url,
    write_config,
)
from tests.support.bursts import Burst, send, timed_app
from tests.support.prometheus import JOB, PrometheusServer

pytestmark = pytest.mark.e2e

TOKEN = "admin-secret-token"
QUANTILES = (0.0, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    started: list[PrometheusServer] = []

    def start(targets: list[str]) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus-{len(started)}", targets)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


async def proxies(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess], guards: list[Any]
) -> list[ProxyProcess]:
    signal = await upstream(timed_app(failing=True))
    legacy = await upstream(timed_app())
    return [
        serve_proxy(
            config_dict(server_url(signal), server_url(legacy), guard=guard), name=f"replica-{i}"
        )
        for i, guard in enumerate(guards)
    ]


def bucket_totals(counters: Counters, upstream: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for (_, side, le), value in counters.buckets.items():
        if side == upstream:
            out[le] = out.get(le, 0.0) + value
    return out


def same(ours: float | None, theirs: float) -> bool:
    """Ours against Prometheus': None where it says NaN, otherwise the same float."""
    if math.isnan(theirs):
        return ours is None
    return ours is not None and math.isclose(ours, theirs, rel_tol=1e-12, abs_tol=1e-15)


# --- one admin listener -------------------------------------------------------------------


async def test_admin_deltas_are_what_was_sent(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> None:
    signal = await upstream(timed_app(failing=True))
    legacy = await upstream(timed_app())
    data = config_dict(
        server_url(signal), server_url(legacy), guard={"enabled": False}, admin={"token": TOKEN}
    )
    proxy = serve_proxy(data)
    source = AdminSource(proxy.admin_url, TOKEN)
    assert source.describe() == f"admin listener {proxy.admin_url}"
    warmup = Burst(legacy=20, signal_ok=10, failed_gets=3, failed_posts=2, prefix="warm")
    burst = Burst(legacy=40, signal_ok=35, failed_gets=7, failed_posts=5)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        assert await send(http, [proxy.url], warmup) == warmup.statuses()
        before = await asyncio.to_thread(source.read)
        assert await send(http, [proxy.url], burst) == burst.statuses()
        after = await asyncio.to_thread(source.read)

    replica = proxy.admin_url
    assert {r for r, _ in after.served} == {replica}
    # The reads are cumulative: the warm-up is in both ...
    assert before.served[(replica, "signal")] == warmup.signal_ok + warmup.failed_posts
    assert before.fallbacks == {replica: warmup.fallbacks}
    # ... and the deltas are the burst alone.
    s = sample_between(before, after)
    assert (s.signal.attempts, s.signal.errors) == (burst.signal_attempts, burst.signal_errors)
    assert (s.legacy.attempts, s.legacy.errors) == (burst.legacy_attempts, 0)
    assert after.fallbacks[replica] - before.fallbacks[replica] == burst.fallbacks
    inf = math.inf
    served_by_signal = bucket_totals(after, "signal")[inf] - bucket_totals(before, "signal")[inf]
    assert served_by_signal == burst.signal_observations
    for side in (s.signal, s.legacy):
        assert side.p50_ms is not None
        assert side.p95_ms is not None
        assert side.p99_ms is not None
        assert 0 < side.p50_ms <= side.p95_ms <= side.p99_ms
    assert s.guard_tripped is False
    assert s.seconds == after.read_at - before.read_at > 0

    # The guard trips on the next burst of failures; the read says so.
    tripping = await upstream(timed_app(failing=True))
    data = config_dict(
        server_url(tripping),
        server_url(legacy),
        guard={"enabled": True, "min_requests": 5, "max_error_rate": 0.1, "max_p95_ms": 60000},
    )
    guarded = serve_proxy(data, name="guarded")
    guarded_source = AdminSource(guarded.admin_url, None)
    assert (await asyncio.to_thread(guarded_source.read)).guard_tripped is False
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await send(
            http, [guarded.url], Burst(legacy=0, signal_ok=0, failed_gets=10, failed_posts=0)
        )
    assert (await asyncio.to_thread(guarded_source.read)).guard_tripped is True


async def test_admin_deltas_across_a_restart(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> None:
    """The proxy restarts between the reads: its counters begin again from 0 and are lower
    than before, so the deltas are the new values (Prometheus' reset rule)."""
    signal = await upstream(timed_app(failing=True))
    legacy = await upstream(timed_app())
    proxy = serve_proxy(
        config_dict(server_url(signal), server_url(legacy), guard={"enabled": False})
    )
    source = AdminSource(proxy.admin_url, None)
    warmup = Burst(legacy=60, signal_ok=40, failed_gets=10, failed_posts=6, prefix="warm")
    burst = Burst(legacy=12, signal_ok=8, failed_gets=3, failed_posts=2)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        assert await send(http, [proxy.url], warmup) == warmup.statuses()
        before = await asyncio.to_thread(source.read)
        assert await asyncio.to_thread(proxy.stop) == 0
        await asyncio.to_thread(proxy.start)
        assert await send(http, [proxy.url], burst) == burst.statuses()
        after = await asyncio.to_thread(source.read)
    s = sample_between(before, after)
    assert (s.signal.attempts, s.signal.errors) == (burst.signal_attempts, burst.signal_errors)
    assert (s.legacy.attempts, s.legacy.errors) == (burst.legacy_attempts, 0)


async def test_admin_source_errors(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> None:
    signal = await upstream(timed_app())
    proxy = serve_proxy(config_dict(server_url(signal), server_url(signal), admin={"token": TOKEN}))
    garbage = await upstream(html_app())
    not_ours = await upstream(exporter())  # Prometheus text, but no rollout-proxy series
    down = f"http://{HOST}:{free_port()}"
    cases = {
        down: f"admin listener {down}: ",
        proxy.admin_url: "HTTP 401",  # no token
        server_url(garbage): "is not Prometheus text",
        server_url(not_ours): "not a rollout-proxy",
    }
    for base, expected in cases.items():
        with pytest.raises(FiguresError) as caught:
            await asyncio.to_thread(AdminSource(base, None).read)
        message = str(caught.value)
        assert expected in message, message
        assert "\n" not in message
        assert TOKEN not in message
    with pytest.raises(FiguresError, match="HTTP 401") as caught:
        await asyncio.to_thread(AdminSource(proxy.admin_url, "wrong-" + TOKEN).read)
    assert TOKEN not in str(caught.value)


def test_source_for_picks_the_configured_one(tmp_path: Path) -> None:
    data = config_dict("http://127.0.0.1:1", "http://127.0.0.1:2")
    data["admin"] = {"host": "0.0.0.0", "port": 9999, "token": TOKEN}
    path = tmp_path / "rollout.yaml"
    config = load_config(write_config(path, data))
    admin = source_for(config, None)
    assert isinstance(admin, AdminSource)
    assert admin.describe() == "admin listener http://127.0.0.1:9999"
    assert source_for(config, "http://10.0.0.1:9180/").describe() == (
        "admin listener http://10.0.0.1:9180"
    )
    data["autopilot"] = {"prometheus": "http://prom:9090"}
    config = load_config(write_config(path, data))
    prom = source_for(config, "http://10.0.0.1:9180")
    assert isinstance(prom, PrometheusSource)
    assert prom.describe() == "Prometheus http://prom:9090"


# --- Prometheus over two replicas -----------------------------------------------------------


async def test_prometheus_deltas_over_two_replicas(
    upstream: UpstreamFactory,
    serve_proxy: Callable[..., ProxyProcess],
    prometheus: Callable[..., PrometheusServer],
) -> None:
    # Replica 1's guard trips on the burst's failures; replica 0 has none.
    tight = {"enabled": True, "min_requests": 5, "max_error_rate": 0.1, "max_p95_ms": 60000}
    replicas = await proxies(upstream, serve_proxy, [{"enabled": False}, tight])
    instances = [f"{HOST}:{r.data['admin']['port']}" for r in replicas]
    prom = await asyncio.to_thread(prometheus, instances)
    await asyncio.to_thread(prom.wait_for_scrapes, 1)
    warmup = Burst(legacy=30, signal_ok=10, failed_gets=0, failed_posts=0, prefix="warm")
    burst = Burst(legacy=50, signal_ok=30, failed_gets=12, failed_posts=8)
    urls = [r.url for r in replicas]

    def at(ms: int) -> PrometheusSource:
        return PrometheusSource(prom.url, clock=lambda: ms / 1000)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        assert await send(http, urls, warmup) == warmup.statuses()
        # Every counter the warm-up moved is in a committed scrape before t1.
        await asyncio.to_thread(prom.wait_for_scrapes, 2, after=time.time())
        t1 = int(time.time() * 1000)
        before = await asyncio.to_thread(at(t1).read)
        assert await send(http, urls, burst) == burst.statuses()
        await asyncio.to_thread(prom.wait_for_scrapes, 2, after=time.time())
        t2 = int(time.time() * 1000)
        after = await asyncio.to_thread(at(t2).read)

    keys = {f"{JOB}/{i}" for i in instances}
    assert {r for r, _ in before.served} == keys
    assert before.guard_tripped is False
    assert after.guard_tripped is True  # max() over the replicas: one tripped is enough
    s = sample_between(before, after)
    assert (s.signal.attempts, s.signal.errors) == (burst.signal_attempts, burst.signal_errors)
    assert (s.legacy.attempts, s.legacy.errors) == (burst.legacy_attempts, 0)
    assert sum(after.fallbacks.values()) - sum(before.fallbacks.values()) == burst.fallbacks
    assert s.seconds == pytest.approx((t2 - t1) / 1000)
    assert s.guard_tripped is True

    # The same instant from each replica's own /metrics: Prometheus lost nothing.
    direct = [await asyncio.to_thread(AdminSource(r.admin_url, None).read) for r in replicas]
    for field in ("served", "errors"):
        for side in ("signal", "legacy"):
            theirs = sum(v for (_, u), v in getattr(after, field).items() if u == side)
            ours = sum(v for c in direct for (_, u), v in getattr(c, field).items() if u == side)
            assert theirs == ours, (field, side)

    # The one query the source sends is QUERIES together: each alone gives the same.
    combined = await asyncio.to_thread(query, prom.url, READ, at=t2 / 1000)
    for name, expr in QUERIES.items():
        alone = await asyncio.to_thread(query, prom.url, expr, at=t2 / 1000)
        tagged = [r for r in combined if r["metric"].get("figure") == name]
        assert len(alone) > 0, name
        assert series(tagged) == series(alone), name

    # histogram_quantile: ours on what we read equals Prometheus' on the same samples, for
    # the cumulative buckets at t2 and for their deltas since t1 (no reset in between).
    selector = 'rollout_request_duration_seconds_bucket{upstream="signal"}'
    now = f"sum by (le) ({selector})"
    delta = f"{now} - sum by (le) ({selector} offset {t2 - t1}ms)"
    cumulative = sorted(bucket_totals(after, "signal").items())
    for q in QUANTILES:
        theirs = await asyncio.to_thread(instant, prom, f"histogram_quantile({q}, {now})", t2)
        assert same(histogram_quantile(q, cumulative), theirs), (q, theirs, cumulative)
        theirs = await asyncio.to_thread(instant, prom, f"histogram_quantile({q}, {delta})", t2)
        ours = {0.5: s.signal.p50_ms, 0.95: s.signal.p95_ms, 0.99: s.signal.p99_ms}.get(q)
        if ours is not None:
            assert same(ours / 1000, theirs), (q, ours, theirs)


def series(rows: list[Row]) -> dict[frozenset[tuple[str, str]], str]:
    return {
        frozenset((k, v) for k, v in r["metric"].items() if k != "figure"): str(r["value"][1])
        for r in rows
    }


def instant(prom: PrometheusServer, expr: str, at_ms: int) -> float:
    """One value of an instant query evaluated at `at_ms`."""
    answer = prom.api("query", {"query": expr, "time": f"{at_ms / 1000:.3f}"})
    assert answer["status"] == "success", (expr, answer)
    rows = answer["data"]["result"]
    assert len(rows) == 1, (expr, rows)
    return float(rows[0]["value"][1])


# --- histogram_quantile against Prometheus, on chosen buckets --------------------------------

EDGES = ("0.005", "0.05", "0.2", "0.5", "1", "+Inf")
CASES = {  # cumulative counts at EDGES
    "first": (10, 10, 10, 10, 10, 10),
    "inf": (0, 0, 0, 0, 0, 7),
    "empty": (0, 0, 0, 0, 0, 0),
    "edges": (5, 10, 10, 20, 20, 20),
    "known": (0, 50, 90, 100, 100, 100),
    "spread": (3, 41, 77, 180, 311, 312),
    "top": (0, 1, 2, 3, 4, 400),
}


def exporter() -> web.Application:
    """A /metrics serving CASES as one histogram (and no rollout series at all)."""
    lines = ["# HELP check_seconds Chosen buckets.", "# TYPE check_seconds histogram"]
    for case, counts in CASES.items():
        for edge, count in zip(EDGES, counts, strict=True):
            lines.append(f'check_seconds_bucket{{case="{case}",le="{edge}"}} {count}')
        lines.append(f'check_seconds_count{{case="{case}"}} {counts[-1]}')
        lines.append(f'check_seconds_sum{{case="{case}"}} 0')
    text = "\n".join(lines) + "\n"

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def test_histogram_quantile_is_prometheus(
    upstream: UpstreamFactory, prometheus: Callable[..., PrometheusServer]
) -> None:
    server = await upstream(exporter())
    prom = await asyncio.to_thread(prometheus, [f"{HOST}:{server.port}"])
    await asyncio.to_thread(prom.wait_for_scrapes, 1)
    at_ms = int(time.time() * 1000)
    compared = 0
    for case, counts in CASES.items():
        buckets = [(float(e), float(c)) for e, c in zip(EDGES, counts, strict=True)]
        for q in QUANTILES:
            expr = f'histogram_quantile({q}, check_seconds_bucket{{case="{case}"}})'
            theirs = await asyncio.to_thread(instant, prom, expr, at_ms)
            assert same(histogram_quantile(q, buckets), theirs), (case, q, theirs)
            compared += 1
    assert compared == len(CASES) * len(QUANTILES)

    # That Prometheus scrapes no rollout-proxy ("the wrong job"): an error, not zero traffic.
    with pytest.raises(FiguresError, match="no rollout_upstream_errors_total series"):
        await asyncio.to_thread(PrometheusSource(prom.url).read)


async def test_prometheus_source_errors(
    upstream: UpstreamFactory, prometheus: Callable[..., PrometheusServer]
) -> None:
    empty = await asyncio.to_thread(prometheus, [])
    not_prometheus = await upstream(timed_app())  # JSON, but not the API's
    html = await upstream(html_app())
    down = f"http://{HOST}:{free_port()}"
    cases = {
        empty.url: "no rollout_upstream_errors_total series",
        down: f"Prometheus {down}: ",
        server_url(not_prometheus): "not a Prometheus API answer",
        server_url(html): "not JSON",
    }
    for url, expected in cases.items():
        with pytest.raises(FiguresError) as caught:
            await asyncio.to_thread(PrometheusSource(url).read)
        message = str(caught.value)
        assert expected in message, message
        assert message.startswith(f"Prometheus {url}"), message
        assert "\n" not in message
        assert "query=" not in message  # the URL's query string is not the message
    secret = f"http://user:{TOKEN}@{HOST}:9090/"
    assert PrometheusSource(secret).describe() == f"Prometheus http://{HOST}:9090"


def html_app() -> web.Application:
    async def page(_: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    return app
