"""deploy/prometheus and deploy/grafana: promtool checks, and every PromQL name is real."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml

from proxy.demo.apis import legacy_app, signal_app
from tests.support import HOST, ProxyProcess, UpstreamFactory, config_dict, server_url
from tests.support.tls import tls_upstream, write_ca, write_cert

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "rollout-proxy.json"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install the Debian package `prometheus` (scripts/test does)"
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", "rules.yml"],
        ["test", "rules", "rules.test.yml"],
        ["check", "config", "prometheus.yml"],
    ],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool(args: list[str]) -> None:
    result = subprocess.run(
        [promtool(), *args], cwd=PROM, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "rules.test.yml").read_text())["tests"]
    fires: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alerts == fires, f"alerts without a firing test: {alerts - fires}"
    assert alerts == silent, f"alerts without a must-not-fire test: {alerts - silent}"
    assert {
        "RolloutSignalErrorRateHigh",
        "RolloutSignalLatencyHigh",
        "RolloutGuardTripped",
        "RolloutConfigReloadFailing",
        "RolloutFallbackRateHigh",
        "RolloutNoSignalTraffic",
        "RolloutProxyDown",
        "RolloutTLSCertificateExpiringSoon",
        "RolloutTLSCertificateExpiryCritical",
    } <= alerts


def test_kubernetes_scrape_job_keeps_the_job_name_the_alerts_use() -> None:
    doc = yaml.safe_load((PROM / "scrape-kubernetes.yml").read_text())
    (job,) = doc["scrape_configs"]
    assert job["job_name"] == "rollout-proxy"
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"__address__", "__metrics_path__", "instance"} <= targets


def _walk_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from _walk_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_exprs(item)


def all_exprs() -> list[str]:
    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    return list(_walk_exprs(rules)) + list(_walk_exprs(dashboard))


_NAME = re.compile(r'"[^"]*"|([a-zA-Z_:][a-zA-Z0-9_:]*)')


def referenced_names(expr: str) -> set[str]:
    """Metric and recording-rule names in a PromQL expression (string literals skipped)."""
    names = {m.group(1) for m in _NAME.finditer(expr) if m.group(1)}
    return {n for n in names if n.startswith("rollout_") or ":" in n or n == "up"}


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "Configured vs effective split",
        "Requests per upstream",
        "Error rate per upstream",
        "Latency per upstream (p50 / p95 / p99)",
        "Fallbacks to legacy by reason",
        "Guard",
        "Config reloads",
        "Shadow match rate per feature",
    } <= titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    steps = {
        p["title"]: [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        for p in dashboard["panels"]
        if p["type"] == "timeseries"
    }
    assert steps["Error rate per upstream"] == [None, 0.01, 0.05]  # criteria lines
    assert steps["Latency per upstream (p50 / p95 / p99)"] == [None, 0.2, 0.5]


async def test_every_promql_name_is_exposed_by_a_running_proxy(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    signal = await upstream(signal_app())
    legacy = await upstream(legacy_app())
    # Shadow on, so its labelled series exist too; legacy over mutual TLS, so the
    # certificate expiry gauge has a series.
    ca = trustme.CA()
    client_files = write_cert(ca.issue_cert("rollout-proxy"), tmp_path, "client")
    tls = {
        "ca_file": str(write_ca(ca, tmp_path / "ca.pem")),
        "cert_file": str(client_files.cert),
        "key_file": str(client_files.key),
    }
    async with tls_upstream("legacy", ca.issue_cert(HOST), client_ca=ca) as tls_legacy:
        upstreams = {
            "signal": {"url": server_url(signal)},
            "legacy": {"url": tls_legacy.url, "tls": tls},
        }
        data = config_dict(
            server_url(signal), server_url(legacy), upstreams=upstreams, shadow={"enabled": True}
        )
        proxy = serve_proxy(data)
        async with aiohttp.ClientSession() as client:
            for sid in ("to-signal", "someone"):
                async with client.get(proxy.url + "/health", headers={"X-Session-Id": sid}) as r:
                    assert r.status == 200
            async with client.get(proxy.admin_url + "/metrics") as r:
                exposition = await r.text()
    assert 'rollout_tls_certificate_expiry_seconds{certificate="legacy"}' in exposition
    exposed = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", exposition, re.MULTILINE))
    rules = yaml.safe_load((PROM / "rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}

    missing = {}
    for expr in all_exprs():
        for name in referenced_names(expr):
            known = name in exposed or name in recorded or name == "up"
            if not known:
                missing[name] = expr
    assert not missing, f"names not exposed by the proxy nor recorded: {missing}"
    assert len(all_exprs()) > 20  # the walk really found the expressions
