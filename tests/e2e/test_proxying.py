"""SPEC 4, 8 and 9 end to end: real fake upstreams on loopback, the real `rollout serve`.

Requests that must not be normalised by any client are sent as exact bytes with
`raw_request`; the fake upstreams record what arrived (raw target, raw headers, raw body).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.rollout.routing import bucket
from tests.support import (
    HOST,
    ProxyProcess,
    RawResponse,
    UpstreamFactory,
    config_dict,
    raw_request,
    server_url,
    write_config,
)
from tests.support.recording import (
    Recorder,
    ServeProxy,
    get,
    recording_app,
    start,
)

pytestmark = pytest.mark.e2e

HOP_BY_HOP = {
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


RAW_TARGETS = [
    "/a/../b",
    "/x/%2e%2e/y",
    "/x/%2E%2E/y",
    "/files/a%2Fb%2fc",
    "/./x//y/./z/",
    "/search?q=%E4%BC%9A&x=%20",
    "/p%20q?a=1&a=2&b=%2F&c=+&d=a%26b",
    "/q?redirect=http%3A%2F%2Fevil.example%2F&empty=&flag",
    "/%E4%BC%9A/%7Euser",
    "/semi;param=1/x?y=%3b",
]


async def test_raw_paths_and_queries_reach_upstream_byte_for_byte(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    for target in RAW_TARGETS:
        resp = await raw_request(s.proxy.port, get(target))
        assert resp.status == 200, (target, resp.body)
        assert resp.header("X-Rollout-Upstream") == "legacy"
    received = [seen.raw_path for seen in s.legacy.seen]
    assert received == RAW_TARGETS


async def test_raw_utf8_target_is_forwarded_unchanged_or_rejected(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    # Raw non-ASCII bytes are not valid in a request-target (RFC 9112 3.2); refusing them
    # with 400 is fine, forwarding them altered is not.
    s = await start(upstream, serve_proxy)
    for target in ("/search?q=会&name=%E4%BC%9A", "/会/x"):
        forwarded = len(s.legacy.seen)
        resp = await raw_request(s.proxy.port, get(target))
        if resp.status == 400:
            assert resp.header("X-Rollout-Upstream") is None
            assert len(s.legacy.seen) == forwarded
        else:
            assert resp.status == 200, resp.body
            assert s.legacy.seen[-1].raw_path == target


# --- 2. compressed bodies pass through untouched ----------------------------------------

PLAIN = b"".join(b"line %06d of a compressible payload\n" % n for n in range(5000))
GZIPPED = gzip.compress(PLAIN, mtime=0)


async def _gzip_answer(request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=GZIPPED,
        headers={"Content-Encoding": "gzip", "Content-Type": "text/plain", "Vary": "Accept"},
    )


async def test_gzip_response_passes_through_undecoded(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy, respond=_gzip_answer)
    resp = await raw_request(s.proxy.port, get("/data", "Accept-Encoding: gzip"))
    assert resp.status == 200
    assert resp.header("Content-Encoding") == "gzip"
    assert resp.body == GZIPPED

    # And with an HTTP client that does not decompress either.
    async with (
        aiohttp.ClientSession(auto_decompress=False) as client,
        client.get(s.proxy.url + "/data", headers={"Accept-Encoding": "gzip"}) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Encoding"] == "gzip"
        assert await r.read() == GZIPPED
    assert all(seen.header("Accept-Encoding") == "gzip" for seen in s.legacy.seen)


async def test_gzip_request_body_reaches_upstream_unchanged(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    request = get(
        "/upload",
        "Content-Encoding: gzip",
        "Content-Type: text/plain",
        method="POST",
        body=GZIPPED,
    )
    resp = await raw_request(s.proxy.port, request)
    assert resp.status == 200, resp.body
    [seen] = s.legacy.seen
    assert seen.header("Content-Encoding") == "gzip"
    assert seen.body == GZIPPED, (
        f"upstream got {len(seen.body)} bytes, starting {seen.body[:16]!r}; "
        f"sent {len(GZIPPED)} gzip bytes"
    )


async def test_gzip_request_body_streamed_chunked_reaches_upstream_unchanged(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    # Larger than fallback.max_body_bytes, so it takes the streaming path.
    big_plain = os.urandom(1024) * 3000
    big = gzip.compress(big_plain, compresslevel=1, mtime=0)
    s = await start(upstream, serve_proxy, fallback={"max_body_bytes": 1024})

    async def body() -> Any:
        for i in range(0, len(big), 50_000):
            yield big[i : i + 50_000]

    async with (
        aiohttp.ClientSession(auto_decompress=False) as client,
        client.post(
            s.proxy.url + "/upload",
            data=body(),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"},
        ) as r,
    ):
        assert r.status == 200, await r.text()
    [seen] = s.legacy.seen
    assert seen.header("Content-Encoding") == "gzip"
    assert len(seen.body) == len(big)
    assert seen.body == big


# --- 3. hop-by-hop headers dropped both ways ---------------------------------------------


async def _hop_answer(request: web.Request) -> web.StreamResponse:
    resp = web.Response(text="ok")
    resp.headers["Connection"] = "X-Resp-Hop"
    resp.headers["X-Resp-Hop"] = "1"
    resp.headers["Keep-Alive"] = "timeout=5, max=100"
    resp.headers["Proxy-Authenticate"] = 'Basic realm="upstream"'
    resp.headers["Proxy-Connection"] = "keep-alive"
    resp.headers["Trailer"] = "X-Checksum"
    resp.headers["X-Normal-Response"] = "kept"
    return resp


async def test_hop_by_hop_headers_dropped_both_ways(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy, respond=_hop_answer)
    resp = await raw_request(
        s.proxy.port,
        get(
            "/hop",
            "Connection: keep-alive, X-Secret-Hop",
            "X-Secret-Hop: 1",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Trailer: X-Checksum",
            "Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==",
            "Proxy-Connection: keep-alive",
            "Upgrade: h2c",
            "X-Normal: yes",
            "Authorization: Bearer end-to-end",
            "Accept: application/json",
        ),
    )
    assert resp.status == 200, resp.body
    [seen] = s.legacy.seen
    leaked = seen.header_names() & (HOP_BY_HOP | {"x-secret-hop"})
    assert not leaked, f"hop-by-hop headers forwarded upstream: {sorted(leaked)}"
    assert seen.header("X-Normal") == "yes"
    assert seen.header("Authorization") == "Bearer end-to-end"
    assert seen.header("Accept") == "application/json"

    names = resp.header_names()
    assert "x-resp-hop" not in names
    assert "keep-alive" not in names
    assert "proxy-authenticate" not in names
    assert "proxy-connection" not in names
    assert "trailer" not in names
    # The proxy may add its own Connection header, but never the upstream's value.
    assert "x-resp-hop" not in (resp.header("Connection") or "").lower()
    assert resp.header("X-Normal-Response") == "kept"
    assert resp.body == b"ok"


# --- 4. forwarding headers ------------------------------------------------------------


async def test_forwarded_headers_and_upstream_host(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    resp = await raw_request(
        s.proxy.port,
        b"GET /fwd HTTP/1.1\r\n"
        b"Host: public.example:8443\r\n"
        b"X-Forwarded-For: 203.0.113.7, 198.51.100.2\r\n"
        b"X-Session-Id: to-signal\r\n\r\n",
    )
    assert resp.status == 200
    assert resp.header("X-Rollout-Upstream") == "signal"
    [seen] = s.signal.seen
    assert seen.header_all("X-Forwarded-For") == ["203.0.113.7, 198.51.100.2, 127.0.0.1"]
    assert seen.header_all("X-Forwarded-Proto") == ["http"]
    assert seen.header_all("X-Forwarded-Host") == ["public.example:8443"]
    signal_url = s.proxy.data["upstreams"]["signal"]["url"]
    assert seen.header_all("Host") == [signal_url.removeprefix("http://")]
    assert seen.header("X-Session-Id") == "to-signal"


async def test_no_headers_invented_and_forwarded_for_set_when_absent(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    resp = await raw_request(
        s.proxy.port,
        b"GET /bare HTTP/1.1\r\nHost: bare.example\r\nX-Session-Id: to-signal\r\n\r\n",
    )
    assert resp.status == 200
    [seen] = s.signal.seen
    invented = seen.header_names() & {"user-agent", "accept-encoding", "accept", "content-type"}
    assert not invented, f"proxy invented {sorted(invented)}: {seen.headers}"
    assert seen.header_all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.header("X-Forwarded-Host") == "bare.example"
    assert "cookie" not in seen.header_names()
    assert seen.body == b""


# --- 5. absolute-form request lines never pick the host ------------------------------------


async def test_absolute_form_request_goes_to_configured_upstream(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    decoy = Recorder("decoy")
    decoy_srv = await upstream(recording_app(decoy))
    s = await start(upstream, serve_proxy)
    for host in ("other.host", f"{HOST}:{decoy_srv.port}"):
        resp = await raw_request(
            s.proxy.port,
            f"GET http://{host}/secret?k=v HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
        )
        assert resp.status == 200, resp.body
        assert resp.header("X-Rollout-Upstream") == "legacy"
        assert json.loads(resp.body)["served_by"] == "legacy"
    assert [seen.raw_path for seen in s.legacy.seen] == ["/secret?k=v", "/secret?k=v"]
    assert decoy.seen == []
    assert s.signal.seen == []


# --- 6. metrics ----------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(
    snapshot: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return snapshot.get((name, frozenset(labels.items())), 0.0)


async def admin_get(
    proxy: ProxyProcess, path: str, token: str | None = None
) -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.admin_url + path, headers=headers) as r,
    ):
        return r.status, await r.text(), dict(r.headers)


async def test_public_metrics_path_is_proxied(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy)
    resp = await raw_request(s.proxy.port, get("/metrics"))
    assert resp.status == 200
    assert resp.header("X-Rollout-Upstream") == "legacy"
    assert json.loads(resp.body) == {"served_by": "legacy", "path": "/metrics"}
    assert b"rollout_requests_total" not in resp.body
    assert [seen.raw_path for seen in s.legacy.seen] == ["/metrics"]


async def _status_by_path(request: web.Request) -> web.StreamResponse:
    if request.method == "POST":
        return web.Response(status=201, text="created")
    if request.path.startswith("/missing"):
        return web.Response(status=404, text="nope")
    return web.Response(text="ok")


async def test_admin_metrics_exposition_and_counters(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(
        upstream,
        serve_proxy,
        respond=_status_by_path,
        rollout={
            "percentage": 0,
            "test_sessions": ["to-signal"],
            "features": {"anomalyDetection": {"paths": ["/signals/anomaly"]}},
        },
    )
    status, text, headers = await admin_get(s.proxy, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert "rollout_requests_total" in text
    assert "rollout_build_info{" in text
    before = samples(text)
    build = [k for k in before if k[0] == "rollout_build_info"]
    assert len(build) == 1
    assert before[build[0]] == 1.0
    assert "version" in dict(build[0][1])

    for _ in range(3):
        assert (await raw_request(s.proxy.port, get("/ok"))).status == 200
    for _ in range(2):
        r = await raw_request(
            s.proxy.port, get("/signals/anomaly/x", "X-Session-Id: to-signal", method="POST")
        )
        assert r.status == 201
    assert (await raw_request(s.proxy.port, get("/missing", method="DELETE"))).status == 404
    r = await raw_request(s.proxy.port, get("/ok", method="PROPFIND"))
    assert r.status == 200

    status, text, _ = await admin_get(s.proxy, "/metrics")
    assert status == 200
    after = samples(text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    total = "rollout_requests_total"
    assert delta(total, upstream="legacy", feature="default", method="GET", code="200") == 3
    assert (
        delta(total, upstream="signal", feature="anomalyDetection", method="POST", code="201") == 2
    )
    assert delta(total, upstream="legacy", feature="default", method="DELETE", code="404") == 1
    assert delta(total, upstream="legacy", feature="default", method="other", code="200") == 1
    assert not any(k[0] == total and ("method", "PROPFIND") in k[1] for k in after)

    hist = "rollout_request_duration_seconds"
    assert delta(f"{hist}_count", upstream="legacy", feature="default") == 5
    assert delta(f"{hist}_count", upstream="signal", feature="anomalyDetection") == 2
    legacy = {"upstream": "legacy", "feature": "default"}
    for le in ("0.2", "0.5"):
        key = (f"{hist}_bucket", frozenset({**legacy, "le": le}.items()))
        assert key in after, f"no le={le} bucket"
    assert delta(f"{hist}_bucket", **legacy, le="+Inf") == 5
    assert (
        0
        <= delta(f"{hist}_bucket", **legacy, le="0.2")
        <= delta(f"{hist}_bucket", **legacy, le="0.5")
        <= 5
    )
    assert 'le="0.2"' in text
    assert 'le="0.5"' in text

    routing = "rollout_routing_decisions_total"
    assert delta(routing, upstream="signal", reason="test_session") == 2
    # No session id sent: one is minted and the bucket rule at 0 % picks legacy.
    assert delta(routing, upstream="legacy", reason="bucket") == 5
    assert all("session" not in name for key in after for name, _ in key[1])


# --- 7. redirects ---------------------------------------------------------------------


async def test_redirect_returned_not_followed(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    target = Recorder("target")
    target_srv = await upstream(recording_app(target))
    location = f"{server_url(target_srv)}/landing"

    async def redirect(request: web.Request) -> web.StreamResponse:
        if request.path == "/relative":
            return web.Response(status=302, headers={"Location": "/landing"})
        return web.Response(status=302, headers={"Location": location})

    s = await start(upstream, serve_proxy, respond=redirect)
    resp = await raw_request(s.proxy.port, get("/absolute"))
    assert resp.status == 302
    assert resp.header("Location") == location
    assert resp.header("X-Rollout-Upstream") == "legacy"
    resp = await raw_request(s.proxy.port, get("/relative"))
    assert resp.status == 302
    assert resp.header("Location") == "/landing"
    assert [seen.raw_path for seen in s.legacy.seen] == ["/absolute", "/relative"]
    assert target.seen == []


# --- 8. X-Rollout-Upstream and the minted session cookie ---------------------------------


def _parse_set_cookie(resp: RawResponse) -> tuple[str, str, str]:
    raw = resp.header("Set-Cookie")
    assert raw is not None, resp.headers
    jar: SimpleCookie = SimpleCookie()
    jar.load(raw)
    [(name, morsel)] = jar.items()
    attrs = {part.strip().split("=")[0].lower() for part in raw.split(";")[1:]}
    assert "httponly" in attrs, raw
    assert morsel["samesite"].lower() == "lax", raw
    assert morsel["path"] == "/", raw
    return name, morsel.value, raw


async def test_upstream_header_and_minted_session_cookie(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(
        upstream, serve_proxy, rollout={"percentage": 50, "test_sessions": ["to-signal"]}
    )
    resp = await raw_request(s.proxy.port, get("/t", "X-Session-Id: to-signal"))
    assert resp.header("X-Rollout-Upstream") == "signal"
    assert resp.header("Set-Cookie") is None
    assert s.signal.seen[-1].header("X-Session-Id") == "to-signal"

    recorders = {"signal": s.signal, "legacy": s.legacy}
    for _ in range(12):
        resp = await raw_request(s.proxy.port, get("/mint"))
        assert resp.status == 200
        name, session_id, _ = _parse_set_cookie(resp)
        assert name == "session_id"
        side = resp.header("X-Rollout-Upstream")
        expected = "signal" if bucket(session_id, "rollout") < 5000 else "legacy"
        assert side == expected, (session_id, bucket(session_id, "rollout"))
        assert recorders[side].seen[-1].header_all("X-Session-Id") == [session_id]

        for _ in range(3):
            again = await raw_request(
                s.proxy.port, get("/again", f"Cookie: theme=dark; session_id={session_id}")
            )
            assert again.status == 200
            assert again.header("X-Rollout-Upstream") == side
            assert again.header("Set-Cookie") is None
            assert recorders[side].seen[-1].raw_path == "/again"


# --- 9. admin listener ------------------------------------------------------------------


async def test_admin_health_ready_status(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy, rollout={"percentage": 12.5})
    assert (await raw_request(s.proxy.port, get("/x"))).status == 200
    assert (await admin_get(s.proxy, "/-/healthz"))[0] == 200
    assert (await admin_get(s.proxy, "/-/ready"))[0] == 200
    status, text, headers = await admin_get(s.proxy, "/-/status")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(text)
    assert isinstance(doc["version"], str)
    assert doc["version"]
    assert isinstance(doc["config"]["generation"], int)
    assert doc["config"]["path"] == str(s.proxy.config_path)
    assert doc["percentages"] == {"default": 12.5}
    assert doc["emergency"] is False
    assert doc["guard"]["tripped"] is False
    assert set(doc["upstreams"]) == {"signal", "legacy"}
    for figures in doc["upstreams"].values():
        for key in ("requests", "error_rate", "p50_ms", "p95_ms", "p99_ms"):
            assert key in figures, (key, figures)
    assert doc["upstreams"]["legacy"]["requests"] + doc["upstreams"]["signal"]["requests"] == 1


ADMIN_ENDPOINTS = [
    ("GET", "/metrics"),
    ("GET", "/-/healthz"),
    ("GET", "/-/ready"),
    ("GET", "/-/status"),
    ("POST", "/-/reload"),
    ("POST", "/-/guard/reset"),
]


async def test_admin_token_required_on_every_endpoint(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    s = await start(upstream, serve_proxy, admin={"token": "s3cret"})
    async with aiohttp.ClientSession() as client:
        for method, path in ADMIN_ENDPOINTS:
            url = s.proxy.admin_url + path
            for auth in (None, "Bearer wrong", "s3cret", "Basic s3cret", "Bearer s3cret2"):
                headers = {"Authorization": auth} if auth else {}
                async with client.request(method, url, headers=headers) as r:
                    assert r.status == 401, (method, path, auth, r.status)
                    body = await r.text()
                    assert "s3cret" not in body
            good = {"Authorization": "Bearer s3cret"}
            async with client.request(method, url, headers=good) as r:
                assert r.status == 200, (method, path, r.status, await r.text())
    # The public port is not the admin listener and needs no token.
    assert (await raw_request(s.proxy.port, get("/-/status"))).header(
        "X-Rollout-Upstream"
    ) == "legacy"


# --- 10. graceful shutdown ---------------------------------------------------------------

SLOW_BODY = b"".join(b"slow-%08d\n" % n for n in range(20_000))


GRACE = 4.0  # long enough for the checks made inside it, on a loaded machine too


async def test_sigterm_drains_in_flight_request_and_exits_zero(
    upstream: UpstreamFactory, serve_proxy: ServeProxy
) -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            arrived.set()
            # Held until the grace is over (by events, not by a sleep that a loaded machine
            # could outrun): the drain must outlast the grace.
            await asyncio.wait_for(release.wait(), 60)
            return web.Response(body=SLOW_BODY, content_type="application/octet-stream")
        return web.Response(text="quick")

    # `timeouts.total` far above the hold, so the slow answer is never the proxy's 504.
    s = await start(
        upstream, serve_proxy, "--grace", str(GRACE), respond=slow, timeouts={"total": 60.0}
    )
    proxy = s.proxy
    assert proxy.proc is not None

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as client:

        async def in_flight() -> tuple[int, bytes]:
            async with client.get(proxy.url + "/slow") as r:
                return r.status, await r.read()

        task = asyncio.create_task(in_flight())
        await asyncio.wait_for(arrived.wait(), 20)
        proxy.signal(signal.SIGTERM)

        ready_status = 0
        async with asyncio.timeout(GRACE):
            while ready_status != 503:
                ready_status = (await admin_get(proxy, "/-/ready"))[0]
                if ready_status != 503:
                    await asyncio.sleep(0.05)
        assert ready_status == 503
        # Still inside the grace period: load balancers may still send a request.
        quick = await raw_request(proxy.port, get("/quick", "Connection: close"))
        assert quick.status == 200
        assert quick.body == b"quick"

        # After the grace new connections are refused; the request in flight goes on.
        async with asyncio.timeout(30):
            while await _accepts(proxy.port):
                await asyncio.sleep(0.05)
        assert not task.done()
        release.set()
        status, body = await asyncio.wait_for(task, 30)
    assert status == 200
    assert body == SLOW_BODY
    code = await asyncio.to_thread(proxy.proc.wait, 30)
    assert code == 0, proxy.logs()
    assert "Traceback" not in proxy.logs()


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return False
    writer.close()
    return True


# --- 11. invalid configuration at start-up --------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key_path", "bad"),
    [
        ({"rollout": {"percentage": 150}}, "rollout.percentage", "150"),
        ({"upstreams": {"signal": {"url": "ftp://x"}}}, "upstreams.signal.url", "ftp://x"),
        ({"listen": {"host": "127.0.0.1", "prot": 1}}, "listen.prot", ""),
    ],
    ids=["percentage", "upstream-url", "unknown-key"],
)
async def test_invalid_config_exits_2_naming_the_key(
    tmp_path: Path, section: dict[str, Any], key_path: str, bad: str
) -> None:
    data = config_dict("http://127.0.0.1:1", "http://127.0.0.1:2")
    for key, val in section.items():
        data[key] = {**data[key], **val}
    path = write_config(tmp_path / "bad.yaml", data)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proxy", "serve", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert key_path in result.stderr
    assert bad in result.stderr
    assert "Traceback" not in result.stderr
