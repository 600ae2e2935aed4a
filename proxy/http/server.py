"""The public listener: HTTP/1.1 on an asyncio Protocol, parsed by llhttp (httptools).

Why not aiohttp's server: before our handler ran it spent most of the latency a request
gains by going through the proxy (request and response objects, header multidicts, a
payload parser, a task and a timer per request; bench/RESULTS.md). This server only does
what a proxy needs: parse, hand over raw values, write bytes. The upstream side is
`proxy.http.client`, on the same parser.

What it guarantees the handler:
- requests of one connection are handled one at a time, in order (pipelined requests
  wait their turn, reading pauses when too many are queued);
- the target and header values exactly as sent (the target decoded UTF-8 with
  surrogateescape, so every byte round-trips; the headers as bytes);
- the body as a flow-controlled stream; `100 Continue` is sent when it is first read;
- limits: request line 8190 bytes (414), 100 headers, 16 KiB per header and 1 MiB of head
  (431); anything llhttp refuses, including ambiguous framing (TE + CL), is a 400. Each
  is one rate-limited log line without the offending bytes, never a traceback;
- a connection idle (or still sending its request head) for `keepalive` seconds is closed;
- `Connection: close` on every response once the server is shutting down.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import ssl
from collections.abc import Awaitable
from typing import cast

import httptools

from proxy.errors import ClientGoneError
from proxy.http.flow import WriteFlow
from proxy.http.listener import Listener, open_sockets
from proxy.http.request import REASONS, Handler, IncomingBody, Request, RequestHeaders
from proxy.telemetry.logs import RateLimitedWarning

log = logging.getLogger("rollout.server")

MAX_TARGET_BYTES = 8190
MAX_HEADERS = 100
MAX_FIELD_BYTES = 16 * 1024
MAX_HEAD_BYTES = 1024 * 1024
MAX_QUEUED = 16  # pipelined requests waiting for their turn before reading pauses


class _Rejected(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class HttpConnection(WriteFlow, asyncio.Protocol):
    """One client connection: parse requests, run the handler for each in turn."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self.loop = self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.scheme = server.scheme  # X-Forwarded-Proto
        self.lost = False
        self._queue: collections.deque[Request | _Rejected] = collections.deque()
        self._current: Request | None = None  # being handled
        self._task: asyncio.Task[None] | None = None  # a strong reference while it runs
        self._parsing: IncomingBody | None = None  # body still arriving
        self._stopped = False  # no further request is read (error, upgrade, close)
        self._upgraded: bytes | None = None  # what followed an upgrade request's head
        self._reading_paused = False
        self._held = False  # a pipelined request waits for the client to read
        self._write_paused_since = 0.0
        self._idle_since = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._new_message()

    @property
    def closing(self) -> bool:
        return self._server.closing

    def _new_message(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._url = b""
        self._headers = RequestHeaders()

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses: no isinstance.)
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else ""
        self._server.connections.add(self)
        self._timer = self._loop.call_later(self._server.keepalive, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._reject(_Rejected(431, "request head too large"))
                return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            # Raised in one of our callbacks; httptools keeps it as the context.
            cause = exc.__context__
            if not isinstance(cause, _Rejected):
                log.error("error parsing a request from %s", self.peer, exc_info=cause)
                cause = _Rejected(500, "internal error")
            self._reject(cause)
        except httptools.HttpParserUpgrade as exc:
            # CONNECT or an upgrade request: llhttp stops at the end of its head. What
            # follows belongs to the new protocol, kept for the tunnel if the handler
            # switches (`detach`); otherwise the connection closes after the answer.
            self._upgraded = data[exc.args[0] :] if exc.args else b""
            self._stop_reading()
        except httptools.HttpParserError as exc:
            detail = str(exc).split(":", 1)[0] or type(exc).__name__
            self._reject(_Rejected(400, detail))

    def eof_received(self) -> bool | None:
        # A half-closed client may still wait for its answers: keep writing them.
        self._stopped = True
        if self._parsing is not None:
            self._parsing.fail(ClientGoneError("client closed the connection mid-body"))
        return self._current is not None or bool(self._queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._stopped = True
        self._server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        gone = ClientGoneError("client disconnected")
        for item in (self._current, *self._queue):
            if isinstance(item, Request) and item.body is not None:
                item.body.fail(gone)
        if self._parsing is not None:
            self._parsing.fail(gone)
        self._end_drain(ClientGoneError("client disconnected"))

    # --- httptools callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url += url  # may arrive in pieces
        if len(self._url) > MAX_TARGET_BYTES:
            raise _Rejected(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        raw = self._headers.raw
        if len(raw) >= MAX_HEADERS:
            raise _Rejected(431, "too many headers")
        if len(name) + len(value) > MAX_FIELD_BYTES:
            raise _Rejected(431, "header too large")
        # Kept as bytes: decoded only if someone asks (bench/RESULTS.md, issue 19).
        # llhttp drops the whitespace before a value, not after it (RFC 9110 5.5: not
        # part of the value; a session id "7\t" is "7").
        raw.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            # llhttp takes a request line without a version ("GET /x\n") as HTTP/0.9;
            # forwarded as HTTP/1.1 it would be a different request than the one sent.
            raise _Rejected(400, "HTTP/1.0 or HTTP/1.1 only")
        headers = self._headers
        method = parser.get_method().decode("ascii")
        length_header = headers.get_raw(b"content-length")
        length = int(length_header) if length_header is not None else None
        has_body = bool(length) or headers.get_raw(b"transfer-encoding") is not None
        # An upgrade's bytes after the head are the new protocol's, so an upgrade request
        # with a body is not one we can relay (llhttp does not parse that body).
        upgrade = None
        if parser.should_upgrade() and method != "CONNECT":
            upgrade = ", ".join(headers.getall("upgrade")) if not has_body else ""
        body = None
        if has_body:
            expect = (headers.get_raw(b"expect") or b"").lower() == b"100-continue"
            body = self._parsing = IncomingBody(self, expect and version == "1.1")
        request = Request(
            self,
            method,
            self._url.decode("utf-8", "surrogateescape"),
            version,
            headers,
            # After an upgrade request llhttp reads no further request: answered other
            # than by a switch, the connection closes, and the answer says so.
            parser.should_keep_alive() and upgrade is None,
            body,
            length,
            upgrade,
        )
        self._in_head = False
        self._head_bytes = 0
        self._url = b""
        self._headers = RequestHeaders()
        self._enqueue(request)

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.end()
            self._parsing = None
        self._new_message()

    # --- requests, in order ------------------------------------------------------------

    def _enqueue(self, item: Request | _Rejected) -> None:
        if self._current is None and not self._queue:
            self._run_next(item)
            return
        self._queue.append(item)
        if len(self._queue) >= MAX_QUEUED:
            self.pause_reading()

    def _reject(self, rejected: _Rejected) -> None:
        self._stop_reading()
        if self._parsing is not None:
            self._parsing.fail(ClientGoneError("malformed request body"))
            self._parsing = None
        self._enqueue(rejected)

    def _stop_reading(self) -> None:
        self._stopped = True
        self.pause_reading()

    def _run_next(self, item: Request | _Rejected) -> None:
        if isinstance(item, _Rejected):
            self._server.rejections.warn(
                "rejected a malformed request from %s: %d %s", self.peer, item.status, item.detail
            )
            self.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%b"
                % (item.status, REASONS[item.status].encode(), *_error_body(item.detail))
            )
            self._close()
            return
        self._current = item
        try:
            work = self._server.handler(item)
        except Exception:
            self.handler_failed(item)
            return
        if work is not None:
            self.run(item, work)

    def run(self, request: Request, work: Awaitable[None]) -> None:
        """Finish `request` in a task: `work` writes its response. The handler's coroutine
        goes here, and so does the rest of a request that began by callbacks."""
        self._task = self._loop.create_task(self._handle(request, work))

    async def _handle(self, request: Request, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:
            self.handler_failed(request)
            return
        if not request.finished:
            request.abort()
            self._current = None

    def handler_failed(self, request: Request) -> None:
        """An exception escaped the handler (call from its `except` block): logged with
        its traceback; a 500 if nothing was written yet, else the connection is dropped."""
        log.exception("error handling %s %s", request.method, request.target.split("?")[0])
        if not request.started and not self.lost:
            request.keep_alive = False
            request.respond_json(500, {"error": "internal error", "upstream": None})
        if not request.finished:
            request.abort()
            self._current = None

    def response_done(self, request: Request) -> None:
        """The handler wrote its whole response: next request, idle, or close."""
        self._current = None
        self._task = None
        body = request.body
        if body is not None and not body.complete:
            request.keep_alive = False  # unread body: the stream position is unknown
        if not request.keep_alive or self.lost:
            self._close()
            return
        if self._queue:
            self._next_when_writable()
        elif self._stopped:
            self._close()
        else:
            self._idle_since = self._loop.time()

    def _next_when_writable(self) -> None:
        """Start the next pipelined request, unless the client is not reading its answers:
        then wait for `resume_writing`, so answers never pile up in memory (and with the
        queue full, reading stops too)."""
        if self._write_paused:
            self._held = True
            return
        if self._reading_paused and len(self._queue) <= MAX_QUEUED // 2:
            self.resume_reading()
        self._run_next(self._queue.popleft())

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._held and not self.lost:
            self._held = False
            if self._current is None and self._queue:
                self._next_when_writable()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_paused_since = self._loop.time()

    def _check_idle(self) -> None:
        """Close a connection that has neither sent a request head nor been answered in
        `keepalive` seconds (idle keep-alive clients and slowloris alike), or that has
        not read any of its answers for as long (as nginx's `send_timeout`)."""
        keepalive = self._server.keepalive
        now = self._loop.time()
        if self._write_paused:
            wait = self._write_paused_since + keepalive - now
            if wait <= 0:
                log.info(
                    "closing a connection from %s: answers not read for %.0f s",
                    self.peer,
                    keepalive,
                )
                self.abort()
                return
        elif self._current is not None or self._queue:
            wait = keepalive
        else:
            wait = self._idle_since + keepalive - now
            if wait <= 0:
                self._close()
                return
        self._timer = self._loop.call_later(wait, self._check_idle)

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """Give up the connection to a new protocol after `101 Switching Protocols`: its
        transport (reading paused) and the bytes that came after the request's head."""
        assert self.transport is not None
        self._stopped = True
        self.pause_reading()
        self._server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._current = None
        self._task = None
        rest, self._upgraded = self._upgraded or b"", None
        return self.transport, rest

    def close_if_idle(self) -> None:
        if self._current is None and not self._queue:
            self._close()

    # --- transport -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.lost:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if len(self._queue) >= MAX_QUEUED:
            return
        if self._reading_paused and not self._stopped and self.transport is not None:
            self._reading_paused = False
            if not self.lost:
                self.transport.resume_reading()

    def _close(self) -> None:
        self._stopped = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self._stopped = True
        if self.transport is not None:
            self.transport.abort()


def _error_body(detail: str) -> tuple[int, bytes]:
    body = json.dumps({"error": detail, "upstream": None}).encode()
    return len(body), body


class HttpServer:
    """The listener and its connections; `shutdown()` lets requests in flight finish."""

    def __init__(self, handler: Handler, *, keepalive: float) -> None:
        self.handler = handler
        self.keepalive = keepalive
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        self.closing = False
        self.rejections = RateLimitedWarning(log)
        self._listener: Listener | None = None
        self.scheme = "http"  # "https" once started with a TLS context

    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        sockets = open_sockets(host, port, reuse_port=reuse_port)
        self.scheme = "https" if ssl_context is not None else "http"
        factory = lambda: HttpConnection(self)  # noqa: E731
        self._listener = Listener(self.loop, sockets, factory, ssl_context)
        self._listener.start()

    def set_ssl_context(self, context: ssl.SSLContext) -> None:
        """New handshakes use `context` (certificate rotation); open connections keep theirs."""
        if self._listener is not None:
            self._listener.ssl_context = context

    def begin_drain(self) -> None:
        """From now on every response says `Connection: close` (reconnect elsewhere)."""
        self.closing = True

    def stop_listening(self) -> None:
        """No new connections; idle keep-alive connections are closed."""
        self.closing = True
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.connections):
            conn.close_if_idle()

    def close_all(self) -> None:
        """Drop every connection left (after the drain)."""
        for conn in list(self.connections):
            conn.abort()


# The request side lives in proxy.http.request; named here too, as what this server hands
# its handler.
__all__ = ["Handler", "HttpServer", "IncomingBody", "Request", "RequestHeaders"]
