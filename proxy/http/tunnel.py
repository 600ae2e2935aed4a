"""An upgraded connection: bytes relayed both ways between two transports, untouched.

After a `101 Switching Protocols` the client's and the upstream's transports are taken
from their HTTP protocols and each given an `_End` of one `Tunnel`: what one end
receives is written to the other at once (no task, no queue), so the relay costs one
callback per read. What bounds it:
- back-pressure both ways: when one side's write buffer is above its high-water mark,
  the other side's reading pauses (memory per tunnel stays within two socket buffers);
- a half-close is passed on (`write_eof`), and the tunnel ends when both directions
  have, or when either connection is lost;
- `idle_timeout` seconds without a byte either way close both sides.

`close(code)` ends a WebSocket tunnel as a server would (RFC 6455 7.1.2): a close frame
to the client at a frame boundary of what flows to it (`proxy.http.websocket`), then a
half-close, then the connection is closed when the client closes its side (or after
`CLOSE_GRACE`); the upstream connection is closed at once. Any other protocol is closed
without a word.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from proxy.http.websocket import FrameBoundaries, close_frame

log = logging.getLogger("rollout.tunnel")

# After our close frame: how long the client has to answer it and close its side.
CLOSE_GRACE = 5.0

Counter = Callable[[int], None]  # counts bytes relayed in one direction


class _End(asyncio.Protocol):
    """One side of the tunnel: its transport, and what it receives goes to the peer."""

    __slots__ = ("_count", "_tunnel", "eof", "peer", "transport")

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport, count: Counter) -> None:
        self._tunnel = tunnel
        self.transport = transport
        self._count = count
        self.peer: _End
        self.eof = False

    def data_received(self, data: bytes) -> None:
        self._tunnel.received(self, data)

    def relay(self, data: bytes) -> None:
        """`data` from the peer, written to this end's transport."""
        self._count(len(data))
        self.transport.write(data)

    def eof_received(self) -> bool | None:
        return self._tunnel.half_closed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._tunnel.lost(self)

    # This end's write buffer is full: stop reading the peer until it drains.
    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self._tunnel.done:
            self.peer.transport.resume_reading()


class Tunnel:
    """Relays between `client` and `upstream` until one closes, or `close()`."""

    def __init__(
        self,
        client: tuple[asyncio.Transport, bytes],
        upstream: tuple[asyncio.Transport, bytes],
        *,
        idle_timeout: float,
        websocket: bool,
        count_up: Counter,
        count_down: Counter,
        on_closed: Callable[[Tunnel], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        # Each end counts what is written to it: to the client is "downstream".
        self.client = _End(self, client[0], count_down)
        self.upstream = _End(self, upstream[0], count_up)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self._frames = FrameBoundaries() if websocket else None
        self._closing: bytes | None = None  # a close frame waiting for a frame boundary
        self._on_closed = on_closed
        self._idle_timeout = idle_timeout
        self._last = self._loop.time()
        self.done = False
        self.closed_by_us = False
        client_rest, upstream_rest = client[1], upstream[1]
        for end in (self.client, self.upstream):
            end.transport.set_protocol(end)
        self._timer = self._loop.call_later(idle_timeout, self._check_idle)
        if upstream_rest:
            self.received(self.upstream, upstream_rest)
        if client_rest:
            self.received(self.client, client_rest)
        for end in (self.client, self.upstream):
            if not self.done:
                end.transport.resume_reading()

    # --- the relay -----------------------------------------------------------------------

    def received(self, end: _End, data: bytes) -> None:
        self._last = self._loop.time()
        if self.closed_by_us:
            return  # the client's answer to our close frame: nobody to pass it to
        if end is self.client:
            self.upstream.relay(data)
            return
        frames = self._frames
        if frames is None:
            self.client.relay(data)
            return
        if self._closing is None:
            frames.advance(data)
            self.client.relay(data)
            return
        # A close frame waits for the frame in progress to end: pass on up to there.
        cut = frames.advance(data, stop_at_boundary=True)
        if cut:
            self.client.relay(data[:cut])
        if frames.at_boundary:
            self._send_close()

    def half_closed(self, end: _End) -> bool | None:
        end.eof = True
        if self.closed_by_us:
            if end is self.client:
                self._finish()  # the client has answered our close: done
            return None
        peer = end.peer
        if peer.eof or not peer.transport.can_write_eof():
            self._finish()
            return None
        peer.transport.write_eof()
        return True  # keep the other direction open

    def lost(self, end: _End) -> None:
        if self.closed_by_us and end is self.upstream:
            return  # closed by us; the client side ends when the client closes
        # The peer still gets what was written to it (close() flushes its buffer).
        self._finish()

    def _check_idle(self) -> None:
        if self.done:
            return
        wait = self._last + self._idle_timeout - self._loop.time()
        if wait <= 0:
            log.info("closing an upgraded connection: no byte for %g s", self._idle_timeout)
            self._finish()
            return
        self._timer = self._loop.call_later(wait, self._check_idle)

    # --- closing -------------------------------------------------------------------------

    def close(self, code: int, reason: str = "") -> None:
        """End the tunnel from the proxy's side: `code` in a WebSocket close frame."""
        if self.done or self.closed_by_us or self._closing is not None:
            return
        if self._frames is None:
            self._finish()
            return
        self._closing = close_frame(code, reason)
        self._timer.cancel()
        self._timer = self._loop.call_later(CLOSE_GRACE, self._finish)
        if self._frames.at_boundary:
            self._send_close()
        # Else the frame in progress ends first (or the grace runs out: then both sides
        # are closed without a close frame, as when a client stopped reading).

    def _send_close(self) -> None:
        frame = cast(bytes, self._closing)
        self.closed_by_us = True
        self.upstream.transport.close()
        client = self.client.transport
        client.write(frame)
        if client.can_write_eof():
            client.write_eof()  # the server closes first (RFC 6455 7.1.1); we still read
        else:
            client.close()
        client.resume_reading()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self._timer.cancel()
        for end in (self.client, self.upstream):
            end.transport.close()
        self._on_closed(self)

    def abort(self) -> None:
        """Drop both connections now (the process is stopping)."""
        for end in (self.client, self.upstream):
            end.transport.abort()
        self._finish()
