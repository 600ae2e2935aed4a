"""`rollout test`: the smoke test through the proxy and against each upstream directly,
and the server certificate of each https upstream, reached with its own `tls` settings."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxy.config.certificates import (
    Certificate,
    CertificateError,
    days_left,
    decode_der,
    expiry_status,
)
from proxy.config.tls import ssl_detail
from proxy.config.values import Config, Upstream

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


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The certificate an https upstream presented, or why none could be read."""

    upstream: str
    server_name: str
    certificate: Certificate | None
    error: str | None

    def status(self, now: float) -> str:
        """`ok`, `expiring` (within 14 days), `expired`, or `error`."""
        if self.certificate is None:
            return "error"
        return expiry_status(self.certificate.seconds_left(now))

    def as_dict(self, now: float) -> dict[str, Any]:
        cert = self.certificate
        return {
            "upstream": self.upstream,
            "server_name": self.server_name,
            "subject": cert.subject if cert else None,
            "issuer": cert.issuer if cert else None,
            "not_after": cert.expires() if cert else None,
            "days_left": days_left(cert.seconds_left(now)) if cert else None,
            "status": self.status(now),
            "error": self.error,
        }


def proxy_url(config: Config, override: str | None) -> str:
    if override:
        return override.rstrip("/")
    host = config.listen.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    # `listen.tls` (SPEC 2) is read by name: a config without it has no such attribute.
    scheme = "https" if getattr(config.listen, "tls", None) is not None else "http"
    return f"{scheme}://{host}:{config.listen.port}"


async def _check(
    client: aiohttp.ClientSession,
    target: str,
    base: str,
    path: str,
    headers: dict[str, str],
    upstream: Upstream | None,
) -> Check:
    started = time.perf_counter()
    tls: dict[str, Any] = {}
    if upstream is not None and upstream.https and upstream.ssl_context is not None:
        # As the proxy reaches it: its CA file, client certificate and server name.
        tls = {"ssl": upstream.ssl_context, "server_hostname": upstream.server_name}
    try:
        async with client.get(base + path, headers=headers, allow_redirects=False, **tls) as resp:
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
    upstreams = {"signal": config.upstreams.signal, "legacy": config.upstreams.legacy}
    headers = {config.session.header: SMOKE_SESSION}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as client:
        return list(
            await asyncio.gather(
                *(
                    _check(client, target, base, path, headers, upstreams.get(target))
                    for target, base in targets.items()
                    for path in SMOKE_PATHS
                )
            )
        )


async def peer_certificates(config: Config, *, timeout: float = 10.0) -> list[PeerCertificate]:
    """The server certificate of every https upstream (none for http ones)."""
    https = [u for u in (config.upstreams.signal, config.upstreams.legacy) if u.https]
    return list(await asyncio.gather(*(_peer_certificate(u, timeout) for u in https)))


async def _peer_certificate(upstream: Upstream, timeout: float) -> PeerCertificate:
    context = upstream.ssl_context or ssl.create_default_context()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(
                upstream.host, upstream.port, ssl=context, server_hostname=upstream.server_name
            )
    except ssl.SSLError as exc:
        return PeerCertificate(upstream.name, upstream.server_name, None, ssl_detail(exc))
    except (OSError, TimeoutError) as exc:
        error = str(exc) or type(exc).__name__
        return PeerCertificate(upstream.name, upstream.server_name, None, error)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        # The binary form: the decoded one is empty when `verify: false`.
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return PeerCertificate(upstream.name, upstream.server_name, None, "no certificate")
        try:
            cert = decode_der(der)
        except CertificateError as exc:
            return PeerCertificate(upstream.name, upstream.server_name, None, str(exc))
        return PeerCertificate(upstream.name, upstream.server_name, cert, None)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
