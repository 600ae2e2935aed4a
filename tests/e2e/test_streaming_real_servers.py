"""SPEC 12 streaming through the real `rollout serve`, against servers nobody here wrote:
httpbin on werkzeug (`/drip`, `/stream/N`, `/range/N`), sse-starlette under uvicorn,
raw close-delimited and chunked answers, and a slow reader of a 200 MiB body.

Order is asserted, never how fast the proxy is: a part of a body must reach the client
while the upstream has not been allowed to write the rest (a gate the test opens), or,
for httpbin's drip, which no test can hold, before the earliest moment httpbin's own
sleeps let it write the last byte. Run with `pytest -s` to see the measured figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support import (
    HOST,
    ProxyProcess,
    UpstreamFactory,
    config_dict,
    read_response,
    server_url,
)
from tests.support.thirdparty import ServerProcess, httpbin_server, uvicorn_server

pytestmark = pytest.mark.e2e

ServeProxy = Callable[..., ProxyProcess]
BOUND = 20.0  # a hang (a body held back) fails the test instead of stalling the suite
SESSION = {"X-Session-Id": "alice"}  # 0 %: every request goes to legacy
MB = 1024 * 1024


@pytest.fixture(scope="module")
def httpbin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with httpbin_server(tmp_path_factory.mktemp("httpbin")) as server:
        yield server


@pytest.fixture(scope="module")
def sse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with uvicorn_server(tmp_path_factory.mktemp("uvicorn")) as server:
        yield server


async def start_proxy(serve_proxy: ServeProxy, url: str, **sections: Any) -> ProxyProcess:
    return await asyncio.to_thread(serve_proxy, config_dict(url, url, **sections))


def get_bytes(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\nX-Session-Id: alice\r\n\r\n".encode()


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), BOUND)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# --- httpbin ------------------------------------------------------------------------

DRIP_BYTES = 4
DRIP_SECONDS = 6.0
# httpbin writes byte k only after k sleeps of DRIP_SECONDS / DRIP_BYTES, counted from
# when it has the request: its last byte cannot be written before this long after the
# request was sent. A lower bound the server guarantees, whatever the load.
LAST_BYTE_NOT_BEFORE = DRIP_SECONDS * (DRIP_BYTES - 1) / DRIP_BYTES


async def test_httpbin_drip_reaches_the_client_before_httpbin_writes_the_last_byte(
    httpbin: ServerProcess, serve_proxy: ServeProxy
) -> None:
    proxy = await start_proxy(serve_proxy, httpbin.url)
    target = f"/drip?duration={DRIP_SECONDS:g}&numbytes={DRIP_BYTES}&delay=0"
    loop = asyncio.get_running_loop()
    pieces: list[tuple[float, bytes]] = []
    async with connection(proxy.port) as (reader, writer):
        writer.write(get_bytes(target))
        sent = loop.time()
        head = await asyncio.wait_for(read_response(reader, head=True), BOUND)
        assert head.status == 200
        assert head.header("Content-Length") == str(DRIP_BYTES)
        assert head.header("X-Rollout-Upstream") == "legacy"
        for _ in range(DRIP_BYTES):  # each read returns at least one byte, or b"" at the end
            if sum(len(p) for _, p in pieces) >= DRIP_BYTES:
                break
            piece = await asyncio.wait_for(reader.read(DRIP_BYTES), BOUND)
            if not piece:
                break
            pieces.append((loop.time(), piece))
    body = b"".join(p for _, p in pieces)
    print(
        f"\ndrip: reads of {[len(p) for _, p in pieces]} bytes at "
        f"{[round(t - sent, 2) for t, _ in pieces]} s after the request; httpbin's last "
        f"byte not before {LAST_BYTE_NOT_BEFORE:g} s"
    )
    assert body == b"*" * DRIP_BYTES
    # The first byte was in the client's hands before httpbin could have written the last
    # (a proxy holding the body until complete cannot pass this, however fast it is).
    first_read = pieces[0][0] - sent
    assert first_read < LAST_BYTE_NOT_BEFORE, f"first byte {first_read:.2f} s after the request"
    assert len(pieces[0][1]) < DRIP_BYTES


STREAM_LINES = 20


async def test_httpbin_stream_lines_all_arrive_intact_and_in_order(
    httpbin: ServerProcess, serve_proxy: ServeProxy
) -> None:
    proxy = await start_proxy(serve_proxy, httpbin.url)
    lines: list[bytes] = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.url}/stream/{STREAM_LINES}", headers=SESSION) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        # Werkzeug sends it chunked; the proxy, not knowing the length either, chunks too.
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in resp.headers
        for _ in range(STREAM_LINES + 1):
            line = await asyncio.wait_for(resp.content.readline(), BOUND)
            if not line:
                break
            lines.append(line)
    assert len(lines) == STREAM_LINES
    assert all(line.endswith(b"\n") for line in lines)
    documents = [json.loads(line) for line in lines]
    assert [d["id"] for d in documents] == list(range(STREAM_LINES))
    assert all(d["url"].endswith(f"/stream/{STREAM_LINES}") for d in documents)


RANGE_BYTES = 102400  # httpbin's largest: more than the proxy's one-write SMALL_BODY


def range_body(first: int, last: int) -> bytes:
    """What httpbin's /range/N holds at [first, last]: a-z, repeating from offset 0."""
    return bytes(ord("a") + i % 26 for i in range(first, last + 1))


@pytest.mark.parametrize(
    ("range_header", "status", "first", "last"),
    [
        (None, 200, 0, RANGE_BYTES - 1),
        ("bytes=1000-70999", 206, 1000, 70999),
        ("bytes=100000-", 206, 100000, RANGE_BYTES - 1),
        ("bytes=-500", 206, RANGE_BYTES - 500, RANGE_BYTES - 1),
    ],
    ids=["whole", "middle", "open-ended", "suffix"],
)
async def test_httpbin_range_bytes_and_content_range_pass_through(
    httpbin: ServerProcess,
    serve_proxy: ServeProxy,
    range_header: str | None,
    status: int,
    first: int,
    last: int,
) -> None:
    proxy = await start_proxy(serve_proxy, httpbin.url)
    headers = dict(SESSION)
    if range_header is not None:
        headers["Range"] = range_header
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.url}/range/{RANGE_BYTES}", headers=headers) as resp,
    ):
        body = await asyncio.wait_for(resp.read(), BOUND)
    assert resp.status == status
    assert body == range_body(first, last)
    assert resp.headers["Content-Length"] == str(last - first + 1)
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert resp.headers["ETag"] == f"range{RANGE_BYTES}"
    # httpbin sends Content-Range with the whole body too; the proxy passes it as given.
    assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{RANGE_BYTES}"


# --- server-sent events (sse-starlette under uvicorn) ----------------------------------


async def next_event(content: aiohttp.StreamReader) -> dict[str, str]:
    """The next event's fields (`id`, `data`); comment lines (pings) are skipped."""
    fields: dict[str, str] = {}
    for _ in range(100):
        line = await asyncio.wait_for(content.readline(), BOUND)
        if not line:
            raise AssertionError(f"the stream ended before an event was complete: {fields}")
        text = line.decode().rstrip("\r\n")
        if not text:
            if fields:
                return fields
            continue
        if text.startswith(":"):
            continue
        name, _, value = text.partition(":")
        fields[name] = value.removeprefix(" ")
    raise AssertionError("no complete event in 100 lines")


GATED_EVENTS = 5


async def test_sse_events_arrive_one_by_one_while_the_server_holds_the_next(
    sse: ServerProcess, serve_proxy: ServeProxy
) -> None:
    proxy = await start_proxy(serve_proxy, sse.url)
    gate = f"{sse.url}/gated/one-by-one"
    async with aiohttp.ClientSession() as session:

        async def allow_one() -> None:
            async with session.post(f"{gate}/allow", params={"n": "1"}) as r:
                assert r.status == 200

        async def server_state() -> dict[str, int]:
            async with session.get(f"{gate}/state") as r:
                state: dict[str, int] = await r.json()
                return state

        await allow_one()
        async with session.get(
            f"{proxy.url}/gated/one-by-one?count={GATED_EVENTS}", headers=SESSION
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert resp.headers["X-Rollout-Upstream"] == "legacy"
            for n in range(GATED_EVENTS):
                if n:
                    await allow_one()
                event = await next_event(resp.content)
                assert event == {"id": str(n), "data": f"event {n}"}
                # The client holds event n while the server has emitted nothing after it.
                assert await server_state() == {"allowed": n + 1, "emitted": n + 1}
            assert await asyncio.wait_for(resp.content.read(), BOUND) == b""


TICKS = 12
TICK_EVERY = 0.5  # at least 5.5 s of stream, never 5 s silent
TOTAL_TIMEOUT = 2.0


async def test_sse_stream_outlasts_timeouts_total_with_every_event(
    sse: ServerProcess, serve_proxy: ServeProxy
) -> None:
    proxy = await start_proxy(
        serve_proxy, sse.url, timeouts={"signal": 1.0, "total": TOTAL_TIMEOUT, "idle": 5.0}
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = []
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{proxy.url}/ticks?count={TICKS}&every={TICK_EVERY}", headers=SESSION) as r,
    ):
        assert r.status == 200
        for _ in range(TICKS):
            events.append(await next_event(r.content))
        rest = await asyncio.wait_for(r.content.read(), BOUND)  # a cut raises here
    lasted = loop.time() - started
    print(f"\nsse ticks: {len(events)} events over {lasted:.1f} s (total {TOTAL_TIMEOUT:g} s)")
    assert events == [{"id": str(n), "data": f"tick {n}"} for n in range(TICKS)]
    assert rest == b""
    assert lasted > 2 * TOTAL_TIMEOUT  # the server's own sleeps make it so: the premise
    assert "aborting" not in proxy.logs()


# --- chunked and close-delimited answers ------------------------------------------------

FIRST, LAST = b"first part;", b"last part."

FRAMINGS = {
    "chunked": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
    "close-http10": b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
    "close-http11": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
}


@contextlib.asynccontextmanager
async def held_back_upstream(framing: str, release: asyncio.Event) -> AsyncIterator[str]:
    """A raw server: the head and FIRST, then LAST only once `release` is set, then the
    end (the final chunk, or closing the connection for a close-delimited body)."""
    chunked = framing == "chunked"

    def frame(part: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(part), part) if chunked else part

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
            writer.write(FRAMINGS[framing] + frame(FIRST))
            await writer.drain()
            await asyncio.wait_for(release.wait(), BOUND)
            writer.write(frame(LAST) + (b"0\r\n\r\n" if chunked else b""))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, HOST, 0)
    try:
        yield f"http://{HOST}:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("framing", list(FRAMINGS))
async def test_first_part_reaches_the_client_before_the_upstream_writes_the_last(
    serve_proxy: ServeProxy, framing: str
) -> None:
    release = asyncio.Event()
    async with held_back_upstream(framing, release) as url:
        proxy = await start_proxy(serve_proxy, url)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{proxy.url}/held", headers=SESSION) as resp,
        ):
            assert resp.status == 200
            assert resp.headers["X-Rollout-Upstream"] == "legacy"
            first = await asyncio.wait_for(resp.content.readexactly(len(FIRST)), BOUND)
            assert first == FIRST
            assert not release.is_set()  # the upstream has not written the rest yet
            release.set()
            # The end is framed for the client (the final chunk): a body cut short, or
            # a close-delimited end taken for an error, raises ClientPayloadError here.
            assert await asyncio.wait_for(resp.content.read(), BOUND) == LAST
    assert "aborting" not in proxy.logs()


# --- a slow reader of a large body --------------------------------------------------------

BIG_BYTES = 200 * MB
BLOCK_BYTES = 256 * 1024
READ_RATE = 12 * MB  # bytes per second the client reads at: far below what the upstream writes
PAUSE_EVERY = 40 * MB  # and, every so often, it stops reading for a while
PAUSE_SECONDS = 0.5
RECV_BYTES = 16 * 1024
CLIENT_RCVBUF = 32 * 1024
READ_DEADLINE = 50.0
MAX_GROWTH_BYTES = 20 * MB


def big_body_app(block: bytes) -> web.Application:
    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = size
        await resp.prepare(request)
        for sent in range(0, size, len(block)):
            await resp.write(block[: size - sent])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/big", big)
    return app


@dataclass
class SlowRead:
    status: int = 0
    length: int | None = None
    received: int = 0
    mismatch_at: int | None = None
    seconds: float = 0.0
    rss_samples: list[int] = field(default_factory=list)


async def slow_read(proxy: ProxyProcess, size: int, block: bytes) -> SlowRead:
    """GET /big?size= through the proxy on a socket with a small receive buffer, read at
    READ_RATE with a pause every PAUSE_EVERY bytes (the proxy's RSS sampled in each);
    every byte checked against the repeated `block`. Bounded by READ_DEADLINE."""
    loop = asyncio.get_running_loop()
    twice = memoryview(block + block)
    result = SlowRead()
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, proxy.port)), BOUND)
        await loop.sock_sendall(sock, get_bytes(f"/big?size={size}"))
        started = loop.time()
        raw = b""
        while b"\r\n\r\n" not in raw and len(raw) < 64 * 1024:
            n = await asyncio.wait_for(loop.sock_recv_into(sock, buf), BOUND)
            if not n:
                break
            raw += bytes(view[:n])
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        result.status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                result.length = int(value)

        def take(data: memoryview) -> None:
            offset = result.received % len(block)
            if result.mismatch_at is None and data != twice[offset : offset + len(data)]:
                result.mismatch_at = result.received
            result.received += len(data)

        take(memoryview(rest))
        next_pause = PAUSE_EVERY
        while result.received < size and loop.time() - started < READ_DEADLINE:
            n = await asyncio.wait_for(loop.sock_recv_into(sock, buf), BOUND)
            if not n:
                break
            take(view[:n])
            if result.received >= next_pause:
                next_pause += PAUSE_EVERY
                await asyncio.sleep(PAUSE_SECONDS)
                result.rss_samples.append(proxy.rss_bytes())
            ahead = result.received / READ_RATE - (loop.time() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        result.seconds = loop.time() - started
    return result


def reset_peak_rss(proxy: ProxyProcess) -> bool:
    """Reset VmHWM to VmRSS (Linux clear_refs "5"), so the peak read later is this
    transfer's; if the kernel refuses, the peak since start is used (a stricter bound)."""
    assert proxy.proc is not None
    try:
        Path(f"/proc/{proxy.proc.pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def test_a_slow_reader_of_200mib_does_not_grow_the_proxy(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    block = os.urandom(BLOCK_BYTES)
    legacy = await upstream(big_body_app(block))
    proxy = await start_proxy(serve_proxy, server_url(legacy), timeouts={"idle": 10.0})
    # Warm up the same path: the first transfer imports and allocates what later reuse.
    warm = await slow_read(proxy, 8 * MB, block)
    assert (warm.status, warm.received, warm.mismatch_at) == (200, 8 * MB, None)

    rss_before = proxy.rss_bytes()
    peak_reset = reset_peak_rss(proxy)
    read = await slow_read(proxy, BIG_BYTES, block)
    peak = max(proxy.peak_rss_bytes(), *read.rss_samples, rss_before)
    growth = peak - rss_before
    print(
        f"\nslow reader: {read.received / MB:.0f} MiB in {read.seconds:.1f} s "
        f"({read.received / MB / read.seconds:.1f} MiB/s); proxy VmRSS before "
        f"{rss_before / MB:.1f} MiB, peak {peak / MB:.1f} MiB (VmHWM reset: {peak_reset}), "
        f"growth {growth / MB:.1f} MiB; VmRSS in pauses "
        f"{[round(s / MB, 1) for s in read.rss_samples]} MiB"
    )
    assert read.status == 200
    assert read.length == BIG_BYTES
    assert read.received == BIG_BYTES, f"stopped at {read.received} in {read.seconds:.1f} s"
    assert read.mismatch_at is None, f"bytes differ from offset {read.mismatch_at}"
    assert len(read.rss_samples) == BIG_BYTES // PAUSE_EVERY
    assert growth < MAX_GROWTH_BYTES, f"proxy grew {growth / MB:.1f} MiB for a slow reader"
