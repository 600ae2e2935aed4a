"""Shared fixtures: fake upstreams (real aiohttp servers on loopback) and the proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support import HOST, ProxyProcess, UpstreamFactory, write_config


@pytest.fixture
async def upstream(aiohttp_server: Any) -> UpstreamFactory:
    """Start an aiohttp app as a real server on 127.0.0.1; returns the TestServer."""

    async def start(app: web.Application) -> TestServer:
        server: TestServer = await aiohttp_server(app, host=HOST)
        return server

    return start


@pytest.fixture
def serve_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Start `rollout serve` processes from a config dict; all stopped at teardown."""
    started: list[ProxyProcess] = []

    def start(data: dict[str, Any], *extra: str, name: str = "rollout") -> ProxyProcess:
        path = write_config(tmp_path / f"{name}-{len(started)}.yaml", data)
        proc = ProxyProcess(path, data, tmp_path / f"{name}-{len(started)}.log")
        started.append(proc)
        return proc.start(*extra)

    yield start
    for proc in started:
        proc.stop()
