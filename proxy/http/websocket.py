"""Just enough of RFC 6455 for a relay: where frames end, and a close frame of our own.

The relay never decodes a message (payloads, masks and extensions such as
permessage-deflate pass untouched); to close a connection cleanly it must only know
where, in the bytes flowing to the client, one frame ends and the next begins: a close
frame written there is a frame of its own, wherever else it would corrupt the one in
progress. Control frames may come between the fragments of a message (RFC 6455 5.4), so
any frame boundary will do.
"""

from __future__ import annotations

# Close codes (RFC 6455 7.4.1) the relay sends.
GOING_AWAY = 1001  # the proxy shuts down
SERVICE_RESTART = 1012  # routing moved the session: reconnect (IANA registry)

_MAX_REASON_BYTES = 123  # a control frame's payload is at most 125 bytes, 2 for the code


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked close frame, as a server sends it (RFC 6455 5.5.1)."""
    payload = code.to_bytes(2, "big") + reason.encode()[:_MAX_REASON_BYTES]
    return bytes((0x88, len(payload))) + payload


def _header_length(head: bytes) -> int:
    """The full length of a frame header whose first two bytes are in `head`."""
    second = head[1]
    size = second & 0x7F
    length = 2 + (4 if second & 0x80 else 0)
    if size == 126:
        return length + 2
    if size == 127:
        return length + 8
    return length


def _payload_length(head: bytes) -> int:
    size = head[1] & 0x7F
    if size == 126:
        return int.from_bytes(head[2:4], "big")
    if size == 127:
        return int.from_bytes(head[2:10], "big")
    return size


class FrameBoundaries:
    """Follows a stream of frames, chunk by chunk, to know where each one ends.

    `advance(data)` consumes bytes and returns how many it took: all of them, or with
    `stop_at_boundary` only up to the first point where a frame has just ended (0 when
    the stream is at a boundary already).
    """

    __slots__ = ("_head", "_remaining")

    def __init__(self) -> None:
        self._head = b""  # a frame header read in part
        self._remaining = 0  # payload bytes of the current frame still to come

    @property
    def at_boundary(self) -> bool:
        return not self._remaining and not self._head

    def advance(self, data: bytes, *, stop_at_boundary: bool = False) -> int:
        position = 0
        end = len(data)
        while position < end:
            if self._remaining:
                taken = min(self._remaining, end - position)
                self._remaining -= taken
                position += taken
                if not self._remaining and stop_at_boundary:
                    return position
                continue
            if stop_at_boundary and not self._head:
                return position
            # A header, possibly split across chunks: gather it whole first.
            need = 2 if len(self._head) < 2 else _header_length(self._head)
            take = min(need - len(self._head), end - position)
            self._head += data[position : position + take]
            position += take
            if len(self._head) == 2:
                need = _header_length(self._head)
                if need > 2:
                    continue
            if len(self._head) == need:
                self._remaining = _payload_length(self._head)
                self._head = b""
                if not self._remaining and stop_at_boundary:
                    return position
        return position
