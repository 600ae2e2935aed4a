"""Upstreams that record what reached them, and the proxy started in front of two of them.

`start()` gives a `Setup`: the real `rollout serve` between a recording signal and a
recording legacy upstream; `get()` builds exact request bytes for `raw_request`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support import ProxyProcess, UpstreamFactory, config_dict, server_url

ServeProxy = Callable[..., ProxyProcess]
Respond = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    """One request as the upstream received it, before any parsing of ours."""

    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


@dataclass
class Recorder:
    name: str
    seen: list[Seen] = field(default_factory=list)
    respond: Respond | None = None


RECORDER = web.AppKey("recorder", Recorder)


async def _record(request: web.Request) -> web.StreamResponse:
    recorder = request.app[RECORDER]
    body = await request.read()
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
    recorder.seen.append(Seen(request.method, request.raw_path, headers, body))
    if recorder.respond is not None:
        return await recorder.respond(request)
    return web.json_response({"served_by": recorder.name, "path": request.raw_path})


def recording_app(recorder: Recorder) -> web.Application:
    # auto_decompress off: the upstream must see the body bytes exactly as they arrived.
    app = web.Application(client_max_size=64 * 1024**2, handler_args={"auto_decompress": False})
    app[RECORDER] = recorder
    app.router.add_route("*", "/{tail:.*}", _record)
    return app


@dataclass
class Setup:
    proxy: ProxyProcess
    signal: Recorder
    legacy: Recorder


async def start(
    upstream: UpstreamFactory,
    serve_proxy: ServeProxy,
    *serve_args: str,
    respond: Respond | None = None,
    **sections: Any,
) -> Setup:
    signal_rec = Recorder("signal", respond=respond)
    legacy_rec = Recorder("legacy", respond=respond)
    signal_srv = await upstream(recording_app(signal_rec))
    legacy_srv = await upstream(recording_app(legacy_rec))
    data = config_dict(server_url(signal_srv), server_url(legacy_srv), **sections)
    proxy = await asyncio.to_thread(serve_proxy, data, *serve_args)
    return Setup(proxy, signal_rec, legacy_rec)


def get(target: str, *headers: str, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: proxy.test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


# --- 1. paths and queries byte for byte ---------------------------------------------
