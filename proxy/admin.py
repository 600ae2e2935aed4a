"""The admin listener (SPEC 8): metrics, health, readiness, status, reload, guard reset.

It runs on its own host and port, never on the public one, and with `admin.token` set
every request must carry `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from proxy import __version__
from proxy.config.values import Config
from proxy.gateway.reload import reload_now
from proxy.gateway.shadow import Diff
from proxy.gateway.state import RUNTIME, Runtime
from proxy.preview import PreviewQueryError, preview_document, query_from_body, query_from_params
from proxy.rollout.routing import Side
from proxy.status import DiffsDocument, ShadowDiff, StatusDocument

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The status page (`proxy.page`) and its assets hold no data: no token for them (SPEC 8).
ASSETS_PREFIX = "/-/assets/"


def create_admin_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[_require_token])
    app[RUNTIME] = runtime
    app.router.add_get("/metrics", make_aiohttp_handler(runtime.metrics.exposition))
    app.router.add_get("/-/healthz", healthz)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/-/status", status)
    app.router.add_post("/-/reload", reload)
    app.router.add_post("/-/guard/reset", guard_reset)
    app.router.add_get("/-/diffs", diffs)
    app.router.add_route("*", "/-/preview", preview)
    return app


@web.middleware
async def _require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[RUNTIME].store.config.admin.token
    if token is not None and not _holds_no_data(request):
        sent = request.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            return _json(
                {"error": "missing or wrong admin token (Authorization: Bearer TOKEN)"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="rollout-admin"'},
            )
    return await handler(request)


def _holds_no_data(request: web.Request) -> bool:
    return request.method in ("GET", "HEAD") and (
        request.path == "/" or request.path.startswith(ASSETS_PREFIX)
    )


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=2, ensure_ascii=False) + "\n",
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.draining:
        return _json({"ready": False, "reason": "draining"}, status=503)
    return _json({"ready": True})


def status_document(runtime: Runtime) -> StatusDocument:
    """Everything `rollout status` and `rollout report` need, in one JSON document."""
    store = runtime.store
    config = store.config
    trip = runtime.guard.trip
    return {
        "version": __version__,
        "config": {
            "path": str(store.path),
            "generation": store.generation,
            "last_reload": {
                "ok": store.last_reload_ok,
                "error": store.last_error,
                "at": store.last_reload_at,
                "changes": store.last_changes,
            },
        },
        "draining": runtime.draining,
        "emergency": config.rollout.emergency,
        "percentages": config.feature_percentages(),
        "effective_percentages": effective_percentages(config, runtime.guard_tripped()),
        "stages": list(config.rollout.stages),
        "guard": {
            "enabled": config.guard.enabled,
            "tripped": trip is not None,
            "reason": trip.reason if trip else None,
            "tripped_at": trip.at if trip else None,
            "figures": trip.stats.as_dict() if trip else None,
            "window_seconds": config.guard.window_seconds,
        },
        "upstreams": {
            side.value: {
                "url": config.upstreams.of(side).url,
                "upgraded": runtime.upgrades.count(side),
                **runtime.window(side).stats().as_dict(),
            }
            for side in Side
        },
        "promotion": {
            "min_requests": config.promotion.min_requests,
            "max_error_rate": config.promotion.max_error_rate,
            "max_p95_ms": config.promotion.max_p95_ms,
        },
        "shadow": {
            "enabled": config.shadow.enabled,
            "percentage": config.shadow.percentage,
            "in_flight": runtime.shadow.in_flight,
            "kept_diffs": len(runtime.shadow.diffs),
            "learned_noise": {k: sorted(v) for k, v in runtime.shadow.noise.items()},
        },
        "uptime_seconds": round(time.time() - runtime.started_at, 1),
    }


def effective_percentages(config: Config, guard_tripped: bool) -> dict[str, float]:
    if config.rollout.emergency or guard_tripped:
        return dict.fromkeys(config.feature_percentages(), 0.0)
    return config.feature_percentages()


async def status(request: web.Request) -> web.Response:
    return _json(status_document(request.app[RUNTIME]))


async def reload(request: web.Request) -> web.Response:
    result = reload_now(request.app[RUNTIME], trigger="POST /-/reload")
    return _json(result.as_dict(), status=200 if result.ok else 422)


async def guard_reset(request: web.Request) -> web.Response:
    was_tripped = request.app[RUNTIME].reset_guard()
    return _json({"reset": True, "was_tripped": was_tripped})


async def diffs(request: web.Request) -> web.Response:
    """The most recent shadow mismatches, newest first (SPEC 11)."""
    shadow = request.app[RUNTIME].shadow
    document: DiffsDocument = {"diffs": [_diff_document(d) for d in shadow.diffs]}
    return _json(document)


def _diff_document(diff: Diff) -> ShadowDiff:
    return {
        "time": diff.at,
        "method": diff.method,
        "path": diff.path,
        "feature": diff.feature,
        "legacy_status": diff.legacy_status,
        "signal_status": diff.signal_status,
        "fields": [f.as_dict() for f in diff.fields],
    }


async def preview(request: web.Request) -> web.Response:
    """Who a proposed state would move (SPEC 14): GET with the page's form, POST with a
    JSON `PreviewQuery`; 400 names the bad key."""
    runtime = request.app[RUNTIME]
    try:
        if request.method == "GET":
            query = query_from_params(request.query, runtime.store.config)
        elif request.method == "POST":
            query = query_from_body(await request.json())
        else:
            return _json({"error": "GET or POST"}, status=405, headers={"Allow": "GET, POST"})
    except json.JSONDecodeError:
        return _json({"error": "body: not JSON"}, status=400)
    except PreviewQueryError as exc:
        return _json({"error": str(exc)}, status=400)
    # The loop's clock: the one the request handler counts activity with.
    now = asyncio.get_running_loop().time()
    return _json(preview_document(runtime, query, now))
