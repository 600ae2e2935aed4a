"""TLS to upstreams: rollout-proxy's req/s with pooled TLS upstream connections vs plain.

Starts, on 127.0.0.1 only:
  upstream   one nginx answering run.py's fixed 208-byte body on four ports: signal and
             legacy in plain HTTP, and the same two over TLS (a certificate for 127.0.0.1
             from a throwaway CA made with trustme in the temp directory)
  plain      `rollout serve` with http:// upstreams
  tls        `rollout serve` with https:// upstreams, `tls.ca_file` the throwaway CA
and runs wrk at `--connections` keep-alive connections against each, in rotating order, as
run.py does (proxy on core 0, wrk and nginx on core 1). Ratios are taken within a round,
then the median. The client side is plain HTTP in both: what differs is only the proxy's
upstream connections, which the pool keeps open, so TLS costs the handshakes of the pool's
connections plus encryption per request.

    .venv/bin/python bench/tls_upstream.py                  # 5 rounds of 5 s, ~1.5 min
    .venv/bin/python bench/tls_upstream.py --rounds 3 --json tls.json

See bench/README.md ("TLS to upstreams").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import nginx
from procs import CLK_TCK, Processes, cpu_ticks, tree_pids
from rounds import fmt, fmt_ratio, markdown, median, paired_ratio, rotated
from run import (
    BenchError,
    RolloutCommand,
    free_ports,
    rollout_config,
    run_wrk,
    wait_until_up,
)
from tlsbench import parse_args, run_benchmark, throwaway_certificate

CONFIGS = ("plain", "tls")


def upstream_conf(prefix: Path, ports: dict[str, int], cert: Path, key: Path) -> str:
    """run.py's upstream nginx, plus the same two servers over TLS."""
    plain = nginx.upstream_conf(prefix, signal_port=ports["signal"], legacy_port=ports["legacy"])
    body = nginx.fixed_body()
    tls_servers = "".join(
        f"""
    server {{
        listen 127.0.0.1:{ports[f"{side}-tls"]} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            default_type application/json;
            add_header X-Upstream {side};
            return 200 '{body}';
        }}
    }}
"""
        for side in ("signal", "legacy")
    )
    return plain.rstrip().removesuffix("}") + tls_servers + "}\n"


def start(procs: Processes, args: argparse.Namespace, tmp: Path) -> dict[str, int]:
    """The upstream nginx and both proxies; the public port of each proxy by name."""
    names = ["signal", "legacy", "signal-tls", "legacy-tls", "plain", "tls", "a1", "a2"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    cert, key, ca_file = throwaway_certificate(tmp)
    for sub in ("logs", "temp/upstream"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    conf = nginx.write_conf(tmp, "upstream", upstream_conf(tmp, ports, cert, key))
    upstream = procs.start(
        "upstream", ["nginx", "-p", str(tmp), "-c", str(conf)], tmp / "upstream.log", args.load_cpus
    )
    wait_until_up(upstream, f"http://127.0.0.1:{ports['legacy']}/")
    build = RolloutCommand.prepare(tmp, "rollout", args.rollout_rev, None)
    for name, admin in (("plain", "a1"), ("tls", "a2")):
        path = rollout_config(tmp, ports, name, admin, overrides={"guard": {"enabled": False}})
        if name == "tls":
            text = path.read_text()
            for side in ("signal", "legacy"):
                text = text.replace(
                    f"url: http://127.0.0.1:{ports[side]}",
                    f"url: https://127.0.0.1:{ports[f'{side}-tls']}\n    tls:\n"
                    f"      ca_file: {ca_file}",
                )
            path.write_text(text)
        argv = [*build.argv, "serve", "-c", str(path), "--grace", "0"]
        service = procs.start(name, argv, tmp / f"{name}.log", args.cpus, build.env)
        wait_until_up(service, f"http://127.0.0.1:{ports[admin]}/-/ready", timeout=30)
        procs_by_name[name] = tree_pids(service.proc.pid)
    return ports


procs_by_name: dict[str, list[int]] = {}


def measure(
    procs: Processes, ports: dict[str, int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    runs = []
    for rnd in range(args.rounds):
        for name in rotated(CONFIGS, rnd):
            url = f"http://127.0.0.1:{ports[name]}/signals"
            run_wrk(procs, url, args.connections, args.warmup, args)
            before = cpu_ticks(procs_by_name[name])
            result = run_wrk(procs, url, args.connections, args.duration, args)
            after = cpu_ticks(procs_by_name[name])
            if sum(result.errors.values()) or result.requests == 0:
                raise BenchError(f"{name}: wrk errors {result.errors}, {result.requests} requests")
            ticks = sum(after) - sum(before)
            run = {
                "config": name,
                "round": rnd,
                "rps": result.rps,
                "p50_us": result.latency_us["percentiles"].get("50"),
                "p99_us": result.latency_us["percentiles"].get("99"),
                "cpu_us_per_request": ticks / CLK_TCK * 1e6 / result.requests,
            }
            runs.append(run)
            print(
                f"  round {rnd + 1}/{args.rounds} {name:5} {run['rps']:>9,.0f} req/s"
                f"  CPU {run['cpu_us_per_request']:.1f} µs/req",
                flush=True,
            )
    return runs


def report(runs: list[dict[str, Any]]) -> str:
    rows = []
    for name in CONFIGS:
        mine = [r for r in runs if r["config"] == name]
        rows.append(
            [
                name,
                fmt(median([r["rps"] for r in mine])),
                fmt(median([r["p50_us"] for r in mine if r["p50_us"] is not None])),
                fmt(median([r["p99_us"] for r in mine if r["p99_us"] is not None])),
                fmt(median([r["cpu_us_per_request"] for r in mine]), 1),
            ]
        )
    table = markdown(["config", "req/s", "p50 µs", "p99 µs", "CPU µs/req"], rows)
    lines = [table, ""]
    for key, label in (("rps", "req/s"), ("cpu_us_per_request", "CPU per request")):
        by_round = [
            {r["config"]: r[key] for r in runs if r["round"] == rnd}
            for rnd in sorted({r["round"] for r in runs})
        ]
        ratio, each = paired_ratio(by_round, "tls", "plain")
        per_round = " ".join(f"{v:.2f}" for v in each)
        lines.append(f"tls/plain {label}: {fmt_ratio(ratio)} (per round: {per_round})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv, rounds=5, limit=600)
    return run_benchmark(args, "rollout-tls-bench-", start, measure, report)


if __name__ == "__main__":
    sys.exit(main())
