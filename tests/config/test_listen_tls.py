"""`listen.tls`: validation (bad values -> exact messages) and the server SSL context."""

from __future__ import annotations

import datetime
import ssl
import threading
from pathlib import Path

import pytest
import trustme

from proxy.config.load import parse_config
from proxy.config.tls import TLSFileError, certificate_summary, server_context
from proxy.config.values import ListenTLS
from proxy.errors import ConfigError
from tests.support.tls import write_ca, write_cert

UPSTREAMS = (
    "upstreams: {signal: {url: 'http://127.0.0.1:8000'}, legacy: {url: 'http://127.0.0.1:8001'}}\n"
)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    server = write_cert(ca.issue_cert("127.0.0.1", common_name="proxy"), tmp_path, "server")
    other = write_cert(trustme.CA().issue_cert("other"), tmp_path, "other")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    expired_leaf = ca.issue_cert(
        "127.0.0.1", not_before=past - datetime.timedelta(days=30), not_after=past
    )
    expired = write_cert(expired_leaf, tmp_path, "expired")
    (tmp_path / "not-pem.txt").write_text("hello\n")
    return {
        "ca": str(write_ca(ca, tmp_path / "ca.pem")),
        "cert": str(server.cert),
        "key": str(server.key),
        "other_key": str(other.key),
        "expired_cert": str(expired.cert),
        "expired_key": str(expired.key),
        "missing": str(tmp_path / "missing.pem"),
        "not_pem": str(tmp_path / "not-pem.txt"),
    }


def _problems(tls: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(f"listen: {{port: 8443, tls: {tls}}}\n" + UPSTREAMS)
    return info.value.problems


def test_a_valid_block_gives_values_and_a_context(files: dict[str, str]) -> None:
    tls = f"{{cert_file: '{files['cert']}', key_file: '{files['key']}'}}"
    config = parse_config(f"listen: {{port: 8443, tls: {tls}}}\n" + UPSTREAMS)
    assert config.listen.tls == ListenTLS(files["cert"], files["key"], None)
    assert isinstance(config.listen.ssl_context, ssl.SSLContext)
    plain = parse_config("listen: {port: 8080, tls: null}\n" + UPSTREAMS)
    assert (plain.listen.tls, plain.listen.ssl_context) == (None, None)


@pytest.mark.parametrize(
    ("tls", "problem"),
    [
        ("[a]", "listen.tls: a list is not a mapping"),
        (
            "{{cert_file: '{cert}'}}",
            "listen.tls.key_file: is required (the certificate chain and its private key, PEM)",
        ),
        (
            "{{key_file: '{key}'}}",
            "listen.tls.cert_file: is required (the certificate chain and its private key, PEM)",
        ),
        (
            "{{cert_file: '{cert}', key_file: '{key}', ca_file: x}}",
            "listen.tls.ca_file: unknown key (known keys here: cert_file, key_file, "
            "client_ca_file)",
        ),
        (
            "{{cert_file: '{missing}', key_file: '{key}'}}",
            "listen.tls.cert_file: '{missing}' cannot be read: No such file or directory",
        ),
        (
            "{{cert_file: '{cert}', key_file: '{missing}'}}",
            "listen.tls.key_file: '{missing}' cannot be read: No such file or directory",
        ),
        (
            "{{cert_file: '{cert}', key_file: '{other_key}'}}",
            "listen.tls.cert_file: '{cert}' and key_file '{other_key}' do not load as a "
            "certificate and its key: key values mismatch",
        ),
        (
            "{{cert_file: '{cert}', key_file: '{key}', client_ca_file: '{missing}'}}",
            "listen.tls.client_ca_file: '{missing}' cannot be read: No such file or directory",
        ),
        (
            "{{cert_file: '{cert}', key_file: '{key}', client_ca_file: '{not_pem}'}}",
            "listen.tls.client_ca_file: '{not_pem}' holds no usable PEM certificate: "
            "no certificate or crl found",
        ),
    ],
)
def test_bad_values_name_the_key_and_why(files: dict[str, str], tls: str, problem: str) -> None:
    assert _problems(tls.format(**files)) == [problem.format(**files)]


def test_an_expired_certificate_is_refused(files: dict[str, str]) -> None:
    problems = _problems(
        f"{{cert_file: '{files['expired_cert']}', key_file: '{files['expired_key']}'}}"
    )
    assert len(problems) == 1
    assert problems[0].startswith(f"listen.tls.cert_file: '{files['expired_cert']}' expired at 20")


def test_the_server_context_is_tls12_alpn_and_optional_client_certificates(
    files: dict[str, str],
) -> None:
    plain = server_context(ListenTLS(files["cert"], files["key"]))
    assert plain.minimum_version == ssl.TLSVersion.TLSv1_2
    assert plain.verify_mode == ssl.CERT_NONE
    mutual = server_context(ListenTLS(files["cert"], files["key"], files["ca"]))
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert mutual.cert_store_stats()["x509_ca"] == 1
    with pytest.raises(TLSFileError) as info:
        server_context(ListenTLS(files["cert"], files["other_key"]))
    assert info.value.key == "cert_file"
    summary = certificate_summary(files["cert"])
    assert "commonName=proxy" in summary
    assert "(names 127.0.0.1)" in summary


def test_the_server_context_completes_a_handshake_with_alpn(files: dict[str, str]) -> None:
    server = server_context(ListenTLS(files["cert"], files["key"]))
    client = ssl.create_default_context(cafile=files["ca"])
    client.set_alpn_protocols(["h2", "http/1.1"])
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = threading.Event()
    for _ in range(10):  # a handful of flights; bounded
        for end, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
            try:
                end.do_handshake()
                done.set()
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
        if done.is_set() and c.selected_alpn_protocol():
            break
    assert c.selected_alpn_protocol() == "http/1.1"
    assert c.version() in ("TLSv1.2", "TLSv1.3")
