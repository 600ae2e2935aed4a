"""Header rules of one attempt (proxy/gateway/headers.py, proxy/http/client.py): pure."""

from __future__ import annotations

import pytest

from proxy.gateway.headers import HOP_BY_HOP, client_response_headers, forwardable_head
from proxy.http.client import parse_head

PLAIN = (
    b"Content-Type: application/json\r\n"
    b"Content-Length: 12\r\n"
    b"X-Request-Id: abc\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
)


def test_a_block_without_hop_by_hop_headers_is_forwarded_unchanged() -> None:
    assert forwardable_head(PLAIN) == PLAIN


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_every_hop_by_hop_line_is_removed_whatever_its_case(name: str) -> None:
    for spelled in (name, name.upper(), name.title()):
        block = b"A: 1\r\n" + spelled.encode() + b": close\r\nB: 2\r\n"
        assert forwardable_head(block) == b"A: 1\r\nB: 2\r\n"


def test_names_that_only_start_like_hop_by_hop_ones_stay() -> None:
    block = b"Tea: green\r\nTrailers-Info: 1\r\nUpgraded: no\r\nX-Connection: 1\r\n"
    assert forwardable_head(block) == block


def test_connection_keep_alive_and_close_are_handled_by_the_fast_path() -> None:
    block = b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n" + PLAIN
    assert forwardable_head(block) == PLAIN
    assert forwardable_head(b"connection: Close\r\n" + PLAIN) == PLAIN


def test_connection_naming_an_end_to_end_header_leaves_it_to_the_slow_path() -> None:
    block = b"Connection: close, X-Secret\r\nX-Secret: 1\r\n" + PLAIN
    assert forwardable_head(block) is None
    names = [name for name, _ in client_response_headers(parse_head(block))]
    assert "X-Secret" not in names
    assert "Connection" not in names


def test_parse_head_keeps_order_repeats_and_raw_bytes() -> None:
    block = PLAIN + b"X-Raw: caf\xe9\r\nX-Spaces:   padded \t\r\n"
    pairs = parse_head(block)
    assert pairs[3:5] == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert pairs[5][1].encode("utf-8", "surrogateescape") == b"caf\xe9"
    assert pairs[6] == ("X-Spaces", "padded")


def test_client_response_headers_drops_framing_and_hop_by_hop() -> None:
    pairs = parse_head(b"Transfer-Encoding: chunked\r\nUpgrade: h2c\r\n" + PLAIN)
    names = [name.lower() for name, _ in client_response_headers(pairs)]
    assert names == ["content-type", "x-request-id", "set-cookie", "set-cookie"]
