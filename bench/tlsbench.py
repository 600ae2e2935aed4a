"""What the two TLS benchmarks share: a throwaway certificate, their flags, their main.

`tls_upstream.py` and `https.py` differ only in what they start and how they report.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trustme
from procs import Processes
from run import BenchError, TimeLimitError, prepare_process, time_limit

Runs = list[dict[str, Any]]


def throwaway_certificate(tmp: Path) -> tuple[Path, Path, Path]:
    """A certificate for 127.0.0.1 from a new trustme CA: (chain, key, CA) files in `tmp`."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp / "server.pem", tmp / "server.key", tmp / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, key, ca_file


def parse_args(
    doc: str, argv: list[str] | None, *, rounds: int, limit: float
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rollout-rev", help="git archive REV proxy instead of the checkout")
    parser.add_argument("--cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--wrk-timeout", type=int, default=5)
    parser.add_argument("--time-limit", type=float, default=limit)
    parser.add_argument("--json", help="write every run as JSON to this path")
    return parser.parse_args(argv)


def run_benchmark(
    args: argparse.Namespace,
    prefix: str,
    start: Callable[[Processes, argparse.Namespace, Path], dict[str, int]],
    measure: Callable[[Processes, dict[str, int], argparse.Namespace], Runs],
    report: Callable[[Runs], str],
) -> int:
    """Start, measure within the time limit, stop everything, print the report."""
    if not prepare_process(["nginx", "wrk", "taskset"]):
        return 2
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        tmp = args.tmp = Path(name)
        procs = Processes(tmp)
        try:
            with time_limit(args.time_limit):
                ports = start(procs, args, tmp)
                runs = measure(procs, ports, args)
        except (BenchError, TimeLimitError) as exc:
            print(f"note: aborted: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.stop_all()
    print(report(runs))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0
