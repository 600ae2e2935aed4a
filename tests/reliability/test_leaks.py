"""No leaks: 10,000 requests with faults mixed in leave the proxy's descriptors and
upstream connections where they were after warm-up; idle upstream connections are closed
once past the pool's keep-alive.

Faults on both sides (5xx, resets before headers and mid-body, slow answers that fall
back, clients that vanish before or while the answer comes) are mixed into ordinary
traffic from `CONCURRENCY` keep-alive clients. Every answer is also checked against what
that fault must produce, so a leak cannot hide behind a wrong answer.

The proxy's sockets are found through `/proc/PID/fd` and `/proc/PID/net/tcp`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp
import pytest

from proxy.gateway.state import UPSTREAM_KEEPALIVE_SECONDS
from tests.support import HOST, ProxyProcess, metric_value
from tests.support.fakes import (
    FakeLoop,
    answer,
    closed_port,
    reset_before_headers,
    reset_mid_body,
    scripted,
    slow,
    status,
)
from tests.support.probes import fd_count, upstream_sockets
from tests.support.reliability import StartProxy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONCURRENCY = 40
REQUESTS = 10_000
WARM_UP = 1_000
TIME_LIMIT = 300.0  # a bound against a hang, not a target: ~15 s on an idle 2-core machine
SIGNAL_TIMEOUT = 0.5
LEGACY_USER = "someone"  # bucket 8673: legacy at 50 %

FAULTS = {
    "fail": status(503),
    "reset": reset_before_headers(),
    "midbody": reset_mid_body("length", "rst", size=128 * 1024),
    "slow": slow(SIGNAL_TIMEOUT * 2, answer("signal")),
}


@dataclass(frozen=True)
class Step:
    """One kind of request in the mix, and the answer it must get: (status, fallback)."""

    name: str
    method: str
    path: str
    session: str
    expect: tuple[int, str] | None  # None: the body must be cut short (payload error)
    body: bytes | None = None


STEPS = [
    Step("ok", "GET", "/ok", "user-{n}", (200, "")),
    Step("ok_post", "POST", "/ok", "user-{n}", (200, ""), b"p" * 8192),
    Step("signal_fail_get", "GET", "/signal-fail", "to-signal", (200, "status")),
    Step("signal_fail_post", "POST", "/signal-fail", "to-signal", (503, ""), b"x"),
    Step("signal_reset", "GET", "/signal-reset", "to-signal", (200, "reset")),
    Step("signal_slow", "GET", "/signal-slow", "to-signal", (200, "timeout")),
    Step("signal_midbody", "GET", "/signal-midbody", "to-signal", None),
    Step("legacy_reset", "GET", "/legacy-reset", LEGACY_USER, (502, "")),
]
# Out of every 100 requests; the rest are clients that vanish.
WEIGHTS = {
    "ok": 55,
    "ok_post": 5,
    "signal_fail_get": 10,
    "signal_fail_post": 5,
    "signal_reset": 5,
    "signal_slow": 2,
    "signal_midbody": 3,
    "legacy_reset": 5,
}
VANISHING = 10
MIX: list[Step | None] = [step for step in STEPS for _ in range(WEIGHTS[step.name])] + [
    None
] * VANISHING


async def request(client: aiohttp.ClientSession, proxy: ProxyProcess, step: Step, n: int) -> str:
    """Send one request of the mix; returns "" when the answer is right, else what came."""
    headers = {"X-Session-Id": step.session.format(n=n % 997)}
    try:
        async with client.request(
            step.method, proxy.url + step.path, data=step.body, headers=headers
        ) as resp:
            await resp.read()
            got: tuple[int, str] | None = (resp.status, resp.headers.get("X-Rollout-Fallback", ""))
    except aiohttp.ClientPayloadError:
        got = None
    return "" if got == step.expect else f"{step.name}: {got}"


async def vanish(proxy: ProxyProcess, n: int) -> None:
    """Send a request the proxy must wait on, then go away without reading (all of) it."""
    path = "/signal-slow" if n % 2 else "/legacy-midbody"
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: p\r\nX-Session-Id: to-signal\r\n\r\n".encode())
    await writer.drain()
    if n % 4 == 1:
        await reader.read(100)
    writer.transport.abort()


async def settle(
    proxy: ProxyProcess, client: aiohttp.ClientSession, pid: int, ports: tuple[int, int]
) -> None:
    """Until no request is in flight, then until no upstream socket waits for the proxy's
    close, plus a moment for other closes to land. Bounded waits, generous for a loaded
    machine; the one on CLOSE_WAIT stays well under the pool's keep-alive, whose reaping
    would otherwise hide a proxy that never notices an upstream's close."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with client.get(proxy.admin_url + "/metrics") as resp:
            text = await resp.text()
        if metric_value(text, "rollout_in_flight_requests") == 0:
            break
        await asyncio.sleep(0.1)
    deadline = time.monotonic() + UPSTREAM_KEEPALIVE_SECONDS / 3
    while upstream_sockets(pid, ports)["CLOSE_WAIT"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)


async def test_10000_requests_with_faults_leak_no_fds_or_connections(
    fakes: FakeLoop, start_proxy: StartProxy
) -> None:
    signal_up = fakes.upstream("signal", scripted("signal", FAULTS))
    legacy_up = fakes.upstream("legacy", scripted("legacy", FAULTS))
    proxy = await start_proxy(
        signal_up.url,
        legacy_up.url,
        timeouts={"connect": 1.0, "signal": SIGNAL_TIMEOUT, "total": 5.0},
        rollout={"percentage": 50},
        guard={"enabled": False},  # keep sending faults to signal
    )
    assert proxy.proc is not None
    pid = proxy.proc.pid
    ports = (signal_up.port, legacy_up.port)
    started = time.monotonic()
    done = 0
    wrong: Counter[str] = Counter()

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30)
    ) as client:

        async def run(until: int) -> None:
            nonlocal done

            async def worker() -> None:
                nonlocal done
                while done < until and time.monotonic() - started < TIME_LIMIT:
                    n = done
                    done += 1
                    step = MIX[n % len(MIX)]
                    if step is None:
                        await vanish(proxy, n)
                    elif problem := await request(client, proxy, step, n):
                        wrong[problem] += 1

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        await run(WARM_UP)
        await settle(proxy, client, pid, ports)
        fds_before = fd_count(pid)
        sockets_before = upstream_sockets(pid, ports)

        await run(REQUESTS)
        elapsed = time.monotonic() - started
        await settle(proxy, client, pid, ports)
        fds_after = fd_count(pid)
        sockets_after = upstream_sockets(pid, ports)

    assert proxy.proc.poll() is None, proxy.logs()
    assert not wrong, f"unexpected answers: {dict(wrong)}"
    assert done >= REQUESTS, f"only {done} requests in {elapsed:.0f} s"
    # A leak of one descriptor per fault would be ~2,000; pools may hold a few more
    # idle connections than at warm-up, never more than the concurrency.
    assert fds_after - fds_before <= CONCURRENCY, (fds_before, fds_after, sockets_after)
    assert sockets_after["ESTABLISHED"] <= 2 * CONCURRENCY, sockets_after
    assert sockets_after["CLOSE_WAIT"] == 0, (sockets_before, sockets_after)
    print(
        f"{done} requests in {elapsed:.1f} s; fds {fds_before} -> {fds_after}; "
        f"upstream sockets {dict(sockets_before)} -> {dict(sockets_after)}"
    )


async def test_idle_upstream_connections_are_closed_after_the_keepalive(
    fakes: FakeLoop, start_proxy: StartProxy
) -> None:
    """A burst opens many upstream connections; once idle past the pool's keep-alive they
    must be closed, not kept until the upstream happens to close them (a busy minute
    would otherwise pin hundreds of sockets on every replica and every upstream)."""
    legacy_up = fakes.upstream("legacy", slow(0.3, answer("legacy")))
    proxy = await start_proxy(f"http://{HOST}:{closed_port()}", legacy_up.url)
    assert proxy.proc is not None
    pid = proxy.proc.pid
    fds_idle = fd_count(pid)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as client:

        async def one() -> None:
            async with client.get(proxy.url + "/burst", headers={"X-Session-Id": "u"}) as resp:
                assert resp.status == 200
                await resp.read()

        await asyncio.gather(*(one() for _ in range(150)))
    assert upstream_sockets(pid, [legacy_up.port])["ESTABLISHED"] >= 100

    deadline = time.monotonic() + UPSTREAM_KEEPALIVE_SECONDS + 5
    while time.monotonic() < deadline:
        if upstream_sockets(pid, [legacy_up.port])["ESTABLISHED"] <= 2:
            break
        await asyncio.sleep(1)
    held = upstream_sockets(pid, [legacy_up.port])
    assert held["ESTABLISHED"] <= 2, (
        f"{held['ESTABLISHED']} idle upstream connections still open "
        f"{UPSTREAM_KEEPALIVE_SECONDS + 5:.0f} s after the burst"
    )
    assert fd_count(pid) <= fds_idle + 5
