"""Streaming throughput: one 1 GiB response body, direct vs nginx vs rollout-proxy.

Starts, on 127.0.0.1 only:
  upstream      nginx serving a 1 GiB file from /dev/shm (sendfile): the cheap source
  nginx-nobuf   nginx proxying it with `proxy_buffering off`: the streaming reference
  nginx-buf     the same nginx, another port, default buffering (reads ahead, temp file)
  rollout       `python -P -m proxy serve -c CONF --grace 0` (percentage 0: legacy, which
                is the file server; timeouts.idle and .total an hour)
and reads the whole body once per configuration and round with `stream_reader.py` (a
socket and `recv_into` one buffer: the cheap client); `direct` reads from the upstream.
The proxy under test is pinned to core 0, the reader and the upstream to core 1, as in
run.py. Rounds rotate the order; ratios are taken within a round, then the median.

    .venv/bin/python bench/stream.py                     # 5 rounds, about 2 minutes
    .venv/bin/python bench/stream.py --rounds 3 --size-mib 256 --json stream.json

See bench/README.md ("Streaming one body").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nginx
from procs import (
    CLK_TCK,
    CoreTime,
    Processes,
    Service,
    cpu_ticks,
    peak_rss_kib,
    reset_peak_rss,
    tree_pids,
)
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

CONFIGS = ("direct", "nginx-nobuf", "nginx-nobuf-64k", "nginx-buf", "rollout")
# Each nginx configuration: one server of the same nginx, with these directives.
NGINX_VARIANTS = {
    "nginx-nobuf": "proxy_buffering off;",
    # proxy_buffers only to satisfy nginx's check on busy buffers; unused without buffering
    "nginx-nobuf-64k": "proxy_buffering off; proxy_buffer_size 64k; proxy_buffers 4 64k;",
    "nginx-buf": "proxy_buffering on;",
}
REFERENCE = "nginx-nobuf"  # the streaming-correct nginx: see README "Streaming one body"
BODY_PATH = "/body.bin"
BLOCK = 1 << 20


@dataclass
class Transfer:
    config: str
    round: int
    bytes: int
    seconds: float
    head_ms: float
    mb_per_s: float
    proxy_cpu_s: float | None  # utime + stime of the proxy's processes over the transfer
    proxy_core_pct: float | None
    peak_rss_mib: float | None
    reader_cpu_pct: float  # the reader's own CPU over the transfer: is the client cheap?
    load_core_pct: float  # core 1 busy (reader + upstream + their softirq)
    upstream: str | None = None


@dataclass
class Setup:
    urls: dict[str, int]  # config -> port
    services: dict[str, Service | None]
    notes: list[str] = field(default_factory=list)


def write_body(directory: Path, size: int) -> Path:
    """`size` bytes of one random MiB repeated (no tool on the path compresses)."""
    path = directory / BODY_PATH.lstrip("/")
    block = os.urandom(BLOCK)
    with path.open("wb") as out:
        for _ in range(size // BLOCK):
            out.write(block)
        out.write(block[: size % BLOCK])
    path.chmod(0o644)
    (directory / "ready").write_text("ok\n")  # what start-up polls, not the big body
    (directory / "ready").chmod(0o644)
    return path


def start_all(procs: Processes, args: argparse.Namespace) -> Setup:
    tmp: Path = args.tmp
    names = ("files", *NGINX_VARIANTS, "rollout", "admin")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    notes: list[str] = []

    write_body(args.body_dir, args.size)
    conf = nginx.write_conf(
        tmp, "files", nginx.file_server_conf(tmp, port=ports["files"], root=args.body_dir)
    )
    upstream = procs.start(
        "upstream", [nginx_bin, "-p", str(tmp), "-c", str(conf)], tmp / "files.out", args.load_cpus
    )
    wait_until_up(upstream, f"http://127.0.0.1:{ports['files']}/ready")
    setup = Setup({"direct": ports["files"]}, {"direct": None}, notes)

    variants = [name for name in NGINX_VARIANTS if name in args.configs]
    if variants:
        servers = {ports[name]: NGINX_VARIANTS[name] for name in variants}
        conf = nginx.write_conf(
            tmp,
            "stream",
            nginx.stream_proxy_conf(tmp, servers=servers, upstream_port=ports["files"]),
        )
        service = procs.start(
            "nginx", [nginx_bin, "-p", str(tmp), "-c", str(conf)], tmp / "stream.out", args.cpus
        )
        for name in variants:
            wait_until_up(service, f"http://127.0.0.1:{ports[name]}/ready")
            setup.urls[name], setup.services[name] = ports[name], service

    if "rollout" in args.configs:
        build = RolloutCommand.prepare(tmp, "rollout", args.rollout_rev, args.rollout_src)
        notes.append(f"rollout: {build.source}")
        config = rollout_config(
            tmp,
            {**ports, "signal": ports["files"], "legacy": ports["files"]},
            "rollout",
            "admin",
            overrides={
                "rollout": {"percentage": 0},
                "timeouts": {"idle": 3600, "total": 3600},
                "guard": {"enabled": False},
            },
        )
        argv = [*build.argv, "serve", "-c", str(config), "--grace", "0"]
        service = procs.start("rollout", argv, tmp / "rollout.log", args.cpus, build.env)
        wait_until_up(service, f"http://127.0.0.1:{ports['admin']}/-/ready", timeout=30)
        setup.urls["rollout"], setup.services["rollout"] = ports["rollout"], service
    setup.services["upstream"] = upstream
    return setup


def read_once(procs: Processes, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run the reader on the load core; its one READER_JSON line."""
    argv = [
        sys.executable,
        str(BENCH / "stream_reader.py"),
        "--port",
        str(port),
        "--path",
        BODY_PATH,
        "--deadline",
        str(args.transfer_timeout),
    ]
    log = args.tmp / "reader.log"
    service = procs.start("reader", argv, log, args.load_cpus)
    try:
        service.proc.wait(args.transfer_timeout + 15)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the reader did not finish in {args.transfer_timeout:.0f} s") from exc
    finally:
        procs.stop(service)
    output = log.read_text(errors="replace")
    log.unlink()
    for line in output.splitlines():
        if line.startswith("READER_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("READER_JSON "))
            return result
    raise BenchError(f"the reader printed no READER_JSON line:\n{output}")


def measure(
    procs: Processes, setup: Setup, name: str, rnd: int, args: argparse.Namespace
) -> Transfer:
    service = setup.services[name]
    pids = tree_pids(service.proc.pid) if service else []
    reset_peak_rss(pids)
    load_core = first_cpu(args.load_cpus)
    cpu_before, load_before = cpu_ticks(pids), CoreTime.read(load_core)
    started = time.monotonic()
    result = read_once(procs, setup.urls[name], args)
    wall = time.monotonic() - started
    load = CoreTime.read(load_core) - load_before
    if "error" in result:
        raise BenchError(f"{name}: {result['error']}")
    if result["status"] != 200 or result["bytes"] != args.size:
        raise BenchError(f"{name}: status {result['status']}, {result['bytes']} of {args.size} B")
    proxy_cpu = sum(cpu_ticks(pids)) - sum(cpu_before) if pids else None
    seconds = result["total_s"]
    return Transfer(
        config=name,
        round=rnd,
        bytes=result["bytes"],
        seconds=seconds,
        head_ms=1000 * result["head_s"],
        mb_per_s=result["bytes"] / seconds / 1e6,
        proxy_cpu_s=proxy_cpu / CLK_TCK if proxy_cpu is not None else None,
        proxy_core_pct=100 * proxy_cpu / CLK_TCK / seconds if proxy_cpu is not None else None,
        peak_rss_mib=peak_rss_kib(pids) / 1024 if pids else None,
        reader_cpu_pct=100 * result["cpu_s"] / max(wall, seconds),
        load_core_pct=load.pct(load.task + load.irq),
        upstream=result.get("upstream"),
    )


def benchmark(procs: Processes, args: argparse.Namespace, results: dict[str, Any]) -> None:
    setup = start_all(procs, args)
    results["notes"] += setup.notes
    for rnd in range(-args.warmup_rounds, args.rounds):
        for name in rotated(args.configs, rnd):
            transfer = measure(procs, setup, name, rnd, args)
            label = "warm-up" if rnd < 0 else f"round {rnd + 1}/{args.rounds}"
            print(
                f"  {label} {name:<12} {transfer.mb_per_s:8,.0f} MB/s  "
                f"proxy core {fmt(transfer.proxy_core_pct)}%",
                file=sys.stderr,
            )
            if rnd >= 0:
                results["transfers"].append(transfer)
    for name, service in setup.services.items():
        if service is not None and service.proc.poll() is not None:
            results["notes"].append(f"{name} exited during the benchmark")


def summarise(transfers: list[Transfer], configs: list[str]) -> dict[str, Any]:
    by_config: dict[str, dict[str, Any]] = {}
    for name in configs:
        runs = [t for t in transfers if t.config == name]
        if not runs:
            continue
        cpu = [t.proxy_cpu_s for t in runs if t.proxy_cpu_s is not None]
        rss = [t.peak_rss_mib for t in runs if t.peak_rss_mib is not None]
        core = [t.proxy_core_pct for t in runs if t.proxy_core_pct is not None]
        by_config[name] = {
            "rounds": len(runs),
            "mb_per_s": median([t.mb_per_s for t in runs]),
            "spread_pct": spread_pct([t.mb_per_s for t in runs]),
            "head_ms": median([t.head_ms for t in runs]),
            "proxy_cpu_s_per_gib": median([c * (1 << 30) / runs[0].bytes for c in cpu]),
            "proxy_core_pct": median(core),
            "peak_rss_mib": max(rss) if rss else None,
            "reader_cpu_pct": median([t.reader_cpu_pct for t in runs]),
            "load_core_pct": median([t.load_core_pct for t in runs]),
        }
    rounds = [
        {t.config: t.mb_per_s for t in transfers if t.round == rnd}
        for rnd in sorted({t.round for t in transfers})
    ]
    ratios: dict[str, Any] = {}
    pairs = [("rollout", base) for base in (*NGINX_VARIANTS, "direct")]
    pairs += [(name, "direct") for name in NGINX_VARIANTS]
    for name, base in pairs:
        if name in by_config and base in by_config:
            value, every = paired_ratio(rounds, name, base)
            ratios[f"{name}/{base}"] = {"median": value, "rounds": every}
    return {"configs": by_config, "ratios": ratios}


def report(results: dict[str, Any]) -> str:
    summary = results["summary"]
    rows = [
        [
            name,
            fmt(s["mb_per_s"]),
            fmt(s["spread_pct"], 1),
            fmt(s["head_ms"], 1),
            fmt(s["proxy_cpu_s_per_gib"], 2),
            fmt(s["proxy_core_pct"]),
            fmt(s["peak_rss_mib"], 1),
            fmt(s["reader_cpu_pct"]),
            fmt(s["load_core_pct"]),
        ]
        for name, s in summary["configs"].items()
    ]
    table = markdown(
        (
            "config",
            "MB/s",
            "±%",
            "head ms",
            "proxy CPU s/GiB",
            "proxy core%",
            "RSS MiB",
            "reader CPU%",
            "load core%",
        ),
        rows,
    )
    ratio_rows = [
        [pair, fmt_ratio(r["median"]), " ".join(f"{x:.2f}" for x in r["rounds"])]
        for pair, r in summary["ratios"].items()
    ]
    lines = [
        f"one {results['settings']['size'] / (1 << 20):,.0f} MiB body, "
        f"{results['settings']['rounds']} round(s), medians (MB = 10^6 bytes)",
        table,
        "",
        markdown(("MB/s ratio", "median", "per round"), ratio_rows),
    ]
    goal = summary["ratios"].get(f"rollout/{REFERENCE}", {}).get("median")
    if goal is not None:
        verdict = "meets" if goal >= 0.7 else "misses"
        lines.append(f"\nrollout/{REFERENCE} = {goal:.2f}x: {verdict} the issue's goal (>= 0.7x)")
    lines += [f"note: {note}" for note in results["notes"]]
    for log, problems in results.get("log_problems", {}).items():
        lines.append(f"{log}: " + "; ".join(problems[:5]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="one large response body: direct vs nginx vs rollout-proxy, loopback",
        epilog="See bench/README.md for how to read the table.",
    )
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (rotating order)")
    parser.add_argument(
        "--warmup-rounds", type=int, default=1, help="unmeasured rounds first (also a check)"
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="body size in MiB")
    parser.add_argument(
        "--only", metavar="NAMES", help=f"comma-separated subset of {','.join(CONFIGS)}"
    )
    parser.add_argument("--rollout-rev", metavar="REV", help="run `git archive REV proxy`")
    parser.add_argument("--rollout-src", type=Path, metavar="DIR", help="run the proxy in DIR")
    parser.add_argument("--cpus", default="0", help="taskset CPU list for the proxy under test")
    parser.add_argument("--load-cpus", default="1", help="taskset CPU list: reader + upstream")
    parser.add_argument(
        "--transfer-timeout", type=float, default=120, help="seconds one transfer may take"
    )
    parser.add_argument("--time-limit", type=float, default=900, help="hard limit, seconds")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON ('-': stdout)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    wanted = args.only.split(",") if args.only else list(CONFIGS)
    unknown = sorted(set(wanted) - set(CONFIGS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    if args.rollout_rev and args.rollout_src:
        parser.error("--rollout-rev and --rollout-src exclude each other")
    if args.rounds < 1 or args.size_mib < 1 or args.warmup_rounds < 0:
        parser.error("--rounds and --size-mib must be positive")
    args.configs = [name for name in CONFIGS if name in wanted]
    args.size = args.size_mib << 20
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not prepare_process(("nginx", "taskset")):
        return 2
    print(
        f"stream: {args.configs}, {args.size_mib} MiB, {args.warmup_rounds}+{args.rounds} "
        f"round(s) (hard limit {args.time_limit:.0f} s)",
        file=sys.stderr,
    )
    args.tmp = Path(tempfile.mkdtemp(prefix="rollout-stream-"))
    args.tmp.chmod(0o755)  # nginx workers run as nobody when started by root
    shm = Path("/dev/shm")
    args.body_dir = Path(
        tempfile.mkdtemp(prefix="rollout-stream-body-", dir=shm if shm.is_dir() else None)
    )
    args.body_dir.chmod(0o755)
    procs = Processes(ROOT)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": versions(),
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k not in ("tmp", "only", "keep_tmp")
        },
        "transfers": [],
        "notes": [f"body in {args.body_dir.parent} (tmpfs: no disk read)"],
    }
    exit_code = 0
    began = time.monotonic()
    try:
        with time_limit(args.time_limit):
            benchmark(procs, args, results)
    except (TimeLimitError, BenchError) as exc:
        results["notes"].append(f"aborted: {exc}")
        print(f"stream: {exc}", file=sys.stderr)
        exit_code = 1
    except KeyboardInterrupt:
        results["notes"].append("interrupted")
        print("stream: interrupted, cleaning up", file=sys.stderr)
        exit_code = 130
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop_all()
        signal.signal(signal.SIGINT, previous)
        shutil.rmtree(args.body_dir, ignore_errors=True)
        results["log_problems"] = log_problems(args.tmp)
        if args.keep_tmp:
            print(f"stream: configs and logs kept in {args.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(args.tmp, ignore_errors=True)
    results["elapsed_seconds"] = round(time.monotonic() - began, 1)
    results["summary"] = summarise(results["transfers"], args.configs)
    results["transfers"] = [asdict(t) for t in results["transfers"]]
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
