"""Hostile clients: oversized and malformed heads, smuggling, open-proxy attempts, odd paths,
odd session ids, clients that vanish mid-upload.

One proxy (50 %, so both sides are in play) serves the module, in front of recording raw
upstreams and a `sink` standing for a host an attacker names in the request; each test
marks its requests with a unique path so the upstreams' records stay attributable.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from proxy.rollout.routing import bucket
from tests.support import ProxyProcess, config_dict, metric_value, raw_request
from tests.support.fakes import FakeLoop, RawUpstream, Seen, raw_header, scripted
from tests.support.probes import http_request, read_to_end
from tests.support.reliability import running_cleanly, shared_proxy

pytestmark = pytest.mark.e2e

PERCENTAGE = 50
MAX_BODY = 64 * 1024
REJECTED = {400, 414, 431}
NON_UTF8_IDS = [b"\xff", b"abc\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]
UPSTREAM_FAULTS = {
    f"raw{n}": raw_header(b"X-Raw", b"v" + raw) for n, raw in enumerate(NON_UTF8_IDS)
}


@dataclass
class Stack:
    proxy: ProxyProcess
    signal: RawUpstream
    legacy: RawUpstream
    sink: RawUpstream

    def seen(self, marker: str) -> list[Seen]:
        """Requests whose target contains `marker`, at either upstream."""
        return [s for s in [*self.signal.seen, *self.legacy.seen] if marker in s.target]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with FakeLoop() as loop:
        signal = loop.upstream("signal", scripted("signal", UPSTREAM_FAULTS))
        legacy = loop.upstream("legacy", scripted("legacy", UPSTREAM_FAULTS))
        sink = loop.upstream("sink")
        data = config_dict(
            signal.url,
            legacy.url,
            rollout={"percentage": PERCENTAGE},
            fallback={"max_body_bytes": MAX_BODY},
        )
        with shared_proxy(tmp_path_factory.mktemp("hostile"), data) as proxy:
            yield Stack(proxy, signal, legacy, sink)


@pytest.fixture(autouse=True)
def stays_up(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    with running_cleanly(request, stack.proxy):
        yield
    assert stack.sink.connections == 0


def marker() -> str:
    return uuid.uuid4().hex


def expected_side(raw_session: bytes) -> str:
    b = bucket(raw_session.decode("utf-8", "surrogateescape"), "rollout")
    return "signal" if b < PERCENTAGE * 100 else "legacy"


def request_bytes(target: str, *headers: bytes, method: bytes = b"GET") -> bytes:
    head = [method + b" " + target.encode() + b" HTTP/1.1", b"Host: proxy.test", *headers]
    return b"\r\n".join(head) + b"\r\n\r\n"


# --- over aiohttp's limits: rejected before any upstream is contacted ----------------------


async def test_request_line_over_the_limit_is_rejected(stack: Stack) -> None:
    m = marker()
    resp = await raw_request(stack.proxy.port, request_bytes(f"/{m}/" + "a" * 9000))
    assert resp.status in REJECTED
    assert stack.seen(m) == []


async def test_header_over_the_limit_is_rejected(stack: Stack) -> None:
    m = marker()
    resp = await raw_request(stack.proxy.port, request_bytes(f"/{m}", b"X-Big: " + b"b" * 20_000))
    assert resp.status in REJECTED
    assert stack.seen(m) == []


async def test_1000_headers_are_rejected(stack: Stack) -> None:
    m = marker()
    headers = [b"X-H-%d: v" % n for n in range(1000)]
    resp = await raw_request(stack.proxy.port, request_bytes(f"/{m}", *headers))
    assert resp.status in REJECTED
    assert stack.seen(m) == []


# --- session ids and other non-UTF-8 header bytes --------------------------------------------


@pytest.mark.parametrize("raw_id", NON_UTF8_IDS, ids=lambda b: b.hex())
async def test_non_utf8_session_id_is_answered_and_routed_consistently(
    stack: Stack, raw_id: bytes
) -> None:
    m = marker()
    sides = set()
    for _ in range(3):
        resp = await raw_request(
            stack.proxy.port, request_bytes(f"/{m}", b"X-Session-Id: " + raw_id)
        )
        assert resp.status == 200, resp
        sides.add(resp.header("X-Rollout-Upstream"))
    assert sides == {expected_side(raw_id)}
    assert len(stack.seen(m)) == 3


@pytest.mark.parametrize("raw_id", NON_UTF8_IDS, ids=lambda b: b.hex())
async def test_non_utf8_header_bytes_reach_the_upstream_unchanged_or_are_rejected(
    stack: Stack, raw_id: bytes
) -> None:
    """Two clients whose ids differ only in non-UTF-8 bytes must not become one session
    at the upstream (nor may any other header change on the way)."""
    m = marker()
    resp = await raw_request(
        stack.proxy.port,
        request_bytes(f"/{m}", b"X-Session-Id: " + raw_id, b"X-Other: v" + raw_id),
    )
    if resp.status == 400:
        assert stack.seen(m) == []
        return
    assert resp.status == 200
    (seen,) = stack.seen(m)
    assert seen.header("X-Session-Id") == raw_id
    assert seen.header("X-Other") == b"v" + raw_id


@pytest.mark.parametrize("n", range(len(NON_UTF8_IDS)), ids=lambda n: NON_UTF8_IDS[n].hex())
async def test_non_utf8_response_header_bytes_reach_the_client_unchanged_or_502(
    stack: Stack, n: int
) -> None:
    """A header the proxy cannot pass on byte for byte must not be silently rewritten."""
    got = await read_to_end(
        stack.proxy.port, request_bytes(f"/both-raw{n}/{marker()}", b"Connection: close")
    )
    if got.status == 502:  # refused as an invalid upstream answer: acceptable
        assert "x-raw" not in got.headers
        return
    assert got.status == 200
    # read_to_end decodes heads as latin-1: encoding back gives the bytes on the wire.
    assert got.headers["x-raw"].encode("latin-1") == b"v" + NON_UTF8_IDS[n]


@pytest.mark.parametrize("raw_id", [b"canary\x01", b"\x7f", b"a\x00b", b" spaced out "])
async def test_control_characters_in_session_id_are_rejected_or_routed(
    stack: Stack, raw_id: bytes
) -> None:
    m = marker()
    resp = await raw_request(stack.proxy.port, request_bytes(f"/{m}", b"X-Session-Id: " + raw_id))
    assert resp.status in {200, 400}, resp
    if resp.status == 400:
        assert stack.seen(m) == []
    else:
        (seen,) = stack.seen(m)
        assert resp.header("X-Rollout-Upstream") in {"signal", "legacy"}
        assert seen.header("X-Session-Id") == raw_id.strip()


async def test_8_kb_session_id_is_routed_by_its_bucket_and_forwarded_whole(stack: Stack) -> None:
    m = marker()
    raw_id = (m * 300).encode()[:8192]
    resp = await raw_request(stack.proxy.port, request_bytes(f"/{m}", b"X-Session-Id: " + raw_id))
    assert resp.status == 200
    assert resp.header("X-Rollout-Upstream") == expected_side(raw_id)
    (seen,) = stack.seen(m)
    assert seen.header("X-Session-Id") == raw_id


# --- request smuggling -------------------------------------------------------------------

SMUGGLED = "GET /{m}/smuggled HTTP/1.1\r\nHost: proxy.test\r\n\r\n"
# Each framing is ambiguous: a front end and a back end could disagree on where the
# first request ends. The payload after the chunked terminator is a second request.
FRAMINGS = {
    "cl-then-te": "Content-Length: 4\r\nTransfer-Encoding: chunked",
    "te-then-cl": "Transfer-Encoding: chunked\r\nContent-Length: 60",
    "te-tab": "Transfer-Encoding:\tchunked\r\nContent-Length: 60",
    "te-space-before-colon": "Transfer-Encoding : chunked\r\nContent-Length: 4",
    "te-obs-fold": "Transfer-Encoding:\r\n chunked\r\nContent-Length: 4",
    "te-xchunked": "Transfer-Encoding: xchunked\r\nContent-Length: 4",
    "te-identity-cl": "Transfer-Encoding: identity\r\nContent-Length: 4",
    "te-chunked-identity": "Transfer-Encoding: chunked, identity",
    "te-twice": "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
    "cl-twice": "Content-Length: 5\r\nContent-Length: 60",
    "cl-list": "Content-Length: 5, 60",
    "cl-plus": "Content-Length: +5",
    "http10-chunked": "Transfer-Encoding: chunked",
}


@pytest.mark.parametrize("framing", list(FRAMINGS))
async def test_smuggling_is_rejected_or_forwarded_unambiguously(stack: Stack, framing: str) -> None:
    m = marker()
    version = "HTTP/1.0" if framing == "http10-chunked" else "HTTP/1.1"
    data = (
        f"POST /{m}/first {version}\r\nHost: proxy.test\r\n{FRAMINGS[framing]}\r\n\r\n"
        "0\r\n\r\n" + SMUGGLED.format(m=m)
    ).encode()
    got = await read_to_end(stack.proxy.port, data, timeout=3)
    await asyncio.sleep(0.2)
    assert got.status in {200, 400}, got
    seen = stack.seen(m)
    assert not any("smuggled" in s.target for s in seen), [s.raw_head for s in seen]
    assert len(seen) <= 1
    for s in seen:
        assert not (s.header("Transfer-Encoding") and s.header("Content-Length")), s.raw_head
    if got.status == 400:
        assert seen == []


# --- never an open proxy -------------------------------------------------------------------


async def test_absolute_form_goes_to_the_configured_upstream_only(stack: Stack) -> None:
    m = marker()
    authority = f"127.0.0.1:{stack.sink.port}"
    resp = await raw_request(
        stack.proxy.port,
        f"GET http://{authority}/{m}?q=1 HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode(),
    )
    assert resp.status == 200
    (seen,) = stack.seen(m)
    assert seen.target == f"/{m}?q=1"
    assert seen.header("Host") != authority.encode()
    assert stack.sink.connections == 0


@pytest.mark.parametrize("form", ["authority", "absolute", "origin"])
async def test_connect_is_refused_and_nothing_is_connected(stack: Stack, form: str) -> None:
    authority = f"127.0.0.1:{stack.sink.port}"
    target = {"authority": authority, "absolute": f"http://{authority}/", "origin": "/tunnel"}
    data = f"CONNECT {target[form]} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    before = len(stack.signal.seen) + len(stack.legacy.seen)
    got = await read_to_end(stack.proxy.port, data.encode(), timeout=2)
    await asyncio.sleep(0.2)
    assert stack.sink.connections == 0
    forwarded = [*stack.signal.seen, *stack.legacy.seen][before:]
    # A 2xx would tell the client its tunnel is open; the proxy must answer itself.
    assert 400 <= got.status < 500, (got.status, [s.raw_head for s in forwarded])
    assert forwarded == []


# --- paths: byte for byte, or 400 ------------------------------------------------------------

ODD_PATHS = [
    "/{m}/../../etc/passwd",
    "/{m}/a/..",
    "/{m}/%2e%2e/%2E%2E/x",
    "/{m}/a%2Fb%2fc",
    "/{m}/..%2f..%2fetc",
    "/{m}/x%00y",
    "/{m}/%00",
    "/{m}/%252F",
    "/{m}//double//slash/",
    "/{m}/./dot/./",
    "/{m}/q?next=../../x&nul=%00&slash=%2F",
    "/{m}/semi;jsessionid=..%2f",
    "/{m}/%ZZ/%/%%",
]


@pytest.mark.parametrize("template", ODD_PATHS)
async def test_odd_paths_pass_byte_for_byte_or_are_rejected(stack: Stack, template: str) -> None:
    m = marker()
    target = template.format(m=m)
    resp = await raw_request(stack.proxy.port, request_bytes(target))
    if resp.status == 400:
        assert stack.seen(m) == []
        return
    assert resp.status == 200, resp
    assert [s.target for s in stack.seen(m)] == [target]


# --- a client vanishing mid-upload --------------------------------------------------------


@pytest.mark.parametrize("framing", ["streamed-length", "streamed-chunked", "buffered"])
async def test_client_disconnect_mid_upload_never_completes_the_upstream_request(
    stack: Stack, framing: str
) -> None:
    m = marker()
    sent = b"u" * (MAX_BODY * 2 if framing.startswith("streamed") else MAX_BODY // 4)
    if framing == "streamed-chunked":
        head = f"POST /{m} HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
        data = head.encode() + b"%x\r\n" % len(sent) + sent + b"\r\n"
    else:
        declared = len(sent) * (8 if framing.startswith("streamed") else 2)
        head = f"POST /{m} HTTP/1.1\r\nHost: p\r\nContent-Length: {declared}\r\n\r\n"
        data = head.encode() + sent
    logged_before = len(stack.proxy.logs())
    await upload_and_vanish(stack.proxy, data)

    # Until the proxy is done with the request and, when streamed, the upstream has seen
    # the abort (a request is recorded once its body ended): conditions, not a sleep,
    # so a loaded machine only makes the wait longer. Bounded; the asserts say what failed.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = stack.seen(m)
        idle = metric_value(await metrics(stack), "rollout_in_flight_requests") == 0
        if idle and (framing == "buffered" or seen):
            break
        await asyncio.sleep(0.05)
    seen = stack.seen(m)
    assert all(not s.complete for s in seen), "the upstream got a complete upload"
    if framing.startswith("streamed"):
        assert len(seen) == 1  # streamed: the upstream saw the start, then the abort
        assert MAX_BODY <= len(seen[0].body) < 8 * len(sent)

    assert metric_value(await metrics(stack), "rollout_in_flight_requests") == 0
    # The client's doing: no "Error handling request" traceback for it.
    assert "Traceback" not in stack.proxy.logs()[logged_before:]


async def test_client_abort_mid_upload_is_not_counted_against_the_upstream(
    stack: Stack,
) -> None:
    """A client that gives up on its own upload says nothing about signal's health: it
    must not show as a signal reset, nor feed the guard that rolls the rollout back."""

    def signal_errors(text: str) -> float:
        return sum(
            metric_value(text, "rollout_upstream_errors_total", reason=r, upstream="signal") or 0
            for r in ("connect", "timeout", "reset", "status")
        )

    before = signal_errors(await metrics(stack))
    for _ in range(3):
        m = marker()
        head = f"PUT /{m} HTTP/1.1\r\nHost: p\r\nX-Session-Id: to-signal\r\n"
        data = (head + f"Content-Length: {MAX_BODY * 8}\r\n\r\n").encode() + b"u" * MAX_BODY * 2
        await upload_and_vanish(stack.proxy, data)
    await asyncio.sleep(0.5)
    assert signal_errors(await metrics(stack)) == before


async def upload_and_vanish(proxy: ProxyProcess, data: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(data)
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.transport.abort()


async def metrics(stack: Stack) -> str:
    async with (
        aiohttp.ClientSession() as client,
        client.get(stack.proxy.admin_url + "/metrics") as resp,
    ):
        return await resp.text()


async def test_a_plain_request_is_served_after_all_this(stack: Stack) -> None:
    m = marker()
    resp = await raw_request(stack.proxy.port, http_request("GET", f"/{m}"))
    assert resp.status == 200
    assert [s.target for s in stack.seen(m)] == [f"/{m}"]
