"""`rollout serve --workers N`: N proxy processes sharing the listen port.

Each worker is a full `rollout serve` process with its own guard, window and pools; the
kernel spreads connections over them (SO_REUSEPORT). Metrics use prometheus_client's
multiprocess mode: every worker writes its values to files in a directory this
supervisor creates, and worker 0, the only one with the admin listener, serves their
aggregate on /metrics. (Per-worker admin ports would make Prometheus and every operator
tool learn N addresses per host; one aggregated endpoint keeps SPEC 8 as it is.)
`/-/status` and `/-/reload` answer for worker 0; every worker follows file changes
through its own watcher and receives SIGHUP from here.

The supervisor forwards SIGTERM/SIGINT/SIGHUP, and if a worker dies on its own it stops
the others and exits non-zero, so the orchestrator restarts the whole set.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

log = logging.getLogger("rollout.workers")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def run_workers(path: Path, workers: int, *, grace: float, poll_interval: float, loop: str) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="rollout-metrics-")
    env = {**os.environ, MULTIPROC_ENV: metrics_dir}
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        for index in range(workers):
            procs.append(
                subprocess.Popen(  # noqa: S603 (our interpreter, our arguments)
                    [
                        sys.executable,
                        "-m",
                        "proxy",
                        "serve",
                        "-c",
                        str(path),
                        "--grace",
                        str(grace),
                        "--poll-interval",
                        str(poll_interval),
                        "--loop",
                        loop,
                        "--worker-index",
                        str(index),
                    ],
                    env=env,
                )
            )
        log.info("started %d workers: pids %s", workers, ", ".join(str(p.pid) for p in procs))
        return _supervise(procs, lambda: stopping)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(procs: list[subprocess.Popen[bytes]], stopping: Callable[[], bool]) -> int:
    while True:
        codes = [p.poll() for p in procs]
        if all(code is not None for code in codes):
            return max(code or 0 for code in codes)
        if not stopping() and any(code is not None for code in codes):
            dead = [p.pid for p, code in zip(procs, codes, strict=True) if code is not None]
            log.error("worker(s) %s exited; stopping the others", dead)
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait()
            return 1
        time.sleep(0.2)
