"""The public server's own HTTP/1.1 behaviour (proxy/http/server.py), through the real
`rollout serve`: keep-alive, pipelining, `Expect: 100-continue`, HTTP/1.0, HEAD, response
framing, limits. Each test talks raw bytes so no client library smooths anything over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.support import HOST, RawResponse, UpstreamFactory, raw_request, read_response
from tests.support.recording import ServeProxy, get, start

pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read(reader: asyncio.StreamReader, *, head: bool = False) -> RawResponse:
    return await asyncio.wait_for(read_response(reader, head=head), 10)


def served_path(resp: RawResponse) -> str:
    path: str = json.loads(resp.body)["path"]
    return path


async def test_keep_alive_serves_many_requests_on_one_connection(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    async with connection(s.proxy.port) as (reader, writer):
        for n in range(20):
            writer.write(get(f"/k/{n}"))
            resp = await read(reader)
            assert resp.status == 200
            assert served_path(resp) == f"/k/{n}"
            assert resp.header("Connection") is None
    assert [seen.raw_path for seen in s.legacy.seen] == [f"/k/{n}" for n in range(20)]


async def test_pipelined_requests_are_answered_in_order(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    async with connection(s.proxy.port) as (reader, writer):
        body = b"posted-body"
        writer.write(
            get("/p/1")
            + get("/p/2", method="POST", body=body)
            + get("/p/3", "X-Session-Id: to-signal")
        )
        answers = [await read(reader) for _ in range(3)]
    assert [served_path(a) for a in answers] == ["/p/1", "/p/2", "/p/3"]
    assert [a.header("X-Rollout-Upstream") for a in answers] == ["legacy", "legacy", "signal"]
    posted = [seen for seen in s.legacy.seen if seen.raw_path == "/p/2"]
    assert [seen.body for seen in posted] == [body]


async def test_expect_100_continue_gets_a_100_before_the_body_is_sent(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    body = b"x" * 1000
    async with connection(s.proxy.port) as (reader, writer):
        writer.write(
            b"PUT /upload HTTP/1.1\r\nHost: proxy.test\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        interim = await read(reader)
        assert interim.status == 100
        writer.write(body)
        final = await read(reader)
    assert final.status == 200
    [seen] = s.legacy.seen
    assert seen.body == body
    assert seen.header("Expect") is None  # answered here, not forwarded


async def test_http10_client_without_keep_alive_gets_connection_close(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    async with connection(s.proxy.port) as (reader, writer):
        writer.write(b"GET /old HTTP/1.0\r\nHost: proxy.test\r\n\r\n")
        resp = await read(reader)
        assert resp.status == 200
        assert resp.header("Connection") == "close"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the proxy


async def test_http10_keep_alive_is_honoured(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    request = b"GET /old/%d HTTP/1.0\r\nHost: proxy.test\r\nConnection: keep-alive\r\n\r\n"
    async with connection(s.proxy.port) as (reader, writer):
        for n in range(2):
            writer.write(request % n)
            resp = await read(reader)
            assert resp.status == 200
            assert resp.header("Connection") == "keep-alive"
            assert served_path(resp) == f"/old/{n}"


async def _chunked_answer(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for n in range(5):
        await response.write(b"part %d;" % n)
    await response.write_eof()
    return response


async def test_unsized_upstream_body_is_chunked_for_http11_and_close_delimited_for_http10(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy, respond=_chunked_answer)
    expected = b"".join(b"part %d;" % n for n in range(5))
    async with connection(s.proxy.port) as (reader, writer):
        writer.write(get("/stream"))
        resp = await read(reader)
        assert resp.header("Transfer-Encoding") == "chunked"
        assert resp.body == expected
        writer.write(get("/stream-again"))  # the connection is still usable
        assert (await read(reader)).body == expected
    async with connection(s.proxy.port) as (reader, writer):
        writer.write(b"GET /stream HTTP/1.0\r\nHost: proxy.test\r\n\r\n")
        resp = await read(reader)
        assert resp.header("Transfer-Encoding") is None
        assert resp.header("Content-Length") is None
        assert resp.body == expected  # read until the proxy closed the connection


async def test_head_keeps_the_length_sends_no_body_and_keeps_the_connection(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    async with connection(s.proxy.port) as (reader, writer):
        writer.write(get("/h", method="HEAD"))
        head = await read(reader, head=True)
        assert head.status == 200
        length = head.header("Content-Length")
        assert length is not None
        assert int(length) > 0
        writer.write(get("/after-head"))
        resp = await read(reader)  # would misparse if HEAD had sent body bytes
        assert served_path(resp) == "/after-head"


async def test_bare_question_mark_is_kept(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    resp = await raw_request(s.proxy.port, get("/x?"))
    assert resp.status == 200
    assert [seen.raw_path for seen in s.legacy.seen] == ["/x?"]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (get("/" + "a" * 9000), 414),
        (get("/big", "X-Big: " + "b" * 20_000), 431),
        (get("/many", *[f"X-H-{n}: v" for n in range(101)]), 431),
        (b"GET /bad HTTP/1.1\r\nHost: proxy.test\r\nBad Header\r\n\r\n", 400),
        (b"NOT-HTTP\r\n\r\n", 400),
        # Found by the fuzzer: llhttp reads a request line without a version as HTTP/0.9.
        (b"GET /m/\n\r\n HTTP/1.1\r\nHost: proxy.test\r\n\r\n", 400),
        (b"GET /m\r\n\r\n", 400),
    ],
    ids=[
        "long-target",
        "long-header",
        "101-headers",
        "malformed-header",
        "not-http",
        "lf-in-target",
        "http-0.9",
    ],
)
async def test_limits_and_malformed_requests_get_their_status_and_close(
    upstream: UpstreamFactory, serve_proxy: ServeProxy, data: bytes, status: int
) -> None:
    s = await start(upstream, serve_proxy)
    async with connection(s.proxy.port) as (reader, writer):
        writer.write(data)
        resp = await read(reader)
        assert resp.status == status
        assert resp.header("Connection") == "close"
        assert json.loads(resp.body)["upstream"] is None
    assert s.legacy.seen == []
    assert s.signal.seen == []
    assert "Traceback" not in s.proxy.logs()


async def test_100_headers_are_accepted(upstream: UpstreamFactory, serve_proxy: ServeProxy) -> None:
    s = await start(upstream, serve_proxy)
    resp = await raw_request(s.proxy.port, get("/ok", *[f"X-H-{n}: v" for n in range(99)]))
    assert resp.status == 200  # 99 + Host = 100, the limit
    [seen] = s.legacy.seen
    assert seen.header("X-H-98") == "v"


async def test_whitespace_around_a_header_value_is_not_part_of_it(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    # Found by the fuzzer: llhttp strips the blanks before a value but not after it.
    s = await start(upstream, serve_proxy)
    resp = await raw_request(s.proxy.port, get("/ws", "X-Session-Id: \t to-signal \t"))
    assert resp.header("X-Rollout-Upstream") == "signal"  # the test session, not "to-signal \t"
    [seen] = s.signal.seen
    assert seen.header("X-Session-Id") == "to-signal"


# Under the 64 KiB at which the proxy sends an answer in one write, with no drain: the
# path where only holding the next pipelined request keeps memory bounded.
BIG = b"z" * (60 * 1024)


async def _big_answer(request: web.Request) -> web.StreamResponse:
    return web.Response(body=BIG, content_type="application/octet-stream")


async def test_pipelining_client_that_does_not_read_cannot_fill_the_proxy_memory(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    # 2,000 pipelined requests for 60 KiB each: 117 MiB if the proxy buffered every answer.
    s = await start(upstream, serve_proxy, respond=_big_answer)
    count = 2000
    rss_before = s.proxy.rss_bytes()
    async with connection(s.proxy.port) as (reader, writer):
        writer.write(b"".join(get(f"/big/{n}") for n in range(count)))
        await asyncio.sleep(3)  # not reading: the proxy must stop, not buffer
        grown = s.proxy.rss_bytes() - rss_before
        assert grown < 40 * 1024 * 1024, f"RSS grew {grown / 2**20:.1f} MiB"
        held = len(s.legacy.seen)
        assert held < count  # it stopped asking the upstream too
        for _ in range(count):  # now read: every answer arrives, whole and in order
            resp = await read(reader)
            assert resp.status == 200
            assert len(resp.body) == len(BIG)
    assert [seen.raw_path for seen in s.legacy.seen] == [f"/big/{n}" for n in range(count)]
