"""The pooled upstream client at the wire: request bytes asserted, response bytes fed.

Each `Connection` gets a `MockTransport` instead of a socket; `Pool._connect` is
replaced where a fresh connection is needed, so no test opens a socket.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import (
    FailureReason,
    UpstreamConnectError,
    UpstreamResetError,
    UpstreamTimeoutError,
    UpstreamTLSError,
)
from proxy.http import client as upstream
from tests.support.wire import MockTransport, connect, settle

GET_HEAD = b"GET /a HTTP/1.1\r\nHost: up\r\n\r\n"


@pytest.fixture
async def pool() -> AsyncIterator[upstream.Pool]:
    p = upstream.Pool("legacy", "127.0.0.1", 9, keepalive_timeout=30.0)
    yield p
    p.close()


def connected(pool: upstream.Pool) -> tuple[upstream.Connection, MockTransport]:
    conn = upstream.Connection(pool)
    return conn, connect(conn)


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def exchange_task(
    conn: upstream.Connection,
    method: str = "GET",
    head: bytes = GET_HEAD,
    body: bytes | AsyncIterator[bytes] | None = None,
    *,
    chunked: bool = False,
) -> asyncio.Task[upstream.UpstreamResponse]:
    task = asyncio.create_task(conn.exchange(method, head, body, chunked, deadline()))
    await settle()
    return task


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


# --- the request ----------------------------------------------------------------------


def test_build_head_is_exact() -> None:
    head = upstream.build_head(
        "POST", "/p?q=%2F&x\udce9", [b"Host: up:8080", b"X-A: caf\xe9"], "Content-Length: 5"
    )
    assert head == (
        b"POST /p?q=%2F&x\xe9 HTTP/1.1\r\nHost: up:8080\r\nX-A: caf\xe9\r\n"
        b"Content-Length: 5\r\n\r\n"
    )


def test_build_head_without_fields_or_body() -> None:
    assert upstream.build_head("GET", "/", [], None) == b"GET / HTTP/1.1\r\n\r\n"


async def test_request_head_and_body_written_then_response_parsed(pool: upstream.Pool) -> None:
    conn, transport = connected(pool)
    head = upstream.build_head("POST", "/p", [b"Host: up"], "Content-Length: 5")
    task = await exchange_task(conn, "POST", head, b"hello")
    assert transport.written == head + b"hello"
    assert transport.writes == [head + b"hello"]  # one write for head and body
    assert not task.done()

    conn.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-B:  v \r\n\r\nok")
    response = await task
    assert (response.status, response.reason) == (201, "Created")
    assert response.head == b"Content-Length: 2\r\nX-B:  v \r\n"
    assert response.headers == [("Content-Length", "2"), ("X-B", "v")]
    assert response.content_length == 2
    assert response.body_if_complete() == b"ok"


@pytest.mark.parametrize(
    ("chunked", "framing", "sent"),
    [
        (True, "Transfer-Encoding: chunked", b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
        (False, "Content-Length: 5", b"abcde"),
    ],
    ids=["chunked", "content-length"],
)
async def test_streamed_upload_framing(
    pool: upstream.Pool, chunked: bool, framing: str, sent: bytes
) -> None:
    conn, transport = connected(pool)
    head = upstream.build_head("POST", "/up", [], framing)
    task = await exchange_task(conn, "POST", head, chunks(b"ab", b"", b"cde"), chunked=chunked)

    assert transport.written == head + sent  # an empty part is no chunk: it would end it
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    response = await task
    assert response.status == 204
    assert await response.read() == b""


# --- response bodies ------------------------------------------------------------------


async def test_content_length_body_in_pieces(pool: upstream.Pool) -> None:
    conn, _ = connected(pool)
    task = await exchange_task(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Le")
    conn.data_received(b"ngth: 6\r\n\r\nabc")
    response = await task
    assert response.content_length == 6
    assert response.body_if_complete() is None  # not all of it yet

    got: list[bytes] = []

    async def consume() -> None:
        got.extend([chunk async for chunk in response.iter_chunks()])

    reader = asyncio.create_task(consume())
    await settle()
    conn.data_received(b"def")
    await reader
    assert b"".join(got) == b"abcdef"


async def test_chunked_response_body(pool: upstream.Pool) -> None:
    conn, _ = connected(pool)
    task = await exchange_task(conn)
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    response = await task
    assert response.content_length is None
    assert await response.read() == b"abcde"
    response.release()
    assert pool.take_idle() is conn


async def test_close_delimited_body_ends_at_eof(pool: upstream.Pool) -> None:
    conn, transport = connected(pool)
    task = await exchange_task(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\npart1")
    response = await task
    reader = asyncio.create_task(response.read())
    await settle()
    conn.data_received(b"part2")
    conn.eof_received()

    assert await reader == b"part1part2"
    response.release()
    assert pool.take_idle() is None
    assert transport.aborted


async def test_head_response_with_content_length_completes_without_body(
    pool: upstream.Pool,
) -> None:
    conn, transport = connected(pool)
    head = b"HEAD /a HTTP/1.1\r\nHost: up\r\n\r\n"
    task = await exchange_task(conn, "HEAD", head)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    response = await task

    assert response.content_length == 1000
    assert response.body_if_complete() == b""
    assert await response.read() == b""
    response.release()
    assert transport.aborted  # never reused: llhttp cannot be told it answered HEAD
    assert pool.take_idle() is None


async def test_large_response_body_pauses_reading_until_consumed(pool: upstream.Pool) -> None:
    conn, transport = connected(pool)
    size = upstream.READ_HIGH_WATER + 10
    task = await exchange_task(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (size + 1))
    response = await task
    conn.data_received(b"x" * size)
    assert transport.reading_paused

    reader = asyncio.create_task(response.read())
    await settle(lambda: not transport.reading_paused)
    conn.data_received(b"y")
    assert await reader == b"x" * size + b"y"


# --- the pool -------------------------------------------------------------------------


async def test_keep_alive_connection_returned_to_the_pool(pool: upstream.Pool) -> None:
    conn, transport = connected(pool)
    task = await exchange_task(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    response = await task
    assert await response.read() == b"ok"
    response.release()

    assert not transport.closed
    assert pool.take_idle() is conn
    assert pool.take_idle() is None


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_non_keep_alive_response_not_pooled(pool: upstream.Pool, raw: bytes) -> None:
    conn, transport = connected(pool)
    task = await exchange_task(conn)
    conn.data_received(raw)
    response = await task
    assert await response.read() == b"ok"
    response.release()

    assert transport.aborted
    assert pool.take_idle() is None


async def test_body_left_unread_is_not_pooled(pool: upstream.Pool) -> None:
    conn, transport = connected(pool)
    task = await exchange_task(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    response = await task
    response.release()

    assert transport.aborted
    assert pool.take_idle() is None


async def test_bytes_on_an_idle_connection_drop_it(pool: upstream.Pool) -> None:
    conn, transport = connected(pool)
    task = await exchange_task(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    (await task).release()
    conn.data_received(b"HTTP/1.1 200 OK\r\n\r\n")  # nobody asked

    assert transport.aborted
    assert pool.take_idle() is None


async def test_expired_idle_connection_is_not_reused(pool: upstream.Pool) -> None:
    conn, transport = connected(pool)
    pool.give_back(conn)
    conn.idle_since = time.monotonic() - pool.keepalive_timeout - 1

    assert pool.take_idle() is None
    assert transport.aborted


# --- failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "lost", "detail"),
    [
        (
            b"Content-Length: 10\r\n\r\nabcd",
            ConnectionResetError("by peer"),
            r"body cut \(by peer\)",
        ),
        (b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", None, "body cut"),
    ],
    ids=["content-length-reset", "chunked-eof"],
)
async def test_response_cut_mid_body_is_a_reset(
    pool: upstream.Pool, raw: bytes, lost: Exception | None, detail: str
) -> None:
    conn, _ = connected(pool)
    task = await exchange_task(conn)
    conn.data_received(b"HTTP/1.1 200 OK\r\n" + raw)
    response = await task
    if lost is None:
        conn.eof_received()
    conn.connection_lost(lost)

    with pytest.raises(UpstreamResetError, match=detail):
        await response.read()
    assert response.body_if_complete() is None


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"NOT HTTP\r\n\r\n", "invalid response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "invalid response"),
        # Checked per read: over the limit once what came before already is.
        (b"HTTP/1.1 200 OK\r\nX: " + b"v" * 64 * 1024, "head too large"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: v\r\n" * 1001, "headers too large"),
    ],
    ids=["not-http", "bad-length", "head-too-large", "too-many-headers"],
)
async def test_invalid_response_is_a_reset(pool: upstream.Pool, raw: bytes, detail: str) -> None:
    conn, transport = connected(pool)
    task = await exchange_task(conn)
    conn.data_received(raw)
    conn.data_received(b"\r\n")

    with pytest.raises(UpstreamResetError, match=detail):
        await task
    assert transport.aborted
    assert conn.closed


async def test_eof_before_the_response_is_a_reset(pool: upstream.Pool) -> None:
    conn, _ = connected(pool)
    task = await exchange_task(conn)
    conn.eof_received()

    with pytest.raises(UpstreamResetError, match="connection closed before the response"):
        await task


async def test_no_headers_by_the_deadline_is_a_timeout(pool: upstream.Pool) -> None:
    conn, transport = connected(pool)
    loop = asyncio.get_running_loop()
    with pytest.raises(UpstreamTimeoutError, match="no response in time"):
        await conn.exchange("GET", GET_HEAD, None, False, loop.time() - 1)
    assert transport.written == GET_HEAD
    assert transport.aborted


async def test_headers_in_time_cancel_the_timeout(pool: upstream.Pool) -> None:
    conn, _ = connected(pool)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(conn.exchange("GET", GET_HEAD, None, False, loop.time() + 0.01))
    await settle()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n")
    response = await task
    conn.data_received(b"x")
    assert await response.read() == b"x"


# --- the stale pooled connection ------------------------------------------------------


class FreshConnections:
    """Stands in for `Pool._connect`: each call a new mock-backed `Connection`."""

    def __init__(self, pool: upstream.Pool) -> None:
        self.pool = pool
        self.made: list[tuple[upstream.Connection, MockTransport]] = []

    async def __call__(self, timeout: float) -> upstream.Connection:
        conn, transport = connected(self.pool)
        self.made.append((conn, transport))
        return conn


def stale_pooled(pool: upstream.Pool) -> tuple[upstream.Connection, MockTransport]:
    """A connection that served a request and was pooled."""
    conn, transport = connected(pool)
    conn.used = True
    pool.give_back(conn)
    return conn, transport


@pytest.fixture
def fresh(pool: upstream.Pool, monkeypatch: pytest.MonkeyPatch) -> FreshConnections:
    factory = FreshConnections(pool)
    monkeypatch.setattr(pool, "_connect", factory)
    return factory


def pool_request(
    pool: upstream.Pool, method: str, head: bytes, body: bytes | AsyncIterator[bytes] | None
) -> asyncio.Task[upstream.UpstreamResponse]:
    return asyncio.create_task(
        pool.request(method, head, body, chunked=False, connect_timeout=1.0, deadline=deadline())
    )


async def test_stale_pooled_connection_retried_once_for_get(
    pool: upstream.Pool, fresh: FreshConnections
) -> None:
    stale, stale_transport = stale_pooled(pool)
    task = pool_request(pool, "GET", GET_HEAD, None)
    await settle(lambda: bool(stale_transport.buffer))
    assert fresh.made == []
    stale.eof_received()  # the upstream had closed it: not one byte back

    await settle(lambda: bool(fresh.made) and bool(fresh.made[0][1].buffer))
    conn, transport = fresh.made[0]
    assert stale_transport.aborted
    assert transport.written == GET_HEAD  # the same request, replayed
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    response = await task
    assert await response.read() == b"ok"
    assert len(fresh.made) == 1


async def test_retried_request_failing_again_is_not_retried_twice(
    pool: upstream.Pool, fresh: FreshConnections
) -> None:
    stale, stale_transport = stale_pooled(pool)
    task = pool_request(pool, "GET", GET_HEAD, None)
    await settle(lambda: bool(stale_transport.buffer))
    stale.eof_received()
    await settle(lambda: bool(fresh.made) and bool(fresh.made[0][1].buffer))
    fresh.made[0][0].eof_received()

    with pytest.raises(UpstreamResetError, match="connection closed before the response"):
        await task
    assert len(fresh.made) == 1


@pytest.mark.parametrize(
    ("method", "body", "answered"),
    [
        ("POST", b"x", False),
        ("PUT", None, True),  # idempotent, but part of an answer came back
        ("PUT", "stream", False),  # idempotent, but the body was a stream: not held
    ],
    ids=["post", "get-after-bytes", "streamed-body"],
)
async def test_stale_pooled_connection_not_retried_when_unsafe(
    pool: upstream.Pool, fresh: FreshConnections, method: str, body: object, answered: bool
) -> None:
    stale, stale_transport = stale_pooled(pool)
    payload: bytes | AsyncIterator[bytes] | None = (
        chunks(b"x") if body == "stream" else body if isinstance(body, bytes) else None
    )
    task = pool_request(pool, method, b"%b / HTTP/1.1\r\n\r\n" % method.encode(), payload)
    await settle(lambda: bool(stale_transport.buffer))
    if answered:
        stale.data_received(b"HTTP/1.1 200 OK\r\nContent-")
    stale.eof_received()

    with pytest.raises(UpstreamResetError):
        await task
    assert stale_transport.aborted
    assert fresh.made == []


class ClosedOnWrite(MockTransport):
    """A connection the upstream has closed: the first write meets the end of stream."""

    def __init__(self, conn: upstream.Connection) -> None:
        super().__init__()
        self.conn = conn

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        self.conn.eof_received()


async def test_no_retry_once_the_deadline_has_passed(
    pool: upstream.Pool, fresh: FreshConnections
) -> None:
    stale = upstream.Connection(pool)
    stale_transport = connect(stale, ClosedOnWrite(stale))
    pool.give_back(stale)
    past = asyncio.get_running_loop().time() - 1

    with pytest.raises(UpstreamTimeoutError, match="no response in time"):
        await pool.request("GET", GET_HEAD, None, chunked=False, connect_timeout=1.0, deadline=past)
    assert stale_transport.aborted
    assert fresh.made == []


# --- interim answers (RFC 9110 15.2) ----------------------------------------------------


@pytest.mark.parametrize("split", [False, True], ids=["one read", "two reads"])
async def test_interim_103_is_skipped(pool: upstream.Pool, split: bool) -> None:
    conn, _ = connected(pool)
    task = await exchange_task(conn)
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nok"
    if split:
        conn.data_received(interim)
        await settle()
        assert not task.done()  # an interim answer is not the answer
        conn.data_received(final)
    else:
        conn.data_received(interim + final)
    response = await task
    assert (response.status, response.reason) == (200, "OK")
    assert response.headers == [("Content-Length", "2"), ("X-Final", "1")]
    assert await response.read() == b"ok"
    response.release()
    assert conn in pool._idle  # the exchange ended cleanly: the connection is reusable


async def test_interim_100_then_final_answer(pool: upstream.Pool) -> None:
    conn, _ = connected(pool)
    task = await exchange_task(conn)
    conn.data_received(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    )
    response = await task
    assert response.status == 201
    assert await response.read() == b""


# --- a switch of protocols (SPEC 12) --------------------------------------------------

UPGRADE_HEAD = b"GET /ws HTTP/1.1\r\nHost: up\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


@pytest.mark.parametrize("split", [False, True])
async def test_a_101_to_an_upgrade_hands_over_the_connection(
    pool: upstream.Pool, split: bool
) -> None:
    conn, transport = connected(pool)
    task = asyncio.create_task(conn.exchange("GET", UPGRADE_HEAD, None, False, deadline(), True))
    await settle()
    assert transport.written == UPGRADE_HEAD
    first_frame = b"\x81\x02hi"
    if split:
        conn.data_received(SWITCHED[:20])
        conn.data_received(SWITCHED[20:] + first_frame)
    else:
        conn.data_received(SWITCHED + first_frame)
    response = await task
    assert (response.status, response.switched) == (101, True)
    assert ("Upgrade", "websocket") in response.headers
    assert transport.reading_paused  # nothing read until the tunnel takes it
    assert response.detach() == (transport, first_frame)
    response.release()
    assert pool.take_idle() is None  # never pooled


async def test_a_101_to_a_plain_request_is_a_reset(pool: upstream.Pool) -> None:
    conn, _ = connected(pool)
    task = await exchange_task(conn)
    conn.data_received(SWITCHED)
    with pytest.raises(UpstreamResetError, match="switched protocols"):
        await task


async def test_a_refused_upgrade_is_a_normal_response(pool: upstream.Pool) -> None:
    conn, _ = connected(pool)
    task = asyncio.create_task(conn.exchange("GET", UPGRADE_HEAD, None, False, deadline(), True))
    await settle()
    conn.data_received(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    response = await task
    assert (response.status, response.switched) == (403, False)
    assert await response.read() == b"no"


def _verify_error() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(
        1,
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
        "issuer certificate (_ssl.c:1006)",
    )
    exc.verify_message = "unable to get local issuer certificate"
    return exc


def test_a_failed_handshake_is_a_tls_error_a_connect_error_of_its_own_kind() -> None:
    with (
        pytest.raises(UpstreamTLSError) as info,
        upstream.translate_errors("signal", connecting=True),
    ):
        raise _verify_error()
    assert isinstance(info.value, UpstreamConnectError)  # falls back like one: nothing sent
    assert info.value.reason is FailureReason.TLS
    assert info.value.status == 502
    assert info.value.detail == "certificate verify failed: unable to get local issuer certificate"
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


def test_an_ssl_error_after_connecting_is_a_reset() -> None:
    error = ssl.SSLError(
        1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] bad record mac (_ssl.c:2580)"
    )
    with pytest.raises(UpstreamResetError) as info, upstream.translate_errors("signal"):
        raise error
    assert info.value.detail == "bad record mac"


# --- the response's Content-Length, read from its head ------------------------------


@pytest.mark.parametrize(
    ("head", "length"),
    [
        pytest.param(b"Server: nginx\r\nContent-Length: 208\r\nX-A: 1\r\n", 208, id="nginx"),
        pytest.param(b"content-length:12\r\n", 12, id="lower-no-blank"),
        pytest.param(b"CONTENT-LENGTH: \t7 \t\r\n", 7, id="upper-blanks"),
        pytest.param(b"Content-Length: 0\r\n", 0, id="zero"),
        pytest.param(b"Content-Length: 007\r\n", 7, id="leading-zeros"),
        pytest.param(b"X-A: 1\r\n", None, id="absent"),
        pytest.param(b"X-Content-Length: 5\r\n", None, id="longer-name"),
        pytest.param(b"X-Note: content-length: 9\r\n", None, id="in-a-value"),
        pytest.param(b"Content-Length: 1 2\r\n", None, id="not-one-number"),
        pytest.param(b"Content-Length: \xb2\r\n", None, id="non-ascii-digit"),
        pytest.param(b"Content-Length: \r\n", None, id="empty"),
        pytest.param(b"Content-Length: x\r\nContent-Length: 4\r\n", 4, id="first-valid-line-wins"),
        pytest.param(b"X-Note: content-length: 9\r\nContent-Length: 3\r\n", 3, id="after-a-value"),
    ],
)
def test_content_length_of_a_head(head: bytes, length: int | None) -> None:
    assert upstream.content_length(head) == length


def reference_content_length(head: bytes) -> int | None:
    """The first line named Content-Length (any case) whose value, blanks stripped, is
    ASCII digits."""
    for line in head.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if colon and name.lower() == b"content-length" and value and value.isdigit():
            return int(value)
    return None


_LINE = st.one_of(
    st.tuples(
        st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-length", b"X-Len"]),
        st.sampled_from([b":", b": ", b":\t "]),
        st.one_of(
            st.integers(0, 10**12).map(lambda n: str(n).encode()),
            st.sampled_from([b"", b"1 2", b"x", b"12 ", b"content-length: 3"]),
        ),
    ).map(b"".join),
    st.binary(max_size=12).map(lambda raw: bytes(b for b in raw if b not in (10, 13))),
)


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(_LINE, max_size=6))
def test_content_length_follows_the_rule(lines: list[bytes]) -> None:
    head = b"".join(line + b"\r\n" for line in lines)
    assert upstream.content_length(head) == reference_content_length(head)
