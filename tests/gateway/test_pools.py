"""Runtime.pool: one pool per upstream URL and TLS values, kept across equal reloads."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

from proxy.config.load import parse_config
from proxy.gateway.state import ConfigStore, Runtime
from tests.support.tls import write_ca


def _text(ca_file: str, server_name: str = "signal.internal") -> str:
    return (
        "upstreams:\n"
        f"  signal: {{url: 'https://10.0.0.1:8443', tls: {{ca_file: '{ca_file}', "
        f"server_name: {server_name}}}}}\n"
        "  legacy: {url: 'http://127.0.0.1:8001'}\n"
    )


def test_unchanged_tls_keeps_the_pool_and_context_a_change_gets_new_ones(tmp_path: Path) -> None:
    ca_file = str(write_ca(trustme.CA(), tmp_path / "ca.pem"))
    first = parse_config(_text(ca_file))
    runtime = Runtime.create(ConfigStore(path=tmp_path / "c.yaml", config=first), "test")
    pool = runtime.pool(first.upstreams.signal)
    assert pool.ssl is first.upstreams.signal.ssl_context
    assert pool.server_name == "signal.internal"

    again = parse_config(_text(ca_file))  # a reload of the same values: a new context built
    runtime.config_applied(again)
    assert runtime.pool(again.upstreams.signal) is pool  # ...but the pool keeps its own
    assert pool.ssl is first.upstreams.signal.ssl_context

    renamed = parse_config(_text(ca_file, server_name="api.internal"))
    runtime.config_applied(renamed)
    new = runtime.pool(renamed.upstreams.signal)
    assert new is not pool
    assert new.server_name == "api.internal"
    assert isinstance(new.ssl, ssl.SSLContext)
    assert len(runtime.pools) == 1  # the old one was closed
    assert runtime.pool(renamed.upstreams.legacy).ssl is None
    runtime.close_pools()
