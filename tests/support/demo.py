"""`rollout demo` as a subprocess, read line by line; and a scripted stand-in controller.

`DemoProcess.start_rollout_demo("--autopilot")` runs the real command on free ports.
`DemoProcess.start_scripted(...)` runs `python -m tests.support.demo`: the same
`run_demo` with `scripted_autopilot` injected, a controller that writes the percentages
the test sends on its stdin, one a line, so a test decides when the rollout moves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import free_port

PORT_FLAGS = ("port", "admin-port", "signal-port", "legacy-port")
TRAFFIC = re.compile(r"traffic: (\d+) req in \d+ s, signal (\d+) %, fallbacks (\d+), errors ")


@dataclass(frozen=True, slots=True)
class Traffic:
    """A parsed traffic line."""

    requests: int
    signal_share: int  # percent of answered requests
    fallbacks: int


def parse_traffic(line: str) -> Traffic | None:
    match = TRAFFIC.search(line)
    if match is None:
        return None
    return Traffic(int(match[1]), int(match[2]), int(match[3]))


@dataclass
class DemoProcess:
    """A running demo; its merged stdout/stderr is read by a thread into `lines`."""

    proc: subprocess.Popen[str]
    ports: dict[str, int]
    seen: list[str] = field(default_factory=list)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @classmethod
    def start_rollout_demo(cls, *flags: str) -> DemoProcess:
        return cls._start([sys.executable, "-m", "proxy", "demo"], flags)

    @classmethod
    def start_scripted(cls, *flags: str) -> DemoProcess:
        return cls._start([sys.executable, "-m", "tests.support.demo"], flags)

    @classmethod
    def _start(cls, command: list[str], flags: tuple[str, ...]) -> DemoProcess:
        ports = {name: free_port() for name in PORT_FLAGS}
        args = [f"--{name}={port}" for name, port in ports.items()]
        proc = subprocess.Popen(
            [*command, *args, *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        demo = cls(proc, ports)
        threading.Thread(target=demo._read, daemon=True).start()
        return demo

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['port']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin-port']}"

    def output(self) -> str:
        return "\n".join(self.seen)

    def read_until(self, wanted: Callable[[str], bool], timeout: float = 60.0) -> str:
        """The first line from now on that `wanted` accepts; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the demo exited {self.proc.wait(5)}:\n{self.output()}")
            self.seen.append(line)
            if wanted(line):
                return line
        raise AssertionError(f"no such line within {timeout} s:\n{self.output()}")

    def wait_banner(self, timeout: float = 60.0) -> Path:
        """Wait for the whole banner; returns the demo's config path."""
        self.read_until(lambda line: line.startswith("Ctrl-C stops everything"), timeout)
        for line in self.seen:
            if line.strip().startswith("config "):
                return Path(line.split(maxsplit=1)[1].strip())
        raise AssertionError(f"no config line in the banner:\n{self.output()}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def interrupt(self, timeout: float = 30.0) -> int:
        """Ctrl-C; waits for the exit and the rest of the output. Returns the exit code."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        with contextlib.suppress(AssertionError):
            self.read_until(lambda line: False, timeout=5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def scripted_autopilot(path: Path, stop: threading.Event) -> int:
    """A stand-in controller: each stdin line is a percentage to write, as the real one does."""
    from proxy.control.edit import set_value
    from proxy.demo.pilot import say
    from proxy.records.files import write_atomically

    say("scripted autopilot: started")
    while not stop.is_set():
        ready, _, _ = select.select([sys.stdin], [], [], 0.2)
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:  # stdin closed: nothing more to do but wait for Ctrl-C
            stop.wait()
            break
        percentage = float(line)
        text = set_value(path.read_text(encoding="utf-8"), ("rollout", "percentage"), percentage)
        write_atomically(path, text)
        say(f"scripted autopilot: percentage {percentage:g}")
    say("scripted autopilot: stopped")
    return 0


def main() -> int:
    from proxy.demo.run import DemoPorts, run_demo
    from proxy.telemetry.logs import setup_logging

    parser = argparse.ArgumentParser()
    for name in PORT_FLAGS:
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--break-signal", action="store_true")
    parser.add_argument("--report-every", type=float, default=1.0)
    args = parser.parse_args()
    setup_logging()
    ports = DemoPorts(
        proxy=args.port, admin=args.admin_port, signal=args.signal_port, legacy=args.legacy_port
    )
    demo = run_demo(
        ports,
        autopilot=scripted_autopilot,
        break_signal=args.break_signal,
        report_every=args.report_every,
    )
    return asyncio.run(demo)


if __name__ == "__main__":
    sys.exit(main())
