"""Does `rollout serve --workers 2` scale? Measured on two cores, with the proxy the bottleneck.

On a 2-core machine two workers cannot each get a core of their own: wrk, the upstream
nginx and the kernel's loopback work need CPU too, so an unconstrained run measures how
much CPU the load generator leaves over (bench/RESULTS.md shows 1.32x that way). Here
every proxy process gets the same CPU budget instead, a CFS quota of `--budget` % of one
core in its own cgroup: the single process (`rollout serve`) gets one budget, each of the
two workers (`rollout serve --workers 2`) gets one. The load and the upstream run
unconstrained on both cores, so while the proxies use their budgets whole (throttled) and
the machine still has idle CPU, the load generator is not what limits the throughput,
and the ratio shows what a second worker adds, as a second core would on a bigger host.

After the runs it checks that the aggregated `/metrics` of the two workers counted every
request wrk saw answered (at most one more per connection and run: the request in flight
when wrk stopped).

    .venv/bin/python bench/scaling.py                     # 3 rounds, about 2 minutes
    .venv/bin/python bench/scaling.py --budget 40 --rounds 5 --json scaling.json

Needs root (cgroup v1 `cpu` or v2 `cpu.max`), nginx and wrk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nginx
from procs import CLK_TCK, Processes, Service, cpu_ticks, tree_pids
from run import (
    REQUEST_PATH,
    ROOT,
    VENV_BIN,
    BenchError,
    free_ports,
    http_get,
    prepare_process,
    rollout_config,
    run_wrk,
    wait_until_up,
)

CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 20_000  # short CFS periods: throttling in 20 ms slices, not 100 ms stalls


class CpuBudget:
    """A cgroup holding its processes to `percent` % of one core (cgroup v2 or v1 `cpu`)."""

    def __init__(self, name: str, percent: float) -> None:
        quota = round(PERIOD_US * percent / 100)
        if (CGROUP_V2 / "cgroup.controllers").is_file():
            if "cpu" not in (CGROUP_V2 / "cgroup.controllers").read_text().split():
                raise BenchError("cgroup v2 without the cpu controller: cannot set CPU budgets")
            with suppress(OSError):
                (CGROUP_V2 / "cgroup.subtree_control").write_text("+cpu")
            self.path = CGROUP_V2 / name
            self._make()
            self._write("cpu.max", f"{quota} {PERIOD_US}")
        elif (CGROUP_V1_CPU / "cpu.cfs_quota_us").is_file():
            self.path = CGROUP_V1_CPU / name
            self._make()
            self._write("cpu.cfs_period_us", str(PERIOD_US))
            self._write("cpu.cfs_quota_us", str(quota))
        else:
            raise BenchError("no cgroup cpu controller under /sys/fs/cgroup: cannot set budgets")

    def _make(self) -> None:
        try:
            self.path.mkdir()
        except OSError as exc:
            raise BenchError(f"cannot create cgroup {self.path} ({exc}); run as root") from exc

    def _write(self, name: str, value: str) -> None:
        try:
            (self.path / name).write_text(value)
        except OSError as exc:
            raise BenchError(f"cannot write {value!r} to {self.path / name}: {exc}") from exc

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))

    def throttled(self) -> tuple[int, int]:
        """(CFS periods run, periods in which the budget ran out)."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat["nr_periods"]), int(stat["nr_throttled"])

    def remove(self) -> None:
        """Give any process still inside back to the parent group, then delete the group."""
        with suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with suppress(OSError):
                    (self.path.parent / "cgroup.procs").write_text(pid)
        with suppress(OSError):
            self.path.rmdir()


@dataclass
class Sample:
    workers: int
    round: int
    rps: float
    requests: int
    errors: int
    p50_us: float
    p99_us: float
    proxy_cpu_pct: float  # of one core
    cpu_us_per_req: float
    machine_idle_pct: float  # of both cores
    throttled_pct: float  # of the CFS periods the proxies ran in


@dataclass
class Target:
    workers: int
    url: str
    admin: str
    service: Service
    budgets: list[CpuBudget]
    # Requests the proxy answered completely, as its clients saw them: the readiness probe,
    # the checks, and every wrk run's, warm-ups included.
    answered: int = 1
    wrk_runs: int = 0


def machine_ticks() -> tuple[int, int]:
    """(idle + iowait, total) over all CPUs, from the first line of /proc/stat."""
    fields = list(map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]))
    return fields[3] + fields[4], sum(fields)


def start(
    procs: Processes, args: argparse.Namespace, budgets: list[CpuBudget]
) -> dict[int, Target]:
    names = ("signal", "legacy", "one", "admin-one", "two", "admin-two")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    conf = nginx.write_conf(
        args.tmp,
        "upstream",
        nginx.upstream_conf(args.tmp, signal_port=ports["signal"], legacy_port=ports["legacy"]),
    )
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    upstream = procs.start(
        "upstream", [nginx_bin, "-p", str(args.tmp), "-c", str(conf)], args.tmp / "up.out", None
    )
    wait_until_up(upstream, f"http://127.0.0.1:{ports['legacy']}/")

    targets: dict[int, Target] = {}
    for workers, name, admin in ((1, "one", "admin-one"), (2, "two", "admin-two")):
        config = rollout_config(args.tmp, ports, name, admin)
        argv = [str(VENV_BIN / "rollout"), "serve", "-c", str(config), "--grace", "0"]
        if workers > 1:
            argv += ["--workers", str(workers)]
        service = procs.start(name, argv, args.tmp / f"{name}.log", None)
        admin_url = f"http://127.0.0.1:{ports[admin]}"
        wait_until_up(service, admin_url + "/-/ready", timeout=30)
        url = f"http://127.0.0.1:{ports[name]}"
        wait_until_up(service, url + "/")
        # The single process does the work itself; with --workers, the supervisor only
        # waits, and each worker process gets a budget of its own.
        pids = [service.proc.pid] if workers == 1 else tree_pids(service.proc.pid)[1:]
        if len(pids) != workers:
            raise BenchError(f"{name}: expected {workers} worker process(es), found {pids}")
        mine = []
        for index, pid in enumerate(pids):
            budget = CpuBudget(f"rollout-bench-{os.getpid()}-{name}-{index}", args.budget)
            budgets.append(budget)  # the caller removes it, whatever happens next
            budget.add(pid)
            mine.append(budget)
        targets[workers] = Target(workers, url, admin_url, service, mine)
    return targets


def check(target: Target, samples: int = 200) -> None:
    """Every answer is the 208-byte body; counted so the metrics check can add them."""
    for _ in range(samples):
        status, _, body = http_get(target.url + REQUEST_PATH, {"X-Session-Id": uuid.uuid4().hex})
        if status != 200 or len(body) != nginx.BODY_BYTES:
            raise BenchError(f"{target.workers} worker(s): {status} with {len(body)} bytes")
    target.answered += samples


def measure(procs: Processes, target: Target, rnd: int, args: argparse.Namespace) -> Sample:
    url = target.url + REQUEST_PATH
    warm = run_wrk(procs, url, args.connections, args.warmup, args)
    target.answered += warm.requests
    pids = tree_pids(target.service.proc.pid)
    cpu_before, machine_before = sum(cpu_ticks(pids)), machine_ticks()
    throttle_before = [budget.throttled() for budget in target.budgets]
    result = run_wrk(procs, url, args.connections, args.duration, args)
    cpu = sum(cpu_ticks(pids)) - cpu_before
    idle, total = (a - b for a, b in zip(machine_ticks(), machine_before, strict=True))
    periods = throttled = 0
    for budget, (p0, t0) in zip(target.budgets, throttle_before, strict=True):
        p1, t1 = budget.throttled()
        periods, throttled = periods + p1 - p0, throttled + t1 - t0
    target.answered += result.requests
    target.wrk_runs += 2
    seconds = cpu / CLK_TCK
    return Sample(
        workers=target.workers,
        round=rnd,
        rps=result.rps,
        requests=result.requests,
        errors=sum(result.errors.values()),
        p50_us=result.latency_us["percentiles"]["50"],
        p99_us=result.latency_us["percentiles"]["99"],
        proxy_cpu_pct=100 * seconds / result.duration_s,
        cpu_us_per_req=seconds * 1e6 / max(result.requests, 1),
        machine_idle_pct=100 * idle / total if total else 0.0,
        throttled_pct=100 * throttled / periods if periods else 0.0,
    )


def counted_requests(admin: str) -> int:
    _, _, body = http_get(admin + "/metrics")
    pattern = re.compile(r"^rollout_requests_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)
    return round(sum(float(value) for value in pattern.findall(body.decode())))


def check_metrics(target: Target, connections: int) -> dict[str, Any]:
    """Aggregated /metrics against what wrk saw answered (plus what was in flight at stops)."""
    counted = counted_requests(target.admin)
    low, high = target.answered, target.answered + connections * target.wrk_runs
    return {
        "workers": target.workers,
        "counted_on_metrics": counted,
        "answered_to_wrk": low,
        "allowed_in_flight": high - low,
        "ok": low <= counted <= high,
    }


def median(samples: list[Sample], key: str) -> float:
    return float(statistics.median(getattr(s, key) for s in samples))


def report(samples: list[Sample], metrics: list[dict[str, Any]], budget: float) -> str:
    lines = [
        f"each proxy process held to {budget:g} % of one core (CFS quota); wrk and nginx free "
        "on both cores; medians of the rounds",
        "",
        "| workers | req/s | p50 ms | p99 ms | proxy CPU (% of a core) | CPU µs/req "
        "| proxies throttled (% of periods) | machine idle | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workers in (1, 2):
        mine = [s for s in samples if s.workers == workers]
        lines.append(
            f"| {workers} | {median(mine, 'rps'):,.0f} | {median(mine, 'p50_us') / 1000:.2f} "
            f"| {median(mine, 'p99_us') / 1000:.2f} | {median(mine, 'proxy_cpu_pct'):.0f} % "
            f"| {median(mine, 'cpu_us_per_req'):.0f} | {median(mine, 'throttled_pct'):.0f} % "
            f"| {median(mine, 'machine_idle_pct'):.0f} % | {sum(s.errors for s in mine)} |"
        )
    ones = [s for s in samples if s.workers == 1]
    twos = [s for s in samples if s.workers == 2]
    ratios = ", ".join(f"{b.rps / a.rps:.2f}" for a, b in zip(ones, twos, strict=True))
    ratio = median(twos, "rps") / median(ones, "rps")
    lines += ["", f"2 workers / 1 worker: {ratio:.2f}x (per round: {ratios})"]
    for check in metrics:
        verdict = "ok" if check["ok"] else "WRONG"
        lines.append(
            f"metrics, {check['workers']} worker(s): rollout_requests_total = "
            f"{check['counted_on_metrics']:,}, wrk saw {check['answered_to_wrk']:,} answered "
            f"(+ up to {check['allowed_in_flight']} in flight when wrk stopped): {verdict}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=50.0, help="%% of a core per process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--wrk-timeout", type=int, default=5)
    parser.add_argument("--json", help="also write the samples as JSON to this path")
    args = parser.parse_args(argv)
    if not 5 <= args.budget <= 100:
        parser.error(f"--budget {args.budget:g}: give 5-100 (% of one core per process)")
    if not 1 <= args.rounds <= 20 or not 1 <= args.duration <= 120:
        parser.error("--rounds must be 1-20 and --duration 1-120 seconds")
    args.load_cpus = None  # run_wrk: wrk floats over both cores
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not prepare_process(("nginx", "wrk")):
        return 2
    minutes = args.rounds * 2 * (args.warmup + args.duration + 1) / 60
    print(f"scaling: {args.rounds} round(s), about {minutes:.1f} min", file=sys.stderr)
    args.tmp = Path(tempfile.mkdtemp(prefix="rollout-scaling-"))
    args.tmp.chmod(0o755)  # nginx workers run as nobody when started by root
    procs = Processes(ROOT)
    budgets: list[CpuBudget] = []
    samples: list[Sample] = []
    try:
        targets = start(procs, args, budgets)
        for target in targets.values():
            check(target)
        for rnd in range(args.rounds):
            for workers in (1, 2) if rnd % 2 == 0 else (2, 1):
                sample = measure(procs, targets[workers], rnd, args)
                samples.append(sample)
                print(
                    f"  round {rnd + 1} {workers} worker(s): {sample.rps:,.0f} req/s, proxy "
                    f"{sample.proxy_cpu_pct:.0f} % CPU, machine idle "
                    f"{sample.machine_idle_pct:.0f} %",
                    file=sys.stderr,
                )
        time.sleep(0.5)  # let the workers flush the last requests' counters
        metrics = [check_metrics(t, args.connections) for t in targets.values()]
    except BenchError as exc:
        print(f"scaling: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scaling: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        for budget in budgets:
            budget.remove()
        shutil.rmtree(args.tmp, ignore_errors=True)
    print(report(samples, metrics, args.budget))
    if args.json:
        document = {"budget_pct": args.budget, "samples": [asdict(s) for s in samples]}
        Path(args.json).write_text(json.dumps({**document, "metrics": metrics}, indent=2) + "\n")
    return 0 if all(check["ok"] for check in metrics) else 1


if __name__ == "__main__":
    sys.exit(main())
