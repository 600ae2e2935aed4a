"""Wiring: the public server and the admin application, their lifecycles, and `serve()`.

The public side is our own HTTP server (`proxy.http.server`: every request is proxied, nothing
to route); the admin side an aiohttp application. The process's background work (config
watcher, connection pools, shadow mirrors) is the `running()` context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.admin import create_admin_app
from proxy.config.load import load_config
from proxy.config.values import Config
from proxy.gateway.certificates import ListenCertificates
from proxy.gateway.handler import make_handler
from proxy.gateway.relay import relay_response
from proxy.gateway.reload import POLL_INTERVAL, reload_now, watch
from proxy.gateway.shadow import mirrored
from proxy.gateway.state import ConfigStore, Runtime
from proxy.gateway.upgrade import switching
from proxy.http.server import HttpServer
from proxy.http.tunnel import CLOSE_GRACE
from proxy.page import add_status_page
from proxy.rollout.ring import Ring
from proxy.telemetry.sampler import sample_forever

log = logging.getLogger("rollout")

# Pause between "not ready" and closing the listener, so load balancers and Kubernetes
# endpoints stop sending new connections before they would be refused.
DEFAULT_GRACE_SECONDS = 1.0

KEEPALIVE_SECONDS = 75.0


@contextlib.asynccontextmanager
async def running(
    runtime: Runtime,
    *,
    poll_interval: float,
    certificates: ListenCertificates | None = None,
    ring: Ring | None = None,
) -> AsyncIterator[None]:
    """The process's background work: the config watcher, the status page's sampler
    (`ring`, where the admin listener runs); at the end, shadow mirrors still running are
    cancelled and the pools closed.

    `poll_interval` 0 turns the watcher off (reload then only on SIGHUP or
    `POST /-/reload`).
    """
    tasks = []
    if ring is not None:
        sampling = sample_forever(ring, runtime.metrics.exposition)
        tasks.append(asyncio.create_task(sampling, name="status-page-sampler"))
    if poll_interval > 0:
        tasks.append(asyncio.create_task(watch(runtime, poll_interval), name="config-watch"))
        if certificates is not None:
            watching = certificates.watch(poll_interval)
            tasks.append(asyncio.create_task(watching, name="certificate-watch"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await runtime.shadow.cancel_all()
        runtime.close_pools()


def run_loop(loop: str, main: Coroutine[Any, Any, int]) -> int:
    """Run `serve()` on the chosen event loop implementation."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def build_runtime(path: Path, config: Config) -> Runtime:
    return Runtime.create(ConfigStore(path=path, config=config), __version__)


async def serve(
    path: Path,
    *,
    grace: float = DEFAULT_GRACE_SECONDS,
    poll_interval: float = POLL_INTERVAL,
    on_ready: Callable[[], None] | None = None,
    worker_index: int | None = None,
) -> int:
    """Run until SIGTERM/SIGINT, then drain: not ready, grace, stop accepting, finish.

    `worker_index` is set for the processes of `--workers N`: they share the listen port
    (SO_REUSEPORT) and only worker 0 runs the admin listener.
    """
    config = load_config(path)
    runtime = build_runtime(path, config)
    # A connection that has not completed a request head within this time is closed:
    # idle keep-alive clients and slowloris alike (75 s, as nginx and aiohttp's run_app).
    relay = switching(
        mirrored(relay_response, runtime.shadow, runtime.pool, runtime.metrics.shadow_result),
        runtime.upgrades,
    )
    public = HttpServer(make_handler(runtime, relay), keepalive=KEEPALIVE_SECONDS)
    admin_app = create_admin_app(runtime)
    ring = Ring()  # filled only where the admin listener runs (worker 0 of --workers N)
    add_status_page(admin_app, ring)
    admin_runner = web.AppRunner(admin_app, access_log=None)
    await admin_runner.setup()
    try:
        if not worker_index:
            await web.TCPSite(admin_runner, config.admin.host, config.admin.port).start()
        await public.start(
            config.listen.host,
            config.listen.port,
            reuse_port=worker_index is not None,
            ssl_context=config.listen.ssl_context,
        )
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        await admin_runner.cleanup()
        return 2
    certificates = None
    if config.listen.tls is not None and config.listen.ssl_context is not None:
        certificates = ListenCertificates(
            config.listen.tls, config.listen.ssl_context, public.set_ssl_context, runtime.metrics
        )
        runtime.after_reload.append(certificates.check)

    sampled = None if worker_index else ring
    async with running(
        runtime, poll_interval=poll_interval, certificates=certificates, ring=sampled
    ):
        return await _serve_until_stopped(
            runtime, config, path, grace, on_ready, public, admin_runner
        )


async def _serve_until_stopped(
    runtime: Runtime,
    config: Config,
    path: Path,
    grace: float,
    on_ready: Callable[[], None] | None,
    public: HttpServer,
    admin_runner: web.BaseRunner,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_now(runtime, trigger="SIGHUP"))
    log.info(
        "rollout-proxy %s serving on %s://%s:%d (admin http://%s:%d), config %s: %s",
        __version__,
        public.scheme,
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

    runtime.draining = True  # /-/ready 503
    public.begin_drain()  # responses now say Connection: close
    log.info("shutting down: not ready now, closing the listener in %.1f s", grace)
    await asyncio.sleep(grace)
    public.stop_listening()  # no new connections; idle ones closed
    if upgraded := runtime.upgrades.close_all():  # close code 1001, going away
        log.info("closing %d upgraded connections", upgraded)
    if not await runtime.wait_idle(config.timeouts.total + 1):
        log.warning("%d requests still in flight after the drain timeout", runtime.active)
    await runtime.upgrades.wait_closed(CLOSE_GRACE)
    runtime.upgrades.abort_all()
    public.close_all()
    await admin_runner.cleanup()
    log.info("stopped")
    return 0


def _summary(config: Config) -> str:
    parts = [f"{name} {pct:g}%" for name, pct in config.feature_percentages().items()]
    if config.rollout.emergency:
        parts.append("EMERGENCY: all traffic to legacy")
    return ", ".join(parts)
