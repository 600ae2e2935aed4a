"""Bodies stream through the real `rollout serve` in both directions without being held.

200 MB goes up and 200 MB comes down; each side hashes incrementally, and the proxy's
peak resident memory (VmHWM) after the transfer is compared with its resident memory
(VmRSS) before it. Run with `pytest -s` to see the measured figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from tests.support import ProxyProcess, UpstreamFactory, config_dict, server_url

pytestmark = pytest.mark.e2e

ServeProxy = Callable[..., ProxyProcess]

TOTAL_BYTES = 200 * 1024 * 1024
CHUNK_BYTES = 256 * 1024
MAX_GROWTH_BYTES = 50 * 1024 * 1024
TRANSFER_TIMEOUT = 180.0
MB = 1024 * 1024


@dataclass
class Digest:
    sha256: str = ""
    length: int = 0


DIGEST = web.AppKey("digest", Digest)


async def _hash_upload(request: web.Request) -> web.Response:
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        digest.update(chunk)
        length += len(chunk)
    return web.json_response({"sha256": digest.hexdigest(), "length": length})


async def _stream_download(request: web.Request) -> web.StreamResponse:
    record = request.app[DIGEST]
    size = int(request.query.get("size", TOTAL_BYTES))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("length") == "1":
        resp.content_length = size
    await resp.prepare(request)
    digest = hashlib.sha256()
    sent = 0
    while sent < size:
        chunk = os.urandom(min(CHUNK_BYTES, size - sent))
        digest.update(chunk)
        await resp.write(chunk)
        sent += len(chunk)
    await resp.write_eof()
    record.sha256, record.length = digest.hexdigest(), sent
    return resp


def streaming_app(record: Digest) -> web.Application:
    app = web.Application(client_max_size=2 * TOTAL_BYTES)
    app[DIGEST] = record
    app.router.add_post("/upload", _hash_upload)
    app.router.add_get("/download", _stream_download)
    return app


async def start(upstream: UpstreamFactory, serve_proxy: ServeProxy) -> tuple[ProxyProcess, Digest]:
    record = Digest()
    signal_srv = await upstream(streaming_app(Digest()))
    legacy_srv = await upstream(streaming_app(record))
    # Everything goes to legacy (0 %); the total timeout must cover a whole transfer.
    data = config_dict(
        server_url(signal_srv),
        server_url(legacy_srv),
        timeouts={"connect": 1.0, "signal": 2.0, "total": TRANSFER_TIMEOUT},
    )
    proxy = await asyncio.to_thread(serve_proxy, data)
    # Warm up both directions, buffered and streamed: the first requests import and
    # allocate what every later request reuses.
    async with aiohttp.ClientSession() as client:
        for _ in range(2):
            async with client.post(proxy.url + "/upload", data=os.urandom(256 * 1024)) as r:
                assert r.status == 200
            async with client.post(proxy.url + "/upload", data=_random_stream(4 * MB)) as r:
                assert r.status == 200
            async with client.get(proxy.url + f"/download?size={4 * MB}") as r:
                assert len(await r.read()) == 4 * MB
    return proxy, record


async def _random_stream(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // CHUNK_BYTES):
        yield os.urandom(CHUNK_BYTES)


def report(label: str, proxy: ProxyProcess, rss_before: int, seconds: float) -> int:
    peak = proxy.peak_rss_bytes()
    growth = peak - rss_before
    print(
        f"\n{label}: {TOTAL_BYTES // MB} MB in {seconds:.1f} s "
        f"({TOTAL_BYTES / MB / seconds:.0f} MB/s); proxy VmRSS before {rss_before / MB:.1f} MB, "
        f"VmHWM after {peak / MB:.1f} MB, growth {growth / MB:.1f} MB, "
        f"VmRSS after {proxy.rss_bytes() / MB:.1f} MB"
    )
    return growth


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_200mb_upload_streams_through(
    upstream: UpstreamFactory, serve_proxy: ServeProxy, framing: str
) -> None:
    proxy, _ = await start(upstream, serve_proxy)
    sent = hashlib.sha256()
    sent_bytes = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent_bytes
        while sent_bytes < TOTAL_BYTES:
            chunk = os.urandom(min(CHUNK_BYTES, TOTAL_BYTES - sent_bytes))
            sent.update(chunk)
            sent_bytes += len(chunk)
            yield chunk

    headers = {"Content-Type": "application/octet-stream"}
    if framing == "content-length":
        headers["Content-Length"] = str(TOTAL_BYTES)
    rss_before = proxy.rss_bytes()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT)) as client,
        client.post(proxy.url + "/upload", data=body(), headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
        assert r.headers["X-Rollout-Upstream"] == "legacy"
        received = await r.json()
    growth = report(f"upload ({framing})", proxy, rss_before, loop.time() - started)

    assert sent_bytes == TOTAL_BYTES
    assert received["length"] == TOTAL_BYTES
    assert received["sha256"] == sent.hexdigest()
    assert growth < MAX_GROWTH_BYTES, f"proxy grew {growth / MB:.1f} MB for a streamed upload"


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
async def test_200mb_download_streams_through(
    upstream: UpstreamFactory, serve_proxy: ServeProxy, framing: str
) -> None:
    proxy, record = await start(upstream, serve_proxy)
    query = "?length=1" if framing == "content-length" else ""
    got = hashlib.sha256()
    got_bytes = 0
    rss_before = proxy.rss_bytes()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with (
        aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=TRANSFER_TIMEOUT)
        ) as client,
        client.get(proxy.url + "/download" + query) as r,
    ):
        assert r.status == 200
        assert r.headers["X-Rollout-Upstream"] == "legacy"
        if framing == "content-length":
            assert r.headers["Content-Length"] == str(TOTAL_BYTES)
        else:
            assert "Content-Length" not in r.headers
        async for chunk in r.content.iter_chunked(CHUNK_BYTES):
            got.update(chunk)
            got_bytes += len(chunk)
    growth = report(f"download ({framing})", proxy, rss_before, loop.time() - started)

    assert record.length == TOTAL_BYTES
    assert got_bytes == TOTAL_BYTES
    assert got.hexdigest() == record.sha256
    assert growth < MAX_GROWTH_BYTES, f"proxy grew {growth / MB:.1f} MB for a streamed download"
