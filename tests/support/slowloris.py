"""Slow clients: one sends its request head a byte a second, one connects and says nothing,
one sends thousands of pipelined requests and never reads an answer.

Each runs in a thread with a blocking socket and notes when the proxy closed on it (EOF,
reset, or an error response followed by a close). They give up after `LIMIT` seconds.
"""

from __future__ import annotations

import http.server
import select
import socket
import threading
import time
from dataclasses import dataclass

from tests.support import HOST

LIMIT = 120.0  # what an operator would call "a hang" for a request head
SLOWLORIS_TESTS = frozenset(
    {
        "test_slowloris_request_head_is_cut_off",
        "test_silent_connection_is_closed",
        "test_client_that_never_reads_its_answers_is_cut_off",
    }
)
PIPELINED = 200  # x ANSWER_BYTES: far more than the socket buffers hold
ANSWER_BYTES = 60 * 1024  # under 64 KiB: the proxy writes each answer whole, no drain

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


class NonReader(SlowClient):
    """Pipelines `PIPELINED` requests for `ANSWER_BYTES` each through a 4 KiB receive
    window and never reads: the answers back up into the proxy. It notices the proxy's
    close when a send fails."""

    def run(self, port: int, stop: threading.Event) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with sock:
            sock.settimeout(5)
            sock.connect((HOST, port))
            sock.setblocking(False)
            self.started = time.monotonic()
            pending = b"GET /never-read HTTP/1.1\r\nHost: proxy.test\r\n\r\n" * PIPELINED
            while not stop.is_set() and time.monotonic() - self.started < LIMIT + 5:
                _, writable, _ = select.select([], [sock], [], 1.0)
                if not writable:
                    continue
                try:
                    # Once everything is sent, keep probing with blank lines (allowed
                    # between pipelined requests) to learn when the proxy has closed.
                    sent = sock.send(pending or b"\r\n")
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._closed(f"send failed: {exc!r}")
                    return
                pending = pending[sent:]
                if not pending:
                    time.sleep(1.0)


class BigAnswers:
    """A keep-alive HTTP/1.1 upstream in a thread: `ANSWER_BYTES` for any GET."""

    def __init__(self) -> None:
        body = b"b" * ANSWER_BYTES

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> BigAnswers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class SlowClients:
    def __init__(self, port: int) -> None:
        self.port = port
        self.dribbler = SlowClient("one byte a second", dribble=True)
        self.silent = SlowClient("connected, silent", dribble=False)
        self.nonreader = NonReader("pipelines, never reads", dribble=False)
        self._clients = (self.dribbler, self.silent, self.nonreader)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=c.run, args=(port, self._stop), name=c.name, daemon=True)
            for c in self._clients
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait(self, client: SlowClient) -> None:
        """Until the proxy closed on `client` or the client gave up."""
        thread = self._threads[self._clients.index(client)]
        thread.join(LIMIT + 10)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
