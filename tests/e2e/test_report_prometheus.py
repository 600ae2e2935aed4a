"""`rollout report --prometheus` against a real Prometheus scraping two `rollout serve` replicas.

Prometheus (the Debian package) runs on loopback with a 1 s scrape interval. Two replicas
share one config (50 %, fallback on) in front of the sample APIs. Which requests fail is
chosen by the request, not by chance or arrival order: the signal API answers 503 to every
request marked `X-Fail: 1`, and the test marks some of the GETs and some of the POSTs that
the SPEC 3 hash sends to signal. So it knows exactly how many GETs fall back to legacy and
how many POSTs return signal's 503. The figures the report prints must equal the sums taken
directly from both replicas' `/metrics`: for `--window 5m` (all the traffic) and for a
window that starts between two bursts of traffic (only the second burst).

The windowed report must not depend on how long the CLI takes on a loaded machine: it
talks to Prometheus through a pass-through server that pins each query's evaluation time
(`time=`), so the window's start is a known instant in the middle of the pause.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import mmh3
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.control.figures import promql_queries
from proxy.demo.apis import legacy_app, signal_app
from tests.support import HOST, ProxyProcess, UpstreamFactory, config_dict, server_url
from tests.support.prometheus import SCRAPE_INTERVAL_S, PrometheusServer

pytestmark = pytest.mark.e2e

SIDES = ("signal", "legacy")
SEED = "rollout"  # rollout.seed of the test config
PERCENTAGE = 50
FAIL_HEADER = "X-Fail"  # signal answers 503 to a request carrying `X-Fail: 1`
FAIL_EVERY_GET = 10  # every tenth GET routed to signal is marked to fail (it falls back)
FAIL_EVERY_POST = 2  # every other POST routed to signal is marked (its 503 is returned)
# Between the two bursts. The windowed report's window starts in the middle of it, far from
# either burst by more than a scrape can take (a sample stamped before an instant may hold
# counters read up to one scrape timeout later).
PAUSE_S = 5.0
PATHS = ("/signals?limit=5", "/signals/stats", "/health", "/signals/anomaly?limit=3")


# --- upstreams --------------------------------------------------------------------------


@dataclass
class Hits:
    count: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # 503s answered, by method


def counted(app: web.Application, hits: Hits, *, failing: bool = False) -> web.Application:
    """The app with a request counter; with `failing`, a 503 to requests marked to fail."""

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        hits.count += 1
        if failing and request.headers.get(FAIL_HEADER) == "1":
            hits.failed[request.method] = hits.failed.get(request.method, 0) + 1
            await request.read()
            return web.json_response({"error": "overloaded"}, status=503)
        return await handler(request)

    app.middlewares.append(count)
    return app


def pinned_prometheus(prometheus_url: str, at: Callable[[], float | None]) -> web.Application:
    """A pass-through to Prometheus that evaluates every instant query at `at()` (if set).

    `rollout report` queries at "now"; pinning "now" makes its window start a chosen
    instant however long the CLI takes to start and to run its queries.
    """

    async def forward(request: web.Request) -> web.Response:
        params = dict(request.query)
        pinned = at()
        if pinned is not None and request.path == "/api/v1/query":
            params["time"] = f"{pinned:.3f}"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.get(prometheus_url + request.path, params=params) as resp,
        ):
            body = await resp.read()
            return web.Response(body=body, status=resp.status, content_type=resp.content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", forward)
    return app


# --- traffic ------------------------------------------------------------------------------


def to_signal(session_id: str) -> bool:
    """SPEC 3: the side the proxy routes this session to at PERCENTAGE."""
    bucket = mmh3.hash(f"{SEED}:{session_id}".encode(), 0, signed=False) % 10000
    return bucket < round(PERCENTAGE * 100)


@dataclass(frozen=True)
class Planned:
    session: str
    method: str
    path: str
    signal: bool  # routed to signal by the hash
    fail: bool  # marked `X-Fail: 1` (only ever on a request routed to signal)


@dataclass(frozen=True)
class Plan:
    requests: tuple[Planned, ...]

    def count(
        self, method: str | None = None, *, signal: bool | None = None, fail: bool | None = None
    ) -> int:
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method)
            and (signal is None or r.signal == signal)
            and (fail is None or r.fail == fail)
        )

    def statuses(self) -> dict[str, int]:
        """What the clients must see: every GET 200 (fallback), a failed POST signal's 503."""
        failed_posts = self.count("POST", fail=True)
        out = {"GET 200": self.count("GET"), "POST 200": self.count("POST") - failed_posts}
        if failed_posts:
            out["POST 503"] = failed_posts
        return out

    def expected(self) -> dict[str, dict[str, int]]:
        """The report's figures: signal counts every attempt, legacy what it served."""
        fallbacks = self.count("GET", fail=True)
        return {
            "signal": {
                "requests": self.count(signal=True),
                "errors": self.count(fail=True),
                "fallbacks": fallbacks,
            },
            "legacy": {
                "requests": self.count(signal=False) + fallbacks,
                "errors": 0,
                "fallbacks": 0,
            },
        }


def plan(prefix: str, count: int) -> Plan:
    """`count` requests, one new session each; every seventh a POST (not replayed)."""
    seen = {"GET": 0, "POST": 0}  # requests of each method routed to signal so far
    every = {"GET": FAIL_EVERY_GET, "POST": FAIL_EVERY_POST}
    out = []
    for i in range(count):
        session = f"{prefix}-{i}"
        method = "POST" if i % 7 == 0 else "GET"
        signal = to_signal(session)
        fail = False
        if signal:
            seen[method] += 1
            fail = seen[method] % every[method] == 0
        path = "/echo" if method == "POST" else PATHS[i % len(PATHS)]
        out.append(Planned(session, method, path, signal, fail))
    return Plan(tuple(out))


# --- figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    """Counter sums over every replica, as read from their `/metrics`."""

    served: dict[str, int]
    errors: dict[str, int]
    fallbacks: int

    def expected(self, minus: Totals | None = None) -> dict[str, dict[str, int]]:
        """What the report should print: signal attempts = served by signal + fallbacks."""
        base = minus or Totals({s: 0 for s in SIDES}, {s: 0 for s in SIDES}, 0)
        fallbacks = self.fallbacks - base.fallbacks
        out = {}
        for side in SIDES:
            served = self.served[side] - base.served[side]
            out[side] = {
                "requests": served + (fallbacks if side == "signal" else 0),
                "errors": self.errors[side] - base.errors[side],
                "fallbacks": fallbacks if side == "signal" else 0,
            }
        return out


def totals(texts: list[str]) -> Totals:
    served = {s: 0.0 for s in SIDES}
    errors = {s: 0.0 for s in SIDES}
    fallbacks = 0.0
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "rollout_requests_total":
                    served[sample.labels["upstream"]] += sample.value
                elif sample.name == "rollout_upstream_errors_total":
                    errors[sample.labels["upstream"]] += sample.value
                elif sample.name == "rollout_fallbacks_total":
                    fallbacks += sample.value
    return Totals(
        {s: round(v) for s, v in served.items()},
        {s: round(v) for s, v in errors.items()},
        round(fallbacks),
    )


async def scrape_all(http: aiohttp.ClientSession, replicas: list[ProxyProcess]) -> Totals:
    texts = []
    for replica in replicas:
        async with http.get(f"{replica.admin_url}/metrics") as resp:
            assert resp.status == 200
            texts.append(await resp.text())
    return totals(texts)


def reported(payload: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        side: {k: payload["upstreams"][side][k] for k in ("requests", "errors", "fallbacks")}
        for side in SIDES
    }


# --- sending and the CLI ------------------------------------------------------------------


async def send_traffic(
    http: aiohttp.ClientSession, replicas: list[ProxyProcess], requests: Plan
) -> dict[str, int]:
    """The planned requests, spread over the replicas, 16 at a time; statuses seen."""
    limit = asyncio.Semaphore(16)
    statuses: dict[str, int] = {}

    async def one(i: int, r: Planned) -> None:
        replica = replicas[i % len(replicas)]
        headers = {"X-Session-Id": r.session}
        if r.fail:
            headers[FAIL_HEADER] = "1"
        async with limit:
            if r.method == "POST":
                # Not replayed: a 503 from signal goes back to the client as it is.
                request = http.post(replica.url + r.path, data=b"x" * 100, headers=headers)
            else:
                request = http.get(replica.url + r.path, headers=headers)
            async with request as resp:
                await resp.read()
                key = f"{resp.method} {resp.status}"
                statuses[key] = statuses.get(key, 0) + 1

    await asyncio.wait_for(
        asyncio.gather(*(one(i, r) for i, r in enumerate(requests.requests))), 120
    )
    return statuses


def run_report(config: Path, prometheus: str, window: str, *, as_json: bool) -> str:
    cmd = [sys.executable, "-m", "proxy", "report", "--prometheus", prometheus]
    cmd += ["--window", window, "-c", str(config)]
    if as_json:
        cmd.append("--json")
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def table_rows(text: str) -> dict[str, dict[str, int]]:
    """The figures table of the plain-text report, by upstream."""
    lines = text.splitlines()
    header_at = next(
        i for i, line in enumerate(lines) if line.split()[:2] == ["upstream", "requests"]
    )
    rows = {}
    for line in lines[header_at + 1 : header_at + 3]:
        cells = line.split()
        # upstream requests errors error-rate % p50 p95 p99 fallbacks
        rows[cells[0]] = {
            "requests": int(cells[1]),
            "errors": int(cells[2]),
            "fallbacks": int(cells[-1]),
        }
    return rows


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Start Prometheus servers scraping the given admin listeners; stopped at teardown."""
    started: list[PrometheusServer] = []

    def start(targets: list[str], **kwargs: Any) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus-{len(started)}", targets, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


# --- tests --------------------------------------------------------------------------------


async def test_report_sums_both_replicas(
    upstream: UpstreamFactory,
    serve_proxy: Callable[..., ProxyProcess],
    prometheus: Callable[..., PrometheusServer],
) -> None:
    first_plan, second_plan = plan("first", 150), plan("second", 250)
    for p in (first_plan, second_plan):
        # The plan is fixed by the session ids; each burst has both kinds of failure.
        assert p.count("GET", fail=True) > 0, p
        assert p.count("POST", fail=True) > 0, p
        assert p.count(signal=False) > 0, p

    signal_hits, legacy_hits = Hits(), Hits()
    signal = await upstream(counted(signal_app(), signal_hits, failing=True))
    legacy = await upstream(counted(legacy_app(), legacy_hits))
    sections: dict[str, Any] = {
        "rollout": {"percentage": PERCENTAGE, "seed": SEED, "test_sessions": []},
        "fallback": {"enabled": True},
        # Neither the marked failures (under 20 % of signal's requests) nor a slow machine
        # may trip the guard: routing stays at 50 % throughout and the verdict is "hold"
        # (promotion's 1 % error rate fails).
        "guard": {"enabled": True, "max_error_rate": 0.5, "max_p95_ms": 60000},
    }
    replicas = [
        serve_proxy(config_dict(server_url(signal), server_url(legacy), **sections), name=name)
        for name in ("replica-a", "replica-b")
    ]
    config = replicas[0].config_path
    prom = await asyncio.to_thread(
        prometheus, [f"{HOST}:{r.data['admin']['port']}" for r in replicas]
    )
    await asyncio.to_thread(prom.wait_for_scrapes, 2)
    pinned_at: float | None = None
    pinned = await upstream(pinned_prometheus(prom.url, lambda: pinned_at))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        # First burst, then a scrape of it, then a pause the second window starts in.
        first = await send_traffic(http, replicas, first_plan)
        await asyncio.to_thread(prom.wait_for_scrapes, 2, after=time.time())
        before = await scrape_all(http, replicas)
        pause_at = time.time()
        await asyncio.sleep(PAUSE_S)
        second_at = time.time()
        second = await send_traffic(http, replicas, second_plan)
        # Prometheus must have read every counter after the last request completed.
        await asyncio.to_thread(prom.wait_for_scrapes, 3, after=time.time())
        after = await scrape_all(http, replicas)
        evaluated_at = time.time()

    # GETs always end in 200 (signal's 503s fall back); a marked POST gets signal's 503.
    assert first == first_plan.statuses(), first
    assert second == second_plan.statuses(), second
    # Signal answered 503 to exactly the marked requests, legacy to none.
    failed = {
        m: first_plan.count(m, fail=True) + second_plan.count(m, fail=True) for m in ("GET", "POST")
    }
    assert signal_hits.failed == failed, signal_hits
    assert legacy_hits.failed == {}, legacy_hits

    expected = after.expected()
    both = Plan(first_plan.requests + second_plan.requests).expected()
    assert expected == both, (expected, both)
    # errors = fallbacks (GETs) + the POSTs that returned signal's 503.
    assert expected["signal"]["errors"] == expected["signal"]["fallbacks"] + failed["POST"]
    assert expected["signal"]["fallbacks"] == failed["GET"]
    assert after.expected(minus=before) == second_plan.expected(), (after, before)
    # The metrics agree with what the upstreams received.
    assert expected["signal"]["requests"] == signal_hits.count, (expected, signal_hits)
    assert expected["legacy"]["requests"] == legacy_hits.count, (expected, legacy_hits)
    assert after.served["signal"] + after.served["legacy"] == 400

    # --window 5m: everything both replicas counted, queried at the real "now".
    payload = json.loads(await asyncio.to_thread(run_report, config, prom.url, "5m", as_json=True))
    assert reported(payload) == expected, (payload, prom.logs()[-2000:])
    for side in SIDES:
        figures = payload["upstreams"][side]
        assert figures["p95_ms"] is not None, payload
        assert figures["error_rate"] == pytest.approx(
            figures["errors"] / figures["requests"], abs=1e-6
        )
    assert "all replicas" in payload["source"]
    assert payload["recommendation"] == "hold", payload

    # Plain text: the same figures, the verdict table and a recommendation.
    text = await asyncio.to_thread(run_report, config, prom.url, "5m", as_json=False)
    assert table_rows(text) == expected, text
    assert any(
        line.split() == ["criterion", "target", "actual", "status"] for line in text.splitlines()
    ), text
    assert any("recommendation:" in line for line in text.splitlines()), text

    # A window starting in the middle of the pause: the second burst only. Its queries are
    # evaluated at `evaluated_at` (after every counter was scraped), so the window starts
    # exactly at `window_start`: after the scrapes of the first burst (taken before the
    # pause) and more than a scrape timeout before the second burst's first request.
    window_start = pause_at + PAUSE_S / 2
    assert window_start + SCRAPE_INTERVAL_S < second_at, (pause_at, second_at)
    window_ms = int((evaluated_at - window_start) * 1000)
    pinned_at = evaluated_at
    payload = json.loads(
        await asyncio.to_thread(
            run_report, config, server_url(pinned), f"{window_ms}ms", as_json=True
        )
    )
    assert reported(payload) == second_plan.expected(), payload


async def test_promql_queries_are_accepted(prometheus: Callable[..., PrometheusServer]) -> None:
    prom = await asyncio.to_thread(prometheus, [])
    for window in ("5m", "30s", "1h", "1500ms"):
        for figure, expr in promql_queries(window).items():
            answer = await asyncio.to_thread(prom.api, "query", {"query": expr})
            assert answer["status"] == "success", (figure, expr, answer)
            assert answer["data"]["resultType"] == "vector", (figure, expr, answer)
