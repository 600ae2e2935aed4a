"""Wiring: the public and admin applications, their lifecycles, and `serve()`.

Lifecycles live in `cleanup_ctx`: the pooled `ClientSession` and the config watcher are
created when the public app starts and closed when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy import __version__
from proxy.admin import create_admin_app
from proxy.config import Config, load_config
from proxy.forward import SKIP_AUTO_HEADERS
from proxy.gateway import handle
from proxy.reload import POLL_INTERVAL, reload_now, watch
from proxy.runtime import RUNTIME, Runtime
from proxy.store import ConfigStore

log = logging.getLogger("rollout")

# Pause between "not ready" and closing the listener, so load balancers and Kubernetes
# endpoints stop sending new connections before they would be refused.
DEFAULT_GRACE_SECONDS = 1.0

# Close idle upstream connections before a typical upstream's own keep-alive timeout
# (nginx 75 s, aiohttp 75 s, gunicorn 2 s is the outlier), so we rarely reuse a dead one.
UPSTREAM_KEEPALIVE_SECONDS = 15.0


def create_client_session() -> aiohttp.ClientSession:
    """One pool for both upstreams: no decompression, no cookies, no invented headers."""
    connector = aiohttp.TCPConnector(
        limit=0,  # never queue behind a pool limit: a queue would look like a slow signal
        keepalive_timeout=UPSTREAM_KEEPALIVE_SECONDS,
        ttl_dns_cache=10,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
    )


def create_app(runtime: Runtime, *, poll_interval: float = POLL_INTERVAL) -> web.Application:
    """The public application: every path and method is proxied.

    `poll_interval` 0 turns the file watcher off (reload then only on SIGHUP or
    `POST /-/reload`).
    """
    # auto_decompress off: a gzip request body is forwarded as the bytes the client sent.
    app = web.Application(handler_args={"max_field_size": 16384, "auto_decompress": False})
    app[RUNTIME] = runtime
    app.router.add_route("*", "/{tail:.*}", handle)
    app.cleanup_ctx.append(_client_session_ctx)
    if poll_interval > 0:
        app.cleanup_ctx.append(_watch_ctx(poll_interval))
    return app


async def _client_session_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    runtime.client = create_client_session()
    yield
    await runtime.client.close()


def _watch_ctx(interval: float) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(watch(app[RUNTIME], interval), name="config-watch")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


def build_runtime(path: Path, config: Config) -> Runtime:
    return Runtime.create(ConfigStore(path=path, config=config), __version__)


async def serve(
    path: Path,
    *,
    grace: float = DEFAULT_GRACE_SECONDS,
    poll_interval: float = POLL_INTERVAL,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then drain: not ready, grace, stop accepting, finish."""
    config = load_config(path)
    runtime = build_runtime(path, config)
    public_runner = web.AppRunner(
        create_app(runtime, poll_interval=poll_interval),
        access_log=None,
        shutdown_timeout=config.timeouts.total + 1,
    )
    admin_runner = web.AppRunner(create_admin_app(runtime), access_log=None)
    await public_runner.setup()
    await admin_runner.setup()
    try:
        await web.TCPSite(admin_runner, config.admin.host, config.admin.port).start()
        await web.TCPSite(public_runner, config.listen.host, config.listen.port).start()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        await public_runner.cleanup()
        await admin_runner.cleanup()
        return 2

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_now(runtime, trigger="SIGHUP"))
    log.info(
        "rollout-proxy %s serving on http://%s:%d (admin http://%s:%d), config %s: %s",
        __version__,
        config.listen.host,
        config.listen.port,
        config.admin.host,
        config.admin.port,
        path,
        _summary(config),
    )
    if on_ready is not None:
        on_ready()
    await stop.wait()

    runtime.draining = True
    log.info("shutting down: not ready now, closing the listener in %.1f s", grace)
    await asyncio.sleep(grace)
    await public_runner.cleanup()  # stops accepting, waits for requests in flight
    await admin_runner.cleanup()
    log.info("stopped")
    return 0


def _summary(config: Config) -> str:
    parts = [f"{name} {pct:g}%" for name, pct in config.feature_percentages().items()]
    if config.rollout.emergency:
        parts.append("EMERGENCY: all traffic to legacy")
    return ", ".join(parts)
