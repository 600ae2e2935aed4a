"""Property-based fuzzing of the public listener with hypothesis.

Each test starts one proxy (the `target` fixture runs once per test function, not per
example) and sends it a few hundred generated requests as raw bytes. Every answer must be
a well-formed HTTP/1.1 response (status line, header lines, a body that matches its
framing), never a 5xx, and the process must stay up. Where the proxy forwards, the
upstream must see what was sent: the target byte for byte, the session id whole, and
exactly one request.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.rollout.routing import bucket
from tests.support import HOST, ProxyProcess
from tests.support.fakes import FakeLoop, RawUpstream, Seen
from tests.support.reliability import StartProxy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FUZZ = settings(
    max_examples=200,
    database=None,  # no .hypothesis directory in the repository
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PERCENTAGE = 50
# What the proxy or aiohttp may answer itself to a malformed request.
CLIENT_ERRORS = {400, 413, 414, 417, 431}

STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5]\d\d)(?: [^\r\n]*)?\r\n")
HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*?)[ \t]*\r\n")


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


async def read_strict(reader: asyncio.StreamReader, *, head_request: bool) -> Answer:
    """One response, failing on anything that is not well-formed HTTP/1.1."""
    while True:
        line = await reader.readline()
        match = STATUS_LINE.fullmatch(line)
        assert match, f"bad status line {line!r}"
        headers = []
        while (line := await reader.readline()) != b"\r\n":
            header = HEADER_LINE.fullmatch(line)
            assert header, f"bad header line {line!r}"
            headers.append((header[1], header[2]))
        answer = Answer(int(match[1]), headers, b"")
        if answer.status >= 200:
            break  # a 1xx is followed by the real answer
    te, length = answer.header(b"Transfer-Encoding"), answer.header(b"Content-Length")
    assert not (te and length), "both Transfer-Encoding and Content-Length"
    if head_request or answer.status in (204, 304):
        return answer
    if te:
        assert te.lower() == b"chunked", te
        parts = []
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            parts.append(await reader.readexactly(size))
            assert await reader.readexactly(2) == b"\r\n"
        assert await reader.readuntil(b"\r\n") == b"\r\n"
        answer.body = b"".join(parts)
    elif length is not None:
        answer.body = await reader.readexactly(int(length))
    else:
        answer.body = await reader.read()  # delimited by close
    return answer


async def exchange(proxy: ProxyProcess, data: bytes) -> Answer:
    reader, writer = await asyncio.open_connection(HOST, proxy.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            return await read_strict(reader, head_request=data.startswith(b"HEAD "))
    finally:
        writer.transport.abort()


@dataclass
class Target:
    proxy: ProxyProcess
    upstream: RawUpstream

    def forwarded(self, mark: str) -> list[Seen]:
        return [s for s in list(self.upstream.seen) if mark in s.target]

    def assert_alive(self) -> None:
        assert self.proxy.proc is not None
        assert self.proxy.proc.poll() is None, self.proxy.logs()


@pytest.fixture
async def target(fakes: FakeLoop, start_proxy: StartProxy) -> AsyncIterator[Target]:
    upstream = fakes.upstream("both")
    proxy = await start_proxy(upstream.url, upstream.url, rollout={"percentage": PERCENTAGE})
    yield Target(proxy, upstream)
    assert "Traceback" not in proxy.logs()


def check(target: Target, answer: Answer, mark: str) -> list[Seen]:
    """The common properties; returns what the upstream received for this example."""
    target.assert_alive()
    seen = target.forwarded(mark)
    if answer.status in CLIENT_ERRORS:
        assert seen == []
    else:
        assert answer.status == 200, answer
        assert len(seen) == 1
    return seen


# A header line may hold any byte but CR and LF; names are tokens, or any junk.
line_bytes = st.binary(max_size=48).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
token = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=24,
).map(str.encode)
# Names with a meaning to the proxy or the parser; framing headers are left out, since a
# random Content-Length would only make the proxy wait for a body that never comes.
meaningful = st.sampled_from(
    [
        b"X-Session-Id",
        b"Cookie",
        b"Connection",
        b"Keep-Alive",
        b"Upgrade",
        b"Expect",
        b"TE",
        b"Trailer",
        b"Proxy-Connection",
        b"X-Forwarded-For",
        b"X-Forwarded-Host",
        b"Host",
    ]
)
header_name = st.one_of(meaningful, token, line_bytes.filter(lambda b: b":" not in b))


@FUZZ
@given(
    headers=st.lists(st.tuples(header_name, line_bytes), max_size=12),
    method=st.sampled_from([b"GET", b"POST", b"HEAD", b"DELETE", b"OPTIONS"]),
)
async def test_fuzzed_headers_get_well_formed_answers(
    target: Target, headers: list[tuple[bytes, bytes]], method: bytes
) -> None:
    mark = uuid.uuid4().hex
    lines = [method + b" /" + mark.encode() + b" HTTP/1.1", b"Host: fuzz"]
    lines += [name + b": " + value for name, value in headers]
    answer = await exchange(target.proxy, b"\r\n".join(lines) + b"\r\n\r\n")
    check(target, answer, mark)


path_bytes = st.lists(
    st.one_of(
        st.sampled_from(
            [
                b"/",
                b"..",
                b".",
                b"%2F",
                b"%2f",
                b"%00",
                b"%",
                b"%%",
                b"%zz",
                b"?",
                b"&",
                b"=",
                b"#",
                b";",
                b"//",
                b"\\",
                b"%252F",
                b"+",
            ]
        ),
        st.binary(min_size=1, max_size=3).filter(lambda b: b" " not in b),
        st.text(alphabet="abcXYZ019-_~!$'()*,@:", min_size=1, max_size=6).map(str.encode),
    ),
    max_size=16,
).map(b"".join)


@FUZZ
@given(tail=path_bytes)
async def test_fuzzed_paths_pass_byte_for_byte_or_are_rejected(target: Target, tail: bytes) -> None:
    mark = uuid.uuid4().hex
    sent = b"/" + mark.encode() + b"/" + tail
    answer = await exchange(target.proxy, b"GET " + sent + b" HTTP/1.1\r\nHost: fuzz\r\n\r\n")
    seen = check(target, answer, mark)
    if seen:
        assert seen[0].target.encode("latin-1") == sent


@FUZZ
@given(session=line_bytes)
async def test_fuzzed_session_ids_route_by_their_bucket(target: Target, session: bytes) -> None:
    mark = uuid.uuid4().hex
    data = (
        b"GET /"
        + mark.encode()
        + b" HTTP/1.1\r\nHost: fuzz\r\nX-Session-Id: "
        + session
        + b"\r\n\r\n"
    )
    answer = await exchange(target.proxy, data)
    seen = check(target, answer, mark)
    stripped = session.strip(b" \t")
    if not seen or not stripped:
        return  # rejected, or no id at all (the proxy minted one)
    assert seen[0].header("X-Session-Id") == stripped
    b = bucket(stripped.decode("utf-8", "surrogateescape"), "rollout")
    side = answer.header(b"X-Rollout-Upstream")
    assert side == (b"signal" if b < PERCENTAGE * 100 else b"legacy")
