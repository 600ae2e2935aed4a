"""`rollout demo` as a newcomer runs it: both sides answer through the proxy; Ctrl-C ends all."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import urllib.request

from tests.support import HOST, free_port


def _get(url: str, session: str) -> tuple[str, str]:
    req = urllib.request.Request(url, headers={"X-Session-Id": session})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.headers["X-Rollout-Upstream"], resp.headers["X-Served-By"]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def test_demo_serves_both_sides_and_stops_cleanly_on_ctrl_c() -> None:
    ports = {name: free_port() for name in ("port", "admin-port", "signal-port", "legacy-port")}
    args = [f"--{name}={port}" for name, port in ports.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(60, proc.kill)  # never hang the suite on a stuck demo
    watchdog.start()
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # the banner comes once everything listens
            seen.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        assert any("rollout demo is running" in line for line in seen), "".join(seen)
        base = f"http://{HOST}:{ports['port']}"
        assert _get(base + "/signals?limit=3", "alice") == ("legacy", "legacy")
        assert _get(base + "/signals/stats", "qa-tester-1") == ("signal", "signal")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    out = "".join(seen) + out
    assert f"curl -si {base}/signals?limit=3 -H 'X-Session-Id: alice'" in out
    assert "Traceback" not in out
    for port in ports.values():
        assert not _listening(port), f"port {port} still open after Ctrl-C"
