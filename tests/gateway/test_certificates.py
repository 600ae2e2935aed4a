"""`ListenCertificates`: changed files taken, bad ones refused with the old context kept,
the `listen` expiry gauge following what is served."""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path

import pytest
import trustme
from prometheus_client import generate_latest

from proxy.app import build_runtime
from proxy.config.load import load_config
from proxy.config.tls import server_context
from proxy.config.values import ListenTLS
from proxy.gateway.certificates import ListenCertificates
from proxy.gateway.reload import reload_now
from proxy.telemetry.metrics import Metrics
from tests.support import metric_value
from tests.support.listen_tls import replace_by_rename, replace_in_place
from tests.support.tls import write_cert

DAY = 86400.0


def _leaf(ca: trustme.CA, name: str, days: float) -> trustme.LeafCert:
    now = datetime.datetime.now(datetime.UTC)
    return ca.issue_cert(
        "127.0.0.1",
        common_name=name,
        not_before=now - datetime.timedelta(days=40),
        not_after=now + datetime.timedelta(days=days),
    )


def _expiry(metrics: Metrics) -> float | None:
    text = generate_latest(metrics.registry).decode()
    return metric_value(text, "rollout_tls_certificate_expiry_seconds", certificate="listen")


@pytest.fixture
def setup(tmp_path: Path) -> tuple[trustme.CA, ListenTLS, list[ssl.SSLContext], Metrics]:
    ca = trustme.CA()
    files = write_cert(_leaf(ca, "first", 100), tmp_path, "listen")
    tls = ListenTLS(str(files.cert), str(files.key))
    return ca, tls, [], Metrics("test")


def test_a_changed_pair_is_installed_and_the_gauge_follows(
    setup: tuple[trustme.CA, ListenTLS, list[ssl.SSLContext], Metrics],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ca, tls, installed, metrics = setup
    certs = ListenCertificates(tls, server_context(tls), installed.append, metrics)
    first = _expiry(metrics)
    assert first is not None
    assert 99 * DAY < first <= 100 * DAY
    assert certs.check() is False  # nothing changed: nothing installed
    assert installed == []

    for days, replace in ((50, replace_by_rename), (20, replace_in_place)):
        with caplog.at_level(logging.INFO, "rollout.tls"):
            replace(_leaf(ca, f"in {days} days", days), Path(tls.cert_file), Path(tls.key_file))
            assert certs.check() is True
        assert installed[-1] is certs.context
        seconds = _expiry(metrics)
        assert seconds is not None
        assert (days - 1) * DAY < seconds <= days * DAY
        assert f"commonName=in {days} days" in caplog.text
    assert len(installed) == 2


@pytest.mark.parametrize("bad", ["mismatch", "expired", "unreadable"])
def test_a_bad_pair_is_refused_and_the_old_context_kept(
    setup: tuple[trustme.CA, ListenTLS, list[ssl.SSLContext], Metrics],
    caplog: pytest.LogCaptureFixture,
    bad: str,
) -> None:
    ca, tls, installed, metrics = setup
    old = server_context(tls)
    certs = ListenCertificates(tls, old, installed.append, metrics)
    cert, key = Path(tls.cert_file), Path(tls.key_file)
    if bad == "mismatch":
        key.write_bytes(_leaf(ca, "other", 10).private_key_pem.bytes())
        reason = "do not load as a certificate and its key: key values mismatch"
    elif bad == "expired":
        replace_by_rename(_leaf(ca, "expired", -1), cert, key)
        reason = "expired at"
    else:
        cert.unlink()
        reason = "cannot be read: No such file or directory"
    with caplog.at_level(logging.INFO, "rollout.tls"):
        assert certs.check() is False
    assert installed == []
    assert certs.context is old
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "new certificate rejected, still serving the previous one" in message
    assert str(cert) in message
    assert reason in message
    seconds = _expiry(metrics)
    assert seconds is not None
    assert 99 * DAY < seconds <= 100 * DAY  # still the served certificate's
    # Fixed, the next change is taken.
    replace_by_rename(_leaf(ca, "fixed", 30), cert, key)
    assert certs.check() is True
    assert installed == [certs.context]


async def test_every_valid_reload_checks_the_files_again(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    upstreams = (
        "upstreams: {signal: {url: 'http://127.0.0.1:8000'}, "
        "legacy: {url: 'http://127.0.0.1:8001'}}\n"
    )
    path.write_text(upstreams)
    runtime = build_runtime(path, load_config(path))
    calls: list[int] = []
    runtime.after_reload.append(lambda: calls.append(1))
    assert reload_now(runtime, trigger="test").applied is False  # unchanged: still checked
    assert calls == [1]
    path.write_text("timeouts: {connect: 2.5}\n" + upstreams)
    assert reload_now(runtime, trigger="test").applied is True
    assert calls == [1, 1]
    path.write_text("timeouts: {connect: -1}\n" + upstreams)
    assert reload_now(runtime, trigger="test").ok is False  # refused: not checked
    assert calls == [1, 1]
    runtime.close_pools()
