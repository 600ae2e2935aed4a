"""Upstream faults end to end: every way signal or legacy can fail, against `rollout serve`.

One proxy serves the module; the request path picks who misbehaves and how
(`/signal-reset/...`, `/legacy-never/...`, see `fakes.scripted`), and each test uses paths
of its own so upstream hit counts stay attributable. `to-signal` is a test session
(always signal), `a-legacy-user` lands on legacy at 0 %. The guard is off: it is not
under test here and would only add noise once the faults have tripped it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.support import ProxyProcess, config_dict
from tests.support.fakes import (
    BigBody,
    FakeLoop,
    RawUpstream,
    answer,
    closed_port,
    many_headers,
    never_answer,
    reset_before_headers,
    reset_mid_body,
    scripted,
    slow,
    stall_mid_body,
    status,
    stream_body,
)
from tests.support.probes import http_request, read_to_end
from tests.support.reliability import StartProxy, running_cleanly, shared_proxy

pytestmark = pytest.mark.e2e

SIGNAL_TIMEOUT = 0.5
TOTAL = 2.0
IDLE = 2.0  # timeouts.idle: silence that ends a body once it streams
# Upper bounds on answer times only tell a deadline from a hang (the client waits 30 s):
# which deadline fired is asserted by the status and `X-Rollout-Fallback` (a signal attempt
# not cut at `timeouts.signal` leaves nothing of `timeouts.total` for legacy: a 504), and
# the lower bounds, which load can only make easier. So the slack is generous: a loaded
# 2-core machine may stall a request for seconds, and a timing belongs in bench/.
SLACK = 10.0

FAULTS = {
    "fail": status(503),
    "reset": reset_before_headers(),
    "slow": slow(SIGNAL_TIMEOUT * 4, answer("signal")),
    "never": never_answer(),
    "stall": stall_mid_body(),
    "many": many_headers(10_000),
    "len-rst": reset_mid_body("length", "rst"),
    "len-fin": reset_mid_body("length", "fin"),
    "chunked-rst": reset_mid_body("chunked", "rst"),
    "chunked-fin": reset_mid_body("chunked", "fin"),
    "small-rst": reset_mid_body("length", "rst", size=16 * 1024),
}


@dataclass
class Stack:
    proxy: ProxyProcess
    signal: RawUpstream
    legacy: RawUpstream

    def hits(self, path: str) -> tuple[int, int]:
        """How many requests for `path` reached (signal, legacy)."""
        return self.signal.targets().count(path), self.legacy.targets().count(path)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with FakeLoop() as loop:
        signal = loop.upstream("signal", scripted("signal", FAULTS))
        legacy = loop.upstream("legacy", scripted("legacy", FAULTS))
        data = config_dict(
            signal.url,
            legacy.url,
            timeouts={"connect": 1.0, "signal": SIGNAL_TIMEOUT, "total": TOTAL, "idle": IDLE},
            guard={"enabled": False},
        )
        with shared_proxy(tmp_path_factory.mktemp("faults"), data) as proxy:
            yield Stack(proxy, signal, legacy)


@pytest.fixture(autouse=True)
def stays_up(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    with running_cleanly(request, stack.proxy):
        yield


def unique(prefix: str) -> str:
    return f"/{prefix}/{uuid.uuid4().hex}"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


async def send(
    proxy: ProxyProcess,
    method: str,
    path: str,
    *,
    session: str = "to-signal",
    body: bytes | None = None,
) -> Answer:
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as client,
        client.request(
            method, proxy.url + path, data=body, headers={"X-Session-Id": session}
        ) as resp,
    ):
        data = await resp.read()
        return Answer(resp.status, dict(resp.headers), data, time.monotonic() - started)


def assert_json_error(answer: Answer, status_code: int, upstream: str) -> None:
    assert answer.status == status_code, answer
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["X-Rollout-Upstream"] == upstream
    error = {502: "upstream connection failed", 504: "upstream timed out"}[status_code]
    assert answer.json() == {"error": error, "upstream": upstream}


# --- signal down / slow / reset before headers / 5xx ---------------------------------------


async def test_signal_down_every_method_falls_back(
    fakes: FakeLoop, start_proxy: StartProxy
) -> None:
    legacy = fakes.upstream("legacy")
    proxy = await start_proxy(f"http://127.0.0.1:{closed_port()}", legacy.url)
    for method in ("GET", "PUT", "POST", "PATCH"):
        got = await send(proxy, method, "/down", body=b"payload")
        assert got.status == 200, (method, got)
        assert got.headers["X-Rollout-Upstream"] == "legacy"
        assert got.headers["X-Rollout-Fallback"] == "connect"
        assert got.seconds < 1.0 + SLACK
    assert legacy.hits == 4


async def test_signal_slow_get_falls_back_at_the_signal_timeout(stack: Stack) -> None:
    path = unique("signal-slow")
    got = await send(stack.proxy, "GET", path)
    assert got.status == 200
    assert got.headers["X-Rollout-Fallback"] == "timeout"
    assert got.json()["served_by"] == "legacy"
    assert SIGNAL_TIMEOUT <= got.seconds < SIGNAL_TIMEOUT + SLACK
    assert stack.hits(path) == (1, 1)


async def test_signal_slow_post_is_504_not_replayed(stack: Stack) -> None:
    path = unique("signal-slow")
    got = await send(stack.proxy, "POST", path, body=b"order")
    assert_json_error(got, 504, "signal")
    assert got.seconds < SIGNAL_TIMEOUT + SLACK
    assert stack.hits(path) == (1, 0)


async def test_signal_reset_before_headers_get_falls_back(stack: Stack) -> None:
    path = unique("signal-reset")
    got = await send(stack.proxy, "GET", path)
    assert got.status == 200
    assert got.headers["X-Rollout-Fallback"] == "reset"
    assert stack.hits(path) == (1, 1)


async def test_signal_reset_before_headers_post_is_502_not_replayed(stack: Stack) -> None:
    path = unique("signal-reset")
    got = await send(stack.proxy, "POST", path, body=b"order")
    assert_json_error(got, 502, "signal")
    assert stack.hits(path) == (1, 0)


async def test_5xx_burst_gets_fall_back_and_posts_get_signals_answer(stack: Stack) -> None:
    path = unique("signal-fail")
    gets = [send(stack.proxy, "GET", path) for _ in range(150)]
    posts = [send(stack.proxy, "POST", path, body=b"x") for _ in range(50)]
    answers = await asyncio.gather(*gets, *posts)
    for got in answers[:150]:
        assert got.status == 200
        assert got.headers["X-Rollout-Upstream"] == "legacy"
        assert got.headers["X-Rollout-Fallback"] == "status"
    for got in answers[150:]:
        assert got.status == 503
        assert got.headers["X-Rollout-Upstream"] == "signal"
        assert got.json() == {"served_by": "signal", "error": "boom"}
    assert stack.hits(path) == (200, 150)


# --- legacy down too ---------------------------------------------------------------------


async def test_legacy_down_too_is_a_clean_json_502(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"
    )
    for session in ("to-signal", "a-legacy-user"):
        for method in ("GET", "POST"):
            got = await send(proxy, method, "/x", session=session, body=b"b")
            assert_json_error_connect(got)
            expected = "connect" if session == "to-signal" else None
            assert got.headers.get("X-Rollout-Fallback") == expected


def assert_json_error_connect(got: Answer) -> None:
    assert got.status == 502, got
    assert got.headers["Content-Type"].startswith("application/json")
    assert got.json() == {"error": "upstream unreachable", "upstream": "legacy"}


# --- never answers / stalls ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_never_answering_legacy_is_504_within_the_total_deadline(
    stack: Stack, method: str
) -> None:
    path = unique("legacy-never")
    got = await send(stack.proxy, method, path, session="a-legacy-user", body=b"b")
    assert_json_error(got, 504, "legacy")
    assert got.seconds < TOTAL + SLACK
    assert stack.hits(path) == (0, 1)


async def test_never_answering_signal_get_falls_back_post_is_504(stack: Stack) -> None:
    path = unique("signal-never")
    got = await send(stack.proxy, "GET", path)
    assert got.status == 200
    assert got.headers["X-Rollout-Fallback"] == "timeout"
    assert got.seconds < SIGNAL_TIMEOUT + SLACK
    posted = await send(stack.proxy, "POST", path, body=b"b")
    assert_json_error(posted, 504, "signal")
    assert posted.seconds < SIGNAL_TIMEOUT + SLACK
    assert stack.hits(path) == (2, 1)


async def test_both_never_answering_get_is_504_within_the_total_deadline(stack: Stack) -> None:
    path = unique("both-never")
    got = await send(stack.proxy, "GET", path)
    assert_json_error(got, 504, "legacy")
    assert got.headers["X-Rollout-Fallback"] == "timeout"
    assert got.seconds < TOTAL + SLACK


async def test_stalled_response_body_is_aborted_after_timeouts_idle(stack: Stack) -> None:
    path = unique("legacy-stall")
    started = time.monotonic()
    got = await read_to_end(
        stack.proxy.port,
        http_request("GET", path, "X-Session-Id: a-legacy-user"),
        timeout=IDLE + 10 + SLACK,
    )
    assert got.ended_by != "timeout", "the proxy held a stalled response open"
    assert time.monotonic() - started < IDLE + SLACK
    assert got.status == 200
    assert not got.complete
    assert len(got.body) == 1024


# --- reset in the middle of a body ---------------------------------------------------------


@pytest.mark.parametrize("framing", ["len", "chunked"])
@pytest.mark.parametrize("how", ["rst", "fin"])
async def test_reset_mid_body_aborts_the_client_connection(
    stack: Stack, framing: str, how: str
) -> None:
    path = unique(f"signal-{framing}-{how}")
    got = await read_to_end(
        stack.proxy.port, http_request("GET", path, "X-Session-Id: to-signal"), timeout=10
    )
    assert got.ended_by != "timeout"
    assert got.status == 200
    assert got.headers["x-rollout-upstream"] == "signal"
    assert 0 < len(got.body) < 256 * 1024
    assert not got.complete, "a truncated body was framed as complete"
    if framing == "len":
        assert got.headers["content-length"] == str(256 * 1024)
    else:
        assert "chunked" in got.headers["transfer-encoding"]
    # Response bytes went out: never replayed on legacy.
    assert stack.hits(path) == (1, 0)

    # And an HTTP client sees an error, not a short body.
    path = unique(f"signal-{framing}-{how}")
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(
                stack.proxy.url + path, headers={"X-Session-Id": "to-signal"}
            ) as resp:
                await resp.read()


async def test_reset_mid_small_body_is_a_clean_502_or_an_aborted_response(stack: Stack) -> None:
    """A proxy may buffer a small body before answering; then it can still say 502."""
    path = unique("signal-small-rst")
    got = await read_to_end(
        stack.proxy.port,
        http_request("GET", path, "X-Session-Id: to-signal", "Connection: close"),
        timeout=10,
    )
    assert got.ended_by != "timeout"
    if got.status == 502:
        assert got.complete
        assert json.loads(got.body) == {"error": "upstream connection failed", "upstream": "signal"}
    else:
        assert got.status == 200
        assert not got.complete, "a truncated body was framed as complete"
    assert stack.hits(path) == (1, 0)


# --- pathological responses ----------------------------------------------------------------


async def test_10000_header_response_is_a_clean_502(stack: Stack) -> None:
    path = unique("legacy-many")
    got = await send(stack.proxy, "GET", path, session="a-legacy-user")
    assert_json_error(got, 502, "legacy")
    assert len(got.headers) < 20


async def test_10000_header_response_from_signal_falls_back(stack: Stack) -> None:
    path = unique("signal-many")
    got = await send(stack.proxy, "GET", path)
    assert got.status == 200
    assert got.headers["X-Rollout-Fallback"] == "reset"
    assert stack.hits(path) == (1, 1)


@pytest.mark.slow
async def test_100_mb_response_streams_through_with_bounded_memory(
    fakes: FakeLoop, start_proxy: StartProxy
) -> None:
    big = BigBody.of_mib(100)
    legacy = fakes.upstream("legacy", stream_body(big))
    proxy = await start_proxy(f"http://127.0.0.1:{closed_port()}", legacy.url)
    assert proxy.proc is not None
    baseline = proxy.rss_bytes()
    digest = hashlib.sha256()
    received = 0
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(timeout=timeout) as client,
        client.get(proxy.url + "/big", headers={"X-Session-Id": "a-legacy-user"}) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(big.size)
        paused = False
        async for chunk in resp.content.iter_chunked(1 << 16):
            digest.update(chunk)
            received += len(chunk)
            if not paused and received >= 8 << 20:
                # A slow reader for a while: a proxy without backpressure buffers now.
                paused = True
                await asyncio.sleep(1.5)
    assert received == big.size
    assert digest.hexdigest() == big.sha
    growth = proxy.peak_rss_bytes() - baseline
    assert growth < 32 << 20, f"peak RSS grew by {growth / 2**20:.1f} MiB for a 100 MiB body"
    assert proxy.proc.poll() is None
