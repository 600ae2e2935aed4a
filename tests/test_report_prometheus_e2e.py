"""`rollout report --prometheus` against a real Prometheus scraping two `rollout serve` replicas.

Prometheus (the Debian package) runs on loopback with a 1 s scrape interval. Two replicas
share one config (50 %, fallback on) in front of the sample APIs; the signal API answers
503 to every tenth request it gets, so signal has errors, GETs fall back to legacy and POSTs
return signal's 503. The figures the report prints must equal the sums taken directly from
both replicas' `/metrics`: for `--window 5m` (all the traffic) and for a window that starts
between two bursts of traffic (only the second burst).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.control.figures import promql_queries
from proxy.demo.apis import legacy_app, signal_app
from tests.conftest import UpstreamFactory, server_url
from tests.prometheus_support import PrometheusServer
from tests.support import HOST, ProxyProcess, config_dict

pytestmark = pytest.mark.e2e

SIDES = ("signal", "legacy")
FAIL_EVERY = 10  # signal answers 503 to every tenth request it receives
# Between the two bursts: longer than `rollout report` takes to run, so the window that
# starts at the pause begins before any request of the second burst.
PAUSE_S = 5.0
PATHS = ("/signals?limit=5", "/signals/stats", "/health", "/signals/anomaly?limit=3")


# --- upstreams --------------------------------------------------------------------------


@dataclass
class Hits:
    count: int = 0


def counted(app: web.Application, hits: Hits, *, fail_every: int = 0) -> web.Application:
    """The app with a request counter; every `fail_every`-th request gets a 503."""

    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        hits.count += 1
        if fail_every and hits.count % fail_every == 0:
            await request.read()
            return web.json_response({"error": "overloaded"}, status=503)
        return await handler(request)

    app.middlewares.append(count)
    return app


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


# --- traffic and the CLI ------------------------------------------------------------------


async def send_traffic(
    http: aiohttp.ClientSession, replicas: list[ProxyProcess], prefix: str, count: int
) -> dict[str, int]:
    """`count` requests spread over the replicas, one new session each; statuses seen."""
    limit = asyncio.Semaphore(16)
    statuses: dict[str, int] = {}

    async def one(i: int) -> None:
        replica = replicas[i % len(replicas)]
        headers = {"X-Session-Id": f"{prefix}-{i}"}
        async with limit:
            if i % 7 == 0:
                # Not replayed: a 503 from signal goes back to the client as it is.
                request = http.post(f"{replica.url}/echo", data=b"x" * 100, headers=headers)
            else:
                request = http.get(replica.url + PATHS[i % len(PATHS)], headers=headers)
            async with request as resp:
                await resp.read()
                key = f"{resp.method} {resp.status}"
                statuses[key] = statuses.get(key, 0) + 1

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 60)
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
    signal_hits, legacy_hits = Hits(), Hits()
    signal = await upstream(counted(signal_app(), signal_hits, fail_every=FAIL_EVERY))
    legacy = await upstream(counted(legacy_app(), legacy_hits))
    sections: dict[str, Any] = {
        "rollout": {"percentage": 50, "test_sessions": []},
        "fallback": {"enabled": True},
        # Neither 10 % signal errors nor a slow machine may trip the guard: routing stays
        # at 50 % throughout and the verdict is "hold" (promotion's 1 % error rate fails).
        "guard": {"enabled": True, "max_error_rate": 0.5, "max_p95_ms": 5000},
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

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        # First burst, then a scrape of it, then a pause the second window starts in.
        first = await send_traffic(http, replicas, "first", 150)
        await asyncio.to_thread(prom.wait_for_scrapes, 2, after=time.time())
        before = await scrape_all(http, replicas)
        window_start = time.time()
        await asyncio.sleep(PAUSE_S)
        second_at = time.time()
        second = await send_traffic(http, replicas, "second", 250)
        # Prometheus must have read every counter after the last request completed.
        await asyncio.to_thread(prom.wait_for_scrapes, 3, after=time.time())
        after = await scrape_all(http, replicas)

    # GETs always end in 200 (signal's 503s fall back); a POST may get signal's 503.
    for seen in (first, second):
        assert set(seen) <= {"GET 200", "POST 200", "POST 503"}, seen
    expected = after.expected()
    assert expected["signal"]["errors"] > 0, expected
    assert expected["signal"]["fallbacks"] > 0, expected
    assert expected["signal"]["errors"] > expected["signal"]["fallbacks"], expected
    assert expected["legacy"]["requests"] > 0, expected
    # The metrics agree with what the upstreams received.
    assert expected["signal"]["requests"] == signal_hits.count, (expected, signal_hits)
    assert expected["legacy"]["requests"] == legacy_hits.count, (expected, legacy_hits)
    assert after.served["signal"] + after.served["legacy"] == 400

    # --window 5m: everything both replicas counted.
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

    # A window starting in the pause: the second burst only. Each query runs at some time
    # in [t0, t1], so its window starts in [window_start, window_start + (t1 - t0)].
    t0 = time.time()
    window_ms = int((t0 - window_start) * 1000)
    payload = json.loads(
        await asyncio.to_thread(run_report, config, prom.url, f"{window_ms}ms", as_json=True)
    )
    t1 = time.time()
    assert window_start + (t1 - t0) < second_at - 0.5, (
        f"`rollout report` took {t1 - t0:.1f} s, longer than the {PAUSE_S} s pause: "
        "its window may have begun inside the second burst"
    )
    assert reported(payload) == after.expected(minus=before), payload


async def test_promql_queries_are_accepted(prometheus: Callable[..., PrometheusServer]) -> None:
    prom = await asyncio.to_thread(prometheus, [])
    for window in ("5m", "30s", "1h", "1500ms"):
        for figure, expr in promql_queries(window).items():
            answer = await asyncio.to_thread(prom.api, "query", {"query": expr})
            assert answer["status"] == "success", (figure, expr, answer)
            assert answer["data"]["resultType"] == "vector", (figure, expr, answer)
