"""Probes for the reliability suite: the proxy's fds and sockets from /proc, raw clients.

Sockets are matched to the proxy through their inodes (`/proc/PID/fd` -> `socket:[N]`),
since `/proc/PID/net/tcp` lists every socket of the network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.support import HOST

TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


@dataclass(frozen=True)
class TcpSocket:
    local_ip: str
    local_port: int
    remote_port: int
    state: str


def tcp_sockets(pid: int) -> list[TcpSocket]:
    """The IPv4 TCP sockets this process holds open."""
    owned = _socket_inodes(pid)
    out = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[9] not in owned:
            continue
        local_hex, local_port = cols[1].split(":")
        remote_port = cols[2].split(":")[1]
        ip = ".".join(str(b) for b in reversed(bytes.fromhex(local_hex)))
        out.append(TcpSocket(ip, int(local_port, 16), int(remote_port, 16), TCP_STATES[cols[3]]))
    return out


def upstream_sockets(pid: int, ports: Iterable[int]) -> Counter[str]:
    """States of the proxy's connections to the given upstream ports."""
    wanted = set(ports)
    return Counter(s.state for s in tcp_sockets(pid) if s.remote_port in wanted)


def listening_ips(pid: int, port: int) -> set[str]:
    return {s.local_ip for s in tcp_sockets(pid) if s.local_port == port and s.state == "LISTEN"}


# --- raw clients ------------------------------------------------------------------------


@dataclass
class Truncation:
    """A response read to the end of the connection, and whether it was complete."""

    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool
    ended_by: str  # "eof", "reset" or "timeout"


async def read_to_end(port: int, request: bytes, *, timeout: float = 15.0) -> Truncation:
    """Send `request`, then read the response until the proxy closes the connection.

    `complete` says whether the body matched its framing: all Content-Length bytes, or
    chunked up to and including the terminating zero-size chunk.
    """
    reader, writer = await asyncio.open_connection(HOST, port)
    data = b""
    ended_by = "eof"
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                data += chunk
    except ConnectionResetError:
        ended_by = "reset"
    except TimeoutError:
        ended_by = "timeout"
    finally:
        writer.transport.abort()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0] else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Truncation(status, headers, body, _complete(headers, body), ended_by)


def _complete(headers: dict[str, str], body: bytes) -> bool:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        rest = body
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                return False
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                return False
            if size == 0:
                return rest.startswith(b"\r\n")
            if len(rest) < size + 2:
                return False
            rest = rest[size + 2 :]
    if "content-length" in headers:
        return len(body) == int(headers["content-length"])
    return True


def http_request(
    method: str, target: str, *headers: str, body: bytes = b"", host: str = "proxy.test"
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body
