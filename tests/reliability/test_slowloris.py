"""Slowloris: a client must not hold a connection open for ever by sending nothing useful.

The public server (`proxy/http/server.py`) closes a connection that has not completed a
request head (or sent a new one after its last answer) within the keep-alive time, 75 s,
as nginx does. (With aiohttp's server this was a defect found here: its low-level
server's own default was 3630 s.) Anything past `LIMIT` (two minutes) is reported as a
defect: a few thousand such clients exhaust the proxy's file descriptors.

The clients start with the suite (`conftest.slow_clients`); these tests run last.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.slowloris import LIMIT, SlowClient, SlowClients

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


async def test_client_that_never_reads_its_answers_is_cut_off(slow_clients: SlowClients) -> None:
    # nginx's send_timeout: a client that reads nothing for the keep-alive time is dropped,
    # and meanwhile the proxy held at most one answer beyond the socket buffers.
    await _closed_within_limit(slow_clients, slow_clients.nonreader)
