"""Test support: config files, the real `rollout serve` process, raw HTTP on loopback.

Everything tests share lives in this package (never in a test file or a conftest):
`recording` (upstreams that record what reached them), `prometheus` (a real Prometheus),
`wire` (a fake transport for protocol tests), `fakes` / `probes` / `slowloris` /
`reliability` (the reliability suite's fakes and helpers), `thirdparty` (httpbin and
uvicorn as subprocess upstreams) with `sse_app` (the ASGI app uvicorn serves), `bursts`
(bounded bursts of requests whose counter deltas are known in advance), `hooks` (a webhook
receiver in a thread of its own), `autopilot` (fleets, loads and the controller process),
`gradual` (`rollout rollback --gradual` as a process, the proxy's percentage polled),
`demo` (`rollout demo` as a subprocess read line by line, and a scripted stand-in
controller).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

HOST = "127.0.0.1"

# The `upstream` fixture: start an aiohttp app as a real server on 127.0.0.1.
UpstreamFactory = Callable[[web.Application], Awaitable[TestServer]]


def server_url(server: TestServer) -> str:
    return f"http://{HOST}:{server.port}"


_rng = random.Random()


def free_port() -> int:
    """A free port below the ephemeral range (32768+).

    A port from bind(0) is an ephemeral one; while the server is still starting, a client
    polling it can be given that same number as its source port and connect to itself
    (TCP simultaneous open), which then makes the server's bind fail. Ports outside the
    ephemeral range are never chosen as source ports.
    """
    for _ in range(200):
        port = _rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def config_dict(signal_url: str, legacy_url: str, **sections: Any) -> dict[str, Any]:
    """A config for tests: loopback listeners on free ports, everything overridable."""
    data: dict[str, Any] = {
        "listen": {"host": HOST, "port": free_port()},
        "admin": {"host": HOST, "port": free_port()},
        "upstreams": {"signal": {"url": signal_url}, "legacy": {"url": legacy_url}},
        "timeouts": {"connect": 1.0, "signal": 2.0, "total": 10.0},
        "rollout": {"percentage": 0, "test_sessions": ["to-signal"]},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class ProxyProcess:
    """`rollout serve` as a real process, with its log captured to a file."""

    config_path: Path
    data: dict[str, Any]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)
    # E.g. ROLLOUT_LISTEN_PORT / ROLLOUT_ADMIN_PORT: replicas on one host sharing one file.
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def port(self) -> int:
        return int(self.env.get("ROLLOUT_LISTEN_PORT") or self.data["listen"]["port"])

    @property
    def admin_port(self) -> int:
        return int(self.env.get("ROLLOUT_ADMIN_PORT") or self.data["admin"]["port"])

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def start(self, *extra: str, timeout: float = 20.0) -> ProxyProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "-c", str(self.config_path), *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rollout serve exited {self.proc.returncode}:\n{self.logs()}")
            if _port_open(self.port) and self._admin_ok():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"rollout serve did not start in {timeout} s:\n{self.logs()}")

    def _admin_ok(self) -> bool:
        headers = {}
        token = self.data.get("admin", {}).get("token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.admin_url + "/-/healthz", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def logs(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; kill if it will not stop. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return int(self.proc.returncode)

    def rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def peak_rss_bytes(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")


def _port_open(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


async def raw_request(port: int, data: bytes, *, timeout: float = 10.0) -> RawResponse:
    """Send exact bytes, read one response (Content-Length, chunked or until close)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader, *, head: bool = False) -> RawResponse:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split()[1])
    headers: list[tuple[str, str]] = []
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    resp = RawResponse(status, headers, b"")
    if head or status in (204, 304) or 100 <= status < 200:
        return resp
    te = resp.header("Transfer-Encoding")
    length = resp.header("Content-Length")
    if te and "chunked" in te.lower():
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        resp.body = b"".join(chunks)
    elif length is not None:
        resp.body = await reader.readexactly(int(length))
    else:
        resp.body = await reader.read()
    return resp


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name{labels}` in Prometheus text exposition, or None if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None
