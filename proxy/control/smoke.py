"""`rollout test`: the smoke test through the proxy and against each upstream directly."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxy.config.values import Config

SMOKE_PATHS = ("/health", "/signals?limit=10", "/signals/stats")
SMOKE_SESSION = "rollout-smoke-test"


@dataclass(frozen=True, slots=True)
class Check:
    target: str  # proxy, signal, legacy
    path: str
    status: int | None
    latency_ms: float
    served_by: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "path": self.path,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 1),
            "served_by": self.served_by,
            "ok": self.ok,
            "error": self.error,
        }


def proxy_url(config: Config, override: str | None) -> str:
    if override:
        return override.rstrip("/")
    host = config.listen.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{config.listen.port}"


async def _check(
    client: aiohttp.ClientSession, target: str, base: str, path: str, headers: dict[str, str]
) -> Check:
    started = time.perf_counter()
    try:
        async with client.get(base + path, headers=headers, allow_redirects=False) as resp:
            await resp.read()
            served = resp.headers.get("X-Rollout-Upstream") or (
                target if target != "proxy" else None
            )
            return Check(target, path, resp.status, _ms(started), served, None)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Check(target, path, None, _ms(started), None, str(exc) or type(exc).__name__)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def run_smoke(config: Config, url: str, *, timeout: float = 10.0) -> list[Check]:
    targets = {
        "proxy": url,
        "signal": config.upstreams.signal.url,
        "legacy": config.upstreams.legacy.url,
    }
    headers = {config.session.header: SMOKE_SESSION}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as client:
        return list(
            await asyncio.gather(
                *(
                    _check(client, target, base, path, headers)
                    for target, base in targets.items()
                    for path in SMOKE_PATHS
                )
            )
        )
