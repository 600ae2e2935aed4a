"""`upstreams.<side>.tls`: validation (bad values -> exact messages) and the SSL context."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from proxy.config.load import parse_config
from proxy.config.tls import certificate_not_after, client_context
from proxy.config.values import UpstreamTLS
from proxy.errors import ConfigError
from tests.support.tls import write_ca, write_cert


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    client = write_cert(ca.issue_cert("rollout-proxy"), tmp_path, "client")
    other = write_cert(trustme.CA().issue_cert("other"), tmp_path, "other")
    (tmp_path / "not-pem.txt").write_text("hello\n")
    return {
        "ca": str(write_ca(ca, tmp_path / "ca.pem")),
        "cert": str(client.cert),
        "key": str(client.key),
        "other_key": str(other.key),
        "missing": str(tmp_path / "missing.pem"),
        "not_pem": str(tmp_path / "not-pem.txt"),
        "dir": str(tmp_path),
    }


def _config(signal: str, legacy: str = "url: http://127.0.0.1:8001") -> str:
    return f"upstreams:\n  signal: {{{signal}}}\n  legacy: {{{legacy}}}\n"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.problems


HTTPS = "url: 'https://signal.internal:8443', tls: "


@pytest.mark.parametrize(
    ("signal", "problem"),
    [
        (
            "url: 'http://127.0.0.1:8000', tls: {{verify: false}}",
            "upstreams.signal.tls: applies to https URLs only, and url is 'http://127.0.0.1:8000'",
        ),
        (HTTPS + "[verify]", "upstreams.signal.tls: a list is not a mapping"),
        (HTTPS + "{{verify: 'no'}}", "upstreams.signal.tls.verify: 'no' is not true/false"),
        (
            HTTPS + "{{verfy: false}}",
            "upstreams.signal.tls.verfy: unknown key (known keys here: verify, ca_file, "
            "server_name, cert_file, key_file)",
        ),
        (HTTPS + "{{ca_file: 3}}", "upstreams.signal.tls.ca_file: 3 is not a string or null"),
        (
            HTTPS + "{{server_name: ''}}",
            "upstreams.signal.tls.server_name: '' must not be empty (remove the key, or set null)",
        ),
        (
            HTTPS + "{{ca_file: '{missing}'}}",
            "upstreams.signal.tls.ca_file: '{missing}' cannot be read: No such file or directory",
        ),
        (
            HTTPS + "{{ca_file: '{dir}'}}",
            "upstreams.signal.tls.ca_file: '{dir}' cannot be read: Is a directory",
        ),
        (
            HTTPS + "{{ca_file: '{not_pem}'}}",
            "upstreams.signal.tls.ca_file: '{not_pem}' holds no usable PEM certificate: "
            "no certificate or crl found",
        ),
        (
            HTTPS + "{{cert_file: '{cert}'}}",
            "upstreams.signal.tls.key_file: is required with cert_file "
            "(a client certificate and its key)",
        ),
        (
            HTTPS + "{{key_file: '{key}'}}",
            "upstreams.signal.tls.cert_file: is required with key_file "
            "(a client certificate and its key)",
        ),
        (
            HTTPS + "{{cert_file: '{cert}', key_file: '{missing}'}}",
            "upstreams.signal.tls.key_file: '{missing}' cannot be read: No such file or directory",
        ),
        (
            HTTPS + "{{cert_file: '{cert}', key_file: '{other_key}'}}",
            "upstreams.signal.tls.cert_file: '{cert}' and key_file '{other_key}' do not load "
            "as a certificate and its key: key values mismatch",
        ),
        (
            HTTPS + "{{cert_file: '{not_pem}', key_file: '{key}'}}",
            "upstreams.signal.tls.cert_file: '{not_pem}' and key_file '{key}' do not load "
            "as a certificate and its key: PEM lib",
        ),
    ],
)
def test_invalid_tls_values_are_named_with_their_key_path(
    signal: str, problem: str, files: dict[str, str]
) -> None:
    assert _problems(_config(signal.format(**files))) == [problem.format(**files)]


def test_legacy_is_validated_the_same_way(files: dict[str, str]) -> None:
    legacy = "url: 'https://legacy.internal', tls: {{ca_file: '{missing}'}}".format(**files)
    assert _problems(_config("url: 'http://127.0.0.1:8000'", legacy)) == [
        f"upstreams.legacy.tls.ca_file: '{files['missing']}' cannot be read: "
        "No such file or directory"
    ]


def test_valid_tls_block_is_read_into_values_and_a_context(files: dict[str, str]) -> None:
    block = "{{ca_file: '{ca}', server_name: api.internal, cert_file: '{cert}', key_file: '{key}'}}"
    signal = parse_config(_config(HTTPS + block.format(**files))).upstreams.signal
    assert signal.tls == UpstreamTLS(
        verify=True,
        ca_file=files["ca"],
        server_name="api.internal",
        cert_file=files["cert"],
        key_file=files["key"],
    )
    assert signal.server_name == "api.internal"
    assert isinstance(signal.ssl_context, ssl.SSLContext)


def test_https_without_a_block_gets_defaults_and_the_url_host_as_server_name() -> None:
    config = parse_config(_config("url: 'https://signal.internal:8443'"))
    signal, legacy = config.upstreams.signal, config.upstreams.legacy
    assert signal.tls == UpstreamTLS()
    assert signal.server_name == "signal.internal"
    assert signal.ssl_context is not None
    assert (legacy.tls, legacy.ssl_context) == (None, None)


def test_equal_tls_values_make_equal_configs_whatever_the_context(files: dict[str, str]) -> None:
    text = _config(HTTPS + "{{ca_file: '{ca}'}}".format(**files))
    first, second = parse_config(text), parse_config(text)
    assert first.upstreams.signal.ssl_context is not second.upstreams.signal.ssl_context
    assert first == second  # a reload of the same file changes nothing


def test_context_defaults_are_secure() -> None:
    context = client_context(UpstreamTLS())
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_context_without_verification() -> None:
    context = client_context(UpstreamTLS(verify=False))
    assert context.verify_mode is ssl.CERT_NONE
    assert not context.check_hostname


def test_context_trusts_the_ca_file_only(files: dict[str, str]) -> None:
    context = client_context(UpstreamTLS(ca_file=files["ca"]))
    subjects = [dict(item[0] for item in ca["subject"]) for ca in context.get_ca_certs()]
    assert len(subjects) == 1
    assert "organizationName" in subjects[0]


def test_certificate_not_after_reads_the_expiry(files: dict[str, str]) -> None:
    not_after = certificate_not_after(files["cert"])
    assert not_after is not None
    assert not_after > 2_000_000_000  # trustme's leaf certificates run to 2038 and beyond
    assert certificate_not_after(files["missing"]) is None
    assert certificate_not_after(files["not_pem"]) is None
