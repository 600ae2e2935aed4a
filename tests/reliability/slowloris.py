"""Slow clients: one sends its request head a byte a second, one connects and says nothing.

Each runs in a thread with a blocking socket and notes when the proxy closed on it (EOF,
reset, or an error response followed by a close). They give up after `LIMIT` seconds.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass

from tests.support import HOST

LIMIT = 120.0  # what an operator would call "a hang" for a request head
SLOWLORIS_TESTS = frozenset(
    {"test_slowloris_request_head_is_cut_off", "test_silent_connection_is_closed"}
)

HEAD = b"GET /slow HTTP/1.1\r\nHost: proxy.test\r\nX-Session-Id: slowloris\r\nX-Filler: "


@dataclass
class SlowClient:
    name: str
    dribble: bool
    started: float = 0.0
    closed_after: float | None = None  # seconds from connect to the proxy's close
    how: str = ""
    answer: bytes = b""

    def run(self, port: int, stop: threading.Event) -> None:
        with socket.create_connection((HOST, port), timeout=5) as sock:
            self.started = time.monotonic()
            sent = 0
            while not stop.is_set() and time.monotonic() - self.started < LIMIT + 5:
                if self.dribble:
                    try:
                        sock.sendall(HEAD[sent : sent + 1] if sent < len(HEAD) else b"a")
                    except OSError as exc:
                        self._closed(f"send failed: {exc!r}")
                        return
                    sent += 1
                readable, _, _ = select.select([sock], [], [], 1.0)
                if readable:
                    try:
                        data = sock.recv(65536)
                    except OSError as exc:
                        self._closed(f"reset: {exc!r}")
                        return
                    if not data:
                        self._closed("eof")
                        return
                    self.answer += data

    def _closed(self, how: str) -> None:
        self.closed_after = time.monotonic() - self.started
        self.how = how


class SlowClients:
    def __init__(self, port: int) -> None:
        self.port = port
        self.dribbler = SlowClient("one byte a second", dribble=True)
        self.silent = SlowClient("connected, silent", dribble=False)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=c.run, args=(port, self._stop), name=c.name, daemon=True)
            for c in (self.dribbler, self.silent)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait(self, client: SlowClient) -> None:
        """Until the proxy closed on `client` or the client gave up."""
        thread = self._threads[0 if client is self.dribbler else 1]
        thread.join(LIMIT + 10)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
