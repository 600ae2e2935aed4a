"""The stream benchmark's client: one GET, the body counted and thrown away.

A blocking socket and `recv_into` one preallocated buffer: no parsing past the response
head, no copy, no allocation per read, so the client costs a few system calls per
megabyte. Prints one `READER_JSON {...}` line: status, body bytes, the seconds from the
request written to the head read and to the last byte, and the reader's own CPU seconds.

    python bench/stream_reader.py --port 8080 --path /body.bin
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time

BUFFER = 1 << 20


def read_body(port: int, path: str, deadline_s: float) -> dict[str, object]:
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    started = time.perf_counter()
    deadline = started + deadline_s
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Session-Id: stream-bench\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            got = sock.recv_into(view)
            if not got:
                raise ConnectionError(f"closed before the response head: {head[:200]!r}")
            head += bytes(view[:got])
            if len(head) > 65536 and b"\r\n\r\n" not in head:
                raise ConnectionError("response head over 64 KiB")
        head_at = time.perf_counter()
        head, _, first = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        length = int(headers["content-length"]) if "content-length" in headers else None
        received = len(first)
        while length is None or received < length:
            got = sock.recv_into(view)
            if not got:
                break
            received += got
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{received} bytes after {deadline_s:.0f} s")
        ended = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "status": status,
        "content_length": length,
        "bytes": received,
        "head_s": head_at - started,
        "total_s": ended - started,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "upstream": headers.get("x-rollout-upstream"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="GET one body over loopback, count its bytes")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/body.bin")
    parser.add_argument("--deadline", type=float, default=120, help="seconds for the whole body")
    args = parser.parse_args()
    try:
        result = read_body(args.port, args.path, args.deadline)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print("READER_JSON " + json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
