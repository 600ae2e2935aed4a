"""What crosses the proxy in each direction (SPEC 4), as pure functions.

Hop-by-hop headers stop here; forwarding headers are rebuilt; `Host` is the upstream's
own; the proxy adds `X-Rollout-Upstream`, `X-Rollout-Fallback` and a minted session cookie
to the answer.
"""

from __future__ import annotations

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

_HOP_BY_HOP_LINES = re.compile(
    rb"^(?:" + b"|".join(name.encode() for name in sorted(HOP_BY_HOP)) + rb"):[^\n]*\n",
    re.IGNORECASE | re.MULTILINE,
)
_CONNECTION_VALUES = re.compile(rb"^connection:([^\r]*)\r$", re.IGNORECASE | re.MULTILINE)

# `Connection` values that name no end-to-end header.
_CONNECTION_ONLY_TOKENS = HOP_BY_HOP | {"close", ""}


def request_head(
    request: Request,
    upstream: Upstream,
    framing: str | None,
    extra: dict[str, str] | None = None,
) -> bytes:
    """The request line and headers for the upstream (SPEC 4); `framing` is the body's
    `Content-Length` or `Transfer-Encoding` line, `extra` headers replace the client's."""
    incoming = request.headers
    dropped = _REQUEST_DROPPED
    if incoming.get("Connection") is not None:
        dropped = dropped | _connection_tokens(incoming.getall("Connection"))
    out = [(name, value) for name, value in incoming.items if name.lower() not in dropped]
    if extra:
        out = [(name, value) for name, value in out if name not in extra]
    peer = request.peer
    prior = incoming.get("X-Forwarded-For") and ", ".join(incoming.getall("X-Forwarded-For"))
    out.append(("X-Forwarded-For", f"{prior}, {peer}" if prior else peer))
    out.append(("X-Forwarded-Proto", request.scheme))
    host = incoming.get("Host")
    if host:
        out.append(("X-Forwarded-Host", host))
    out.append(("Host", upstream.authority))
    if extra:
        out.extend(extra.items())
    if request.upgrade:
        # The one request whose `Upgrade` goes on (SPEC 12): the handshake, hop by hop.
        out.append(("Connection", "upgrade"))
        out.append(("Upgrade", request.upgrade))
    return build_head(request.method, upstream_target(request), out, framing)


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


def forwardable_head(head: bytes) -> bytes | None:
    """An upstream header block minus its hop-by-hop lines, as bytes; None when its
    `Connection` header names other headers (then `client_response_headers` filters).

    The fast path of the relay: one regex pass instead of a parsed list, for a block that
    llhttp has already validated (`Name: value\r\n` lines, no folding).
    """
    for match in _CONNECTION_VALUES.finditer(head):
        names = {token.strip().lower() for token in match[1].decode("latin-1").split(",")}
        if not names <= _CONNECTION_ONLY_TOKENS:
            return None
    return _HOP_BY_HOP_LINES.sub(b"", head)


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
