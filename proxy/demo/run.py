"""`rollout demo`: the sample Signal and Legacy APIs plus the proxy, all on loopback.

With an `AutopilotRunner` (`rollout demo --autopilot`) the demo also drives its own
traffic and runs the autopilot on a short plan (`pilot.py`), starting from 0 %.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proxy.app import serve
from proxy.config.load import parse_config
from proxy.demo.apis import Faults, start_apis
from proxy.demo.load import TEST_SESSION, LoadPlan
from proxy.demo.pilot import (
    BREAK_AT,
    BREAK_RATE,
    REPORT_EVERY,
    AutopilotRunner,
    PilotedDemo,
    PilotPlan,
)
from proxy.rollout.routing import bucket, threshold

log = logging.getLogger("rollout.demo")

HOST = "127.0.0.1"
EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "rollout.yaml"  # in the repo

# Short enough that 0 -> 10 -> 30 -> 50 -> 80 takes about two minutes under the built-in
# load (a stage: 20 s bake, then 3 passes 3 s apart), long enough that each analysis sees
# min_requests signal attempts even at 0 %, where only the test session reaches signal.
DEMO_AUTOPILOT: dict[str, Any] = {
    "enabled": True,
    "interval": 3,
    "bake": 20,
    "checks": 3,
    "failure_limit": 2,
    "min_requests": 20,
    "max_inconclusive": 30,
    # The sample APIs answer in about a millisecond, inside the histogram's first bucket
    # (5 ms), where a few slower answers on a busy laptop double an interpolated p95: a
    # wider ratio keeps such noise from holding (or failing) the demo.
    "compare_legacy": {"max_error_rate_delta": 0.005, "max_p95_ratio": 2.0},
    "gates": [100],
    "on_failure": "previous",
}


@dataclass(frozen=True, slots=True)
class DemoPorts:
    proxy: int = 8080
    admin: int = 9180
    signal: int = 8000
    legacy: int = 8001


def demo_config_text(
    ports: DemoPorts, example: Path = EXAMPLE_CONFIG, *, autopilot: bool = False
) -> str:
    """The example config with every address moved to loopback and the demo's ports.

    `autopilot`: start at 0 % with the demo's test session and `DEMO_AUTOPILOT`.
    """
    data: dict[str, Any] = {}
    if example.is_file():
        data = yaml.safe_load(example.read_text(encoding="utf-8")) or {}
    data["listen"] = {"host": HOST, "port": ports.proxy}
    data["admin"] = {**data.get("admin", {}), "host": HOST, "port": ports.admin}
    data["upstreams"] = {
        "signal": {"url": f"http://{HOST}:{ports.signal}"},
        "legacy": {"url": f"http://{HOST}:{ports.legacy}"},
    }
    # Shadow comparison on, so a newcomer sees the sample APIs' one deliberate difference
    # (signal rounds `confidence` to 2 decimals, legacy to 3) in `rollout diff`. `source`
    # and `service` name the side; timestamps differ on every call.
    data["shadow"] = {
        "enabled": True,
        "percentage": 100,
        "ignore": ["source", "service", "generated_at", "time"],
        "learn_noise": True,
    }
    if autopilot:
        rollout = data.setdefault("rollout", {})
        rollout["percentage"] = 0
        rollout["test_sessions"] = [*rollout.get("test_sessions", []), TEST_SESSION]
        data["autopilot"] = DEMO_AUTOPILOT
        # Mirroring every legacy answer would double the built-in load for no new lesson.
        data["shadow"]["percentage"] = 10
    header = (
        "# rollout demo configuration: edit and save, the proxy applies it within 2 s.\n"
        "# Try `rollout:\\n  percentage: 50` and watch `X-Rollout-Upstream` change.\n"
    )
    text = header + yaml.safe_dump(data, sort_keys=False)
    parse_config(text, "demo config")  # fail here, not half way through start-up
    return text


def _session_on_signal(percentage: float, seed: str) -> str | None:
    for i in range(1, 10_000):
        candidate = f"user-{i}"
        if bucket(candidate, seed) < threshold(percentage):
            return candidate
    return None


def banner(ports: DemoPorts, config_path: Path, config_text: str, more: str = "") -> str:
    """What to try; `more` goes before the last line ("Ctrl-C stops everything.")."""
    config = parse_config(config_text, str(config_path))
    pct = config.rollout.percentage
    seed = config.rollout.seed
    on_signal = _session_on_signal(pct, seed)
    base = f"http://{HOST}:{ports.proxy}"
    lines = [
        "",
        "rollout demo is running",
        f"  proxy       {base}          (public traffic)",
        f"  admin       http://{HOST}:{ports.admin}          (/metrics, /-/status)",
        f"  status page http://{HOST}:{ports.admin}/         (live status page, in a browser)",
        f"  signal API  http://{HOST}:{ports.signal}          (new)",
        f"  legacy API  http://{HOST}:{ports.legacy}          (old)",
        f"  config      {config_path}",
        "",
        f"Rollout at {pct:g} %. Try (X-Rollout-Upstream says who answered):",
        f"  curl -si {base}/signals?limit=3 -H 'X-Session-Id: alice'"
        f"   # bucket {bucket('alice', seed)} -> legacy",
    ]
    if on_signal is not None:
        lines.append(
            f"  curl -si {base}/signals?limit=3 -H 'X-Session-Id: {on_signal}'"
            f"   # bucket {bucket(on_signal, seed)} -> signal"
        )
    if config.rollout.test_sessions:
        tester = sorted(config.rollout.test_sessions)[0]
        lines.append(
            f"  curl -si {base}/signals/stats -H 'X-Session-Id: {tester}'"
            "   # test session -> signal"
        )
    lines += [
        f"  curl -si {base}/health                 # no id: one is minted (Set-Cookie)",
        f"  curl -N  {base}/signals/live?count=5 -H 'X-Session-Id: alice'"
        "   # server-sent events, one a second",
        f"  ws://{HOST}:{ports.proxy}/signals/subscribe   # WebSocket: a signal a second",
        f"  curl -s  http://{HOST}:{ports.admin}/-/status",
        f"  rollout explain alice -c {config_path}",
        f"  rollout diff -c {config_path}          # shadow: signal vs legacy answers",
        f"  edit {config_path} (rollout.percentage) and repeat",
        "",
        *([more] if more else []),
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def autopilot_banner(
    ports: DemoPorts, config_path: Path, *, break_signal: bool, report_every: float = REPORT_EVERY
) -> str:
    """What `--autopilot` adds to the banner: what will happen and how to watch it."""
    plan = LoadPlan(base_url="")
    c = DEMO_AUTOPILOT
    lines = [
        "The autopilot drives this demo. Built-in traffic goes through the proxy "
        f"(~{plan.rate:g} req/s from {plan.users} users",
        f"and the test session {plan.test_session}); the autopilot analyses signal every "
        f"{c['interval']} s and walks the plan",
        f"0 -> 10 -> 30 -> 50 -> 80 % by itself ({c['bake']} s bake and {c['checks']} passes "
        "a stage), about two minutes.",
        "It waits before 100 % (a gate) until you run, in another terminal:",
        f"  rollout approve -c {config_path}",
        "Watch it:",
        f"  http://{HOST}:{ports.admin}/  (live status page)",
        f"  rollout autopilot status -c {config_path}",
        f"  rollout history -c {config_path}",
        f"One line per autopilot decision, a traffic line every {report_every:g} s.",
    ]
    if break_signal:
        lines.append(
            f"--break-signal: at {BREAK_AT:g} % the signal API starts failing "
            f"{BREAK_RATE * 100:g} % of requests;"
        )
        lines.append("the guard trips and the autopilot rolls back.")
    return "\n".join(lines) + "\n"


async def run_demo(
    ports: DemoPorts,
    *,
    autopilot: AutopilotRunner | None = None,
    break_signal: bool = False,
    report_every: float = REPORT_EVERY,
) -> int:
    """Serve until SIGINT/SIGTERM; exit code 0 then, 2 when a port is taken.

    `autopilot`: the controller, run in a thread on the demo's config with a stop event
    set on Ctrl-C; the demo then brings its own traffic. `break_signal` (with `autopilot`):
    the signal API fails `BREAK_RATE` of requests once the live percentage is `BREAK_AT`.
    """
    if break_signal and autopilot is None:
        raise ValueError("break_signal needs an autopilot")
    text = demo_config_text(ports, autopilot=autopilot is not None)
    with tempfile.TemporaryDirectory(prefix="rollout-demo-") as tmp:
        config_path = Path(tmp) / "rollout.yaml"
        config_path.write_text(text, encoding="utf-8")
        faults = Faults()
        pilot = None
        if autopilot is not None:
            plan = PilotPlan(
                config_path=config_path,
                proxy_url=f"http://{HOST}:{ports.proxy}",
                admin_url=f"http://{HOST}:{ports.admin}",
                runner=autopilot,
                break_signal=break_signal,
                report_every=report_every,
            )
            pilot = PilotedDemo(plan, faults)

        def ready() -> None:
            more = ""
            if pilot is not None:
                more = autopilot_banner(
                    ports, config_path, break_signal=break_signal, report_every=report_every
                )
            print(banner(ports, config_path, text, more), flush=True)
            if pilot is not None:
                pilot.start()

        try:
            runners = await start_apis(HOST, ports.signal, ports.legacy, signal_faults=faults)
        except OSError as exc:
            log.error(
                "cannot start the sample APIs on ports %d/%d: %s "
                "(choose others with --signal-port / --legacy-port)",
                ports.signal,
                ports.legacy,
                exc,
            )
            return 2
        try:
            return await serve(config_path, grace=0.0, on_ready=ready)
        finally:
            if pilot is not None:
                await pilot.stop()
            for runner in runners:
                await runner.cleanup()
