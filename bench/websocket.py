"""WebSocket messages: direct vs nginx's WebSocket proxying vs rollout-proxy, loopback.

Starts, on 127.0.0.1 only:
  echo     `ws_echo.py`: the upstream, a raw RFC 6455 echo on uvloop (`--echo websockets`:
           the `websockets` library's server instead)
  nginx    nginx's documented WebSocket proxy (`proxy_http_version 1.1`, `Upgrade` and
           `Connection "upgrade"` passed on)
  rollout  `python -P -m proxy serve -c CONF --grace 0` (percentage 0, both upstreams the
           echo, timeouts.idle an hour, guard off)
checks each with the `websockets` client (handshake, one echo), then runs `ws_load.py`
(closed loop per connection: send, wait for the echo, time it) at each `--levels`
connection count, `--rounds` times in rotating order. `direct` is the load straight at
the echo. The proxy under test is pinned to core 0; the load and the echo to core 1.

A configuration whose handshake fails (rollout before it relays upgrades) is reported
with the answer it gave and left out; the others still run.

    .venv/bin/python bench/websocket.py                 # 1 and 100 connections, ~3 min
    .venv/bin/python bench/websocket.py --rounds 5 --duration 10 --json ws.json

See bench/README.md ("WebSocket messages").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nginx
import websockets
import yaml
from procs import CLK_TCK, CoreTime, Processes, Service, cpu_ticks, tree_pids
from results import log_problems
from rounds import fmt, fmt_ratio, markdown, median, paired_ratio, rotated, spread_pct
from run import (
    BENCH,
    ROOT,
    BenchError,
    RolloutCommand,
    TimeLimitError,
    first_cpu,
    free_ports,
    prepare_process,
    rollout_config,
    time_limit,
    versions,
    wait_until_up,
)
from websockets.asyncio.client import connect

CONFIGS = ("direct", "nginx", "rollout")
WS_PATH = "/ws"


@dataclass
class WsRun:
    config: str
    connections: int
    round: int
    msgs_per_s: float
    messages: int
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float
    proxy_cpu_us_per_msg: float | None
    proxy_core_pct: float | None
    load_core_pct: float
    load_cpu_pct: float  # the load generator's own CPU share of its measured window
    lost: list[str]
    stalled: int


def wait_for_port(service: Service, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise BenchError(f"{service.name} exited ({service.proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{service.name} not listening on {port} after {timeout:.0f} s")


def check_echo(port: int) -> str | None:
    """Handshake and one echo with the `websockets` client; None when fine, else why not."""

    async def probe() -> str | None:
        message = os.urandom(64)
        async with connect(
            f"ws://127.0.0.1:{port}{WS_PATH}",
            compression=None,
            open_timeout=5,
            close_timeout=2,
            additional_headers={"X-Session-Id": "ws-bench-check"},
        ) as ws:
            await ws.send(message)
            answer = await asyncio.wait_for(ws.recv(), 5)
            return None if answer == message else f"echo differs: {answer[:40]!r}"

    try:
        return asyncio.run(probe())
    except websockets.InvalidStatus as exc:
        response = exc.response
        return f"handshake answered {response.status_code} {response.reason_phrase}"
    except (OSError, TimeoutError, websockets.WebSocketException) as exc:
        return f"{type(exc).__name__}: {exc}"


def start_all(procs: Processes, args: argparse.Namespace) -> tuple[dict[str, int], dict[str, Any]]:
    """Start the echo and the proxies; (port per configuration, service per name)."""
    tmp: Path = args.tmp
    names = ("echo", "nginx", "rollout", "admin")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    services: dict[str, Any] = {"direct": None}
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"

    echo_argv = [sys.executable, str(BENCH / "ws_echo.py"), "--port", str(ports["echo"])]
    echo = procs.start("echo", [*echo_argv, "--impl", args.echo], tmp / "echo.log", args.load_cpus)
    wait_for_port(echo, ports["echo"])
    services["echo"] = echo
    targets = {"direct": ports["echo"]}

    if "nginx" in args.configs:
        conf = nginx.write_conf(
            tmp,
            "websocket",
            nginx.websocket_proxy_conf(
                tmp, listen_port=ports["nginx"], upstream_port=ports["echo"]
            ),
        )
        service = procs.start(
            "nginx", [nginx_bin, "-p", str(tmp), "-c", str(conf)], tmp / "nginx.out", args.cpus
        )
        wait_for_port(service, ports["nginx"])
        services["nginx"], targets["nginx"] = service, ports["nginx"]

    if "rollout" in args.configs:
        build = RolloutCommand.prepare(tmp, "rollout", args.rollout_rev, args.rollout_src)
        args.notes.append(f"rollout: {build.source}")
        overrides: dict[str, dict[str, Any]] = {
            "rollout": {"percentage": 0},
            "timeouts": {"idle": 3600, "total": 3600},
            "guard": {"enabled": False},
        }
        # The `upgrade` section (SPEC 12) only where the checkout's config has one: a
        # build from before it would reject the key.
        if "upgrade" in yaml.safe_load((ROOT / "config" / "rollout.yaml").read_text()):
            overrides["upgrade"] = {"enabled": True, "idle_timeout": 3600}
        config = rollout_config(
            tmp,
            {**ports, "signal": ports["echo"], "legacy": ports["echo"]},
            "rollout",
            "admin",
            overrides=overrides,
        )
        argv = [*build.argv, "serve", "-c", str(config), "--grace", "0"]
        service = procs.start("rollout", argv, tmp / "rollout.log", args.cpus, build.env)
        wait_until_up(service, f"http://127.0.0.1:{ports['admin']}/-/ready", timeout=30)
        services["rollout"], targets["rollout"] = service, ports["rollout"]
    return targets, services


def run_load(
    procs: Processes, port: int, connections: int, args: argparse.Namespace
) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(BENCH / "ws_load.py"),
        "--port",
        str(port),
        "--path",
        WS_PATH,
        "--connections",
        str(connections),
        "--size",
        str(args.size),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
        "--max-messages",
        str(args.max_messages),
    ]
    log = args.tmp / "load.log"
    service = procs.start("load", argv, log, args.load_cpus)
    try:
        service.proc.wait(args.warmup + args.duration + 40)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"ws_load did not finish: {argv}") from exc
    finally:
        procs.stop(service)
    output = log.read_text(errors="replace")
    log.unlink()
    for line in output.splitlines():
        if line.startswith("LOAD_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("LOAD_JSON "))
            return result
    raise BenchError(f"ws_load printed no LOAD_JSON line:\n{output[-2000:]}")


def measure(
    procs: Processes,
    targets: dict[str, int],
    services: dict[str, Any],
    name: str,
    connections: int,
    rnd: int,
    args: argparse.Namespace,
) -> WsRun | str:
    """One load run; the load generator's error (a failed handshake...) as a string."""
    service: Service | None = services.get(name)
    pids = tree_pids(service.proc.pid) if service else []
    load_core = first_cpu(args.load_cpus)
    # The counters span warm-up + measured window; ws_load reports the measured one only,
    # so proxy CPU per message is taken over everything it relayed: close enough, and the
    # same for every proxy. The load core share is over the whole run too.
    cpu_before, load_before = cpu_ticks(pids), CoreTime.read(load_core)
    started = time.monotonic()
    result = run_load(procs, targets[name], connections, args)
    wall = time.monotonic() - started
    load = CoreTime.read(load_core) - load_before
    if "error" in result:
        return str(result["error"])
    proxy_cpu_s = (sum(cpu_ticks(pids)) - sum(cpu_before)) / CLK_TCK if pids else None
    rate = result["messages"] / result["seconds"] if result["seconds"] else 0.0
    # Messages over the whole run, estimated at the measured rate (warm-up included).
    relayed = rate * (args.warmup + result["seconds"])
    return WsRun(
        config=name,
        connections=connections,
        round=rnd,
        msgs_per_s=rate,
        messages=result["messages"],
        p50_us=result["p50_us"],
        p99_us=result["p99_us"],
        p999_us=result["p999_us"],
        max_us=result["max_us"],
        proxy_cpu_us_per_msg=1e6 * proxy_cpu_s / relayed if proxy_cpu_s and relayed else None,
        proxy_core_pct=100 * proxy_cpu_s / wall if proxy_cpu_s is not None else None,
        load_core_pct=load.pct(load.task + load.irq),
        load_cpu_pct=100 * result["cpu_s"] / result["seconds"] if result["seconds"] else 0.0,
        lost=result["lost"],
        stalled=result["stalled"],
    )


def benchmark(procs: Processes, args: argparse.Namespace, results: dict[str, Any]) -> None:
    targets, services = start_all(procs, args)
    runnable = []
    for name in args.configs:
        problem = check_echo(targets[name])
        if problem is None:
            runnable.append(name)
        else:
            results["failed"][name] = problem
            print(f"websocket: {name}: {problem}; left out", file=sys.stderr)
    for connections in args.levels:
        for rnd in range(args.rounds):
            for name in rotated(runnable, rnd):
                run = measure(procs, targets, services, name, connections, rnd, args)
                if isinstance(run, str):
                    results["failed"].setdefault(name, f"c={connections}: {run}")
                    print(f"  c={connections} {name}: {run}", file=sys.stderr)
                    continue
                results["runs"].append(run)
                print(
                    f"  c={connections:<4} round {rnd + 1}/{args.rounds} {name:<8} "
                    f"{run.msgs_per_s:9,.0f} msg/s  p50 {run.p50_us:8,.0f} µs  "
                    f"p99 {run.p99_us:8,.0f} µs",
                    file=sys.stderr,
                )
    for name, service in services.items():
        if service is not None and service.proc.poll() is not None:
            args.notes.append(f"{name} exited during the benchmark ({service.proc.returncode})")


def summarise(runs: list[WsRun], levels: list[int], configs: list[str]) -> list[dict[str, Any]]:
    summary = []
    for connections in levels:
        level = [r for r in runs if r.connections == connections]
        rounds = sorted({r.round for r in level})
        by_round = [{r.config: r for r in level if r.round == rnd} for rnd in rounds]
        rows: dict[str, dict[str, Any]] = {}
        for name in configs:
            mine = [r for r in level if r.config == name]
            if not mine:
                continue
            added: dict[str, float | None] = {}
            for key in ("p50_us", "p99_us"):
                diffs = [
                    getattr(pair[name], key) - getattr(pair["direct"], key)
                    for pair in by_round
                    if name in pair and "direct" in pair and name != "direct"
                ]
                added[key] = median(diffs)
            cpu = [r.proxy_cpu_us_per_msg for r in mine if r.proxy_cpu_us_per_msg is not None]
            core = [r.proxy_core_pct for r in mine if r.proxy_core_pct is not None]
            rows[name] = {
                "rounds": len(mine),
                "msgs_per_s": median([r.msgs_per_s for r in mine]),
                "spread_pct": spread_pct([r.msgs_per_s for r in mine]),
                "p50_us": median([r.p50_us for r in mine]),
                "p99_us": median([r.p99_us for r in mine]),
                "added_p50_us": added["p50_us"],
                "added_p99_us": added["p99_us"],
                "proxy_cpu_us_per_msg": median(cpu),
                "proxy_core_pct": median(core),
                "load_core_pct": median([r.load_core_pct for r in mine]),
                "load_cpu_pct": median([r.load_cpu_pct for r in mine]),
                "lost": sum(len(r.lost) for r in mine),
                "stalled": sum(r.stalled for r in mine),
            }
        ratios: dict[str, Any] = {}
        for key in ("p50_us", "p99_us"):
            added_by_round = [
                {
                    n: getattr(pair[n], key) - getattr(pair["direct"], key)
                    for n in ("rollout", "nginx")
                    if n in pair
                }
                for pair in by_round
                if "direct" in pair
            ]
            value, every = paired_ratio(added_by_round, "rollout", "nginx")
            ratios[f"rollout/nginx added_{key}"] = {"median": value, "rounds": every}
        rates = [{n: r.msgs_per_s for n, r in pair.items()} for pair in by_round]
        for base in ("nginx", "direct"):
            value, every = paired_ratio(rates, "rollout", base)
            ratios[f"rollout/{base} msgs_per_s"] = {"median": value, "rounds": every}
        summary.append({"connections": connections, "configs": rows, "ratios": ratios})
    return summary


def report(results: dict[str, Any]) -> str:
    headers = (
        "config",
        "conns",
        "msgs/s",
        "±%",
        "p50 µs",
        "p99 µs",
        "+p50 µs",
        "+p99 µs",
        "CPU µs/msg",
        "proxy core%",
        "load core%",
        "lost",
    )
    rows = []
    ratio_rows = []
    for level in results["summary"]:
        for name, s in level["configs"].items():
            rows.append(
                [
                    name,
                    str(level["connections"]),
                    fmt(s["msgs_per_s"]),
                    fmt(s["spread_pct"], 1),
                    fmt(s["p50_us"]),
                    fmt(s["p99_us"]),
                    fmt(s["added_p50_us"]),
                    fmt(s["added_p99_us"]),
                    fmt(s["proxy_cpu_us_per_msg"], 1),
                    fmt(s["proxy_core_pct"]),
                    fmt(s["load_core_pct"]),
                    str(s["lost"] + s["stalled"]),
                ]
            )
        for pair, r in level["ratios"].items():
            if r["median"] is not None:
                ratio_rows.append(
                    [
                        f"c={level['connections']} {pair}",
                        fmt_ratio(r["median"]),
                        " ".join(f"{x:.2f}" for x in r["rounds"]),
                    ]
                )
    s = results["settings"]
    lines = [
        f"{s['size']}-byte binary messages, echo upstream `{s['echo']}`, {s['rounds']} round(s) "
        f"of {s['warmup']:g}+{s['duration']:g} s per level, medians over rounds",
        markdown(headers, rows),
    ]
    if ratio_rows:
        lines += ["", markdown(("ratio", "median", "per round"), ratio_rows)]
    last = next((lvl for lvl in results["summary"] if lvl["connections"] == 100), None)
    goal = last["ratios"].get("rollout/nginx added_p50_us", {}).get("median") if last else None
    if goal is not None:
        verdict = "meets" if goal <= 1.5 else "misses"
        lines.append(
            f"\nadded p50 rollout/nginx at 100 connections = {goal:.2f}x: {verdict} "
            "the issue's goal (<= 1.5x)"
        )
    for name, problem in results["failed"].items():
        lines.append(f"NOT MEASURED: {name}: {problem}")
    lines += [f"note: {note}" for note in results["notes"]]
    for log, problems in results.get("log_problems", {}).items():
        lines.append(f"{log}: " + "; ".join(problems[:5]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="WebSocket echo messages: direct vs nginx vs rollout-proxy, loopback",
        epilog="See bench/README.md for how to read the table.",
    )
    parser.add_argument("--levels", default="1,100", help="connection counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per level (rotating)")
    parser.add_argument("--duration", type=float, default=5, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1, help="unrecorded seconds first")
    parser.add_argument(
        "--max-messages", type=int, default=1_000_000, help="recorded messages per connection"
    )
    parser.add_argument("--size", type=int, default=64, help="payload bytes per message")
    parser.add_argument("--echo", choices=("raw", "websockets"), default="raw", help="upstream")
    parser.add_argument("--only", metavar="NAMES", help=f"subset of {','.join(CONFIGS)}")
    parser.add_argument("--rollout-rev", metavar="REV", help="run `git archive REV proxy`")
    parser.add_argument("--rollout-src", type=Path, metavar="DIR", help="run the proxy in DIR")
    parser.add_argument("--cpus", default="0", help="taskset CPU list for the proxy under test")
    parser.add_argument("--load-cpus", default="1", help="taskset CPU list: load + echo")
    parser.add_argument("--time-limit", type=float, help="hard limit, seconds (default: auto)")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON ('-': stdout)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    wanted = args.only.split(",") if args.only else list(CONFIGS)
    unknown = sorted(set(wanted) - set(CONFIGS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    if args.rollout_rev and args.rollout_src:
        parser.error("--rollout-rev and --rollout-src exclude each other")
    try:
        args.levels = [int(n) for n in args.levels.split(",") if n]
    except ValueError:
        parser.error("--levels: comma-separated integers")
    if not args.levels or min(args.levels) < 1 or args.rounds < 1 or args.duration <= 0:
        parser.error("--levels, --rounds and --duration must be positive")
    # direct is the baseline of every added latency, so it always runs.
    args.configs = [name for name in CONFIGS if name in wanted or name == "direct"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not prepare_process(("nginx", "taskset")):
        return 2
    runs = len(args.levels) * args.rounds * len(args.configs)
    estimate = 15 + runs * (args.warmup + args.duration + 1.5)
    limit = args.time_limit or 2 * estimate + 60
    print(
        f"websocket: {args.configs} at connections {args.levels}, {args.rounds} round(s) of "
        f"{args.warmup:g}+{args.duration:g} s: about {estimate / 60:.1f} min "
        f"(hard limit {limit:.0f} s)",
        file=sys.stderr,
    )
    args.tmp = Path(tempfile.mkdtemp(prefix="rollout-ws-"))
    args.tmp.chmod(0o755)  # nginx workers run as nobody when started by root
    args.notes = []
    procs = Processes(ROOT)
    machine = versions()
    machine["websockets"] = websockets.__version__
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine,
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k not in ("tmp", "only", "keep_tmp", "notes")
        },
        "runs": [],
        "failed": {},
        "notes": args.notes,
    }
    exit_code = 0
    began = time.monotonic()
    try:
        with time_limit(limit):
            benchmark(procs, args, results)
    except (TimeLimitError, BenchError) as exc:
        args.notes.append(f"aborted: {exc}")
        print(f"websocket: {exc}", file=sys.stderr)
        exit_code = 1
    except KeyboardInterrupt:
        args.notes.append("interrupted")
        print("websocket: interrupted, cleaning up", file=sys.stderr)
        exit_code = 130
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop_all()
        signal.signal(signal.SIGINT, previous)
        results["log_problems"] = log_problems(args.tmp)
        if args.keep_tmp:
            print(f"websocket: configs and logs kept in {args.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(args.tmp, ignore_errors=True)
    results["elapsed_seconds"] = round(time.monotonic() - began, 1)
    results["summary"] = summarise(results["runs"], args.levels, args.configs)
    results["runs"] = [asdict(r) for r in results["runs"]]
    if results["failed"] and exit_code == 0:
        exit_code = 3  # something was not measured: say so to a script as well
    document = json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n"
    if args.json == "-":
        sys.stdout.write(document)
    else:
        print(report(results))
        print(f"elapsed {results['elapsed_seconds']:.0f} s")
        if args.json:
            Path(args.json).write_text(document)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
