"""Third-party servers as upstreams, each a real subprocess on a 127.0.0.1 free port.

`httpbin_server()`: httpbin on werkzeug's threaded server, whose socket writer is
unbuffered, so `/drip` really drips one byte at a time and `/stream/N` goes out chunked.
`uvicorn_server()`: an ASGI app (by default `tests.support.sse_app`) under uvicorn.
Both are waited for until they answer, and always terminated when the block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support import HOST, free_port

ROOT = Path(__file__).resolve().parents[2]

_HTTPBIN = """
import sys
from httpbin import app
from werkzeug.serving import run_simple
run_simple(sys.argv[1], int(sys.argv[2]), app, threaded=True)
"""


@dataclass
class ServerProcess:
    """A started server: its URL, its process and the file its output goes to."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer {path} in {timeout} s:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# Another suite on the machine may bind the port free_port() found before the server does.
_PORT_TAKEN = ("address already in use", "errno 98")
START_ATTEMPTS = 3


@contextlib.contextmanager
def _serving(
    name: str, argv: Callable[[int], list[str]], log_dir: Path, ready_path: str, timeout: float
) -> Iterator[ServerProcess]:
    """Start the server on a free port (another one if that port was taken meanwhile),
    wait until `ready_path` answers 200, and stop it when the block ends."""
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        log_path = log_dir / f"{name}-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                argv(port),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        server = ServerProcess(name, port, proc, log_path)
        try:
            server.wait_ready(ready_path, timeout)
        except RuntimeError:
            server.stop()
            lost_port = proc.returncode not in (None, -signal.SIGTERM) and any(
                marker in server.logs().lower() for marker in _PORT_TAKEN
            )
            if lost_port and attempt < START_ATTEMPTS:
                continue
            raise
        try:
            yield server
        finally:
            server.stop()
        return


def httpbin_server(
    log_dir: Path, *, timeout: float = 30.0
) -> contextlib.AbstractContextManager[ServerProcess]:
    return _serving(
        "httpbin",
        lambda port: [sys.executable, "-c", _HTTPBIN, HOST, str(port)],
        log_dir,
        "/get",
        timeout,
    )


def uvicorn_server(
    log_dir: Path, app: str = "tests.support.sse_app:app", *, timeout: float = 30.0
) -> contextlib.AbstractContextManager[ServerProcess]:
    def argv(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--app-dir",
            str(ROOT),
            "--host",
            HOST,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "2",
        ]

    return _serving("uvicorn", argv, log_dir, "/healthz", timeout)
