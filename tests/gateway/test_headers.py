"""Header rules of one attempt (proxy/gateway/headers.py, proxy/http/client.py): pure."""

from __future__ import annotations

from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.values import Upstream
from proxy.errors import FailureReason
from proxy.gateway.headers import (
    HOP_BY_HOP,
    added_head,
    added_headers,
    client_response_headers,
    forwardable_head,
    request_head,
)
from proxy.http.client import parse_head
from proxy.http.request import Channel, Request, RequestHeaders
from proxy.rollout.routing import Side

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


# --- forwardable_head: the relay's fast path, table by table ---------------------------

NGINX = (
    b"Server: nginx/1.24.0\r\n"
    b"Date: Thu, 03 Dec 2026 16:00:00 GMT\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 208\r\n"
    b"Connection: keep-alive\r\n"
    b"X-Upstream: signal\r\n"
)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        pytest.param(NGINX, NGINX.replace(b"Connection: keep-alive\r\n", b""), id="nginx"),
        pytest.param(b"CoNNecTion: Keep-Alive\r\nA: 1\r\n", b"A: 1\r\n", id="mixed-case"),
        pytest.param(b"A: 1\r\nconnection:close\r\n", b"A: 1\r\n", id="last-line-no-blank"),
        pytest.param(b"Connection:\tclose \t\r\nA: 1\r\n", b"A: 1\r\n", id="tab-blanks"),
        pytest.param(b"Connection: \r\nA: 1\r\n", b"A: 1\r\n", id="empty-value"),
        pytest.param(
            b"Connection: close, TE, Upgrade\r\nTE: trailers\r\nUpgrade: h2c\r\nA: 1\r\n",
            b"A: 1\r\n",
            id="names-only-hop-by-hop",
        ),
        pytest.param(
            b"Connection: keep-alive\r\nConnection: close\r\nA: 1\r\n", b"A: 1\r\n", id="twice"
        ),
        pytest.param(
            b"X-Note: connection: x-a\r\nA: 1\r\n",
            b"X-Note: connection: x-a\r\nA: 1\r\n",
            id="name-inside-a-value",
        ),
        pytest.param(
            b"Connection-Id: 7\r\nKeep-Alive-Ish: 1\r\nTE-X: 2\r\n",
            b"Connection-Id: 7\r\nKeep-Alive-Ish: 1\r\nTE-X: 2\r\n",
            id="longer-names",
        ),
        pytest.param(b"X-Raw: caf\xe9\xff\r\n", b"X-Raw: caf\xe9\xff\r\n", id="non-utf8-value"),
        pytest.param(b"", b"", id="empty-block"),
        pytest.param(b"Connection: close, X-Secret\r\nX-Secret: 1\r\n", None, id="names-other"),
        pytest.param(b"Connection: x-secret\r\nA: 1\r\n", None, id="names-absent-header"),
        pytest.param(
            b"Connection: keep-alive\r\nA: 1\r\nconnection: X-A\r\n", None, id="second-names-other"
        ),
    ],
)
def test_forwardable_head_table(block: bytes, expected: bytes | None) -> None:
    assert forwardable_head(block) == expected


def reference_forwardable(block: bytes) -> bytes | None:
    """SPEC 4 read literally: drop each line whose name is hop-by-hop; when a `Connection`
    header lists anything but hop-by-hop names or `close`, the block cannot go as is."""
    lines = block.split(b"\r\n")[:-1]
    names = [line.partition(b":")[0].decode("latin-1").lower() for line in lines]
    listed = {
        token.strip(" \t").lower()
        for line, name in zip(lines, names, strict=True)
        if name == "connection"
        for token in line.partition(b":")[2].decode("latin-1").split(",")
    }
    if listed - HOP_BY_HOP - {"close", ""}:
        return None
    kept = [line for line, name in zip(lines, names, strict=True) if name not in HOP_BY_HOP]
    return b"".join(line + b"\r\n" for line in kept)


def _cases(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.upper(), name.title(), name.capitalize()])


_NAMES = st.one_of(
    st.sampled_from(sorted(HOP_BY_HOP)).flatmap(_cases),
    st.sampled_from(
        ["Content-Type", "X-A", "X-Connection", "Connection-Id", "Tea", "Trailers", "Set-Cookie"]
    ).flatmap(_cases),
)
_TOKENS = st.one_of(_NAMES, st.sampled_from(["close", "keep-alive", "Keep-Alive", ""]))
_OWS = st.sampled_from(["", " ", "\t", "  "])
_CONNECTION_VALUE = st.lists(st.tuples(_OWS, _TOKENS, _OWS), max_size=4).map(
    lambda parts: ",".join(f"{a}{token}{b}" for a, token, b in parts).encode()
)
# Field value bytes llhttp lets through: visible ASCII, blanks, obs-text.
_VALUE = st.binary(max_size=20).map(
    lambda raw: bytes(b for b in raw if b == 9 or 32 <= b != 127).lstrip(b" \t")
)


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    lines = []
    for name in draw(st.lists(_NAMES, max_size=8)):
        value = draw(_CONNECTION_VALUE if name.lower() == "connection" else _VALUE)
        sep = draw(st.sampled_from([b":", b": ", b":\t", b":  "]))
        lines.append(name.encode() + sep + value)
    return b"".join(line + b"\r\n" for line in lines)


@settings(max_examples=500, deadline=None)
@given(block=header_blocks())
def test_forwardable_head_follows_the_spec_rule(block: bytes) -> None:
    assert forwardable_head(block) == reference_forwardable(block)


# --- request_head: what the upstream is sent ------------------------------------------

UP = Upstream("signal", "http://10.0.0.5:9001")


class _Client:
    """The two things a `Request` reads from its connection when it is made."""

    def __init__(self, scheme: str = "http") -> None:
        self.peer = "198.51.100.2"
        self.scheme = scheme


def a_request(
    pairs: list[tuple[bytes, bytes]],
    target: str = "/signals?limit=10",
    *,
    method: str = "GET",
    scheme: str = "http",
    upgrade: str | None = None,
) -> Request:
    headers = RequestHeaders()
    for name, value in pairs:
        headers.add(name, value)
    client = cast(Channel, _Client(scheme))
    return Request(client, method, target, "1.1", headers, True, None, None, upgrade)


BROWSER = [
    (b"Host", b"proxy.example"),
    (b"User-Agent", b"wrk/4.2.0"),
    (b"Accept", b"*/*"),
    (b"X-Session-Id", b"s-1"),
]
TAIL = (
    b"X-Forwarded-For: 198.51.100.2\r\nX-Forwarded-Proto: http\r\n"
    b"X-Forwarded-Host: proxy.example\r\nHost: 10.0.0.5:9001\r\n"
)


def test_request_head_of_a_plain_get_is_exact() -> None:
    assert request_head(a_request(BROWSER), UP, None) == (
        b"GET /signals?limit=10 HTTP/1.1\r\n"
        b"User-Agent: wrk/4.2.0\r\nAccept: */*\r\nX-Session-Id: s-1\r\n" + TAIL + b"\r\n"
    )


@pytest.mark.parametrize(
    ("pairs", "kept"),
    [
        pytest.param(
            [(b"CONNECTION", b"Keep-Alive"), (b"keep-alive", b"300"), (b"Te", b"trailers")],
            b"",
            id="hop-by-hop-mixed-case",
        ),
        pytest.param(
            [
                (b"Proxy-Authorization", b"Basic x"),
                (b"proxy-connection", b"x"),
                (b"UPGRADE", b"h2c"),
            ],
            b"",
            id="proxy-and-upgrade-outside-a-handshake",
        ),
        pytest.param(
            [(b"Connection", b"close, X-Hop"), (b"x-hop", b"1"), (b"X-Stay", b"2")],
            b"X-Stay: 2\r\n",
            id="connection-names-another-header",
        ),
        pytest.param(
            [(b"Connection", b"keep-alive"), (b"Connection", b" X-HOP\t"), (b"X-Hop", b"1")],
            b"",
            id="second-connection-header-names-one",
        ),
        pytest.param(
            [(b"Expect", b"100-continue"), (b"content-length", b"5"), (b"X-A", b"1")],
            b"X-A: 1\r\n",
            id="replaced-by-the-proxy",
        ),
        pytest.param(
            [(b"X-Raw", b"caf\xe9\xff\x80"), (b"X-Utf8", b"caf\xc3\xa9")],
            b"X-Raw: caf\xe9\xff\x80\r\nX-Utf8: caf\xc3\xa9\r\n",
            id="non-utf8-bytes-round-trip",
        ),
        pytest.param(
            [(b"x-MiXed", b"v"), (b"X-Dup", b"1"), (b"X-Dup", b"2")],
            b"x-MiXed: v\r\nX-Dup: 1\r\nX-Dup: 2\r\n",
            id="names-as-sent-repeats-in-order",
        ),
    ],
)
def test_request_head_drops_what_stops_at_the_proxy(
    pairs: list[tuple[bytes, bytes]], kept: bytes
) -> None:
    head = request_head(a_request([(b"Host", b"proxy.example"), *pairs]), UP, None)
    assert head == b"GET /signals?limit=10 HTTP/1.1\r\n" + kept + TAIL + b"\r\n"


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        pytest.param([b"203.0.113.7"], b"203.0.113.7, 198.51.100.2", id="one"),
        pytest.param(
            [b"203.0.113.7", b"192.0.2.1, 192.0.2.9"],
            b"203.0.113.7, 192.0.2.1, 192.0.2.9, 198.51.100.2",
            id="duplicated",
        ),
        pytest.param([b""], b"198.51.100.2", id="empty"),
        pytest.param([], b"198.51.100.2", id="none"),
    ],
)
def test_x_forwarded_for_gets_the_peer_appended(sent: list[bytes], forwarded: bytes) -> None:
    pairs = [(b"x-forwarded-FOR", value) for value in sent]
    head = request_head(a_request(pairs), UP, None)
    assert head.count(b"X-Forwarded-For") == 1
    assert b"\r\nX-Forwarded-For: " + forwarded + b"\r\n" in head
    assert b"x-forwarded-FOR" not in head


def test_forwarding_headers_are_rebuilt_not_passed_on() -> None:
    pairs = [(b"X-Forwarded-Proto", b"gopher"), (b"X-Forwarded-Host", b"evil"), (b"HOST", b"h")]
    head = request_head(a_request(pairs, scheme="https"), UP, None)
    assert head == (
        b"GET /signals?limit=10 HTTP/1.1\r\nX-Forwarded-For: 198.51.100.2\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\nHost: 10.0.0.5:9001\r\n\r\n"
    )


def test_without_host_there_is_no_x_forwarded_host() -> None:
    head = request_head(a_request([]), UP, None)
    assert b"X-Forwarded-Host" not in head
    assert head.endswith(b"\r\nHost: 10.0.0.5:9001\r\n\r\n")


@pytest.mark.parametrize("spelled", [b"X-Session-Id", b"x-session-id", b"X-SESSION-ID"])
def test_a_minted_id_replaces_the_clients_session_header(spelled: bytes) -> None:
    request = a_request([(spelled, b""), (b"X-A", b"1")])
    head = request_head(request, UP, None, {"X-Session-Id": "m-42"})
    assert head.lower().count(b"x-session-id") == 1
    assert head.endswith(b"Host: 10.0.0.5:9001\r\nX-Session-Id: m-42\r\n\r\n")
    assert b"X-A: 1\r\n" in head


@pytest.mark.parametrize(
    ("target", "sent"),
    [
        ("http://other.host:81/x/y?q=1&r=%2F", "/x/y?q=1&r=%2F"),
        ("http://other.host", "/"),
        ("/plain?x=%zz\udcff", "/plain?x=%zz\udcff"),
        ("*", "*"),
    ],
)
def test_the_target_goes_as_path_and_query_byte_for_byte(target: str, sent: str) -> None:
    head = request_head(a_request([], target, method="OPTIONS"), UP, None)
    line = b"OPTIONS " + sent.encode("utf-8", "surrogateescape") + b" HTTP/1.1\r\n"
    assert head.startswith(line)


def test_the_framing_line_comes_last() -> None:
    head = request_head(a_request([], method="POST"), UP, "Content-Length: 5")
    assert head.endswith(b"\r\nHost: 10.0.0.5:9001\r\nContent-Length: 5\r\n\r\n")


def test_an_upgrade_handshake_sends_its_own_upgrade_lines() -> None:
    pairs = [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), (b"Sec-WebSocket-Key", b"k")]
    head = request_head(a_request(pairs, upgrade="websocket"), UP, None)
    assert head == (
        b"GET /signals?limit=10 HTTP/1.1\r\nSec-WebSocket-Key: k\r\n"
        b"X-Forwarded-For: 198.51.100.2\r\nX-Forwarded-Proto: http\r\nHost: 10.0.0.5:9001\r\n"
        b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )


def test_the_upstream_host_line_is_made_at_config_load() -> None:
    assert Upstream("legacy", "https://[::1]:8443").host_field == b"Host: [::1]:8443"
    assert Upstream("legacy", "http://legacy.internal").host_field == b"Host: legacy.internal"


# --- added_head: what the relay appends -------------------------------------------------


@pytest.mark.parametrize("side", list(Side))
@pytest.mark.parametrize("fallback", [None, *FailureReason])
@pytest.mark.parametrize("minted", [None, "m-1"])
def test_added_head_is_added_headers_as_lines(
    side: Side, fallback: FailureReason | None, minted: str | None
) -> None:
    pairs = added_headers(side, fallback, "sid", minted)
    lines = b"".join(f"{name}: {value}\r\n".encode() for name, value in pairs)
    assert added_head(side, fallback, "sid", minted) == lines


def test_added_head_after_a_fallback_with_a_minted_cookie() -> None:
    assert added_head(Side.LEGACY, FailureReason.STATUS, "sid", "m-1") == (
        b"X-Rollout-Upstream: legacy\r\nX-Rollout-Fallback: status\r\n"
        b"Set-Cookie: sid=m-1; HttpOnly; Path=/; SameSite=Lax\r\n"
    )


_REPLACED_NAMES = [
    "Host",
    "Expect",
    "Content-Length",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
]
_REQUEST_NAMES = st.one_of(
    _NAMES, st.sampled_from([*_REPLACED_NAMES, "X-Session-Id", "Cookie"]).flatmap(_cases)
)
# A value as the server keeps it: llhttp took the blanks before it, the server those after.
_KEPT_VALUE = _VALUE.map(lambda value: value.rstrip(b" \t")).filter(bool)


@st.composite
def request_pairs(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    pairs = []
    for name in draw(st.lists(_REQUEST_NAMES, max_size=8)):
        if name.lower() == "connection":
            value = draw(_CONNECTION_VALUE).strip(b" \t")
        else:
            value = draw(_KEPT_VALUE)
        pairs.append((name.encode(), value))
    return pairs


def reference_request_head(
    pairs: list[tuple[bytes, bytes]], scheme: str, extra: dict[str, str] | None
) -> bytes:
    """SPEC 4 read literally, for a GET without a body: hop-by-hop headers, those the
    Connection header lists and those the proxy sets itself stop here; X-Forwarded-For
    gets the peer appended; X-Forwarded-Proto and -Host are set; Host is the upstream's;
    a minted session id goes in the session header."""
    names = [name.decode("latin-1").lower() for name, _ in pairs]
    listed = {
        token.strip(" \t").lower()
        for (_, value), name in zip(pairs, names, strict=True)
        if name == "connection"
        for token in value.decode("latin-1").split(",")
    }
    own = {name.lower() for name in [*_REPLACED_NAMES, *(extra or {})]}
    stop = HOP_BY_HOP | own | listed
    kept = [n + b": " + v for (n, v), name in zip(pairs, names, strict=True) if name not in stop]
    prior = [v for (_, v), name in zip(pairs, names, strict=True) if name == "x-forwarded-for"]
    hosts = [v for (_, v), name in zip(pairs, names, strict=True) if name == "host"]
    fields = [
        *kept,
        b"X-Forwarded-For: " + b", ".join([*prior, b"198.51.100.2"]),
        b"X-Forwarded-Proto: " + scheme.encode(),
        *([b"X-Forwarded-Host: " + hosts[0]] if hosts else []),
        b"Host: 10.0.0.5:9001",
        *(f"{name}: {value}".encode() for name, value in (extra or {}).items()),
    ]
    return b"GET /s?x=1 HTTP/1.1\r\n" + b"".join(field + b"\r\n" for field in fields) + b"\r\n"


@settings(max_examples=500, deadline=None)
@given(
    pairs=request_pairs(),
    scheme=st.sampled_from(["http", "https"]),
    extra=st.sampled_from([None, {"X-Session-Id": "m-1"}]),
)
def test_request_head_follows_the_spec_rule(
    pairs: list[tuple[bytes, bytes]], scheme: str, extra: dict[str, str] | None
) -> None:
    request = a_request(pairs, "/s?x=1", scheme=scheme)
    assert request_head(request, UP, None, extra) == reference_request_head(pairs, scheme, extra)
