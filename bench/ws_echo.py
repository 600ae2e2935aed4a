"""The WebSocket benchmark's upstream: an echo server on 127.0.0.1.

`--impl raw` (the default) is the cheap one: an asyncio Protocol on uvloop that answers
the RFC 6455 handshake and echoes each data frame back unmasked, in one write per read,
with no task, future or message object per frame. The upstream shares the load core with
the load generator, so it must cost far less than the proxy under test.

`--impl websockets` is the `websockets` library's server (`async for message in ws:
await ws.send(message)`, no compression): a real implementation, several times dearer per
message, to check that a result does not depend on the hand-written one.

    python bench/ws_echo.py --port 9000 [--impl websockets]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import signal
import sys
from typing import cast

import uvloop

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def frame_head(first: int, length: int) -> bytes:
    """A server frame's header (never masked)."""
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def unmask(payload: bytes, key: bytes) -> bytes:
    if not payload or key == b"\0\0\0\0":
        return payload
    n = len(payload)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )


class EchoProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if not self.upgraded and not self.handshake():
            return
        out: list[bytes] = []
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, at = second & 0x7F, pos + 2
            if length == 126:
                if len(buf) - at < 2:
                    break
                length, at = int.from_bytes(buf[at : at + 2], "big"), at + 2
            elif length == 127:
                if len(buf) - at < 8:
                    break
                length, at = int.from_bytes(buf[at : at + 8], "big"), at + 8
            key = b""
            if second & 0x80:
                if len(buf) - at < 4:
                    break
                key, at = bytes(buf[at : at + 4]), at + 4
            if len(buf) - at < length:
                break
            payload = (
                unmask(bytes(buf[at : at + length]), key) if key else bytes(buf[at : at + length])
            )
            pos = at + length
            opcode = first & 0x0F
            if opcode == OP_CLOSE:
                out.append(frame_head(0x80 | OP_CLOSE, len(payload[:2])) + payload[:2])
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            if opcode == OP_PING:
                out.append(frame_head(0x80 | OP_PONG, length) + payload)
            elif opcode != OP_PONG:
                out.append(frame_head(first, length) + payload)
        del buf[:pos]
        if out:
            self.transport.write(b"".join(out))

    def handshake(self) -> bool:
        """Answer the upgrade once its head is in; False while it is incomplete."""
        assert self.transport is not None
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self.transport.close()
            return False
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        key = headers.get("sec-websocket-key")
        if headers.get("upgrade", "").lower() != "websocket" or not key:
            self.transport.write(
                b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\n"
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.close()
            return False
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key.encode()) + b"\r\n\r\n"
        )
        self.upgraded = True
        return True


async def serve_raw(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, "127.0.0.1", port, backlog=4096)
    await _until_terminated(server)


async def serve_websockets(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "127.0.0.1", port, compression=None, max_size=None) as server:
        await _until_terminated(server)


async def _until_terminated(server: object) -> None:
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    print("ws_echo: listening", flush=True)
    await stop
    close = getattr(server, "close", None)
    if close is not None:
        close()


def main() -> int:
    parser = argparse.ArgumentParser(description="WebSocket echo server for the benchmark")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--impl", choices=("raw", "websockets"), default="raw")
    args = parser.parse_args()
    uvloop.run(serve_raw(args.port) if args.impl == "raw" else serve_websockets(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
