"""`rollout demo` as a newcomer runs it: both sides answer through the proxy; Ctrl-C ends all."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable

from proxy.config.load import load_config
from proxy.demo.load import TEST_SESSION
from tests.support import HOST, free_port
from tests.support.demo import DemoProcess, parse_traffic


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


def _share_between(low: int, high: int) -> Callable[[str], bool]:
    def wanted(line: str) -> bool:
        traffic = parse_traffic(line)
        return traffic is not None and traffic.requests > 0 and low <= traffic.signal_share <= high

    return wanted


def _steady_share(demo: DemoProcess, low: int, high: int, lines: int = 3) -> None:
    """Wait for `lines` traffic lines in a row with signal's share within low-high: one
    line may straddle a reload, three in a row are the new percentage."""
    in_range = _share_between(low, high)
    run = 0

    def wanted(line: str) -> bool:
        nonlocal run
        if parse_traffic(line) is None:
            return False
        run = run + 1 if in_range(line) else 0
        return run >= lines

    demo.read_until(wanted)


def test_autopilot_demo_drives_traffic_that_follows_the_percentage() -> None:
    """The scripted controller stands in for `rollout autopilot`: it writes the percentages
    the test sends it, and the demo's own load must follow them through the real proxy."""
    demo = DemoProcess.start_scripted()
    watchdog = threading.Timer(120, demo.proc.kill)
    watchdog.start()
    try:
        config_path = demo.wait_banner()
        out = demo.output()
        assert "Rollout at 0 %" in out
        assert f"rollout approve -c {config_path}" in out
        assert f"rollout autopilot status -c {config_path}" in out
        config = load_config(config_path)
        assert config.autopilot.enabled
        assert config.rollout.percentage == 0
        assert TEST_SESSION in config.rollout.test_sessions
        demo.read_until(lambda line: "scripted autopilot: started" in line)
        # At 0 % only the test session (15 % of the load) reaches signal.
        _steady_share(demo, 5, 25)
        demo.send("50")
        demo.read_until(lambda line: "scripted autopilot: percentage 50" in line)
        _steady_share(demo, 42, 72)  # 15 % + 85 % of half the users
        demo.send("100")
        _steady_share(demo, 100, 100)
        code = demo.interrupt()
    finally:
        watchdog.cancel()
        demo.close()
    out = demo.output()
    assert code == 0, out
    assert "scripted autopilot: stopped" in out  # the stop event reached the controller
    assert "Traceback" not in out
    for port in demo.ports.values():
        assert not _listening(port), f"port {port} still open after Ctrl-C"


def test_break_signal_makes_signal_fail_from_30_percent() -> None:
    demo = DemoProcess.start_scripted("--break-signal")
    watchdog = threading.Timer(120, demo.proc.kill)
    watchdog.start()
    try:
        demo.wait_banner()
        demo.read_until(lambda line: "scripted autopilot: started" in line)
        demo.send("10")
        demo.read_until(_share_between(15, 35))
        assert "signal API now fails" not in demo.output()
        assert all((t := parse_traffic(line)) is None or t.fallbacks == 0 for line in demo.seen)
        demo.send("30")
        demo.read_until(lambda line: "signal API now fails 15 % of requests" in line)
        # Signal's 500s fall back to legacy, and the proxy's own guard trips (either first).
        demo.read_until(lambda line: (t := parse_traffic(line)) is not None and t.fallbacks > 0)
        demo.read_until(lambda line: "guard tripped: error rate" in demo.output())
        code = demo.interrupt()
    finally:
        watchdog.cancel()
        demo.close()
    assert code == 0, demo.output()
    assert "Traceback" not in demo.output()


def test_break_signal_without_autopilot_is_a_usage_error() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--break-signal", f"--port={free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.strip().splitlines() == ["rollout demo: --break-signal needs --autopilot"]


def test_the_real_autopilot_walks_the_demo_and_rolls_back_a_broken_signal() -> None:
    """`rollout demo --autopilot --break-signal` with the real controller: it promotes
    0 -> 10 -> 30 on the demo's own traffic, signal breaks at 30 %, and it rolls back."""
    demo = DemoProcess.start_rollout_demo("--autopilot", "--break-signal")
    watchdog = threading.Timer(240, demo.proc.kill)
    watchdog.start()
    try:
        config = demo.wait_banner()
        demo.read_until(lambda line: "autopilot starts at 0 %" in line)
        demo.read_until(lambda line: "PROMOTE 0 % -> 10 %" in line, timeout=120)
        demo.read_until(lambda line: "PROMOTE 10 % -> 30 %" in line, timeout=120)
        demo.read_until(lambda line: "signal API now fails 15 % of requests" in line, timeout=30)
        rollback = demo.read_until(lambda line: "ROLLBACK 30 % -> 10 %" in line, timeout=90)
        assert "failed analyses in a row" in rollback
        status = subprocess.run(
            [sys.executable, "-m", "proxy", "autopilot", "status", "--json", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        code = demo.interrupt()
    finally:
        watchdog.cancel()
        demo.close()
    assert code == 0, demo.output()
    assert "Traceback" not in demo.output()
    view = json.loads(status.stdout)
    assert view["percentage"] == 10
    assert view["pause"] == "rollback", view
