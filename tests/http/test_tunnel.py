"""The upgraded-connection relay at the wire: two fake transports, bytes both ways.

Each test hands a `Tunnel` two `MockTransport`s (the client's and the upstream's, as the
HTTP protocols give them up after a 101) and drives their protocols' callbacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from proxy.http.tunnel import Tunnel
from proxy.http.websocket import SERVICE_RESTART, close_frame
from tests.support.wire import MockTransport

# A text frame from a server (unmasked), 5 payload bytes.
HELLO = b"\x81\x05hello"


class Counted:
    def __init__(self) -> None:
        self.total = 0

    def __call__(self, n: int) -> None:
        self.total += n


class Pair:
    """A tunnel between two mock transports, with its counters and close callback."""

    def __init__(
        self,
        *,
        client_rest: bytes = b"",
        upstream_rest: bytes = b"",
        websocket: bool = True,
        idle: float = 60.0,
    ) -> None:
        self.client = MockTransport()
        self.upstream = MockTransport()
        self.client.reading_paused = self.upstream.reading_paused = True  # as detached
        self.up, self.down = Counted(), Counted()
        self.closed: list[Tunnel] = []
        self.tunnel = Tunnel(
            (self.client, client_rest),
            (self.upstream, upstream_rest),
            idle_timeout=idle,
            websocket=websocket,
            count_up=self.up,
            count_down=self.down,
            on_closed=self.closed.append,
        )

    def from_client(self, data: bytes) -> None:
        protocol = self.client.get_protocol()
        assert isinstance(protocol, asyncio.Protocol)
        protocol.data_received(data)

    def from_upstream(self, data: bytes) -> None:
        protocol = self.upstream.get_protocol()
        assert isinstance(protocol, asyncio.Protocol)
        protocol.data_received(data)

    def protocol(self, transport: MockTransport) -> asyncio.Protocol:
        protocol = transport.get_protocol()
        assert isinstance(protocol, asyncio.Protocol)
        return protocol


@pytest.fixture
def pair() -> Callable[..., Pair]:
    made: list[Pair] = []

    def make(**kwargs: object) -> Pair:
        p = Pair(**kwargs)  # type: ignore[arg-type]
        made.append(p)
        return p

    yield make  # type: ignore[misc]
    for p in made:
        p.tunnel.abort()


async def test_bytes_go_both_ways_untouched_and_are_counted(pair: Callable[..., Pair]) -> None:
    p = pair()
    p.from_client(b"\x81\x85abcd" + bytes(5))  # a masked client frame
    p.from_upstream(HELLO)
    assert p.upstream.written == b"\x81\x85abcd" + bytes(5)
    assert p.client.written == HELLO
    assert (p.up.total, p.down.total) == (11, 7)
    assert not p.client.reading_paused
    assert not p.upstream.reading_paused


async def test_bytes_that_came_with_the_handshake_go_first(pair: Callable[..., Pair]) -> None:
    p = pair(client_rest=b"early-client", upstream_rest=HELLO)
    assert p.upstream.written == b"early-client"
    assert p.client.written == HELLO


async def test_a_full_write_buffer_pauses_the_other_side(pair: Callable[..., Pair]) -> None:
    p = pair()
    p.protocol(p.client).pause_writing()  # the client reads slowly
    assert p.upstream.reading_paused
    assert not p.client.reading_paused
    p.protocol(p.client).resume_writing()
    assert not p.upstream.reading_paused
    p.protocol(p.upstream).pause_writing()  # and the other way round
    assert p.client.reading_paused


async def test_a_half_close_is_passed_on(pair: Callable[..., Pair]) -> None:
    p = pair()
    keep_open = p.protocol(p.client).eof_received()
    assert keep_open is True
    assert p.upstream.eof_written
    assert not p.tunnel.done
    p.from_upstream(HELLO)  # the other direction still flows
    assert p.client.written == HELLO
    p.protocol(p.upstream).eof_received()
    assert p.tunnel.done
    assert p.client.closed
    assert p.upstream.closed
    assert p.closed == [p.tunnel]


async def test_without_half_close_an_eof_ends_the_tunnel(pair: Callable[..., Pair]) -> None:
    p = pair()
    p.upstream.half_close = False  # a TLS transport
    p.protocol(p.client).eof_received()
    assert p.tunnel.done
    assert p.upstream.closed


async def test_a_lost_connection_closes_the_other(pair: Callable[..., Pair]) -> None:
    p = pair()
    p.protocol(p.upstream).connection_lost(ConnectionResetError())
    assert p.tunnel.done
    assert p.client.closed
    assert not p.client.aborted
    assert p.closed == [p.tunnel]


async def test_close_at_a_boundary_sends_the_frame_then_half_closes(
    pair: Callable[..., Pair],
) -> None:
    p = pair()
    p.from_upstream(HELLO)
    p.tunnel.close(SERVICE_RESTART, "rollback")
    assert p.client.written == HELLO + close_frame(SERVICE_RESTART, "rollback")
    assert p.client.eof_written
    assert not p.client.closed
    assert p.upstream.closed
    p.from_client(b"\x88\x82abcd\x00\x00")  # its close frame: not passed anywhere
    assert p.upstream.written == b""
    p.protocol(p.client).eof_received()
    assert p.tunnel.done
    assert p.client.closed


async def test_close_mid_frame_waits_for_the_frame_to_end(pair: Callable[..., Pair]) -> None:
    p = pair()
    big = b"\x82\x7e\x01\x00" + b"B" * 256  # a 256-byte binary frame
    p.from_upstream(big[:100])
    p.tunnel.close(SERVICE_RESTART)
    assert p.client.written == big[:100]  # nothing inserted inside the frame
    assert not p.upstream.closed
    p.from_upstream(big[100:] + HELLO)  # the frame's end, then one frame too many
    assert p.client.written == big + close_frame(SERVICE_RESTART)
    assert p.upstream.closed


async def test_a_client_lost_after_our_close_ends_it(pair: Callable[..., Pair]) -> None:
    p = pair()
    p.tunnel.close(SERVICE_RESTART)
    p.protocol(p.upstream).connection_lost(None)  # we closed it: the tunnel waits
    assert not p.tunnel.done
    p.protocol(p.client).connection_lost(None)
    assert p.tunnel.done


async def test_another_protocol_is_closed_without_a_frame(pair: Callable[..., Pair]) -> None:
    p = pair(websocket=False)
    p.from_upstream(b"\x00raw")
    p.tunnel.close(SERVICE_RESTART)
    assert p.client.written == b"\x00raw"
    assert p.tunnel.done
    assert p.client.closed
    assert p.upstream.closed


async def test_silence_closes_both_sides(pair: Callable[..., Pair]) -> None:
    p = pair(idle=0.05)
    p.from_client(b"x")
    for _ in range(200):  # bounded: at most 2 s
        if p.tunnel.done:
            break
        await asyncio.sleep(0.01)
    assert p.tunnel.done
    assert p.client.closed
    assert p.upstream.closed
