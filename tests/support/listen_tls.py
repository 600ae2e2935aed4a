"""HTTPS on the proxy's public port, for tests: certificates for 127.0.0.1 from trustme
(made per test, never checked in), the `listen.tls` block, and blocking clients that say
which certificate the proxy presented.
"""

from __future__ import annotations

import datetime
import http.client
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from tests.support import HOST
from tests.support.tls import Files, write_ca, write_cert

TIMEOUT = 5.0


@dataclass
class ListenFiles:
    """The CA clients trust, and the certificate and key paths the proxy is told about."""

    ca: trustme.CA
    ca_file: Path
    cert: Path
    key: Path

    def block(self, client_ca_file: Path | None = None) -> dict[str, Any]:
        tls: dict[str, Any] = {"cert_file": str(self.cert), "key_file": str(self.key)}
        if client_ca_file is not None:
            tls["client_ca_file"] = str(client_ca_file)
        return tls

    def issue(self, name: str, *, days: int = 365) -> trustme.LeafCert:
        not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
        return self.ca.issue_cert(HOST, "localhost", common_name=name, not_after=not_after)


def listen_files(directory: Path, name: str = "first", *, days: int = 365) -> ListenFiles:
    ca = trustme.CA()
    files = ListenFiles(ca, write_ca(ca, directory / "listen-ca.pem"), Path(), Path())
    leaf = write_cert(files.issue(name, days=days), directory, "listen")
    files.cert, files.key = leaf.cert, leaf.key
    return files


def der_of(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def replace_by_rename(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    """Write the pair beside the live files, then rename each over its live file."""
    staged = write_cert(leaf, cert.parent, "staged")
    os.replace(staged.key, key)
    os.replace(staged.cert, cert)


def replace_in_place(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    """Truncate and rewrite the live files (same inode): certificate first, then key."""
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())


def client_context(ca_file: Path, client: Files | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return context


def presented(port: int, context: ssl.SSLContext) -> bytes:
    """The DER certificate a new handshake with the proxy gets."""
    with (
        socket.create_connection((HOST, port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def presented_socket(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    """A TLS connection to the proxy, handshake done (the caller closes it)."""
    raw = socket.create_connection((HOST, port), timeout=TIMEOUT)
    try:
        return context.wrap_socket(raw, server_hostname=HOST)
    except BaseException:
        raw.close()
        raise


def https_get(
    port: int, context: ssl.SSLContext, path: str = "/hello", **headers: str
) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(HOST, port, timeout=TIMEOUT, context=context)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
