"""Malformed client requests: a 400, one short log line, no traceback, process stays up."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from proxy.demo.apis import legacy_app, signal_app
from proxy.telemetry.logs import ClientErrorFilter, RateLimitedWarning
from tests.support import ProxyProcess, UpstreamFactory, config_dict, raw_request, server_url


def _record(exc: BaseException | None) -> logging.LogRecord:
    return logging.LogRecord(
        "aiohttp.server",
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s",
        ("127.0.0.1",),
        (type(exc), exc, None) if exc else None,
    )


def test_client_error_becomes_one_warning_line_and_repeats_are_folded() -> None:
    log_filter = ClientErrorFilter(interval=60)
    first = _record(BadHttpMessage("Too many headers received"))
    assert log_filter.filter(first) is True
    assert first.exc_info is None
    assert first.levelname == "WARNING"
    assert first.getMessage() == (
        "rejected a malformed request from 127.0.0.1: 400 Too many headers received"
    )
    assert log_filter.filter(_record(BadHttpMessage("x"))) is False  # folded


def test_other_errors_keep_their_traceback() -> None:
    record = _record(RuntimeError("a real bug"))
    assert ClientErrorFilter().filter(record) is True
    assert record.exc_info is not None
    assert record.levelname == "ERROR"


async def test_too_many_headers_is_431_with_a_one_line_log(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> None:
    signal = await upstream(signal_app())
    legacy = await upstream(legacy_app())
    proxy = serve_proxy(config_dict(server_url(signal), server_url(legacy)))
    headers = b"".join(b"X-H-%d: v\r\n" % i for i in range(1000))
    for _ in range(5):
        resp = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        assert resp.status == 431
    ok = await raw_request(proxy.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok.status == 200
    logs = proxy.logs()
    assert "Traceback" not in logs
    assert "aiohttp.access" not in logs  # no line per request (cost, and paths in logs)
    assert "GET /health" not in logs
    assert logs.count("rejected a malformed request from 127.0.0.1: 431 too many headers") == 1


def test_rate_limited_warning_folds_repeats_into_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    warning = RateLimitedWarning(logging.getLogger("test.rate"), 60, lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.rate"):
        for n in range(5):
            warning.warn("bad request %d", n)
            now[0] += 10
        warning.warn("bad request %d", 5)  # 50 s after the first: folded
        now[0] += 11
        warning.warn("bad request %d", 6)
    assert [r.getMessage() for r in caplog.records] == [
        "bad request 0",
        "bad request 6 (5 more since)",
    ]
