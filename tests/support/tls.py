"""TLS test parts: throwaway certificates from trustme, and real HTTPS upstreams.

Nothing here is checked in: every CA, certificate and key is made per test and written to
the test's tmp_path. A `TLSUpstream` counts its handshakes (the server context's SNI
callback runs once per handshake) and records the server names clients asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

from tests.support import HOST


@dataclass
class Files:
    """A certificate and its key written to disk, with the CA that signed them."""

    cert: Path
    key: Path


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path


def write_cert(cert: trustme.LeafCert, directory: Path, name: str) -> Files:
    files = Files(directory / f"{name}.crt", directory / f"{name}.key")
    cert.cert_chain_pems[0].write_to_path(str(files.cert))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(files.cert), append=True)
    cert.private_key_pem.write_to_path(str(files.key))
    return files


@dataclass
class TLSUpstream:
    url: str
    handshakes: int = 0
    server_names: list[str | None] = field(default_factory=list)
    requests: int = 0


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the proxy's pool reuses the connection
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.state.requests += 1
        assert isinstance(self.connection, ssl.SSLSocket)
        body = json.dumps(
            {"served_by": self.server.name, "client_cert": bool(self.connection.getpeercert())}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str, context: ssl.SSLContext, state: TLSUpstream) -> None:
        super().__init__((HOST, 0), _Handler)
        self.name = name
        self.state = state
        self.context = context

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # The handshake happens on the handler's thread, at its first read.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused handshake: the client has been told with an alert


@contextlib.asynccontextmanager
async def tls_upstream(
    name: str, cert: trustme.LeafCert, *, client_ca: trustme.CA | None = None
) -> AsyncIterator[TLSUpstream]:
    """A real HTTPS server (the standard library's, on threads) on loopback with `cert`;
    with `client_ca`, it requires a client certificate signed by that CA (mutual TLS).

    Not an aiohttp app: asyncio's server drops a connection whose handshake failed
    without sending the TLS alert, and the point here is what the proxy does with one.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    state = TLSUpstream(url="")

    def on_handshake(_sock: ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        state.handshakes += 1
        state.server_names.append(server_name)

    context.sni_callback = on_handshake  # type: ignore[assignment]
    server = _Server(name, context, state)
    state.url = f"https://{HOST}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join()
