"""The admin listener's guard rails, and session ids kept out of logs and metrics.

Session ids are credentials in many APIs: they must not end up in log files or in metric
labels (where they would also explode Prometheus' cardinality). Each test sends
distinctive ids through every path that logs something (fallbacks, resets, mid-body
aborts, a tripped guard, malformed requests) and then greps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
import yaml

from proxy.config.load import parse_config
from tests.support import HOST, ProxyProcess, free_port, raw_request
from tests.support.fakes import (
    FakeLoop,
    reset_before_headers,
    reset_mid_body,
    scripted,
    status,
)
from tests.support.probes import listening_ips, read_to_end
from tests.support.reliability import FAST_STOP, StartProxy

pytestmark = pytest.mark.e2e

TOKEN = "adm1n-" + uuid.uuid4().hex
ENDPOINTS = [
    ("GET", "/metrics"),
    ("GET", "/-/healthz"),
    ("GET", "/-/ready"),
    ("GET", "/-/status"),
    ("GET", "/-/page"),  # the status page's data (the page itself holds none: no token)
    ("POST", "/-/reload"),
    ("POST", "/-/guard/reset"),
    ("GET", "/-/preview"),
]
WRONG = [
    None,
    "",
    "Bearer",
    "Bearer ",
    f"Bearer {TOKEN}x",
    f"bearer{TOKEN}",
    TOKEN,
    f"Basic {TOKEN}",
]


async def test_every_admin_endpoint_refuses_without_the_token_and_works_with_it(
    fakes: FakeLoop, start_proxy: StartProxy
) -> None:
    legacy = fakes.upstream("legacy")
    proxy = await start_proxy(legacy.url, legacy.url, admin={"token": TOKEN})
    async with aiohttp.ClientSession() as client:
        # Unknown paths too: without the token nobody learns which endpoints exist.
        for method, path in [*ENDPOINTS, ("GET", "/-/nope"), ("GET", "/-/diffs")]:
            for auth in WRONG:
                headers = {"Authorization": auth} if auth is not None else {}
                async with client.request(method, proxy.admin_url + path, headers=headers) as r:
                    assert r.status == 401, (method, path, auth, r.status)
                    assert TOKEN not in await r.text()
        good = {"Authorization": f"Bearer {TOKEN}"}
        for method, path in ENDPOINTS:
            async with client.request(method, proxy.admin_url + path, headers=good) as r:
                assert r.status == 200, (method, path, r.status, await r.text())
                assert TOKEN not in await r.text()
    assert TOKEN not in proxy.logs()


def test_admin_listener_defaults_to_loopback() -> None:
    config = parse_config(
        "upstreams:\n"
        "  signal: {url: http://127.0.0.1:8000}\n"
        "  legacy: {url: http://127.0.0.1:8001}\n"
    )
    assert config.admin.host == "127.0.0.1"
    assert config.admin.token is None


async def test_admin_listener_binds_loopback_only_when_no_host_is_given(
    fakes: FakeLoop, tmp_path: Path
) -> None:
    legacy = fakes.upstream("legacy")
    admin_port = free_port()
    data = {
        "listen": {"host": HOST, "port": free_port()},
        "admin": {"port": admin_port},
        "upstreams": {"signal": {"url": legacy.url}, "legacy": {"url": legacy.url}},
    }
    path = tmp_path / "minimal.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    proxy = ProxyProcess(path, data, tmp_path / "minimal.log")
    await asyncio.to_thread(proxy.start, *FAST_STOP)
    try:
        assert proxy.proc is not None
        assert listening_ips(proxy.proc.pid, admin_port) == {"127.0.0.1"}
    finally:
        await asyncio.to_thread(proxy.stop)


# --- session ids never in logs or metric labels -------------------------------------------

FAULTS = {
    "fail": status(503),
    "reset": reset_before_headers(),
    "midbody": reset_mid_body("length", "rst"),
}


async def _admin_text(proxy: ProxyProcess, path: str) -> str:
    async with aiohttp.ClientSession() as client, client.get(proxy.admin_url + path) as resp:
        return await resp.text()


async def test_session_ids_never_appear_in_logs_or_metrics(
    fakes: FakeLoop, start_proxy: StartProxy
) -> None:
    signal_up = fakes.upstream("signal", scripted("signal", FAULTS))
    legacy_up = fakes.upstream("legacy", scripted("legacy", FAULTS))
    proxy = await start_proxy(
        signal_up.url,
        legacy_up.url,
        "--verbose",
        *FAST_STOP,
        rollout={"percentage": 100},
        guard={"min_requests": 5, "window_seconds": 60},
    )
    canaries = [f"canary{n}-{uuid.uuid4().hex}" for n in range(12)]
    paths = ["/ok", "/signal-fail/x", "/signal-reset/x", "/both-midbody/x", "/legacy-fail/x"]
    for n, canary in enumerate(canaries):
        path = paths[n % len(paths)]
        by = f"X-Session-Id: {canary}" if n % 2 else f"Cookie: a=b; session_id={canary}"
        for method in ("GET", "POST"):
            await read_to_end(
                proxy.port,
                f"{method} {path} HTTP/1.1\r\nHost: p\r\n{by}\r\nConnection: close\r\n"
                "Content-Length: 2\r\n\r\nhi".encode(),
                timeout=5,
            )
    status_doc = await _admin_text(proxy, "/-/status")
    assert '"tripped": true' in status_doc  # the guard's ERROR line was written too
    metrics = await _admin_text(proxy, "/metrics")
    logs = proxy.logs()
    for canary in canaries:
        assert canary not in logs
        assert canary not in metrics
        assert canary not in status_doc


BAD_HEADS = {
    "control-char-in-session": "X-Session-Id: {canary}\x01",
    "del-in-authorization": "Authorization: Bearer {canary}\x7f",
    "nul-in-cookie": "Cookie: session_id={canary}\x00",
    "session-over-field-limit": "X-Session-Id: {canary}" + "x" * 20_000,
}


@pytest.mark.parametrize("bad", list(BAD_HEADS))
async def test_malformed_request_log_line_does_not_echo_header_values(
    fakes: FakeLoop, start_proxy: StartProxy, bad: str
) -> None:
    """aiohttp's parser errors quote the offending line; the one-line warning the proxy
    logs for a malformed request must not carry a session id or credential with it."""
    legacy = fakes.upstream("legacy")
    proxy = await start_proxy(legacy.url, legacy.url)
    canary = f"canary-{uuid.uuid4().hex}"
    head = BAD_HEADS[bad].format(canary=canary)
    resp = await raw_request(
        proxy.port, f"GET /x HTTP/1.1\r\nHost: p\r\n{head}\r\n\r\n".encode("latin-1")
    )
    assert resp.status in {400, 431}
    # The warning may be written just after the answer: wait for it (bounded), not 0.2 s.
    deadline = time.monotonic() + 30
    while "malformed request" not in proxy.logs() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    logs = proxy.logs()
    assert "malformed request" in logs
    assert canary not in logs, [line for line in logs.splitlines() if canary in line]
    assert legacy.hits == 0
