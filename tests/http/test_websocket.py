"""Frame boundaries and the relay's own close frame (RFC 6455 5.2, 5.5.1), in bytes."""

from __future__ import annotations

import os

import pytest

from proxy.http.websocket import GOING_AWAY, SERVICE_RESTART, FrameBoundaries, close_frame


def frame(payload: bytes, *, opcode: int = 0x1, fin: bool = True, mask: bool = False) -> bytes:
    """A frame as RFC 6455 5.2 draws it (independent of the module under test)."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, (0x80 if mask else 0) | n))
    elif n < 1 << 16:
        head = bytes((first, (0x80 if mask else 0) | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, (0x80 if mask else 0) | 127)) + n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


FRAMES = {
    "empty": frame(b""),
    "small text": frame(b"hello"),
    "125 bytes": frame(b"x" * 125),
    "126 bytes (16-bit length)": frame(b"y" * 126),
    "65535 bytes": frame(b"z" * 65535),
    "65536 bytes (64-bit length)": frame(b"w" * 65536),
    "masked (client to server)": frame(b"masked payload", mask=True),
    "masked 300 bytes": frame(b"m" * 300, mask=True),
    "ping": frame(b"p", opcode=0x9),
    "close": close_frame(1000, "bye"),
}


@pytest.mark.parametrize("name", FRAMES)
def test_one_frame_whole_ends_at_a_boundary(name: str) -> None:
    data = FRAMES[name]
    frames = FrameBoundaries()
    assert frames.advance(data) == len(data)
    assert frames.at_boundary


@pytest.mark.parametrize("name", FRAMES)
def test_one_frame_fed_byte_by_byte_is_at_a_boundary_only_at_its_end(name: str) -> None:
    data = FRAMES[name]
    frames = FrameBoundaries()
    for i in range(len(data) - 1):
        frames.advance(data[i : i + 1])
        assert not frames.at_boundary, f"at a boundary after byte {i}"
    frames.advance(data[-1:])
    assert frames.at_boundary


def test_split_at_every_offset_of_a_stream_of_frames() -> None:
    stream = b"".join(FRAMES.values())
    ends = set()
    position = 0
    for data in FRAMES.values():
        position += len(data)
        ends.add(position)
    for cut in range(0, len(stream), 997):  # about a hundred cuts, headers included
        frames = FrameBoundaries()
        frames.advance(stream[:cut])
        assert frames.at_boundary == (cut in ends or cut == 0)
        frames.advance(stream[cut:])
        assert frames.at_boundary


def test_stop_at_boundary_returns_where_the_frame_in_progress_ends() -> None:
    first, second = frame(b"a" * 10), frame(b"b" * 10)
    frames = FrameBoundaries()
    frames.advance(first[:5])
    assert frames.advance(first[5:] + second, stop_at_boundary=True) == len(first) - 5
    assert frames.at_boundary
    # At a boundary already: nothing is taken.
    assert frames.advance(second, stop_at_boundary=True) == 0


def test_stop_at_boundary_with_the_header_split() -> None:
    data = frame(b"q" * 300)  # 4-byte header
    frames = FrameBoundaries()
    frames.advance(data[:1])
    assert frames.advance(data[1:3], stop_at_boundary=True) == 2
    assert not frames.at_boundary
    assert frames.advance(data[3:] + b"\x81", stop_at_boundary=True) == len(data) - 3


def test_fragments_of_a_message_each_end_at_a_boundary() -> None:
    # RFC 6455 5.4: a control frame may come between fragments, so each fragment's end
    # is a place for our close frame.
    frames = FrameBoundaries()
    for data in (frame(b"part1", fin=False), frame(b"p", opcode=0x9), frame(b"part2", opcode=0)):
        frames.advance(data)
        assert frames.at_boundary


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (SERVICE_RESTART, "rollback", b"\x88\x0a\x03\xf4rollback"),
        (GOING_AWAY, "", b"\x88\x02\x03\xe9"),
        (1000, "x" * 200, b"\x88\x7d\x03\xe8" + b"x" * 123),  # control payload <= 125
    ],
)
def test_close_frame_bytes(code: int, reason: str, expected: bytes) -> None:
    assert close_frame(code, reason) == expected
