"""The WebSocket benchmark's load generator: N connections, each a closed loop of
send one message, wait for its echo, time the round trip.

Lean on purpose (it shares the load core with the upstream): asyncio Protocols on uvloop,
one prebuilt masked frame per connection, and an echo recognised by its byte count (the
echo server sends nothing else, and an unmasked echo of an N-byte payload is N + 2 bytes
below 126, N + 4 below 64 KiB). Each connection does the handshake first; a non-101
answer is reported as such, not raised. After all are open, `--warmup` seconds of
messages are not recorded, then `--duration` seconds are, with at most `--max-messages`
per connection. Prints one `LOAD_JSON {...}` line.

    python bench/ws_load.py --port 9000 --connections 100 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import sys
import time
from typing import cast

import uvloop


def client_frame(payload: bytes) -> bytes:
    """A final binary frame, masked with a random key, as RFC 6455 requires of clients."""
    key = os.urandom(4)
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    elif n < 65536:
        head = bytes((0x82, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x82, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + key + masked


def echo_length(n: int) -> int:
    return n + (2 if n < 126 else 4 if n < 65536 else 10)


class Shared:
    """What all connections of the run share: the phase and the recorded round trips."""

    def __init__(self, max_messages: int) -> None:
        self.recording = False
        self.stopping = False
        self.max_messages = max_messages
        self.rtts_ns: list[int] = []
        self.idle = asyncio.Event()  # set when a stopping run has no message in flight
        self.in_flight = 0


class LoadConnection(asyncio.Protocol):
    def __init__(self, shared: Shared, request: bytes, frame: bytes, echo: int) -> None:
        self.shared, self.request, self.frame, self.echo = shared, request, frame, echo
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.upgraded: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending = 0  # echo bytes still expected
        self.sent_at = 0
        self.recorded = 0
        self.lost: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.head[: self.head.find(b"\r\n")].decode("latin-1")
            self.upgraded.set_result(status)
            data = self.head[end + 4 :]
            if not status.startswith("HTTP/1.1 101"):
                return
            if not data:
                return
        now = time.perf_counter_ns()
        self.pending -= len(data)
        if self.pending > 0:
            return
        if self.pending < 0:
            self.lost = f"{-self.pending} unexpected bytes"
            self.pending = 0
            self.shared.in_flight -= 1
            self.close()
            return
        shared = self.shared
        shared.in_flight -= 1
        if shared.recording:
            shared.rtts_ns.append(now - self.sent_at)
            self.recorded += 1
        if shared.stopping or self.recorded >= shared.max_messages:
            if shared.in_flight == 0:
                shared.idle.set()
            return
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.pending = self.echo
        self.shared.in_flight += 1
        self.sent_at = time.perf_counter_ns()
        self.transport.write(self.frame)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"\x88\x82\0\0\0\0\x03\xe8")  # close 1000, zero mask key
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_result(f"closed before the handshake answer ({exc})")
        elif self.pending > 0 and not self.shared.stopping:
            self.lost = f"closed with an echo pending ({exc})"
        if self.pending > 0:
            self.shared.in_flight -= 1
            self.pending = 0
            if self.shared.stopping and self.shared.in_flight == 0:
                self.shared.idle.set()


def percentile(sorted_values: list[int], pct: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index] / 1000


async def run(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    shared = Shared(args.max_messages)
    payload = os.urandom(args.size)
    conns: list[LoadConnection] = []
    for _ in range(args.connections):
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"X-Session-Id: ws-bench-{len(conns)}\r\n\r\n"
        ).encode()
        conn = LoadConnection(shared, request, client_frame(payload), echo_length(args.size))
        await asyncio.wait_for(loop.create_connection(lambda c=conn: c, "127.0.0.1", args.port), 10)
        conns.append(conn)
    statuses = await asyncio.wait_for(asyncio.gather(*(c.upgraded for c in conns)), 10)
    refused = [s for s in statuses if not s.startswith("HTTP/1.1 101")]
    if refused:
        for conn in conns:
            conn.close()
        return {"error": f"handshake: {len(refused)} of {len(conns)} got {refused[0]!r}"}

    for conn in conns:
        conn.send()
    await asyncio.sleep(args.warmup)
    shared.recording = True
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + args.duration
    while time.perf_counter() < deadline:
        if all(c.recorded >= args.max_messages or c.lost for c in conns):
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    shared.recording = False
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    shared.stopping = True
    if shared.in_flight > 0:
        shared.idle.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shared.idle.wait(), 5)
    stalled = shared.in_flight
    for conn in conns:
        conn.close()
    await asyncio.sleep(0.1)
    rtts = sorted(shared.rtts_ns)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    return {
        "connections": len(conns),
        "messages": len(rtts),
        "seconds": elapsed,
        "p50_us": percentile(rtts, 50),
        "p90_us": percentile(rtts, 90),
        "p99_us": percentile(rtts, 99),
        "p999_us": percentile(rtts, 99.9),
        "max_us": rtts[-1] / 1000 if rtts else 0.0,
        "lost": [c.lost for c in conns if c.lost],
        "stalled": stalled,
        "cpu_s": cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="closed-loop WebSocket echo load, loopback")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="payload bytes per message")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not recorded")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds recorded")
    parser.add_argument(
        "--max-messages", type=int, default=1_000_000, help="recorded messages per connection"
    )
    args = parser.parse_args()
    try:
        result = uvloop.run(run(args))
    except (OSError, TimeoutError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print("LOAD_JSON " + json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
