"""Reading subject, issuer and expiry from PEM files; the expiry warning rule."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trustme

from proxy.config.certificates import (
    DAY,
    CertificateError,
    days_left,
    decode_der,
    expiry_status,
    read_certificates,
    tls_files,
)
from proxy.config.load import load_config
from tests.support import config_dict, write_config
from tests.support.tls import write_ca, write_cert

NOT_AFTER = datetime(2031, 5, 17, 8, 30, tzinfo=UTC)


def test_a_chain_is_read_for_its_first_certificate(tmp_path: Path) -> None:
    ca = trustme.CA(organization_name="Example Internal CA")
    leaf = ca.issue_cert("signal.internal", common_name="signal.internal", not_after=NOT_AFTER)
    files = write_cert(leaf, tmp_path, "signal")
    [cert] = read_certificates(str(files.cert), bundle=False)
    assert "CN=signal.internal" in cert.subject
    assert "O=Example Internal CA" in cert.issuer
    assert cert.names == ("DNS:signal.internal",)
    assert cert.not_after == NOT_AFTER.timestamp()
    assert cert.expires() == "2031-05-17 08:30 UTC"


def test_a_ca_bundle_is_read_for_every_certificate(tmp_path: Path) -> None:
    first = trustme.CA(organization_name="First CA")
    second = trustme.CA(organization_name="Second CA")
    path = write_ca(first, tmp_path / "bundle.pem")
    second.cert_pem.write_to_path(str(path), append=True)
    certs = read_certificates(str(path), bundle=True)
    assert [c.subject.split(",")[0] for c in certs] == ["O=First CA", "O=Second CA"]
    assert [c.issuer == c.subject for c in certs] == [True, True]  # self-signed roots
    assert len(read_certificates(str(path), bundle=False)) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot be read: No such file"), ("not a certificate\n", "holds no PEM certificate")],
)
def test_unusable_files_are_named(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "cert.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CertificateError, match=message) as info:
        read_certificates(str(path), bundle=False)
    assert str(path) in str(info.value)


def test_a_peer_certificate_in_der_form_decodes(tmp_path: Path) -> None:
    leaf = trustme.CA().issue_cert("legacy.internal", not_after=NOT_AFTER)
    files = write_cert(leaf, tmp_path, "legacy")
    der = ssl.PEM_cert_to_DER_cert(files.cert.read_text())
    cert = decode_der(der)
    assert cert.names == ("DNS:legacy.internal",)
    assert cert.not_after == NOT_AFTER.timestamp()


@pytest.mark.parametrize(
    ("left", "status", "days"),
    [
        (400 * DAY, "ok", 400),
        (14 * DAY, "ok", 14),
        (14 * DAY - 1, "expiring", 13),
        (3 * DAY + 5, "expiring", 3),
        (1, "expiring", 0),
        (0, "expired", 0),
        (-1, "expired", -1),
        (-2 * DAY, "expired", -2),
    ],
)
def test_expiry_status_and_days_left(left: float, status: str, days: int) -> None:
    assert expiry_status(left) == status
    assert days_left(left) == days


def test_warning_window_is_a_parameter() -> None:
    assert expiry_status(timedelta(days=20).total_seconds(), warn_days=30) == "expiring"
    assert expiry_status(timedelta(days=20).total_seconds(), warn_days=7) == "ok"


def test_tls_files_lists_listen_and_upstream_files(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = write_ca(ca, tmp_path / "ca.pem")
    client = write_cert(ca.issue_cert("rollout-proxy"), tmp_path, "client")
    tls = {"ca_file": str(ca_file), "cert_file": str(client.cert), "key_file": str(client.key)}
    data = config_dict(
        "http://unused",
        "http://unused",
        upstreams={
            "signal": {"url": "https://127.0.0.1:8443", "tls": tls},
            "legacy": {"url": "https://127.0.0.1:8444"},  # the system trust store: no file
        },
    )
    config = load_config(write_config(tmp_path / "rollout.yaml", data))
    assert tls_files(config) == [
        ("upstreams.signal.tls.ca_file", str(ca_file), True),
        ("upstreams.signal.tls.cert_file", str(client.cert), False),
    ]
    # `listen.tls` is read by name (SPEC 2): a config carrying it lists its files first.
    listen = SimpleNamespace(
        host="0.0.0.0",
        port=8443,
        tls=SimpleNamespace(cert_file="/etc/proxy.crt", client_ca_file="/etc/clients.pem"),
    )
    with_listen: Any = SimpleNamespace(listen=listen, upstreams=config.upstreams)
    assert tls_files(with_listen)[:2] == [
        ("listen.tls.cert_file", "/etc/proxy.crt", False),
        ("listen.tls.client_ca_file", "/etc/clients.pem", True),
    ]
