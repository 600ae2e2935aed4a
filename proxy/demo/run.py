"""`rollout demo`: the sample Signal and Legacy APIs plus the proxy, all on loopback."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proxy.app import serve
from proxy.config.load import parse_config
from proxy.demo.apis import start_apis
from proxy.rollout.routing import bucket, threshold

log = logging.getLogger("rollout.demo")

HOST = "127.0.0.1"
EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "rollout.yaml"  # in the repo


@dataclass(frozen=True, slots=True)
class DemoPorts:
    proxy: int = 8080
    admin: int = 9180
    signal: int = 8000
    legacy: int = 8001


def demo_config_text(ports: DemoPorts, example: Path = EXAMPLE_CONFIG) -> str:
    """The example config with every address moved to loopback and the demo's ports."""
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


def banner(ports: DemoPorts, config_path: Path, config_text: str) -> str:
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
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


async def run_demo(ports: DemoPorts) -> int:
    text = demo_config_text(ports)
    with tempfile.TemporaryDirectory(prefix="rollout-demo-") as tmp:
        config_path = Path(tmp) / "rollout.yaml"
        config_path.write_text(text, encoding="utf-8")
        try:
            runners = await start_apis(HOST, ports.signal, ports.legacy)
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
            return await serve(
                config_path,
                grace=0.0,
                on_ready=lambda: print(banner(ports, config_path, text), flush=True),
            )
        finally:
            for runner in runners:
                await runner.cleanup()
