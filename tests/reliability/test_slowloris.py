"""Slowloris: a client must not hold a connection open for ever by sending nothing useful.

aiohttp 3.14 has no separate request-head timeout. What closes such a connection is the
keep-alive timer, armed when the connection is made and closing it if the handler is still
waiting for a request head when it fires (`RequestHandler._process_keepalive`). Its
default depends on the entry point: `web.run_app` passes 75 s, but `AppRunner` (what
`rollout serve` uses) leaves `RequestHandler`'s own default, 3630 s. Anything past `LIMIT`
(two minutes) is reported as a defect: a few thousand such clients exhaust the proxy's
file descriptors.

The clients start with the suite (`conftest.slow_clients`); these tests run last.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.reliability.slowloris import LIMIT, SlowClient, SlowClients

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def _closed_within_limit(clients: SlowClients, client: SlowClient) -> None:
    await asyncio.to_thread(clients.wait, client)
    assert client.closed_after is not None, (
        f"the proxy still held the connection ({client.name}) after {LIMIT:.0f} s"
    )
    assert client.closed_after <= LIMIT, (client.closed_after, client.how)


async def test_slowloris_request_head_is_cut_off(slow_clients: SlowClients) -> None:
    await _closed_within_limit(slow_clients, slow_clients.dribbler)


async def test_silent_connection_is_closed(slow_clients: SlowClients) -> None:
    await _closed_within_limit(slow_clients, slow_clients.silent)
