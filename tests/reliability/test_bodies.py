"""Bodies end to end, verified by SHA-256: uploads, downloads, and fallback replays.

Legacy echoes the body it received with its hash in `X-Body-Sha256`; the client compares
both with the hash of what it sent, and the recording upstreams' own hashes show what each
side actually received (signal too, before it failed).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from tests.support import ProxyProcess, config_dict
from tests.support.fakes import (
    FakeLoop,
    RawUpstream,
    answer,
    closed_port,
    echo,
    reset_before_headers,
    scripted,
    slow,
    status,
)
from tests.support.reliability import StartProxy, running_cleanly, shared_proxy

pytestmark = pytest.mark.e2e

SIGNAL_TIMEOUT = 0.5
SMALL = os.urandom(48 * 1024)  # buffered: replayable
LARGE = os.urandom(3 << 20)  # over max_body_bytes (1 MiB): streamed


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Stack:
    proxy: ProxyProcess
    signal: RawUpstream
    legacy: RawUpstream


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    faults = {
        "fail": status(503),
        "reset": reset_before_headers(),
        "slow": slow(SIGNAL_TIMEOUT * 4, answer("signal")),
    }
    with FakeLoop() as loop:
        signal = loop.upstream("signal", scripted("signal", faults))
        legacy = loop.upstream("legacy", echo())
        data = config_dict(
            signal.url,
            legacy.url,
            timeouts={"connect": 1.0, "signal": SIGNAL_TIMEOUT, "total": 20.0},
            guard={"enabled": False},
        )
        with shared_proxy(tmp_path_factory.mktemp("bodies"), data) as proxy:
            yield Stack(proxy, signal, legacy)


@pytest.fixture(autouse=True)
def stays_up(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    with running_cleanly(request, stack.proxy):
        yield


async def _chunks(data: bytes, size: int = 100_003) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def exchange(
    url: str, method: str, body: bytes, *, chunked: bool, session: str
) -> tuple[int, dict[str, str], bytes]:
    # BytesIO: aiohttp warns about (and blocks the loop on) a large raw bytes body.
    payload = _chunks(body) if chunked else io.BytesIO(body)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client,
        client.request(method, url, data=payload, headers={"X-Session-Id": session}) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


@pytest.mark.parametrize(
    ("body", "chunked"),
    [(SMALL, False), (LARGE, False), (LARGE, True)],
    ids=["buffered", "streamed-length", "streamed-chunked"],
)
async def test_upload_and_download_arrive_intact(stack: Stack, body: bytes, chunked: bool) -> None:
    path = f"/echo/{os.urandom(8).hex()}"
    code, headers, received = await exchange(
        stack.proxy.url + path, "POST", body, chunked=chunked, session="a-legacy-user"
    )
    assert code == 200
    assert headers["X-Rollout-Upstream"] == "legacy"
    assert headers["X-Body-Sha256"] == sha(body)
    assert sha(received) == sha(body)
    (seen,) = [s for s in stack.legacy.seen if s.target == path]
    assert seen.sha == sha(body)


@pytest.mark.parametrize(
    ("fault", "reason"), [("fail", "status"), ("reset", "reset"), ("slow", "timeout")]
)
async def test_fallback_replays_the_identical_body(stack: Stack, fault: str, reason: str) -> None:
    path = f"/signal-{fault}/{os.urandom(8).hex()}"
    code, headers, received = await exchange(
        stack.proxy.url + path, "PUT", SMALL, chunked=True, session="to-signal"
    )
    assert code == 200
    assert headers["X-Rollout-Fallback"] == reason
    assert sha(received) == sha(SMALL)
    (on_signal,) = [s for s in stack.signal.seen if s.target == path]
    (on_legacy,) = [s for s in stack.legacy.seen if s.target == path]
    assert on_signal.sha == on_legacy.sha == sha(SMALL)


async def test_streamed_upload_falls_back_intact_when_signal_is_down(
    fakes: FakeLoop, start_proxy: StartProxy
) -> None:
    legacy = fakes.upstream("legacy", echo())
    proxy = await start_proxy(f"http://127.0.0.1:{closed_port()}", legacy.url)
    code, headers, received = await exchange(
        proxy.url + "/up", "POST", LARGE, chunked=True, session="to-signal"
    )
    assert code == 200
    assert headers["X-Rollout-Fallback"] == "connect"
    assert sha(received) == sha(LARGE)
    assert legacy.seen[0].sha == sha(LARGE)
