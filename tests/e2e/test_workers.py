"""`rollout serve --workers 2`: both processes serve, /metrics aggregates them, SIGTERM ends all."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp

from proxy.demo.apis import legacy_app, signal_app
from tests.support import ProxyProcess, UpstreamFactory, config_dict, metric_value, server_url


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def sockets_on(pid: int, port: int, state: str) -> int:
    """Sockets of process `pid` on local `port` in TCP `state` (01 established, 0A listen)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed while listed: a connection the worker just finished
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == state and fields[9] in inodes:
            count += 1
    return count


async def test_two_workers_share_the_port_and_metrics_are_aggregated(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> None:
    signal_srv = await upstream(signal_app())
    legacy_srv = await upstream(legacy_app())
    proxy = serve_proxy(
        config_dict(server_url(signal_srv), server_url(legacy_srv)), "--workers", "2"
    )
    assert proxy.proc is not None
    workers = children(proxy.proc.pid)
    assert len(workers) == 2
    for _ in range(200):  # worker 1 may still be starting when worker 0 answers
        if all(sockets_on(pid, proxy.port, "0A") for pid in workers):
            break
        await asyncio.sleep(0.05)
    assert all(sockets_on(pid, proxy.port, "0A") for pid in workers)

    # Many concurrent keep-alive connections: the kernel spreads them over both workers.
    connector = aiohttp.TCPConnector(limit=40, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one(i: int) -> None:
            async with client.get(
                proxy.url + "/health", headers={"X-Session-Id": f"u-{i}"}
            ) as resp:
                assert resp.status == 200
                await resp.read()

        await asyncio.gather(*(one(i) for i in range(400)))
        held = [sockets_on(pid, proxy.port, "01") for pid in workers]
        assert all(n > 0 for n in held), f"connections per worker: {held}"

        async with client.get(proxy.admin_url + "/metrics") as resp:
            text = await resp.text()
    served = sum(
        metric_value(
            text,
            "rollout_requests_total",
            upstream=side,
            feature="default",
            method="GET",
            code="200",
        )
        or 0
        for side in ("signal", "legacy")
    )
    assert served == 400  # the sum over both workers, not one worker's share
    assert metric_value(text, "rollout_build_info", version=_version()) == 1

    proxy.signal(signal.SIGTERM)
    assert proxy.proc.wait(30) == 0
    assert "Warning" not in proxy.logs()
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)


def _version() -> str:
    from proxy import __version__

    return __version__
