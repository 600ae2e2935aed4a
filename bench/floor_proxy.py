"""The latency floor: the least any asyncio proxy in Python can do per request.

No coroutines, no tasks, no futures: asyncio Protocol callbacks on both sides, llhttp
(httptools) parsing, the SPEC 3 split on the session header, hop-by-hop headers dropped,
one upstream connection per client connection and side. It handles only what the bench
sends (requests without a body, answers framed by Content-Length) and nothing goes wrong
in it: no timeouts, errors, metrics, fallback. What it adds to a request's latency is
what the event loop, the parser and the socket calls cost on this machine; no proxy
written in Python on asyncio can add less.

    python bench/floor_proxy.py --port 8091 \\
        --signal http://127.0.0.1:8000 --legacy http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from urllib.parse import urlsplit

import httptools
import mmh3

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"host",
    }
)
BUCKETS = 10_000


class Settings:
    def __init__(self, args: argparse.Namespace) -> None:
        self.origins = [_origin(args.signal), _origin(args.legacy)]
        self.hosts = [b"%s:%d" % (host.encode(), port) for host, port in self.origins]
        self.header = args.header.lower().encode()
        self.threshold = round(args.percentage * 100)


def _origin(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class Upstream(asyncio.Protocol):
    """One upstream connection serving one client connection, one request at a time."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: bytes | None = None
        self.head: list[bytes] = []
        self.connecting: asyncio.Task[object] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.pending is not None:
            transport.write(self.pending)  # type: ignore[attr-defined]
            self.pending = None

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending = data
        else:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.head = [b"HTTP/1.1 %d OK\r\n" % 200]
        self.body: list[bytes] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.head.append(name + b": " + value + b"\r\n")

    def on_headers_complete(self) -> None:
        self.head[0] = b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.head.append(b"\r\n")
        self.client.answer(b"".join(self.head) + b"".join(self.body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_lost()


class Client(asyncio.Protocol):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstreams: list[Upstream | None] = [None, None]
        self.url = b""
        self.headers: list[bytes] = []
        self.session = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.session = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == self.settings.header:
            self.session = value
        if lower not in HOP_BY_HOP:
            self.headers.append(name + b": " + value + b"\r\n")

    def on_message_complete(self) -> None:
        settings = self.settings
        key = b"rollout:" + self.session
        side = 0 if mmh3.hash(key, 0, signed=False) % BUCKETS < settings.threshold else 1
        method = self.parser.get_method()
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
            method,
            self.url,
            settings.hosts[side],
            b"".join(self.headers),
        )
        upstream = self.upstreams[side]
        if upstream is None:
            upstream = self.upstreams[side] = Upstream(self)
            host, port = settings.origins[side]
            loop = asyncio.get_running_loop()
            upstream.connecting = loop.create_task(
                loop.create_connection(lambda: upstream, host, port)
            )
        upstream.send(head)

    def answer(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def upstream_lost(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for upstream in self.upstreams:
            if upstream is not None and upstream.transport is not None:
                upstream.transport.close()


async def serve(args: argparse.Namespace) -> None:
    settings = Settings(args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(settings), args.host, args.port, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"floor proxy on http://{args.host}:{args.port}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--signal", default="http://127.0.0.1:8000", help="signal origin")
    parser.add_argument("--legacy", default="http://127.0.0.1:8001", help="legacy origin")
    parser.add_argument("--header", default="X-Session-Id", help="session header")
    parser.add_argument("--percentage", type=float, default=10.0, help="share sent to signal")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
