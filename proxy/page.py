"""The live status page on the admin listener (SPEC 14): `GET /`, its assets, `GET /-/page`.

`GET /` and `/-/assets/*` hold no data and need no token (SPEC 8): the page asks for the
token and sends it on its `GET /-/page` requests, which the admin listener's token check
covers like every data endpoint. Every asset ships in the package (`proxy/assets/`) and
the page's Content-Security-Policy allows nothing but this listener, so an open page
makes no request anywhere else.

The document puts the live window of `/-/status` beside the promotion and guard
thresholds, adds the ring's last 15 minutes (all workers, `proxy.telemetry.sampler`), the
autopilot's state file and the last history entries. A file beside the config that cannot
be read becomes a message in the document, never a failed page.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from aiohttp import web

from proxy.admin import ASSETS_PREFIX, status_document
from proxy.config.values import Config
from proxy.errors import RolloutError
from proxy.gateway.state import RUNTIME, Runtime
from proxy.records.history import read_entries
from proxy.records.pilot_document import controller_document, operator_of, pilot_state
from proxy.records.pilot_state import lock_holder, read_state
from proxy.rollout.compare import match_rate
from proxy.rollout.pilot import next_action
from proxy.rollout.ring import Reading, Ring
from proxy.rollout.stages import stage_index
from proxy.status import AutopilotPage, HistoryPage, PageDocument, ShadowPage

RING = web.AppKey("ring", Ring)
HISTORY_SHOWN = 20

# name -> content type; nothing outside this list is served
ASSETS = {
    "page.css": "text/css",
    "page.js": "text/javascript",
    "charts.js": "text/javascript",
    "preview.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}
# Only this listener: no CDN, font or analytics can load even if a future edit tried.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def add_status_page(app: web.Application, ring: Ring) -> None:
    """Serve the page, its assets and its document on the admin application."""
    app[RING] = ring
    app.router.add_get("/", index)
    app.router.add_get(ASSETS_PREFIX + "{name}", asset)
    app.router.add_get("/-/page", page)


def _asset_bytes(name: str) -> bytes:
    return resources.files("proxy").joinpath("assets", name).read_bytes()


async def index(request: web.Request) -> web.Response:
    return web.Response(
        body=_asset_bytes("index.html"), content_type="text/html", headers=SECURITY_HEADERS
    )


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.Response(
        body=_asset_bytes(name), content_type=ASSETS[name], headers=SECURITY_HEADERS
    )


async def page(request: web.Request) -> web.Response:
    document = page_document(request.app[RUNTIME], request.app[RING], time.time())
    return web.json_response(document, headers={"Cache-Control": "no-store"})


def page_document(runtime: Runtime, ring: Ring, now: float) -> PageDocument:
    """Everything the page shows. The two files beside the config are read per request
    (a page polls once a second; `rollout-history.jsonl` grows by a line per change)."""
    config = runtime.store.config
    path = runtime.store.path
    r, g = config.rollout, config.guard
    return {
        "status": status_document(runtime),
        "plan": {
            "stages": list(r.stages),
            "percentage": r.percentage,
            "current_stage": stage_index(r.stages, r.percentage),
        },
        "guard_thresholds": {
            "enabled": g.enabled,
            "min_requests": g.min_requests,
            "max_error_rate": g.max_error_rate,
            "max_p95_ms": g.max_p95_ms,
            "window_seconds": g.window_seconds,
        },
        "autopilot": autopilot_page(path, config, now),
        "history": history_page(path),
        "shadow": shadow_page(config.shadow.enabled, ring.latest),
        "series": ring.series(),
        "generated_at": now,
    }


def autopilot_page(path: Path, config: Config, now: float) -> AutopilotPage:
    """The autopilot's part, from `rollout-autopilot.json` beside the config."""
    out: AutopilotPage = {
        "enabled": config.autopilot.enabled,
        "running": False,
        "message": None,
        "state": None,
        "paused_by": None,
        "next_action": None,
        "next_at": None,
        "last_analysis": None,
    }
    try:
        out["running"] = lock_holder(path) is not None
        saved = read_state(path)
        doc = controller_document(saved["controller"])
        if doc is None:
            out["message"] = "autopilot not running on this config (no state file yet)"
            return out
        pause = saved["operator"]["pause"]
        operator = operator_of(saved["operator"])
        state = pilot_state(doc["state"])
        out["state"] = doc["state"]
        out["paused_by"] = None if pause is None else pause["user"]
        out["next_at"] = doc.get("next_at")
        out["last_analysis"] = doc["analyses"][-1] if doc.get("analyses") else None
        out["next_action"] = next_action(
            state, config.autopilot, config.rollout.stages, operator, now
        )
    except (RolloutError, OSError, KeyError, TypeError, ValueError) as exc:
        out["message"] = f"cannot read the autopilot state: {exc}"
    return out


def history_page(path: Path) -> HistoryPage:
    """The last entries of `rollout-history.jsonl`; an unreadable file is a message."""
    try:
        entries, bad = read_entries(path)
    except FileNotFoundError:
        return {"entries": [], "message": "no history yet (no rollout-history.jsonl)"}
    except (OSError, ValueError) as exc:
        return {"entries": [], "message": f"cannot read the history: {exc}"}
    message = None
    if bad:
        message = f"{len(bad)} unreadable line(s) in rollout-history.jsonl (line {bad[0]} first)"
    return {"entries": entries[-HISTORY_SHOWN:], "message": message}


def shadow_page(enabled: bool, reading: Reading | None) -> ShadowPage:
    counts: dict[str, dict[str, int]] = {}
    for (feature, result), value in (reading.shadow if reading else {}).items():
        counts.setdefault(feature, {})[result] = round(value)
    total: dict[str, float] = {}
    for by_result in counts.values():
        for result, value in by_result.items():
            total[result] = total.get(result, 0) + value
    return {
        "enabled": enabled,
        "match_rate": match_rate(total),
        "compared": round(total.get("match", 0) + total.get("mismatch", 0)),
        "counts": counts,
    }
