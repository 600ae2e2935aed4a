"""A lean HTTP/1.1 client for the two upstreams: pooled keep-alive connections.

Why not aiohttp's ClientSession: a proxy needs none of its features (cookies, redirects,
auth, tracing, decompression) and pays for them on every request, several times this
client's CPU per request (bench/RESULTS.md). The wire format is parsed by llhttp
(through `httptools`, the parser uvicorn uses); this module only frames requests, pools
connections and applies backpressure.

Semantics the proxy relies on:
- the request target is sent byte for byte; `Host` and every other header as given;
- nothing is decompressed, no redirect is followed, no header is invented except
  `Content-Length` / `Transfer-Encoding: chunked` for a body;
- a pooled connection that turns out dead before any response byte is retried once on
  a fresh connection for idempotent methods (RFC 9112 section 9.3.1), never otherwise;
- failures surface as `UpstreamConnectError` / `UpstreamResetError`, and
  `UpstreamTimeoutError` when the headers are not in by the caller's deadline; the caller
  bounds the reading of the body.
- an exchange is awaited (`exchange`) or, for a request without a body, driven by a
  callback (`send`, then `response()`): the gateway's fast path, with no task or future
  per request (bench/RESULTS.md, issue 19).

The deadline is one lazily re-armed timer per connection, not a timer per request: a
new request only moves `_deadline`, and the timer, when it fires, either times the
waiting request out or re-arms for the current deadline (as netty's idle handlers do).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import cast

import httptools

from proxy.config.tls import ssl_detail
from proxy.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamResetError,
    UpstreamTimeoutError,
    UpstreamTLSError,
)
from proxy.http.flow import WriteFlow
from proxy.telemetry.logs import RateLimitedWarning

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
MAX_HEADERS = 1000
MAX_HEAD_BYTES = 64 * 1024
READ_HIGH_WATER = 256 * 1024  # pause reading the upstream when this much is unconsumed
MAX_IDLE_PER_POOL = 1024
# A timer may fire up to a millisecond early (libuv's resolution): not early enough to
# re-arm for.
_TIMER_SLACK = 0.001

log = logging.getLogger("rollout.upstream")


@contextmanager
def translate_errors(
    upstream: str, *, connecting: bool = False, timeout: str = "no response in time"
) -> Iterator[None]:
    """Timeouts and socket errors (TLS ones included) -> our `UpstreamError` tree: the one
    place foreign exceptions are translated (as httpx's `map_httpcore_exceptions`).

    While `connecting`, nothing has been sent: any failure is a connect failure, which
    every method may fall back from; a failed TLS handshake is its own kind of it
    (`UpstreamTLSError`). Afterwards a timeout is `timeout` and a socket error a reset.
    """
    try:
        yield
    except UpstreamError:
        raise
    except TimeoutError as exc:
        if connecting:
            raise UpstreamConnectError(upstream, "connect timeout") from exc
        raise UpstreamTimeoutError(upstream, timeout) from exc
    except ssl.SSLError as exc:
        if connecting:
            raise UpstreamTLSError(upstream, ssl_detail(exc)) from exc
        raise UpstreamResetError(upstream, ssl_detail(exc)) from exc
    except OSError as exc:
        detail = exc.strerror or str(exc) or type(exc).__name__
        if connecting:
            raise UpstreamConnectError(upstream, detail) from exc
        raise UpstreamResetError(upstream, detail) from exc


_FRAMED = re.compile(rb"^(?:content-length|transfer-encoding):", re.IGNORECASE | re.MULTILINE)


class UpstreamResponse:
    """Status and headers of an upstream answer; the body is read with `iter_chunks()`.

    `head` is the header block exactly as received (`Name: value\r\n` lines, which llhttp
    has validated: no folding, CRLF only); `headers` parses it on first use, so the
    common relay path, which forwards the block as bytes, never splits it.
    """

    __slots__ = ("_conn", "_headers", "content_length", "head", "reason", "status")

    def __init__(self, conn: Connection, status: int, reason: str, head: bytes) -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.head = head
        self._headers: list[tuple[str, str]] | None = None
        self.content_length = content_length(head)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(name, value) pairs; values decoded with surrogateescape, so bytes round-trip."""
        if self._headers is None:
            self._headers = parse_head(self.head)
        return self._headers

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises `UpstreamResetError` if it is cut short."""
        async for chunk in self._conn.body_chunks():
            yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def body_if_complete(self) -> bytes | None:
        """The whole body if it has already arrived (no need to wait), else None."""
        return self._conn.take_complete_body()

    @property
    def switched(self) -> bool:
        """The upstream switched protocols (a 101 to an upgrade request)."""
        return self._conn._upgraded is not None

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """Take the connection for the new protocol: transport and its first bytes."""
        return self._conn.detach()

    def release(self) -> None:
        """Done with this response: pool the connection if the body was read to its end."""
        self._conn.finish()

    def close(self) -> None:
        """Abandon the response and its connection."""
        self._conn.abort()


class Connection(WriteFlow, asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.used = False
        self.reused = False  # has been in the pool: its handshake is long confirmed
        self.idle_since = 0.0
        self._deadline = 0.0  # when the response head must be in
        self._timer: asyncio.TimerHandle | None = None
        # `send`'s callback: called once, when the head is in or the attempt failed.
        self._listener: Callable[[], None] | None = None
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self._head_waiter: asyncio.Future[None] | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._raw = b""  # the response head as it arrives
        self._head = b""  # its header lines, once complete
        self._status = 0
        self._reason = ""
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._reading_paused = False
        self._complete = False
        self._keep_alive = False
        self._head_only = False
        self._error: Exception | None = None
        self._got_bytes = False
        self._interim = False
        self._upgrading = False  # the request asks to switch protocols
        self._upgraded: bytes | None = None  # after a 101: the new protocol's first bytes

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses: no isinstance.)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._head_waiter is None and self._body_waiter is None and self._complete:
            # Bytes after a complete response with no request outstanding: not HTTP.
            self.abort()
            return
        if not self._status:
            self._raw += data
            if len(self._raw) > MAX_HEAD_BYTES + len(data):
                self._fail(UpstreamResetError(self._pool.name, "invalid response: head too large"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if not (self._upgrading and self._status == 101):
                self._fail(UpstreamResetError(self._pool.name, "upstream switched protocols"))
                return
            # Switched: what follows the head is the new protocol's, for the tunnel.
            self._upgraded = data[exc.args[0] :] if exc.args else b""
            self.closed = True  # never pooled again
            if self.transport is not None:
                self.transport.pause_reading()
        except httptools.HttpParserError as exc:
            # An error raised in our own callback comes back as the context.
            cause = exc.__context__
            if not isinstance(cause, UpstreamResetError):
                cause = UpstreamResetError(self._pool.name, f"invalid response: {exc}")
            self._fail(cause)
        if self._listener is not None and self._status:
            # After the whole read is parsed, as an awaiting task would see it: a small
            # body that came with its head is complete by now.
            self._notify()

    def _notify(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener()

    def eof_received(self) -> bool | None:
        if self._upgraded is not None:
            return True  # half-closed before the tunnel took over: the tunnel sees it
        self._on_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if isinstance(exc, ssl.SSLError) and not self._got_bytes and not self.reused:
            # TLS 1.3 sends the client certificate after the client considers the
            # handshake done: a server refusing it says so with an alert in place of the
            # first response byte. The request never reached the application.
            error = UpstreamTLSError(self._pool.name, ssl_detail(exc))
            self._pool.tls_failed(error)
            self._fail(error)
        self._on_eof(exc)
        self._end_drain(UpstreamResetError(self._pool.name, "connection lost while sending"))

    # --- httptools callbacks ---------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("latin-1")

    def on_headers_complete(self) -> None:
        # No per-header callback: the block is cut out of the raw bytes in one go (llhttp
        # has checked its syntax), which is most of what receiving a response costs.
        raw = self._raw
        end = raw.find(b"\r\n\r\n")
        head = raw[raw.find(b"\r\n") + 2 : end + 2]
        self._raw = b""
        if end < 0 or len(head) > MAX_HEAD_BYTES or head.count(b"\n") > MAX_HEADERS:
            raise UpstreamResetError(self._pool.name, "invalid response: headers too large")
        status = self._parser.get_status_code()
        if status < 200 and status != 101:
            # An interim answer (103 Early Hints, an unasked-for 100 Continue) may precede
            # the final one (RFC 9110 15.2): skip it; what followed it in this read is
            # the final answer's head.
            self._interim = True
            self._raw = raw[end + 4 :]
            return
        if status == 101 and not self._upgrading:
            raise UpstreamResetError(self._pool.name, "upstream switched protocols unasked")
        self._head = head
        self._status = status
        # Asked now: llhttp forgets the connection's keep-alive state once the message ends.
        self._keep_alive = self._parser.should_keep_alive()
        if self._head_only:
            # llhttp cannot be told a response answers HEAD: it would wait for a body
            # that never comes. Complete here and never reuse the connection.
            self._complete = True
            self.closed = True
        _wake(self._head_waiter)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        _wake(self._body_waiter)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
        _wake(self._body_waiter)

    # --- the exchange ------------------------------------------------------------------

    def _on_eof(self, exc: Exception | None = None) -> None:
        self.closed = True
        if self._complete:
            return
        if self._status and self._close_delimited():
            self._complete = True  # the body was delimited by the connection closing
            _wake(self._body_waiter)
            return
        detail = "connection closed before the response" if not self._status else "body cut"
        if exc is not None:
            detail += f" ({exc})"
        self._fail(UpstreamResetError(self._pool.name, detail))

    def _close_delimited(self) -> bool:
        return _FRAMED.search(self._head) is None

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        for waiter in (self._head_waiter, self._body_waiter):
            _wake(waiter)
        self._notify()

    def _arm(self, deadline: float) -> None:
        """The response head is due by `deadline`. The timer already set is kept unless it
        would fire after it: most requests cost no timer call at all."""
        self._deadline = deadline
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        waiting = self._head_waiter is not None or self._listener is not None
        if not waiting or self._status or self._error is not None:
            return  # the request it was set for was answered; none is waiting now
        if self._deadline - self._loop.time() > _TIMER_SLACK:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._fail(UpstreamTimeoutError(self._pool.name, "no response in time"))

    async def exchange(
        self,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        chunked: bool,
        deadline: float,
        upgrade: bool = False,
    ) -> UpstreamResponse:
        assert self.transport is not None
        self._begin(method, upgrade)
        self._head_waiter = self._loop.create_future()
        transport = self.transport
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            async for chunk in body:
                if self._error is not None:
                    break
                if chunk:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await self.drain()
            if chunked and self._error is None:
                transport.write(b"0\r\n\r\n")
        if self._error is None and not self._status:
            self._arm(deadline)
            await self._head_waiter
        return self.response()

    def send(self, method: str, head: bytes, deadline: float, done: Callable[[], None]) -> None:
        """`exchange` for a request without a body, by callback: `done()` is called once,
        when the response head is in (with whatever of the body came with it) or the
        attempt failed; it then takes `response()`. Nothing is awaited."""
        assert self.transport is not None
        self._begin(method, False)
        self._listener = done
        self.transport.write(head)
        if self._error is None:
            self._arm(deadline)

    def _begin(self, method: str, upgrade: bool) -> None:
        self._reset_exchange()
        self._upgrading = upgrade
        self.used = True
        self._head_only = method == "HEAD"

    def response(self) -> UpstreamResponse:
        """The answer whose head is in; raises the attempt's error if there is none."""
        if self._error is not None and not self._status:
            raise self._error
        self._head_waiter = None
        return UpstreamResponse(self, self._status, self._reason, self._head)

    @property
    def stale(self) -> bool:
        """Found dead on first use after the pool: the upstream closed it while idle, so
        nothing sent on it was processed (no byte came back)."""
        return self.reused and not self._got_bytes

    def take_complete_body(self) -> bytes | None:
        if not self._complete or self._error is not None:
            return None
        body = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return body

    async def body_chunks(self) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered < READ_HIGH_WATER // 2:
                    self._reading_paused = False
                    if self.transport is not None and not self.closed:
                        self.transport.resume_reading()
                yield chunk
            if self._complete:
                return
            if self._error is not None:
                raise self._error
            self._body_waiter = self._loop.create_future()
            await self._body_waiter
            self._body_waiter = None

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """After a 101: the transport (reading paused) and the bytes that followed."""
        assert self.transport is not None
        assert self._upgraded is not None
        rest, self._upgraded = self._upgraded, b""
        return self.transport, rest

    def finish(self) -> None:
        if self._complete and not self._chunks and self._reusable():
            self._pool.give_back(self)
        else:
            self.abort()

    def _reusable(self) -> bool:
        return not self.closed and self._error is None and self._keep_alive

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def retry_on_fresh(
    conn: Connection, method: str, body: bytes | AsyncIterator[bytes] | None
) -> bool:
    """A reset on a pooled connection the upstream had already closed: nothing of this
    request was processed if no byte came back. Replayed on a fresh connection only when
    safe, and only with a body we still hold."""
    return conn.stale and method in IDEMPOTENT and not isinstance(body, AsyncIterator)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Pool:
    """Idle keep-alive connections to one upstream origin (`http(s)://host:port`)."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        keepalive_timeout: float,
        ssl: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.ssl = ssl
        self.server_name = server_name or host  # SNI and the name the certificate must hold
        self._tls_failed = RateLimitedWarning(log)
        self.keepalive_timeout = keepalive_timeout
        self._idle: collections.deque[Connection] = collections.deque()
        self._reaper: asyncio.TimerHandle | None = None

    def give_back(self, conn: Connection) -> None:
        conn.reused = True
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        while len(self._idle) > MAX_IDLE_PER_POOL:
            self._idle.popleft().abort()
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(self.keepalive_timeout, self._reap)

    def _reap(self) -> None:
        """Close connections idle past the keep-alive timeout (oldest are at the left)."""
        self._reaper = None
        cutoff = time.monotonic() - self.keepalive_timeout
        while self._idle and (self._idle[0].closed or self._idle[0].idle_since <= cutoff):
            self._idle.popleft().abort()
        if self._idle:
            wait = self._idle[0].idle_since + self.keepalive_timeout - time.monotonic()
            self._reaper = asyncio.get_running_loop().call_later(max(wait, 0.1), self._reap)

    def take_idle(self) -> Connection | None:
        """The most recently used idle connection that is still fresh, if any."""
        cutoff = time.monotonic() - self.keepalive_timeout
        while self._idle:
            conn = self._idle.pop()  # most recently used: least likely to be stale
            if conn.closed or conn.idle_since < cutoff:
                conn.abort()
                continue
            return conn
        return None

    async def _connect(self, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            with translate_errors(self.name, connecting=True):
                async with asyncio.timeout(timeout):
                    _, protocol = await loop.create_connection(
                        lambda: Connection(self),
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.server_name if self.ssl else None,
                    )
        except UpstreamTLSError as exc:
            self.tls_failed(exc)
            raise
        assert isinstance(protocol, Connection)
        return protocol

    def tls_failed(self, error: UpstreamTLSError) -> None:
        """One line per failing upstream (at most one per interval): which upstream, which
        name, and why the handshake failed."""
        self._tls_failed.warn(
            "%s: TLS handshake with %r failed: %s", self.name, self.server_name, error.detail
        )

    async def request(
        self,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        *,
        chunked: bool,
        connect_timeout: float,
        deadline: float,
        upgrade: bool = False,
        fresh: bool = False,
    ) -> UpstreamResponse:
        """Send on an idle pooled connection, or a new one; the response headers by
        `deadline`. A cancelled or failed exchange leaves its connection in an unknown
        state, so the connection is dropped. `fresh`: a new connection only (the request
        already met a dead pooled one: it is retried once, never twice)."""
        conn = None if fresh else self.take_idle()
        if conn is not None:
            try:
                return await conn.exchange(method, head, body, chunked, deadline, upgrade)
            except UpstreamResetError:
                conn.abort()
                if not retry_on_fresh(conn, method, body):
                    raise
            except BaseException:
                conn.abort()
                raise
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise UpstreamTimeoutError(self.name, "no response in time")
        conn = await self._connect(min(connect_timeout, remaining))
        try:
            return await conn.exchange(method, head, body, chunked, deadline, upgrade)
        except BaseException:
            conn.abort()
            raise

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        while self._idle:
            self._idle.pop().abort()


def parse_head(head: bytes) -> list[tuple[str, str]]:
    """`Name: value\r\n` lines as (name, value), values stripped of surrounding blanks."""
    pairs = []
    for line in head.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            pairs.append(
                (name.decode("latin-1"), value.strip(b" \t").decode("utf-8", "surrogateescape"))
            )
    return pairs


# Memoised as `headers.forwardable_head` is: an upstream's block rarely changes, and the
# bytes' hash, computed here, serves that lookup too.
@functools.lru_cache(maxsize=256)
def content_length(head: bytes) -> int | None:
    """The value of the first `Content-Length: digits` line of a header block, if any.

    llhttp exposes no length through httptools, so the block is searched, once lowered
    (two `find`s rather than a case-insensitive multi-line regex, bench/RESULTS.md,
    issue 19); a line whose value is not digits is passed over, as llhttp would have
    refused it anyway.
    """
    lowered = head.lower()
    at = lowered.find(b"content-length:")
    while at >= 0:
        if at == 0 or lowered[at - 1] == 0x0A:  # the name starts its line
            start = at + 15
            end = head.find(b"\r", start)
            value = head[start:end].strip(b" \t") if end >= 0 else b""
            if value.isdigit():
                return int(value)
        at = lowered.find(b"content-length:", at + 15)
    return None


def build_head(method: str, target: str, fields: list[bytes], body_header: str | None) -> bytes:
    """The request line, then `fields` (ready `Name: value` bytes) and the body's framing
    line, exactly as given (no normalisation), joined once. `target` is encoded with
    surrogateescape, so the bytes it was decoded from go on unchanged."""
    lines = [f"{method} {target} HTTP/1.1".encode("utf-8", "surrogateescape"), *fields]
    if body_header:
        lines.append(body_header.encode("utf-8", "surrogateescape"))
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


__all__ = [
    "Connection",
    "Pool",
    "UpstreamResponse",
    "build_head",
    "content_length",
    "retry_on_fresh",
    "translate_errors",
]
