"""TLS to upstreams end to end: the real `rollout serve` in front of real TLS upstreams.

Certificates come from trustme per test (none checked in). Signal is reached through a CA
file, refused with the wrong CA (a `tls` fallback; 502 for legacy), checked against
`server_name`, reached with `verify: false`, and through mutual TLS; its connections
are pooled (one handshake for many requests).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from tests.support import (
    ProxyProcess,
    UpstreamFactory,
    config_dict,
    metric_value,
    server_url,
)
from tests.support.tls import tls_upstream, write_ca, write_cert

pytestmark = pytest.mark.e2e

ServeProxy = Callable[..., ProxyProcess]
TO_SIGNAL = {"X-Session-Id": "to-signal"}
HANDSHAKE_FAILED = (
    "signal: TLS handshake with '127.0.0.1' failed: certificate verify failed: "
    "unable to get local issuer certificate"
)


async def _plain_legacy(upstream: UpstreamFactory) -> str:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"served_by": "legacy"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    return server_url(await upstream(app))


def _config(signal: dict[str, Any], legacy: dict[str, Any] | str) -> dict[str, Any]:
    legacy_block = {"url": legacy} if isinstance(legacy, str) else legacy
    return config_dict(
        "http://unused", "http://unused", upstreams={"signal": signal, "legacy": legacy_block}
    )


async def _get(proxy: ProxyProcess, method: str = "GET", **headers: str) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, proxy.url + "/hello", headers=headers) as resp,
    ):
        return resp.status, resp.headers, await resp.json()


async def _metrics(proxy: ProxyProcess) -> str:
    async with aiohttp.ClientSession() as http, http.get(proxy.admin_url + "/metrics") as resp:
        return await resp.text()


async def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_verified_through_ca_file_and_pooled(
    serve_proxy: ServeProxy, upstream: UpstreamFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    async with tls_upstream("signal", ca.issue_cert("127.0.0.1")) as signal_tls:
        tls = {"ca_file": str(write_ca(ca, tmp_path / "ca.pem"))}
        proxy = serve_proxy(
            _config({"url": signal_tls.url, "tls": tls}, await _plain_legacy(upstream))
        )
        for _ in range(30):
            status, headers, body = await _get(proxy, **TO_SIGNAL)
            assert (status, body["served_by"]) == (200, "signal")
            assert headers["X-Rollout-Upstream"] == "signal"
            assert "X-Rollout-Fallback" not in headers
        assert signal_tls.requests == 30
        assert signal_tls.handshakes == 1  # every request after the first on the pooled one
        text = await _metrics(proxy)
        assert (
            metric_value(text, "rollout_upstream_errors_total", upstream="signal", reason="tls")
            == 0.0
        )


async def test_wrong_ca_falls_back_for_signal_and_is_502_for_legacy(
    serve_proxy: ServeProxy, upstream: UpstreamFactory, tmp_path: Path
) -> None:
    real, other = trustme.CA(), trustme.CA()
    wrong = {"ca_file": str(write_ca(other, tmp_path / "other-ca.pem"))}
    async with (
        tls_upstream("signal", real.issue_cert("127.0.0.1")) as signal_tls,
        tls_upstream("legacy", real.issue_cert("127.0.0.1")) as legacy_tls,
    ):
        proxy = serve_proxy(
            _config({"url": signal_tls.url, "tls": wrong}, await _plain_legacy(upstream))
        )
        for method in ("GET", "POST"):  # nothing was sent: even a POST falls back
            status, headers, body = await _get(proxy, method, **TO_SIGNAL)
            assert (status, body["served_by"]) == (200, "legacy")
            assert headers["X-Rollout-Fallback"] == "tls"
        assert signal_tls.requests == 0
        text = await _metrics(proxy)
        assert (
            metric_value(text, "rollout_upstream_errors_total", upstream="signal", reason="tls")
            == 2.0
        )
        assert metric_value(text, "rollout_fallbacks_total", feature="default", reason="tls") == 2.0
        await _wait_for(lambda: HANDSHAKE_FAILED in proxy.logs())
        assert proxy.logs().count(HANDSHAKE_FAILED) == 1  # rate-limited: one line

        legacy_proxy = serve_proxy(
            _config({"url": signal_tls.url}, {"url": legacy_tls.url, "tls": wrong})
        )
        status, headers, body = await _get(legacy_proxy)
        assert status == 502
        assert body == {"error": "upstream TLS handshake failed", "upstream": "legacy"}
        assert headers["X-Rollout-Upstream"] == "legacy"
        text = await _metrics(legacy_proxy)
        assert (
            metric_value(text, "rollout_upstream_errors_total", upstream="legacy", reason="tls")
            == 1.0
        )
        await _wait_for(
            lambda: "legacy: TLS handshake with '127.0.0.1' failed" in legacy_proxy.logs()
        )


async def test_server_name_is_the_name_checked_and_sent(
    serve_proxy: ServeProxy, upstream: UpstreamFactory, tmp_path: Path
) -> None:
    ca = trustme.CA()
    ca_file = str(write_ca(ca, tmp_path / "ca.pem"))
    legacy = await _plain_legacy(upstream)
    async with tls_upstream("signal", ca.issue_cert("signal.internal")) as signal_tls:
        by_host = serve_proxy(_config({"url": signal_tls.url, "tls": {"ca_file": ca_file}}, legacy))
        status, headers, _ = await _get(by_host, **TO_SIGNAL)
        assert (status, headers["X-Rollout-Fallback"]) == (200, "tls")
        mismatch = (
            "signal: TLS handshake with '127.0.0.1' failed: certificate verify failed: "
            "IP address mismatch, certificate is not valid for '127.0.0.1'"
        )
        await _wait_for(lambda: mismatch in by_host.logs())

        tls = {"ca_file": ca_file, "server_name": "signal.internal"}
        named = serve_proxy(_config({"url": signal_tls.url, "tls": tls}, legacy))
        status, headers, body = await _get(named, **TO_SIGNAL)
        assert (status, body["served_by"]) == (200, "signal")
        assert signal_tls.server_names[-1] == "signal.internal"  # the SNI sent


async def test_verify_false_serves_and_warns_at_every_load(
    serve_proxy: ServeProxy, upstream: UpstreamFactory
) -> None:
    unknown = trustme.CA()
    async with tls_upstream("signal", unknown.issue_cert("127.0.0.1")) as signal_tls:
        proxy = serve_proxy(
            _config(
                {"url": signal_tls.url, "tls": {"verify": False}}, await _plain_legacy(upstream)
            )
        )
        status, _, body = await _get(proxy, **TO_SIGNAL)
        assert (status, body["served_by"]) == (200, "signal")
        warning = "WARNING rollout.upstream: signal: tls.verify is false"
        assert proxy.logs().count(warning) == 1
        proxy.signal(signal.SIGHUP)
        await _wait_for(lambda: proxy.logs().count(warning) == 2)


async def test_mutual_tls_to_an_upstream_that_requires_a_client_certificate(
    serve_proxy: ServeProxy, upstream: UpstreamFactory, tmp_path: Path
) -> None:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    ca_file = str(write_ca(server_ca, tmp_path / "ca.pem"))
    client = write_cert(client_ca.issue_cert("rollout-proxy"), tmp_path, "client")
    legacy = await _plain_legacy(upstream)
    async with tls_upstream(
        "signal", server_ca.issue_cert("127.0.0.1"), client_ca=client_ca
    ) as signal_tls:
        without = serve_proxy(_config({"url": signal_tls.url, "tls": {"ca_file": ca_file}}, legacy))
        status, headers, body = await _get(without, **TO_SIGNAL)
        assert (status, body["served_by"]) == (200, "legacy")
        assert headers["X-Rollout-Fallback"] == "tls"
        assert signal_tls.requests == 0

        tls = {"ca_file": ca_file, "cert_file": str(client.cert), "key_file": str(client.key)}
        with_cert = serve_proxy(_config({"url": signal_tls.url, "tls": tls}, legacy))
        status, _, body = await _get(with_cert, **TO_SIGNAL)
        assert (status, body) == (200, {"served_by": "signal", "client_cert": True})
        text = await _metrics(with_cert)
        left = metric_value(text, "rollout_tls_certificate_expiry_seconds", certificate="signal")
        assert left is not None
        assert left > 86400  # trustme's certificates last for years
        assert (
            metric_value(text, "rollout_tls_certificate_expiry_seconds", certificate="legacy")
            is None
        )
