"""HTTPS on the public port: rollout-proxy vs nginx terminating TLS, next to plain HTTP.

Starts, on 127.0.0.1 only:
  upstream   run.py's nginx answering the fixed 208-byte body ("signal" and "legacy")
  nginx      run.py's reference (`split_clients`, pooled upstreams) on a plain port and on
             a TLS port (a certificate for 127.0.0.1 from a throwaway trustme CA)
  rollout    `rollout serve` twice, the same config but one with `listen.tls`
and runs wrk against each of the four, in rotating order, in two modes:
  keepalive  `--connections` keep-alive connections: req/s (TLS: encryption per request)
  handshake  `Connection: close` on every request: each one a new TCP + TLS handshake
The proxies on core 0, wrk and the upstream on core 1, as run.py does. The figure the
issue asks for is the ratio of ratios: (rollout-https / nginx-https) over
(rollout-http / nginx-http), each ratio within a round, then the median: how much of its
standing against nginx rollout keeps when TLS is added.

    .venv/bin/python bench/https.py                      # 3 rounds of 2 + 5 s, ~2 minutes
    .venv/bin/python bench/https.py --rounds 5 --json https.json

See bench/README.md ("HTTPS on the public port").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import nginx
from procs import Processes
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

CONFIGS = ("nginx-http", "nginx-https", "rollout-http", "rollout-https")
MODES = {"keepalive": (), "handshake": ("-H", "Connection: close")}


def _nginx_conf(prefix: Path, ports: dict[str, int], cert: Path, key: Path) -> str:
    """run.py's split reference, plus the same server over TLS."""
    text = nginx.split_conf(
        prefix,
        listen_port=ports["nginx-http"],
        signal_port=ports["signal"],
        legacy_port=ports["legacy"],
    )
    tls_server = f"""
    server {{
        listen 127.0.0.1:{ports["nginx-https"]} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://$backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""
    return text.rstrip().removesuffix("}") + tls_server + "}\n"


def start(procs: Processes, args: argparse.Namespace, tmp: Path) -> dict[str, int]:
    names = ["signal", "legacy", *CONFIGS, "a1", "a2"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    cert, key, _ = throwaway_certificate(tmp)
    for sub in ("logs", "temp/upstream", "temp/split"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    upstream_conf = nginx.upstream_conf(
        tmp, signal_port=ports["signal"], legacy_port=ports["legacy"]
    )
    conf = nginx.write_conf(tmp, "upstream", upstream_conf)
    upstream = procs.start(
        "upstream", ["nginx", "-p", str(tmp), "-c", str(conf)], tmp / "up.log", args.load_cpus
    )
    wait_until_up(upstream, f"http://127.0.0.1:{ports['legacy']}/")
    conf = nginx.write_conf(tmp, "split", _nginx_conf(tmp, ports, cert, key))
    reference = procs.start(
        "nginx", ["nginx", "-p", str(tmp), "-c", str(conf)], tmp / "nginx.log", args.cpus
    )
    wait_until_up(reference, f"http://127.0.0.1:{ports['nginx-http']}/")
    build = RolloutCommand.prepare(tmp, "rollout", args.rollout_rev, None)
    for name, admin in (("rollout-http", "a1"), ("rollout-https", "a2")):
        overrides: dict[str, dict[str, Any]] = {"guard": {"enabled": False}}
        if name == "rollout-https":
            tls = {"cert_file": str(cert), "key_file": str(key)}
            overrides["listen"] = {"tls": tls}
        path = rollout_config(tmp, ports, name, admin, overrides=overrides)
        argv = [*build.argv, "serve", "-c", str(path), "--grace", "0"]
        service = procs.start(name, argv, tmp / f"{name}.log", args.cpus, build.env)
        wait_until_up(service, f"http://127.0.0.1:{ports[admin]}/-/ready", timeout=30)
    return ports


def measure(
    procs: Processes, ports: dict[str, int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    runs = []
    for mode, extra in MODES.items():
        for rnd in range(args.rounds):
            for name in rotated(CONFIGS, rnd):
                scheme = "https" if name.endswith("https") else "http"
                url = f"{scheme}://127.0.0.1:{ports[name]}/signals"
                run_wrk(procs, url, args.connections, args.warmup, args, extra)
                result = run_wrk(procs, url, args.connections, args.duration, args, extra)
                failed = sum(result.errors.values())
                if result.requests == 0 or failed > result.requests / 100:
                    raise BenchError(f"{name} {mode}: {result.errors} of {result.requests}")
                run = {"mode": mode, "config": name, "round": rnd, "rps": result.rps}
                runs.append(run)
                print(
                    f"  {mode:9} round {rnd + 1}/{args.rounds} {name:13} {result.rps:>9,.0f} req/s",
                    flush=True,
                )
    return runs


def report(runs: list[dict[str, Any]]) -> str:
    lines = []
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        rows = [
            [name, fmt(median([r["rps"] for r in mine if r["config"] == name]))] for name in CONFIGS
        ]
        lines += [f"{mode}:", markdown(["config", "req/s"], rows)]
        by_round = [
            {r["config"]: r["rps"] for r in mine if r["round"] == rnd}
            for rnd in sorted({r["round"] for r in mine})
        ]
        for row in by_round:
            row["http-ratio"] = row["rollout-http"] / row["nginx-http"]
            row["https-ratio"] = row["rollout-https"] / row["nginx-https"]
        http, http_each = paired_ratio(by_round, "rollout-http", "nginx-http")
        https, https_each = paired_ratio(by_round, "rollout-https", "nginx-https")
        keep, keep_each = paired_ratio(by_round, "https-ratio", "http-ratio")
        lines += [
            f"  rollout/nginx over HTTP:  {fmt_ratio(http)} ({_each(http_each)})",
            f"  rollout/nginx over HTTPS: {fmt_ratio(https)} ({_each(https_each)})",
            f"  HTTPS ratio / HTTP ratio: {fmt_ratio(keep)} ({_each(keep_each)})",
            "",
        ]
    return "\n".join(lines)


def _each(values: list[float]) -> str:
    return "per round: " + " ".join(f"{v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv, rounds=3, limit=900)
    return run_benchmark(args, "rollout-https-bench-", start, measure, report)


if __name__ == "__main__":
    sys.exit(main())
