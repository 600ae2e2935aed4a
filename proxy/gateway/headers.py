"""What crosses the proxy in each direction (SPEC 4), as pure functions.

Hop-by-hop headers stop here; forwarding headers are rebuilt; `Host` is the upstream's
own; the proxy adds `X-Rollout-Upstream`, `X-Rollout-Fallback` and a minted session cookie
to the answer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import httptools

from proxy.config.values import Upstream
from proxy.errors import FailureReason
from proxy.http.client import build_head
from proxy.http.request import Request
from proxy.rollout.routing import Side

UPSTREAM_HEADER = "X-Rollout-Upstream"
FALLBACK_HEADER = "X-Rollout-Fallback"

# RFC 9110 section 7.6.1, plus the legacy Keep-Alive / Proxy-Connection.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# Request headers the proxy replaces or answers itself: `Expect: 100-continue` was
# answered by our server when the body was read; framing headers are set for the body
# actually sent; the forwarding headers are rebuilt.
_REPLACED = frozenset(
    {"host", "expect", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
)

# The response framing is the server's to write, for the body it actually sends.
_FRAMING = frozenset({"content-length"})

_REQUEST_DROPPED = HOP_BY_HOP | _REPLACED
_RESPONSE_DROPPED = HOP_BY_HOP | _FRAMING

_REQUEST_DROPPED_RAW = frozenset(name.encode() for name in _REQUEST_DROPPED)

# What the proxy adds, as bytes made once (bench/RESULTS.md, issue 19).
_PROTO_FIELDS = {scheme: b"X-Forwarded-Proto: " + scheme.encode() for scheme in ("http", "https")}
_UPSTREAM_LINES = {side: f"{UPSTREAM_HEADER}: {side.value}\r\n".encode() for side in Side}
_FALLBACK_LINES = {
    reason: f"{FALLBACK_HEADER}: {reason.value}\r\n".encode() for reason in FailureReason
}

# A hop-by-hop name starting a line of a lowered header block with "\n" put in front.
_HOP_BY_HOP_NAME = re.compile(
    rb"\n(" + b"|".join(name.encode() for name in sorted(HOP_BY_HOP)) + rb"):"
)

# `Connection` values that name no end-to-end header.
_CONNECTION_ONLY_TOKENS = HOP_BY_HOP | {"close", ""}
# The values nearly every `Connection` header has, lowered and stripped.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})


def request_head(
    request: Request,
    upstream: Upstream,
    framing: str | None,
    extra: dict[str, str] | None = None,
) -> bytes:
    """The request line and headers for the upstream (SPEC 4); `framing` is the body's
    `Content-Length` or `Transfer-Encoding` line, `extra` headers replace the client's
    (whatever the case of their names).

    Joined from the client's header bytes as received and lines made at config load,
    with no dict of headers and no decoding on the way (bench/RESULTS.md, issue 19).
    """
    incoming = request.headers
    raw, lowered = incoming.raw, incoming.lowered
    dropped = _REQUEST_DROPPED_RAW
    if b"connection" in lowered:
        listed = incoming.getall_raw(b"connection")
        if any(value.lower().strip(b" \t") not in _PLAIN_CONNECTION for value in listed):
            names = _connection_tokens(v.decode("utf-8", "surrogateescape") for v in listed)
            dropped = dropped | {name.encode("utf-8", "surrogateescape") for name in names}
    if extra:
        dropped = dropped | {name.lower().encode("latin-1", "replace") for name in extra}
    fields = [
        b": ".join(pair) for pair, lower in zip(raw, lowered, strict=True) if lower not in dropped
    ]
    peer = request.peer.encode("utf-8", "surrogateescape")
    # The lookups below search `lowered` in C, as `get_raw` does, without its calls.
    if b"x-forwarded-for" in lowered and raw[lowered.index(b"x-forwarded-for")][1]:
        prior = b", ".join(incoming.getall_raw(b"x-forwarded-for"))
        fields.append(b"X-Forwarded-For: %b, %b" % (prior, peer))
    else:
        fields.append(b"X-Forwarded-For: " + peer)
    scheme = request.scheme
    fields.append(_PROTO_FIELDS.get(scheme) or _field("X-Forwarded-Proto", scheme))
    if b"host" in lowered and (host := raw[lowered.index(b"host")][1]):
        fields.append(b"X-Forwarded-Host: " + host)
    fields.append(upstream.host_field)
    if extra:
        fields.extend(_field(name, value) for name, value in extra.items())
    if request.upgrade:
        # The one request whose `Upgrade` goes on (SPEC 12): the handshake, hop by hop.
        fields.append(b"Connection: upgrade")
        fields.append(_field("Upgrade", request.upgrade))
    return build_head(request.method, upstream_target(request), fields, framing)


def upstream_target(request: Request) -> str:
    """The client's path and query, byte for byte."""
    target = request.target
    if not target.startswith("/") and target != "*":
        # Absolute-form request line (`GET http://other.host/x`): keep only path and
        # query; the host part is never used.
        url = httptools.parse_url(target.encode("utf-8", "surrogateescape"))
        path = (url.path or b"/").decode("utf-8", "surrogateescape")
        target = f"{path}?{url.query.decode('utf-8', 'surrogateescape')}" if url.query else path
    return target


# An upstream sends nearly the same header block every time (its Date changes once a
# second): a pure function of the bytes is asked once per distinct block. Bounded.
HEAD_MEMO = 256


@functools.lru_cache(maxsize=HEAD_MEMO)
def forwardable_head(head: bytes) -> bytes | None:
    """An upstream header block minus its hop-by-hop lines, as bytes; None when its
    `Connection` header names other headers (then `client_response_headers` filters).

    The fast path of the relay, for a block that llhttp has already validated
    (`Name: value\r\n` lines, no folding): one lowered copy and one search for a
    hop-by-hop name at a line start, then the lines found are cut out; the usual
    `Connection: keep-alive` is judged without decoding (bench/RESULTS.md, issue 19).
    """
    lowered = b"\n" + head.lower()
    # Index i of `lowered` is index i - 1 of `head`: a match at the "\n" before a line
    # is at that line's first byte in `head`.
    kept: list[bytes] = []
    start = 0
    for match in _HOP_BY_HOP_NAME.finditer(lowered):
        line = match.start()
        end = head.find(b"\n", line) + 1
        if not end:
            break  # not a line (llhttp ends every one with CRLF): left as it is
        # The value: from after the colon to before the line's "\r\n" (shifted by one).
        if match[1] == b"connection" and not _names_no_other(lowered[match.end() : end - 1]):
            return None
        kept.append(head[start:line])
        start = end
    if not start:
        return head
    kept.append(head[start:])
    return b"".join(kept)


def _names_no_other(value: bytes) -> bool:
    """A `Connection` value (lowered) lists only hop-by-hop names, `close` or nothing."""
    if value.strip(b" \t") in _PLAIN_CONNECTION:
        return True
    names = {token.strip().lower() for token in value.decode("latin-1").split(",")}
    return names <= _CONNECTION_ONLY_TOKENS


def client_response_headers(upstream_headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The upstream's response headers minus hop-by-hop and framing ones, values byte for
    byte (any non-UTF-8 bytes were decoded with surrogateescape and are written back so)."""
    out: list[tuple[str, str]] = []
    listed: list[str] = []
    for name, value in upstream_headers:
        lower = name.lower()
        if lower in _RESPONSE_DROPPED:
            if lower == "connection":
                listed.append(value)
            continue
        out.append((name, value))
    if listed:
        named = _connection_tokens(listed)
        out = [(name, value) for name, value in out if name.lower() not in named]
    return out


def added_headers(
    side: Side, fallback: FailureReason | None, cookie: str, minted: str | None
) -> list[tuple[str, str]]:
    """What the proxy adds to an answer: who served it, why it fell back, a minted
    session cookie."""
    added = [(UPSTREAM_HEADER, side.value)]
    if fallback is not None:
        added.append((FALLBACK_HEADER, fallback.value))
    if minted:
        added.append(("Set-Cookie", f"{cookie}={minted}; HttpOnly; Path=/; SameSite=Lax"))
    return added


def added_head(
    side: Side, fallback: FailureReason | None, cookie: str, minted: str | None
) -> bytes:
    """`added_headers` as the header lines the relay appends to a forwarded block, from
    lines made once (bench/RESULTS.md, issue 19)."""
    line = _UPSTREAM_LINES[side]
    if fallback is not None:
        line += _FALLBACK_LINES[fallback]
    if minted:
        cookie_field = _field("Set-Cookie", f"{cookie}={minted}; HttpOnly; Path=/; SameSite=Lax")
        line += cookie_field + b"\r\n"
    return line


def switch_headers(
    upstream_headers: list[tuple[str, str]], added: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The headers of a `101 Switching Protocols` for the client: the upstream's
    end-to-end ones (`Sec-WebSocket-Accept`, `-Protocol`, `-Extensions` ...), the
    protocol switched to, and what the proxy adds."""
    upgrade = ", ".join(value for name, value in upstream_headers if name.lower() == "upgrade")
    return [
        *client_response_headers(upstream_headers),
        ("Connection", "Upgrade"),
        ("Upgrade", upgrade),
        *added,
    ]


def _connection_tokens(values: Iterable[str]) -> set[str]:
    """The header names a `Connection` header lists: hop-by-hop too (RFC 9110 7.6.1)."""
    return {token.strip().lower() for value in values for token in value.split(",")} - {""}


def _field(name: str, value: str) -> bytes:
    return f"{name}: {value}".encode("utf-8", "surrogateescape")
