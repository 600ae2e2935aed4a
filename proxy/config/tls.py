"""TLS values -> `ssl.SSLContext` for reaching an https upstream; built once per load.

`load_config` builds the context while validating (a CA bundle or key pair that does not
load is a configuration error, named with its key), and the upstream's pool keeps it for
as long as the upstream's URL and `tls` values stay the same.
"""

from __future__ import annotations

import re
import ssl
import time
from typing import Any

from proxy.config.values import ListenTLS, UpstreamTLS

ALPN = ["http/1.1"]


class TLSFileError(ValueError):
    """A TLS file named under `key` cannot be used; `load_config` reports it as a problem."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


def client_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """The ssl module's secure defaults, TLS 1.2 at least, ALPN `http/1.1`.

    Raises `TLSFileError` naming the key of a file that cannot be read (with the OS's
    reason) or whose content does not load (with the ssl module's).
    """
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is not None:
            _check_readable(key, path)
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
    except ssl.SSLError as exc:
        raise TLSFileError(
            "ca_file", f"{tls.ca_file!r} holds no usable PEM certificate: {ssl_detail(exc)}"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None:
        _load_pair(context, tls.cert_file, tls.key_file)
    return context


def _load_pair(context: ssl.SSLContext, cert_file: str, key_file: str | None) -> None:
    """The certificate chain and its key, or `TLSFileError` saying they do not match."""
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise TLSFileError(
            "cert_file",
            f"{cert_file!r} and key_file {key_file!r} do not load as a "
            f"certificate and its key: {ssl_detail(exc)}",
        ) from None


def server_context(tls: ListenTLS, *, now: float | None = None) -> ssl.SSLContext:
    """The public listener's context: secure server defaults, TLS 1.2 at least, ALPN
    `http/1.1`, the certificate chain and key; with `client_ca_file`, a client certificate
    signed by one of its CAs is required (mutual TLS).

    Raises `TLSFileError` naming the key of a file that cannot be read, a pair that does
    not load, an expired certificate, or a CA bundle that is not PEM.
    """
    keys = ("cert_file", "key_file", "client_ca_file")
    for key in keys:
        path = getattr(tls, key)
        if path is not None:
            _check_readable(key, path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    _load_pair(context, tls.cert_file, tls.key_file)
    not_after = certificate_not_after(tls.cert_file)
    if not_after is not None and not_after <= (time.time() if now is None else now):
        expired = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after))
        raise TLSFileError("cert_file", f"{tls.cert_file!r} expired at {expired}")
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError as exc:
            raise TLSFileError(
                "client_ca_file",
                f"{tls.client_ca_file!r} holds no usable PEM certificate: {ssl_detail(exc)}",
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def certificate_summary(path: str) -> str:
    """`subject commonName=example, expires 2027-01-01T00:00:00Z` for a log line ("?" parts when
    the file cannot be decoded)."""
    fields = _decode(path)
    subject = "?"
    if fields is not None:
        parts = [
            f"{name}={value}"
            for rdn in fields.get("subject", ())
            for name, value in rdn
            if isinstance(name, str)
        ]
        subject = ",".join(parts) or "(empty)"
        sans = [
            value
            for kind, value in fields.get("subjectAltName", ())
            if kind in ("DNS", "IP Address")
        ]
        if sans:
            subject += f" (names {', '.join(sans)})"
    not_after = certificate_not_after(path)
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(not_after)) if not_after else "?"
    return f"subject {subject}, expires {expires}"


def _check_readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TLSFileError(key, f"{path!r} cannot be read: {reason}") from None


_SSL_NOISE = re.compile(r"^\[[A-Z0-9_: ]+\]\s*|\s*\(_ssl\.c:\d+\)$")


def ssl_detail(exc: ssl.SSLError) -> str:
    """The readable part of an ssl error: `certificate verify failed: unable to get local
    issuer certificate`, without the `[SSL: ...]` code and the `(_ssl.c:NNNN)` origin."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    return _SSL_NOISE.sub("", text).strip() or exc.reason or type(exc).__name__


def certificate_not_after(path: str) -> float | None:
    """When the first certificate of a PEM file expires (Unix time), None if unreadable.

    `ssl` has no public decoder for a certificate file; `_test_decode_cert` is the one
    CPython itself uses in its tests and has kept since 3.x (no `cryptography` needed
    at run time for one date).
    """
    fields = _decode(path)
    not_after = fields.get("notAfter") if fields is not None else None
    if not isinstance(not_after, str):
        return None
    return float(ssl.cert_time_to_seconds(not_after))


def _decode(path: str) -> dict[str, Any] | None:
    decode: Any = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        fields = decode(path)
    except (OSError, ssl.SSLError):
        return None
    return fields if isinstance(fields, dict) else None
