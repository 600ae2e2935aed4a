"""HTTPS on the public port, end to end: the real `rollout serve` with `listen.tls`.

Certificates come from trustme per test. A Python `ssl` client and curl get answers over
TLS, the upstream sees `X-Forwarded-Proto: https`, `wss://` echoes through, mutual TLS
refuses clients without the right certificate, and rotated files are taken for new
handshakes with no request failing, while a bad pair is refused and the old one served.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from websockets.asyncio.client import connect

from tests.support import (
    HOST,
    ProxyProcess,
    UpstreamFactory,
    config_dict,
    metric_value,
    server_url,
)
from tests.support.listen_tls import (
    TIMEOUT,
    ListenFiles,
    client_context,
    der_of,
    https_get,
    listen_files,
    presented,
    presented_socket,
    replace_by_rename,
    replace_in_place,
)
from tests.support.tls import write_ca, write_cert
from tests.support.websocket import tagged, websocket_upstream

pytestmark = pytest.mark.e2e

ServeProxy = Callable[..., ProxyProcess]
ROTATION_WAIT = 10.0  # the watcher polls once a second


async def _echo_upstream(upstream: UpstreamFactory) -> str:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response(
            {"proto": request.headers.get("X-Forwarded-Proto"), "path": request.path}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    return server_url(await upstream(app))


async def _start(
    serve_proxy: ServeProxy,
    upstream: UpstreamFactory,
    files: ListenFiles,
    client_ca_file: Path | None = None,
) -> ProxyProcess:
    url = await _echo_upstream(upstream)
    data = config_dict(url, url)
    data["listen"]["tls"] = files.block(client_ca_file)
    return serve_proxy(data)


def _metrics(proxy: ProxyProcess) -> str:
    with urllib.request.urlopen(proxy.admin_url + "/metrics", timeout=TIMEOUT) as resp:
        return str(resp.read().decode())


async def test_python_ssl_client_gets_answers_and_the_upstream_sees_https(
    serve_proxy: ServeProxy, upstream: UpstreamFactory, tmp_path: Path
) -> None:
    files = listen_files(tmp_path)
    proxy = await _start(serve_proxy, upstream, files)
    context = client_context(files.ca_file)

    status, body = await asyncio.to_thread(https_get, proxy.port, context, "/hello")
    assert status == 200
    assert json.loads(body) == {"proto": "https", "path": "/hello"}

    def alpn() -> str | None:
        with presented_socket(proxy.port, context) as tls:
            return tls.selected_alpn_protocol()

    context.set_alpn_protocols(["h2", "http/1.1"])
    assert await asyncio.to_thread(alpn) == "http/1.1"
    # Plain HTTP to the TLS port gets no HTTP answer.
    plain = http.client.HTTPConnection(HOST, proxy.port, timeout=TIMEOUT)
    plain.request("GET", "/hello")
    with pytest.raises((http.client.HTTPException, OSError)):
        plain.getresponse()
    plain.close()
    assert "serving on https://127.0.0.1" in proxy.logs()


async def test_curl_over_https_with_the_ca_file(
    serve_proxy: ServeProxy, upstream: UpstreamFactory, tmp_path: Path
) -> None:
    files = listen_files(tmp_path)
    proxy = await _start(serve_proxy, upstream, files)
    url = f"https://{HOST}:{proxy.port}/from-curl"
    ok = await asyncio.to_thread(
        subprocess.run,
        ["curl", "-sS", "--max-time", "5", "--cacert", str(files.ca_file), url],
        capture_output=True,
        timeout=15,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"proto": "https", "path": "/from-curl"}
    untrusted = await asyncio.to_thread(
        subprocess.run, ["curl", "-sS", "--max-time", "5", url], capture_output=True, timeout=15
    )
    assert untrusted.returncode == 60  # peer certificate cannot be authenticated


async def test_wss_echoes_through_the_proxy(serve_proxy: ServeProxy, tmp_path: Path) -> None:
    files = listen_files(tmp_path)
    async with websocket_upstream("signal") as sig, websocket_upstream("legacy") as leg:
        data = config_dict(sig.url, leg.url)
        data["listen"]["tls"] = files.block()
        proxy = serve_proxy(data)
        url = f"wss://{HOST}:{proxy.port}/ws"
        async with connect(url, ssl=client_context(files.ca_file), open_timeout=TIMEOUT) as ws:
            for i in range(20):
                await ws.send(f"message {i}")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == tagged(
                    "legacy", f"message {i}"
                )
            big = b"\x00" * 100_000  # many TLS records each way
            await ws.send(big)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == tagged("legacy", big)
        assert (leg.handshakes, sig.handshakes) == (1, 0)


async def test_mutual_tls_serves_only_clients_of_the_configured_ca(
    serve_proxy: ServeProxy, upstream: UpstreamFactory, tmp_path: Path
) -> None:
    files = listen_files(tmp_path)
    clients_ca = trustme.CA()
    clients_ca_file = write_ca(clients_ca, tmp_path / "clients-ca.pem")
    right = write_cert(clients_ca.issue_cert("client.internal"), tmp_path, "right")
    wrong = write_cert(trustme.CA().issue_cert("client.internal"), tmp_path, "wrong")
    proxy = await _start(serve_proxy, upstream, files, clients_ca_file)

    status, body = await asyncio.to_thread(
        https_get, proxy.port, client_context(files.ca_file, right)
    )
    assert (status, json.loads(body)["proto"]) == (200, "https")
    for client in (None, wrong):
        # TLS 1.3: the refusal arrives after the client's handshake finished, at the read.
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            await asyncio.to_thread(https_get, proxy.port, client_context(files.ca_file, client))


class _Traffic:
    """Requests in a loop on one keep-alive connection and on new ones, until stopped."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self.context = context
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._keep_alive, daemon=True),
            threading.Thread(target=self._new_connections, daemon=True),
        ]

    async def __aenter__(self) -> _Traffic:
        for thread in self.threads:
            thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Joined off the event loop: the upstream the requests reach runs on it.
        self.stop.set()
        for thread in self.threads:
            await asyncio.to_thread(thread.join, 30)

    def _keep_alive(self) -> None:
        conn = http.client.HTTPSConnection(HOST, self.port, timeout=TIMEOUT, context=self.context)
        try:
            for _ in range(100_000):  # bounded; stopped long before
                if self.stop.is_set():
                    return
                self._one(conn)
        finally:
            conn.close()

    def _new_connections(self) -> None:
        for _ in range(100_000):
            if self.stop.is_set():
                return
            conn = http.client.HTTPSConnection(
                HOST, self.port, timeout=TIMEOUT, context=self.context
            )
            try:
                self._one(conn)
            finally:
                conn.close()

    def _one(self, conn: http.client.HTTPSConnection) -> None:
        try:
            conn.request("GET", "/during-rotation")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200 and json.loads(body)["proto"] == "https":
                self.ok += 1
            else:
                self.failures.append(f"{resp.status} {body[:200]!r}")
        except Exception as exc:  # every failure is recorded, none ends the loop
            self.failures.append(f"{threading.current_thread().name} after {self.ok}: {exc!r}")
            conn.close()


async def _wait_presented(port: int, context: ssl.SSLContext, der: bytes) -> float:
    started = time.monotonic()
    deadline = started + ROTATION_WAIT
    while time.monotonic() < deadline:
        if await asyncio.to_thread(presented, port, context) == der:
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"the new certificate was not presented within {ROTATION_WAIT} s")


@pytest.mark.parametrize("replace", [replace_by_rename, replace_in_place])
async def test_rotation_takes_the_new_certificate_with_no_failed_request(
    serve_proxy: ServeProxy,
    upstream: UpstreamFactory,
    tmp_path: Path,
    replace: Callable[..., None],
) -> None:
    files = listen_files(tmp_path)
    proxy = await _start(serve_proxy, upstream, files)
    context = client_context(files.ca_file)
    first = await asyncio.to_thread(presented, proxy.port, context)
    second = files.issue("second", days=30)

    async with _Traffic(proxy.port, context) as traffic:
        await asyncio.sleep(0.5)
        before = traffic.ok
        replace(second, files.cert, files.key)
        await _wait_presented(proxy.port, context, der_of(second))
        await asyncio.sleep(0.5)
    assert traffic.failures == []
    assert before > 0
    assert traffic.ok > before + 10
    assert der_of(second) != first
    logs = proxy.logs()
    assert "listen certificate" in logs
    assert "taken for new connections: subject" in logs
    assert "commonName=second" in logs
    seconds = metric_value(
        _metrics(proxy), "rollout_tls_certificate_expiry_seconds", certificate="listen"
    )
    assert seconds is not None
    assert 29 * 86400 < seconds <= 30 * 86400


async def test_a_bad_pair_is_rejected_and_the_old_certificate_still_served(
    serve_proxy: ServeProxy, upstream: UpstreamFactory, tmp_path: Path
) -> None:
    files = listen_files(tmp_path)
    proxy = await _start(serve_proxy, upstream, files)
    context = client_context(files.ca_file)
    first = await asyncio.to_thread(presented, proxy.port, context)
    seconds = metric_value(
        _metrics(proxy), "rollout_tls_certificate_expiry_seconds", certificate="listen"
    )
    assert seconds is not None
    assert 364 * 86400 < seconds <= 365 * 86400

    other = files.issue("mismatched")
    files.key.write_bytes(other.private_key_pem.bytes())  # the old certificate, a new key
    expected = (
        f"listen.tls.cert_file: new certificate rejected, still serving the previous one: "
        f"'{files.cert}' and key_file '{files.key}' do not load as a certificate and its key"
    )
    deadline = time.monotonic() + ROTATION_WAIT
    while expected not in proxy.logs() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert expected in proxy.logs()
    assert "ERROR" in next(line for line in proxy.logs().splitlines() if expected in line)
    assert await asyncio.to_thread(presented, proxy.port, context) == first
    status, _ = await asyncio.to_thread(https_get, proxy.port, context)
    assert status == 200
