"""The public HTTP/1.1 server at the wire: bytes in through a fake transport, bytes out.

Each test builds an `HttpConnection` on a `MockTransport`, feeds it request bytes and
asserts the exact bytes written and what happened to the connection (closed, aborted,
reading paused). No socket, no subprocess, no wall-clock sleep.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.errors import ClientGoneError
from proxy.http import server
from proxy.http.request import BODY_HIGH_WATER
from tests.support.wire import MockTransport, connect, settle

Handler = Callable[[server.Request], Awaitable[None]]
Connect = Callable[..., tuple[server.HttpConnection, MockTransport]]


@pytest.fixture
async def serve() -> AsyncIterator[Connect]:
    """`serve(handler, keepalive=5.0)`: a connected `HttpConnection` and its transport.

    Every connection is lost at teardown, which cancels its idle timer."""
    made: list[server.HttpConnection] = []

    def make(
        handler: Handler, *, keepalive: float = 5.0
    ) -> tuple[server.HttpConnection, MockTransport]:
        http = server.HttpServer(handler, keepalive=keepalive)
        conn = server.HttpConnection(http)
        transport = connect(conn)
        made.append(conn)
        return conn, transport

    yield make
    for conn in made:
        if not conn.lost:
            conn.connection_lost(None)
    await settle()


def rejection(status: int, reason: str, detail: str) -> bytes:
    """The exact bytes of the server's answer to a request it refuses to parse."""
    body = json.dumps({"error": detail, "upstream": None}).encode()
    return (
        b"HTTP/1.1 %d %b\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%b" % (status, reason.encode(), len(body), body)
    )


async def hello(request: server.Request) -> None:
    request.respond(200, "OK", [("X-Path", request.target)], b"hello")


class Recorder:
    """A handler that records each request and answers it with its target."""

    def __init__(self) -> None:
        self.seen: list[server.Request] = []

    async def __call__(self, request: server.Request) -> None:
        self.seen.append(request)
        request.respond(200, "OK", [], request.target.encode())


# --- a plain request ------------------------------------------------------------------


async def test_get_answered_with_exact_bytes(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    conn.data_received(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Session: 7\r\n\r\n")
    await settle(lambda: bool(transport.buffer))

    assert transport.written == b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n/a?b=1"
    assert not transport.closed
    request = seen.seen[0]
    assert (request.method, request.target, request.version) == ("GET", "/a?b=1", "1.1")
    assert request.headers.items == [("Host", "x"), ("X-Session", "7")]
    assert request.headers.get("x-session") == "7"
    assert request.peer == "127.0.0.1"
    assert request.body is None


async def test_header_values_keep_their_bytes_minus_trailing_blanks(serve: Connect) -> None:
    seen = Recorder()
    conn, _ = serve(seen)
    conn.data_received(b"GET / HTTP/1.1\r\nX-S: 7\t \r\nX-Raw: caf\xc3\xa9\xff\r\nX-S: 8\r\n\r\n")
    await settle(lambda: bool(seen.seen))

    headers = seen.seen[0].headers
    assert headers.get("X-S") == "7"
    assert headers.getall("x-s") == ["7", "8"]
    raw = headers.get("x-raw")
    assert raw is not None
    assert raw.encode("utf-8", "surrogateescape") == b"caf\xc3\xa9\xff"
    # Kept as the bytes received: names as spelled, values minus trailing blanks.
    assert headers.raw == [(b"X-S", b"7"), (b"X-Raw", b"caf\xc3\xa9\xff"), (b"X-S", b"8")]
    assert headers.lowered == [b"x-s", b"x-raw", b"x-s"]
    assert headers.get_raw(b"x-raw") == b"caf\xc3\xa9\xff"
    assert headers.getall_raw(b"x-s") == [b"7", b"8"]
    assert headers.get_raw(b"x-none") is None
    assert headers.get("X-None") is None
    assert headers.get("X-\u0130") is None  # a name no header can have: no error


class HeadResponder:
    """A handler answering with a ready header block through `respond_head`."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason

    async def __call__(self, request: server.Request) -> None:
        request.respond_head(self.status, self.reason, b"X-A: 1\r\nContent-Length: 2\r\n", b"hi")


@pytest.mark.parametrize(
    ("status", "reason", "line"),
    [
        pytest.param(200, "OK", b"HTTP/1.1 200 OK\r\n", id="from-the-table"),
        pytest.param(404, "Not Found", b"HTTP/1.1 404 Not Found\r\n", id="404-table"),
        pytest.param(499, "Client Closed Request", b"HTTP/1.1 499 Client Closed Request\r\n"),
        pytest.param(200, "Fine", b"HTTP/1.1 200 Fine\r\n", id="upstream-own-reason"),
        pytest.param(200, "", b"HTTP/1.1 200 \r\n", id="no-reason"),
        pytest.param(299, "Odd", b"HTTP/1.1 299 Odd\r\n", id="not-in-the-table"),
        pytest.param(200, "caf\xe9", b"HTTP/1.1 200 caf\xe9\r\n", id="latin-1-reason"),
    ],
)
async def test_respond_head_status_line(
    serve: Connect, status: int, reason: str, line: bytes
) -> None:
    conn, transport = serve(HeadResponder(status, reason))
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle(lambda: bool(transport.buffer))
    assert transport.written == line + b"X-A: 1\r\nContent-Length: 2\r\n\r\nhi"


@pytest.mark.parametrize(
    ("request_head", "connection"),
    [
        pytest.param(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", b"keep-alive"),
        pytest.param(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", b"close"),
    ],
)
async def test_respond_head_says_what_becomes_of_the_connection(
    serve: Connect, request_head: bytes, connection: bytes
) -> None:
    conn, transport = serve(HeadResponder(200, "OK"))
    conn.data_received(request_head)
    await settle(lambda: bool(transport.buffer))
    assert transport.written == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: %b\r\n\r\nhi" % connection
    )


async def test_request_split_into_single_bytes_is_parsed(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    for byte in b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n":
        conn.data_received(bytes([byte]))
    await settle(lambda: bool(transport.buffer))

    assert transport.written == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n/slow"


async def test_json_response(serve: Connect) -> None:
    async def handler(request: server.Request) -> None:
        request.respond_json(502, {"error": "x"}, [("X-A", "1")])

    conn, transport = serve(handler)
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle(lambda: bool(transport.buffer))

    assert transport.written == (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json; charset=utf-8\r\n"
        b'X-A: 1\r\nContent-Length: 14\r\n\r\n{"error": "x"}'
    )


# --- limits ---------------------------------------------------------------------------


async def test_request_line_of_8190_bytes_is_accepted(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    target = b"/" + b"a" * 8189  # the documented limits, not the constants
    conn.data_received(b"GET " + target + b" HTTP/1.1\r\n\r\n")
    await settle(lambda: bool(transport.buffer))

    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert seen.seen[0].target == target.decode()


async def test_request_line_over_8190_bytes_is_414(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    target = b"/" + b"a" * 8190
    # In pieces: the limit holds for a target that arrives over several reads.
    conn.data_received(b"GET " + target[:5000])
    conn.data_received(target[5000:] + b" HTTP/1.1\r\n\r\n")
    await settle()

    assert transport.written == rejection(414, "URI Too Long", "request line too long")
    assert transport.closed
    assert transport.reading_paused
    assert seen.seen == []


async def test_100_headers_accepted_101_is_431(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    conn.data_received(
        b"GET /ok HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(100)) + b"\r\n"
    )
    await settle(lambda: bool(transport.buffer))
    assert transport.take().startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(seen.seen[0].headers.items) == 100

    conn.data_received(
        b"GET /no HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n"
    )
    await settle()
    assert transport.written == rejection(
        431, "Request Header Fields Too Large", "too many headers"
    )
    assert transport.closed
    assert len(seen.seen) == 1


async def test_header_over_16_kib_is_431(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    value = b"v" * (16 * 1024 - len(b"X-Big") + 1)
    conn.data_received(b"GET / HTTP/1.1\r\nX-Big: " + value + b"\r\n\r\n")
    await settle()

    assert transport.written == rejection(
        431, "Request Header Fields Too Large", "header too large"
    )
    assert transport.closed
    assert seen.seen == []


async def test_head_over_1_mib_is_431(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    conn.data_received(b"GET / HTTP/1.1\r\n")
    # Each header under the field limit, fewer than 100 of them, 1.2 MB in all.
    for i in range(80):
        if transport.buffer:
            break
        conn.data_received(b"X-%d: %b\r\n" % (i, b"v" * 15000))
    await settle()

    assert transport.written == rejection(
        431, "Request Header Fields Too Large", "request head too large"
    )
    assert transport.closed
    assert seen.seen == []


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", "Invalid header token"),
        (b"GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", "Invalid character in Content-Length"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Transfer-Encoding can't be present with Content-Length",
        ),
        (b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", "Unexpected whitespace after header value"),
        (b"\x00\x01\x02 / HTTP/1.1\r\n\r\n", "Invalid method encountered"),
    ],
    ids=["no-colon", "bad-length", "te-and-cl", "folded", "binary"],
)
async def test_malformed_request_is_400(serve: Connect, raw: bytes, detail: str) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    conn.data_received(raw)
    await settle()

    assert transport.written == rejection(400, "Bad Request", detail)
    assert transport.closed
    assert seen.seen == []


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"GET /x\r\n\r\n", "HTTP/1.0 or HTTP/1.1 only"),
        (b"GET /x\r\nHost: a\r\n\r\n", "HTTP/1.0 or HTTP/1.1 only"),
        (b"GET /x\n\n", "Invalid header field char"),
    ],
    ids=["crlf", "with-headers", "bare-lf"],
)
async def test_http_0_9_request_line_is_400(serve: Connect, raw: bytes, detail: str) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    # Up to its first line break, llhttp waits for the rest of the head: nothing yet.
    first = raw.index(b"\n") + 1
    conn.data_received(raw[:first])
    await settle()
    assert transport.written == b""
    conn.data_received(raw[first:])
    await settle()

    assert transport.written == rejection(400, "Bad Request", detail)
    assert transport.closed
    assert seen.seen == []


async def test_rejection_waits_for_the_answers_before_it(serve: Connect) -> None:
    release = asyncio.Event()

    async def handler(request: server.Request) -> None:
        await release.wait()
        request.respond(200, "OK", [], b"first")

    conn, transport = serve(handler)
    conn.data_received(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nbad header\r\n\r\n")
    await settle()
    assert transport.written == b""
    release.set()
    await settle(lambda: transport.closed)

    assert transport.written == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst" + rejection(
        400, "Bad Request", "Invalid header token"
    )


# --- pipelining -----------------------------------------------------------------------


async def test_pipelined_requests_answered_in_order(serve: Connect) -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def handler(request: server.Request) -> None:
        started.append(request.target)
        if request.target == "/slow":
            await release.wait()
        request.respond(200, "OK", [], request.target.encode())

    conn, transport = serve(handler)
    conn.data_received(b"GET /slow HTTP/1.1\r\n\r\nGET /fast HTTP/1.1\r\n\r\n")
    await settle()
    # One at a time: the second handler has not started while the first runs.
    assert started == ["/slow"]
    assert transport.written == b""

    release.set()
    await settle(lambda: len(started) == 2 and transport.written.endswith(b"/fast"))
    assert transport.written == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n/slow"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n/fast"
    )
    assert not transport.closed


async def test_full_pipeline_pauses_reading_until_it_drains(serve: Connect) -> None:
    release = asyncio.Event()

    async def handler(request: server.Request) -> None:
        if request.target == "/0":
            await release.wait()
        request.respond(200, "OK", [], b"")

    conn, transport = serve(handler)
    conn.data_received(b"".join(b"GET /%d HTTP/1.1\r\n\r\n" % i for i in range(18)))
    await settle()
    assert transport.reading_paused  # 17 waiting: over MAX_QUEUED

    release.set()
    await settle(lambda: transport.written.count(b"HTTP/1.1 200 OK") == 18)
    assert not transport.reading_paused
    assert not transport.closed


async def test_next_request_held_while_client_reads_no_answers(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    conn.pause_writing()  # the client's socket buffer is full
    conn.data_received(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
    await settle()
    assert [r.target for r in seen.seen] == ["/1"]

    conn.resume_writing()
    await settle(lambda: len(seen.seen) == 2)
    assert transport.written.endswith(b"Content-Length: 2\r\n\r\n/2")


# --- HEAD -----------------------------------------------------------------------------


async def test_head_response_has_content_length_and_no_body(serve: Connect) -> None:
    conn, transport = serve(hello)
    conn.data_received(b"HEAD /h HTTP/1.1\r\n\r\nGET /g HTTP/1.1\r\n\r\n")
    await settle(lambda: transport.written.endswith(b"hello"))

    assert transport.written == (
        b"HTTP/1.1 200 OK\r\nX-Path: /h\r\nContent-Length: 5\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nX-Path: /g\r\nContent-Length: 5\r\n\r\nhello"
    )


async def test_head_streamed_response_writes_no_body(serve: Connect) -> None:
    async def handler(request: server.Request) -> None:
        request.start(200, "OK", [], 5)
        await request.write(b"hello")
        request.finish()

    conn, transport = serve(handler)
    conn.data_received(b"HEAD / HTTP/1.1\r\n\r\n")
    await settle(lambda: transport.written.endswith(b"\r\n\r\n"))
    await settle()

    assert transport.written == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    assert not transport.closed


# --- request bodies -------------------------------------------------------------------


async def body_echo(request: server.Request) -> None:
    assert request.body is not None
    data = b"".join([chunk async for chunk in request.body])
    request.respond(200, "OK", [], data)


async def test_expect_100_continue_sent_when_the_body_is_first_read(serve: Connect) -> None:
    go = asyncio.Event()
    bodies: list[bytes] = []

    async def handler(request: server.Request) -> None:
        await go.wait()
        assert request.body is not None
        data = b"".join([chunk async for chunk in request.body])
        bodies.append(data)
        request.respond(200, "OK", [], b"got")

    conn, transport = serve(handler)
    conn.data_received(b"POST / HTTP/1.1\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
    await settle()
    assert transport.written == b""  # not before the handler reads

    go.set()
    await settle(lambda: bool(transport.buffer))
    assert transport.take() == b"HTTP/1.1 100 Continue\r\n\r\n"

    conn.data_received(b"hello")
    conn.data_received(b"world")
    await settle(lambda: bool(bodies))
    assert bodies == [b"helloworld"]
    assert transport.written == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ngot"
    assert not transport.closed


async def test_expect_100_continue_not_sent_to_http_1_0(serve: Connect) -> None:
    conn, transport = serve(body_echo)
    conn.data_received(b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nok")
    await settle(lambda: transport.closed)

    assert transport.written == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )


async def test_chunked_request_body_delivered(serve: Connect) -> None:
    seen: list[server.Request] = []

    async def handler(request: server.Request) -> None:
        seen.append(request)
        if request.body is None:
            request.respond(200, "OK", [], b"")
        else:
            await body_echo(request)

    conn, transport = serve(handler)
    raw = (
        b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
        b"GET /next HTTP/1.1\r\n\r\n"
    )
    for i in range(0, len(raw), 7):
        conn.data_received(raw[i : i + 7])
    await settle(lambda: len(seen) == 2 and transport.written.endswith(b"\r\n\r\n"))

    assert seen[0].content_length is None
    assert transport.written == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )


async def test_unread_body_closes_the_connection(serve: Connect) -> None:
    conn, transport = serve(hello)
    conn.data_received(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhalf")
    await settle(lambda: transport.closed)

    # The stream position is unknown: no further request can be read from it.
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.written.endswith(b"Content-Length: 5\r\n\r\nhello")
    assert not transport.aborted  # a close: the answer is flushed first

    # A body that arrived whole, even unread, leaves the stream at the next request.
    conn, transport = serve(hello)
    conn.data_received(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody")
    await settle(lambda: bool(transport.buffer))
    assert transport.written.endswith(b"hello")
    assert not transport.closed


async def test_client_gone_mid_body_fails_the_read(serve: Connect) -> None:
    errors: list[Exception] = []

    async def handler(request: server.Request) -> None:
        assert request.body is not None
        try:
            await request.body.read()
            await request.body.read()
        except ClientGoneError as exc:
            errors.append(exc)
            raise

    conn, transport = serve(handler)
    conn.data_received(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhalf")
    await settle()
    conn.connection_lost(None)
    await settle(lambda: bool(errors))

    assert str(errors[0]) == "client disconnected"
    assert transport.written == b""  # nobody to answer


async def test_large_unread_body_pauses_reading(serve: Connect) -> None:
    go = asyncio.Event()

    async def handler(request: server.Request) -> None:
        await go.wait()
        await body_echo(request)

    conn, transport = serve(handler)
    size = BODY_HIGH_WATER + 1
    conn.data_received(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size)
    conn.data_received(b"x" * size)
    assert transport.reading_paused

    go.set()
    await settle(lambda: bool(transport.buffer))
    assert not transport.reading_paused
    assert transport.written.endswith(b"Content-Length: %d\r\n\r\n" % size + b"x" * size)


# --- response framing -----------------------------------------------------------------


async def stream_unknown_length(request: server.Request) -> None:
    request.start(200, "OK", [("X-A", "1")], None)
    await request.write(b"ab")
    await request.write(b"")  # nothing: no empty chunk, which would end the body
    await request.write(b"cde")
    request.finish()


async def test_unknown_length_is_chunked_to_http_1_1(serve: Connect) -> None:
    conn, transport = serve(stream_unknown_length)
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle(lambda: transport.written.endswith(b"0\r\n\r\n"))

    assert transport.written == (
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    )
    assert not transport.closed


async def test_unknown_length_is_close_delimited_to_http_1_0(serve: Connect) -> None:
    conn, transport = serve(stream_unknown_length)
    conn.data_received(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    await settle(lambda: transport.closed)

    assert transport.written == b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\nabcde"


async def test_streamed_body_never_exceeds_its_content_length(serve: Connect) -> None:
    async def handler(request: server.Request) -> None:
        request.start(200, "OK", [], 3)
        await request.write(b"abcdef")
        request.finish()

    conn, transport = serve(handler)
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle(lambda: transport.written.endswith(b"abc"))
    await settle()

    assert transport.written == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    assert not transport.closed


async def test_streamed_body_short_of_its_length_is_aborted(serve: Connect) -> None:
    async def handler(request: server.Request) -> None:
        request.start(200, "OK", [], 10)
        await request.write(b"abc")
        request.finish()

    conn, transport = serve(handler)
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle(lambda: transport.aborted)

    assert transport.written == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"


async def test_204_has_no_content_length(serve: Connect) -> None:
    async def handler(request: server.Request) -> None:
        request.respond(204, "No Content", [], b"ignored")

    conn, transport = serve(handler)
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle(lambda: bool(transport.buffer))

    assert transport.written == b"HTTP/1.1 204 No Content\r\n\r\n"


# --- keep-alive and close -------------------------------------------------------------


async def test_http_1_0_keep_alive_is_honoured(serve: Connect) -> None:
    conn, transport = serve(hello)
    conn.data_received(b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    await settle(lambda: bool(transport.buffer))
    assert transport.take() == (
        b"HTTP/1.1 200 OK\r\nX-Path: /1\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
    )
    assert not transport.closed

    conn.data_received(b"GET /2 HTTP/1.0\r\n\r\n")
    await settle(lambda: transport.closed)
    assert transport.written == (
        b"HTTP/1.1 200 OK\r\nX-Path: /2\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )


async def test_connection_close_request_is_answered_then_closed(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    conn.data_received(b"GET /1 HTTP/1.1\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
    await settle(lambda: transport.closed)

    assert transport.written == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n/1"
    )
    assert [r.target for r in seen.seen] == ["/1"]


async def test_connection_close_after_begin_drain(serve: Connect) -> None:
    conn, transport = serve(hello)
    conn.data_received(b"GET /1 HTTP/1.1\r\n\r\n")
    await settle(lambda: bool(transport.buffer))
    assert b"Connection: close" not in transport.take()

    conn._server.begin_drain()
    conn.data_received(b"GET /2 HTTP/1.1\r\n\r\n")
    await settle(lambda: transport.closed)
    assert transport.written == (
        b"HTTP/1.1 200 OK\r\nX-Path: /2\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )


async def test_upgrade_request_answered_then_closed(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    conn.data_received(
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        b"GET /2 HTTP/1.1\r\n\r\n"
    )
    await settle(lambda: transport.closed)

    assert [r.target for r in seen.seen] == ["/ws"]
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_half_closed_client_still_gets_its_answer(serve: Connect) -> None:
    release = asyncio.Event()

    async def handler(request: server.Request) -> None:
        await release.wait()
        request.respond(200, "OK", [], b"late")

    conn, transport = serve(handler)
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle()
    assert conn.eof_received() is True  # keep the transport open for the answer

    release.set()
    await settle(lambda: transport.closed)
    assert transport.written == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate"


# --- handler failures -----------------------------------------------------------------


async def test_handler_error_is_a_500_and_a_close(
    serve: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: server.Request) -> None:
        raise RuntimeError("boom")

    conn, transport = serve(handler)
    conn.data_received(b"GET /x?secret=1 HTTP/1.1\r\n\r\n")
    await settle(lambda: transport.closed)

    body = b'{"error": "internal error", "upstream": null}'
    assert transport.written == (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%b" % (len(body), body)
    )
    assert "error handling GET /x" in caplog.text
    assert "secret" not in caplog.text


async def test_handler_without_a_response_aborts(serve: Connect) -> None:
    async def handler(request: server.Request) -> None:
        request.start(200, "OK", [], None)

    conn, transport = serve(handler)
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle(lambda: transport.aborted)

    assert transport.written == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_write_after_client_left_raises_client_gone(serve: Connect) -> None:
    errors: list[Exception] = []
    proceed = asyncio.Event()

    async def handler(request: server.Request) -> None:
        request.start(200, "OK", [], None)
        await proceed.wait()
        try:
            await request.write(b"x")
        except ClientGoneError as exc:
            errors.append(exc)
            raise

    conn, transport = serve(handler)
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle(lambda: bool(transport.buffer))
    conn.connection_lost(None)
    proceed.set()
    await settle(lambda: bool(errors))
    assert transport.written_after_close == b""


# --- the idle timer -------------------------------------------------------------------


async def test_idle_keep_alive_connection_is_closed(serve: Connect) -> None:
    _, transport = serve(hello, keepalive=0.0)  # the first check is due at once
    await settle(lambda: transport.closed)
    assert transport.written == b""


async def test_idle_timer_spares_a_request_in_flight(serve: Connect) -> None:
    release = asyncio.Event()

    async def handler(request: server.Request) -> None:
        await release.wait()
        request.respond(200, "OK", [], b"")

    conn, transport = serve(handler, keepalive=30.0)
    conn.data_received(b"GET / HTTP/1.1\r\n\r\n")
    await settle()
    conn._idle_since -= 60  # as if long idle before this request
    conn._check_idle()
    assert not transport.closed

    release.set()
    await settle(lambda: bool(transport.buffer))
    conn._check_idle()  # just answered: idle for 0 s
    assert not transport.closed
    conn._idle_since -= 31
    conn._check_idle()
    assert transport.closed
    assert not transport.aborted


async def test_slow_request_head_is_closed(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen, keepalive=30.0)
    conn.data_received(b"GET / HTTP/1.1\r\nX-Slow: ")
    conn._idle_since -= 31
    conn._check_idle()

    assert transport.closed
    assert seen.seen == []


async def test_answers_not_read_abort_the_connection(serve: Connect) -> None:
    conn, transport = serve(hello, keepalive=30.0)
    conn.pause_writing()
    conn._check_idle()
    assert not transport.closed
    conn._write_paused_since -= 31
    conn._check_idle()
    assert transport.aborted


# --- an upgrade (SPEC 12) ---------------------------------------------------------------

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


async def test_an_upgrade_request_is_handed_over_after_the_101(serve: Connect) -> None:
    handed: list[tuple[asyncio.Transport, bytes]] = []

    async def switch(request: server.Request) -> None:
        assert request.upgrade == "websocket"
        handed.append(
            request.switch_protocols(
                "Switching Protocols", [("Connection", "Upgrade"), ("Upgrade", "websocket")]
            )
        )

    conn, transport = serve(switch)
    conn.data_received(UPGRADE + b"\x81\x82abcdXY")  # a frame sent right after the head
    await settle(lambda: bool(handed))
    assert transport.written == (
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert handed == [(transport, b"\x81\x82abcdXY")]
    assert transport.reading_paused  # until the new protocol reads
    assert not transport.closed
    assert conn not in conn._server.connections  # a shutdown no longer closes it as HTTP


async def test_an_upgrade_answered_normally_then_closes(serve: Connect) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    conn.data_received(UPGRADE)
    await settle(lambda: transport.closed)
    assert seen.seen[0].upgrade == "websocket"
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Connection: close\r\n" in transport.written


@pytest.mark.parametrize(
    ("request_bytes", "upgrade"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n", None),  # not asked
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            "",  # with a body: not one the proxy can relay
        ),
    ],
    ids=["upgrade-without-connection", "upgrade-with-body"],
)
async def test_what_counts_as_an_upgrade(
    serve: Connect, request_bytes: bytes, upgrade: str | None
) -> None:
    seen = Recorder()
    conn, transport = serve(seen)
    conn.data_received(request_bytes)
    await settle(lambda: bool(transport.written))
    assert seen.seen[0].upgrade == upgrade
