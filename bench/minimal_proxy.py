"""The Python floor: the least an aiohttp proxy does for rollout-proxy's job.

It splits by the same rule (SPEC 3: `mmh3("rollout:{session}") % 10000 < 1000` goes to
signal), keeps one pooled `ClientSession`, and streams the upstream's answer back.
Nothing else: no config file, reload, metrics, guard, fallback or timeouts. What rollout
costs above this is what its features cost; what this costs above nginx is Python and aiohttp.

    python bench/minimal_proxy.py --port 8090 \\
        --signal http://127.0.0.1:8000 --legacy http://127.0.0.1:8001
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import aiohttp
import mmh3
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

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
# Headers aiohttp's client would otherwise add; a proxy forwards only what it was sent.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
BUCKETS = 10_000


class Proxy:
    """One pooled client session and the split rule; `handle` is the whole server."""

    def __init__(self, signal_url: str, legacy_url: str, header: str, percentage: float) -> None:
        self.signal_url = signal_url.rstrip("/")
        self.legacy_url = legacy_url.rstrip("/")
        self.header = header
        self.signal_buckets = round(percentage * 100)
        self.client: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=SKIP_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    def origin(self, session_id: str) -> str:
        bucket = mmh3.hash(f"rollout:{session_id}", 0, signed=False) % BUCKETS
        return self.signal_url if bucket < self.signal_buckets else self.legacy_url

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self.client is not None
        origin = self.origin(request.headers.get(self.header, ""))
        url = URL(origin + request.raw_path, encoded=True)
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in HOP_BY_HOP and name.lower() != "host"
        )
        body = request.content.iter_any() if request.body_exists else None
        try:
            upstream = await self.client.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            )
        except aiohttp.ClientConnectionError:
            return web.Response(status=502, text='{"error": "upstream failed"}')
        try:
            out = web.StreamResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=CIMultiDict(
                    (name, value)
                    for name, value in upstream.headers.items()
                    if name.lower() not in HOP_BY_HOP
                ),
            )
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out
        finally:
            upstream.release()


async def serve(args: argparse.Namespace) -> None:
    proxy = Proxy(args.signal, args.legacy, args.header, args.percentage)
    await proxy.start()
    runner = web.ServerRunner(web.Server(proxy.handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"minimal proxy on http://{args.host}:{args.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--signal", default="http://127.0.0.1:8000", help="signal origin")
    parser.add_argument("--legacy", default="http://127.0.0.1:8001", help="legacy origin")
    parser.add_argument("--header", default="X-Session-Id", help="session header")
    parser.add_argument("--percentage", type=float, default=10.0, help="share sent to signal")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
