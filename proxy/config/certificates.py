"""What a PEM certificate file holds (subject, issuer, expiry), for `rollout check` and
`rollout test`; and the pure rule that says when an expiry deserves a warning.

A certificate chain (`cert_file`) is read for its first certificate, the one presented;
a CA bundle (`ca_file`, `client_ca_file`) for every certificate in it, since any of them
may be the one that signs the peer.
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from proxy.config.values import Config

WARN_DAYS = 14  # `rollout check` warns this many days before a certificate expires
DAY = 86400.0

_PEM_BLOCK = re.compile(
    r"-----BEGIN CERTIFICATE-----\s+[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----"
)
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "emailAddress": "emailAddress",
}

Expiry = Literal["ok", "expiring", "expired"]


class CertificateError(ValueError):
    """A certificate file that cannot be read or holds no PEM certificate."""


@dataclass(frozen=True, slots=True)
class Certificate:
    subject: str  # "CN=signal.internal, O=Example"
    issuer: str
    not_after: float  # Unix time
    names: tuple[str, ...] = ()  # subjectAltName entries, "DNS:signal.internal"

    def seconds_left(self, now: float) -> float:
        return self.not_after - now

    def expires(self) -> str:
        """The expiry as `2027-01-31 12:00 UTC`."""
        return datetime.fromtimestamp(self.not_after, UTC).strftime("%Y-%m-%d %H:%M UTC")


def expiry_status(seconds_left: float, warn_days: int = WARN_DAYS) -> Expiry:
    """`expired` once past, `expiring` within `warn_days`, else `ok`."""
    if seconds_left <= 0:
        return "expired"
    if seconds_left < warn_days * DAY:
        return "expiring"
    return "ok"


def days_left(seconds_left: float) -> int:
    """Whole days left (rounded down), negative once expired (-1: expired within a day)."""
    return int(seconds_left // DAY)


def read_certificates(path: str, *, bundle: bool) -> list[Certificate]:
    """The first certificate of a chain, or (`bundle=True`) every one of a CA bundle.

    Raises `CertificateError` when the file cannot be read or holds no certificate.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as file:
            text = file.read()
    except OSError as exc:
        raise CertificateError(f"{path!r} cannot be read: {exc.strerror or exc}") from None
    blocks = _PEM_BLOCK.findall(text)
    if not blocks:
        raise CertificateError(f"{path!r} holds no PEM certificate")
    return [decode_pem(block) for block in (blocks if bundle else blocks[:1])]


def decode_pem(pem: str) -> Certificate:
    """One PEM certificate's subject, issuer and expiry.

    `ssl` decodes a certificate only from a file (`_test_decode_cert`, the decoder CPython
    uses in its own tests; see `tls.certificate_not_after`), hence the temporary file.
    """
    decode: Any = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        raise CertificateError("this Python's ssl module cannot decode certificates")
    handle, name = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(handle, "w", encoding="ascii") as file:
            file.write(pem)
        fields = decode(name)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"not a readable certificate: {exc}") from None
    finally:
        os.unlink(name)
    return from_fields(fields)


def decode_der(der: bytes) -> Certificate:
    """A peer's certificate as `getpeercert(binary_form=True)` returns it."""
    return decode_pem(ssl.DER_cert_to_PEM_cert(der))


def from_fields(fields: dict[str, Any]) -> Certificate:
    """A certificate from the dict `ssl` makes of one (`getpeercert()`)."""
    names = tuple(f"{kind}:{value}" for kind, value in fields.get("subjectAltName", ()))
    return Certificate(
        subject=_name(fields.get("subject", ())),
        issuer=_name(fields.get("issuer", ())),
        not_after=float(ssl.cert_time_to_seconds(fields["notAfter"])),
        names=names,
    )


def _name(rdns: Any) -> str:
    parts = [f"{_SHORT_NAMES.get(key, key)}={value}" for rdn in rdns for key, value in rdn]
    return ", ".join(parts) or "(empty)"


def tls_files(config: Config) -> list[tuple[str, str, bool]]:
    """Every TLS file of a config: (key path, file path, is a CA bundle)."""
    found: list[tuple[str, str, bool]] = []
    # `listen.tls` (SPEC 2) is read by name: a config without it has no such attribute.
    listen_tls = getattr(config.listen, "tls", None)
    if listen_tls is not None:
        for key, bundle in (("cert_file", False), ("client_ca_file", True)):
            path = getattr(listen_tls, key, None)
            if path:
                found.append((f"listen.tls.{key}", path, bundle))
    for upstream in (config.upstreams.signal, config.upstreams.legacy):
        if upstream.tls is None:
            continue
        for key, path, bundle in (
            ("ca_file", upstream.tls.ca_file, True),
            ("cert_file", upstream.tls.cert_file, False),
        ):
            if path:
                found.append((f"upstreams.{upstream.name}.tls.{key}", path, bundle))
    return found
