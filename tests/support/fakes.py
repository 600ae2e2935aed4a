"""Fake upstreams for the reliability suite: HTTP/1.1 on bare asyncio streams.

aiohttp's own server is too well behaved to stand in for a broken upstream: it cannot
reset a connection half way through a body, send 10,000 headers or accept a request and
never answer. `RawUpstream` can. It records every request exactly as it arrived (raw
head, body, whether the declared body arrived in full) and answers as its `Behaviour`
says.

Fakes run on a `FakeLoop`: an event loop in a thread of its own, so they keep serving
while a test blocks (starting the proxy, `time.sleep`, a hypothesis example), and one
fake can serve a whole module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

HOST = "127.0.0.1"

T = TypeVar("T")


@dataclass
class Seen:
    """One request as an upstream received it, before anyone parsed it for us."""

    method: str
    target: str
    headers: list[tuple[str, bytes]]
    raw_head: bytes
    body: bytes
    complete: bool
    declared: int | None  # Content-Length, None when chunked or absent

    def header(self, name: str) -> bytes | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


class Exchange:
    """One request on one upstream connection, and the ways to answer it (or not)."""

    def __init__(self, seen: Seen, writer: asyncio.StreamWriter) -> None:
        self.seen = seen
        self.writer = writer
        self.open = True

    @property
    def path(self) -> str:
        return self.seen.target.partition("?")[0]

    async def respond(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        *,
        content_type: str = "application/octet-stream",
    ) -> None:
        head = [f"HTTP/1.1 {status} {_reason(status)}", f"Content-Type: {content_type}"]
        head += [f"{k}: {v}" for k, v in headers]
        head.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()

    async def respond_json(self, data: Any, status: int = 200) -> None:
        body = json.dumps(data).encode()
        await self.respond(status, body, content_type="application/json")

    async def send_head(self, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> None:
        head = [f"HTTP/1.1 {status} {_reason(status)}", *(f"{k}: {v}" for k, v in headers)]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await self.writer.drain()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0): what a crashed or killed upstream looks like."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
        self.open = False

    def close(self) -> None:
        """Close with FIN: an orderly close, at a moment the client did not expect."""
        self.writer.close()
        self.open = False

    async def hang(self) -> None:
        """Never answer; the connection stays open until the peer or the fake goes away."""
        self.open = False
        await asyncio.Event().wait()


Behaviour = Callable[[Exchange], Awaitable[None]]


class RawUpstream:
    """An HTTP/1.1 upstream that records what arrives and answers as `behaviour` says.

    Keep-alive like a real server; the body is read in full (by Content-Length or
    chunked) before `behaviour` runs, and a body cut short is recorded with
    `complete=False`.
    """

    def __init__(self, name: str, behaviour: Behaviour | None = None) -> None:
        self.name = name
        self.behaviour = behaviour or answer(name)
        self.seen: list[Seen] = []
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def hits(self) -> int:
        return len(self.seen)

    def targets(self) -> list[str]:
        return [s.target for s in list(self.seen)]

    async def start(self) -> None:
        # A deep backlog: the proxy may open hundreds of connections at once under load.
        self._server = await asyncio.start_server(
            self._on_client, HOST, 0, limit=1 << 20, backlog=4096
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self.connections += 1
        try:
            while True:
                seen = await _read_request(reader)
                if seen is None:
                    break
                self.seen.append(seen)
                if not seen.complete:
                    break
                exchange = Exchange(seen, writer)
                await self.behaviour(exchange)
                if not exchange.open or seen.header("Connection") == b"close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            # Only `stop()` cancels; ending quietly keeps asyncio from logging the task.
            writer.transport.abort()
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            if not writer.transport.is_closing():
                writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Seen | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].split(b"\r\n")
    method, _, rest = lines[0].decode("latin-1").partition(" ")
    target = rest.rpartition(" ")[0] or rest
    headers: list[tuple[str, bytes]] = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1"), value.strip(b" \t")))
    seen = Seen(method, target, headers, head, b"", True, None)
    te = b",".join(seen.header_all("Transfer-Encoding")).lower()
    length = seen.header("Content-Length")
    if b"chunked" in te:
        seen.body, seen.complete = await _read_chunked(reader)
    elif length is not None:
        seen.declared = int(length)
        try:
            seen.body = await reader.readexactly(seen.declared)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            seen.body = getattr(exc, "partial", b"")
            seen.complete = False
    return seen


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    parts: list[bytes] = []
    try:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from our proxy
                return b"".join(parts), True
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
        if isinstance(exc, asyncio.IncompleteReadError):
            parts.append(exc.partial)
        return b"".join(parts), False


def _reason(status: int) -> str:
    return {200: "OK", 404: "Not Found", 500: "Internal Server Error", 502: "Bad Gateway"}.get(
        status, "Service Unavailable" if status == 503 else "Status"
    )


# --- behaviours ---------------------------------------------------------------------------


def answer(name: str) -> Behaviour:
    """200 JSON naming the upstream, the raw target and the hash of the body received."""

    async def behave(ex: Exchange) -> None:
        await ex.respond_json({"served_by": name, "target": ex.seen.target, "sha": ex.seen.sha})

    return behave


def echo() -> Behaviour:
    """200 with the request body as the response body and its hash in a header."""

    async def behave(ex: Exchange) -> None:
        await ex.respond(200, ex.seen.body, [("X-Body-Sha256", ex.seen.sha)])

    return behave


def status(code: int, name: str = "signal") -> Behaviour:
    async def behave(ex: Exchange) -> None:
        await ex.respond_json({"served_by": name, "error": "boom"}, status=code)

    return behave


def reset_before_headers() -> Behaviour:
    async def behave(ex: Exchange) -> None:
        await asyncio.sleep(0.01)
        ex.reset()

    return behave


def reset_mid_body(framing: str, how: str, *, size: int = 256 * 1024) -> Behaviour:
    """Headers promise `size` bytes (Content-Length or chunked); a quarter arrives, then
    the connection ends with RST (`how="rst"`) or FIN (`how="fin"`)."""

    async def behave(ex: Exchange) -> None:
        part = b"x" * (size // 4)
        if framing == "length":
            await ex.send_head(200, [("Content-Length", str(size))])
            await ex.send(part)
        else:
            await ex.send_head(200, [("Transfer-Encoding", "chunked")])
            await ex.send(b"%x\r\n%s\r\n" % (len(part), part))
        await asyncio.sleep(0.05)
        if how == "rst":
            ex.reset()
        else:
            ex.close()

    return behave


def stall_mid_body(size: int = 1 << 20) -> Behaviour:
    """Headers and a first slice of the body, then silence with the connection open."""

    async def behave(ex: Exchange) -> None:
        await ex.send_head(200, [("Content-Length", str(size))])
        await ex.send(b"y" * 1024)
        await ex.hang()

    return behave


def never_answer() -> Behaviour:
    async def behave(ex: Exchange) -> None:
        await ex.hang()

    return behave


def many_headers(count: int = 10_000) -> Behaviour:
    async def behave(ex: Exchange) -> None:
        headers = [(f"X-Filler-{n}", "v") for n in range(count)]
        await ex.respond(200, b"too many headers", headers)

    return behave


def raw_header(name: bytes, value: bytes) -> Behaviour:
    """200 with one header carried as exactly these bytes (any encoding, or none)."""

    async def behave(ex: Exchange) -> None:
        head = b"HTTP/1.1 200 OK\r\n%s: %s\r\nContent-Length: 2\r\n\r\nok" % (name, value)
        await ex.send(head)

    return behave


def slow(seconds: float, then: Behaviour) -> Behaviour:
    async def behave(ex: Exchange) -> None:
        await asyncio.sleep(seconds)
        await then(ex)

    return behave


@dataclass(frozen=True)
class BigBody:
    """`size` bytes made of one random MiB block repeated, and their SHA-256."""

    block: bytes
    repeat: int
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256()
        for _ in range(self.repeat):
            digest.update(self.block)
        object.__setattr__(self, "sha", digest.hexdigest())

    @classmethod
    def of_mib(cls, mib: int) -> BigBody:
        return cls(os.urandom(1 << 20), mib)

    @property
    def size(self) -> int:
        return len(self.block) * self.repeat


def stream_body(big: BigBody) -> Behaviour:
    """Content-Length response of `big`, written block by block with backpressure."""

    async def behave(ex: Exchange) -> None:
        await ex.send_head(200, [("Content-Length", str(big.size)), ("X-Body-Sha256", big.sha)])
        for _ in range(big.repeat):
            await ex.send(big.block)

    return behave


# --- the loop the fakes run on ------------------------------------------------------------


class FakeLoop:
    """An event loop in a background thread hosting any number of fakes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fakes", daemon=True)
        self._servers: list[RawUpstream] = []

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def __enter__(self) -> FakeLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, coro: Awaitable[T], timeout: float = 10.0) -> T:
        """Run a coroutine on the fakes' loop and wait for it (from any other thread)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def serve(self, server: RawUpstream) -> RawUpstream:
        self.run(server.start())
        self._servers.append(server)
        return server

    def upstream(self, name: str, behaviour: Behaviour | None = None) -> RawUpstream:
        return self.serve(RawUpstream(name, behaviour))

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        for server in self._servers:
            self.run(server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def closed_port() -> int:
    """A loopback port nobody listens on (connect is refused)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def scripted(name: str, faults: dict[str, Behaviour]) -> Behaviour:
    """The path says who misbehaves and how: `/{who}-{fault}/...`.

    `who` is an upstream name or `both`; `fault` a key of `faults`. Any other path, or a
    path scripted for the other upstream, gets `answer(name)`: so `/signal-reset/x` resets
    on signal and is served by legacy when the proxy falls back.
    """
    healthy = answer(name)

    async def behave(ex: Exchange) -> None:
        first = ex.path.lstrip("/").split("/", 1)[0]
        who, _, fault = first.partition("-")
        if who in (name, "both") and fault in faults:
            await faults[fault](ex)
        else:
            await healthy(ex)

    return behave
