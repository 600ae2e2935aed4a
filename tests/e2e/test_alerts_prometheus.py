"""deploy/prometheus/rules.yml on a real Prometheus scraping two `rollout serve` replicas.

Signal fails half of its requests (legacy answers them through fallback); the recording
rules must give signal's error ratio as the replicas' own counters do, and the rollback
alert must reach `firing`. The only change to the shipped rules is a shorter `for:`, so
the test does not wait a minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from proxy.demo.apis import legacy_app
from tests.support import (
    HOST,
    ProxyProcess,
    UpstreamFactory,
    config_dict,
    free_port,
    metric_value,
    server_url,
)
from tests.support.prometheus import PrometheusServer

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "rules.yml"


def half_failing_signal() -> web.Application:
    hits = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        if hits % 2:
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response({"status": "ok", "source": "signal"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def fast_rules(tmp_path: Path) -> Path:
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "3s"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def _value(text: str, name: str, **labels: str) -> float:
    return metric_value(text, name, **labels) or 0.0


async def _metrics(proxy: ProxyProcess) -> str:
    async with aiohttp.ClientSession() as client, client.get(proxy.admin_url + "/metrics") as r:
        return await r.text()


async def test_recording_rules_and_rollback_alert_on_a_failing_signal(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    signal = await upstream(half_failing_signal())
    legacy = await upstream(legacy_app())
    data = config_dict(
        server_url(signal),
        server_url(legacy),
        rollout={"percentage": 100},
        guard={"enabled": False},  # keep traffic on signal so the alert has data
    )
    second = {**data, "listen": {**data["listen"]}, "admin": {**data["admin"]}}
    second["listen"]["port"] = free_port()
    second["admin"]["port"] = free_port()
    replicas = [serve_proxy(data), serve_proxy(second)]
    targets = [f"{HOST}:{p.data['admin']['port']}" for p in replicas]
    prom = PrometheusServer(tmp_path / "prom", targets, rule_files=[fast_rules(tmp_path)])
    (tmp_path / "prom").mkdir()
    prom.start()
    try:
        prom.wait_for_scrapes(1)
        firing = False
        deadline = time.monotonic() + 60
        sent = 0
        async with aiohttp.ClientSession() as client:
            # Bounded traffic: at most 60 s, stops as soon as the alert fires.
            while time.monotonic() < deadline and not firing:
                for i in range(20):
                    proxy = replicas[i % 2]
                    headers = {"X-Session-Id": f"user-{sent}"}
                    async with client.get(proxy.url + "/signals", headers=headers) as r:
                        assert r.status == 200  # every failure was replayed on legacy
                        await r.read()
                    sent += 1
                await asyncio.sleep(0.2)
                alerts = {a["labels"]["alertname"]: a["state"] for a in prom.alerts()}
                firing = alerts.get("RolloutSignalErrorRateHigh") == "firing"
        assert firing, f"alert never fired after {sent} requests: {prom.alerts()}"

        ratio_rows = prom.query('upstream:rollout_error_ratio:rate1m{upstream="signal"}')
        assert ratio_rows, "recording rule produced nothing"
        recorded = float(ratio_rows[0]["value"][1])

        errors = attempts = 0.0
        for proxy in replicas:
            text = await _metrics(proxy)
            errors += _value(
                text, "rollout_upstream_errors_total", upstream="signal", reason="status"
            )
            attempts += _value(text, "rollout_fallbacks_total", feature="default", reason="status")
            attempts += _value(
                text,
                "rollout_requests_total",
                upstream="signal",
                feature="default",
                method="GET",
                code="200",
            )
        assert attempts > 40
        assert abs(errors / attempts - 0.5) < 0.02  # the replicas' own counters
        assert abs(recorded - errors / attempts) < 0.1  # rate() over 1 m of 1 s scrapes

        states = {a["labels"]["alertname"]: a["state"] for a in prom.alerts()}
        assert "RolloutGuardTripped" not in states
        assert "RolloutProxyDown" not in states
        assert "RolloutConfigReloadFailing" not in states
    finally:
        prom.stop()
