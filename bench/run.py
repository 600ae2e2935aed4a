"""Loopback benchmark: rollout-proxy against nginx `split_clients` and a minimal aiohttp proxy.

Starts, on 127.0.0.1 only:
  upstream  one nginx answering a fixed 208-byte JSON body on two ports (signal, legacy)
  nginx     the reference: nginx `split_clients` on X-Session-Id, keepalive 512 pools
  minimal   bench/minimal_proxy.py, the issue's baseline (aiohttp: mmh3 split, one ClientSession)
  floor     bench/floor_proxy.py, the latency floor of any asyncio proxy (callbacks only)
  rollout   `rollout serve` with config/rollout.yaml (ports replaced, percentage 10)
  rollout-base  with `--baseline-rev REV`: `git archive REV proxy`, started like `rollout`
  rollout-aio the same with `--loop asyncio` (the standard loop instead of uvloop)
and measures each with wrk (`direct` is wrk straight at the legacy upstream: the harness
ceiling and the baseline for added latency). The proxy under test is pinned to core 0;
wrk and the upstream nginx share core 1. Configurations run in alternation, `--rounds`
times, each with a warm-up before the measured run, at `--connections` and (unless
`--quick`) at 1 connection (added latency) and 500 connections (tail behaviour).

    .venv/bin/python bench/run.py                      # full run, about 13 minutes
    .venv/bin/python bench/run.py --quick --duration 5 --rounds 1
    .venv/bin/python bench/run.py --only rollout,minimal --json results.json
    .venv/bin/python bench/run.py --only direct,rollout,rollout-base --baseline-rev main

See bench/README.md for how to read the table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import nginx
import yaml
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
from results import CONFIGS, Run, log_problems, progress_line, report, run_record, summarise_levels

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
TAIL_CONNECTIONS = 500
REQUEST_PATH = "/signals?limit=10"
QUIET_WAIT_PER_RUN = 30.0  # seconds; `--quiet-wait` bounds the total


class TimeLimitError(Exception):
    """The overall `--time-limit` ran out."""


class BenchError(Exception):
    """The harness itself failed (a server did not start, wrk failed...)."""


# ---------------------------------------------------------------------------------------
# servers


def free_ports(count: int) -> list[int]:
    """Ports below the kernel's ephemeral range, free now.

    An ephemeral port can be taken by a client socket, and polling a server that is not
    listening yet can even connect to itself (TCP simultaneous open) and keep the port.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    candidates = random.Random().sample(range(10_000, low), k=min(200, low - 10_000))
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise BenchError(f"no {count} free ports between 10000 and {low}")


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def http_post(url: str) -> int:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=2) as response:
        return int(response.status)


def wait_until_up(service: Service, url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise BenchError(f"{service.name} exited ({service.proc.returncode}): {_tail(service)}")
        try:
            if http_get(url)[0] < 500:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{service.name} not up at {url} after {timeout:.0f} s: {_tail(service)}")


def _tail(service: Service, lines: int = 10) -> str:
    try:
        return "\n".join(service.log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------------------
# wrk


@dataclass
class WrkResult:
    duration_s: float
    requests: int
    errors: dict[str, int]
    latency_us: dict[str, Any]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def socket_errors(self) -> int:
        return sum(v for k, v in self.errors.items() if k != "status")


def run_wrk(
    procs: Processes,
    url: str,
    connections: int,
    seconds: float,
    args: argparse.Namespace,
    extra: Sequence[str] = (),
) -> WrkResult:
    """`extra`: more wrk arguments (`-H "Connection: close"`: a new connection per request)."""
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={args.wrk_timeout}s",
        *extra,
        "-s",
        str(BENCH / "wrk_report.lua"),
        url,
    ]
    log = args.tmp / "wrk.log"
    service = procs.start("wrk", argv, log, args.load_cpus)
    try:
        service.proc.wait(seconds + args.wrk_timeout + 20)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish: {argv}") from exc
    finally:
        procs.stop(service)
    output = log.read_text(errors="replace")
    log.unlink()
    for line in output.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line.removeprefix("WRK_JSON "))
            return WrkResult(
                duration_s=data["duration_us"] / 1e6,
                requests=data["requests"],
                errors=data["errors"],
                latency_us=data["latency_us"],
            )
    raise BenchError(f"wrk printed no WRK_JSON line:\n{output}")


# ---------------------------------------------------------------------------------------
# the setup


@dataclass
class Target:
    name: str
    url: str
    service: Service | None  # None for `direct`: no proxy process to measure


@dataclass
class Setup:
    targets: dict[str, Target]
    upstream: Service
    admins: dict[str, str]  # each rollout target's admin URL
    rollout_workers: str
    notes: list[str] = field(default_factory=list)


def rollout_config(
    tmp: Path,
    ports: dict[str, int],
    name: str,
    admin: str,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """config/rollout.yaml with loopback ports; guard on (the default), percentage 10.

    `overrides` updates sections key by key (`{"timeouts": {"idle": 3600}}`), last.
    """
    doc = yaml.safe_load((ROOT / "config" / "rollout.yaml").read_text())
    doc["listen"] = {"host": "127.0.0.1", "port": ports[name]}
    doc["admin"] = {**doc.get("admin", {}), "host": "127.0.0.1", "port": ports[admin]}
    doc["upstreams"] = {
        "signal": {"url": f"http://127.0.0.1:{ports['signal']}"},
        "legacy": {"url": f"http://127.0.0.1:{ports['legacy']}"},
    }
    doc.setdefault("rollout", {})["percentage"] = 10
    doc.setdefault("guard", {})["enabled"] = True
    for section, values in (overrides or {}).items():
        doc.setdefault(section, {}).update(values)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -P: the checkout the bench runs from must not shadow the package on PYTHONPATH (with a
# plain `-m`, the current directory comes first on sys.path, and it holds `proxy/`).
# Every rollout build starts this way, the working tree too (not the venv's `rollout`
# script, which imports the module pyproject named when the venv was installed): the entry
# point is `proxy/__main__.py`, whatever the package's layout inside, and two builds
# compared side by side start the same way.
_PYTHON_M_PROXY = (sys.executable, "-P", "-m", "proxy")
_ENTRY_POINT = Path("proxy", "__main__.py")


@dataclass(frozen=True)
class RolloutCommand:
    """How to start one rollout build: the working tree, a directory or a git snapshot."""

    argv: tuple[str, ...]
    env: dict[str, str]
    source: str

    @classmethod
    def prepare(cls, tmp: Path, name: str, rev: str | None, src_dir: Path | None) -> RolloutCommand:
        """`name` is the target; a snapshot goes into a temp directory of its own."""
        if src_dir is not None:
            if not (src_dir / _ENTRY_POINT).is_file():
                raise BenchError(f"{name}: no {_ENTRY_POINT} in {src_dir}")
            return cls.from_dir(src_dir.resolve(), f"proxy package from {src_dir}")
        if rev is None:
            dirty = _git("status", "--porcelain", "--", "proxy")
            state = " + uncommitted changes in proxy/" if dirty else ""
            return cls.from_dir(ROOT, f"working tree at {_git_head()}{state}")
        # The working tree may be mid-edit; `git archive` gives exactly the revision asked for.
        commit = _git("rev-parse", "--short", f"{rev}^{{commit}}")
        src = Path(tempfile.mkdtemp(prefix=f"{name}-src-", dir=tmp))
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "proxy"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        if archive.returncode != 0:
            raise BenchError(f"{name}: git archive {commit} proxy: {archive.stderr.decode()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(src, filter="data")
        if not (src / _ENTRY_POINT).is_file():
            raise BenchError(f"{name}: {rev} ({commit}) has no {_ENTRY_POINT}")
        return cls.from_dir(src, f"git archive of {commit} ({rev})")

    @classmethod
    def from_dir(cls, src: Path, source: str) -> RolloutCommand:
        return cls(_PYTHON_M_PROXY, {**os.environ, "PYTHONPATH": str(src)}, source)

    def supports_workers(self) -> bool:
        help_text = subprocess.run(
            [*self.argv, "serve", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
            env=self.env,
            check=False,
        ).stdout
        return "--workers" in help_text


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def _git_head() -> str:
    return _git("rev-parse", "--short", "HEAD")


# (target, its admin port's name, --loop): each rollout target, in start-up order.
ROLLOUT_TARGETS: tuple[tuple[str, str, str | None], ...] = (
    ("rollout", "admin", None),
    ("rollout-base", "admin-base", None),
    ("rollout-aio", "admin-aio", "asyncio"),
)


def start_all(procs: Processes, args: argparse.Namespace, wanted: Sequence[str]) -> Setup:
    tmp: Path = args.tmp
    names: tuple[str, ...] = ("signal", "legacy", "nginx", "minimal", "floor")
    names += tuple(port for target in ROLLOUT_TARGETS for port in target[:2])
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    signal_url = f"http://127.0.0.1:{ports['signal']}"
    legacy_url = f"http://127.0.0.1:{ports['legacy']}"
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"

    conf = nginx.write_conf(
        tmp,
        "upstream",
        nginx.upstream_conf(tmp, signal_port=ports["signal"], legacy_port=ports["legacy"]),
    )
    upstream = procs.start(
        "upstream",
        [nginx_bin, "-p", str(tmp), "-c", str(conf)],
        tmp / "upstream.out",
        args.load_cpus,
    )
    wait_until_up(upstream, legacy_url + "/")
    wait_until_up(upstream, signal_url + "/")
    status, _, body = http_get(legacy_url + REQUEST_PATH)
    if status != 200 or len(body) != nginx.BODY_BYTES:
        raise BenchError(f"upstream answered {status} with {len(body)} bytes")

    targets: dict[str, Target] = {}
    if "direct" in wanted:
        targets["direct"] = Target("direct", legacy_url, None)
    if "nginx" in wanted:
        conf = nginx.write_conf(
            tmp,
            "split",
            nginx.split_conf(
                tmp,
                listen_port=ports["nginx"],
                signal_port=ports["signal"],
                legacy_port=ports["legacy"],
            ),
        )
        service = procs.start(
            "nginx", [nginx_bin, "-p", str(tmp), "-c", str(conf)], tmp / "nginx.out", args.cpus
        )
        targets["nginx"] = Target("nginx", f"http://127.0.0.1:{ports['nginx']}", service)
    # The two Python references: the aiohttp baseline and the callback floor.
    for name, script in (("minimal", "minimal_proxy.py"), ("floor", "floor_proxy.py")):
        if name in wanted:
            argv = [
                sys.executable,
                str(BENCH / script),
                "--port",
                str(ports[name]),
                "--signal",
                signal_url,
                "--legacy",
                legacy_url,
            ]
            service = procs.start(name, argv, tmp / f"{name}.log", args.cpus)
            targets[name] = Target(name, f"http://127.0.0.1:{ports[name]}", service)

    admins: dict[str, str] = {}
    rollout_workers = "1 (single process)"
    notes: list[str] = []
    # `rollout` on its default event loop (uvloop), `rollout-aio` with `--loop asyncio`:
    # the same build, prepared once. `rollout-base` is another build (`--baseline-rev` or
    # `--baseline-src`), started the same way as `rollout`; each snapshot has its own dir.
    builds: dict[str, RolloutCommand] = {}
    if "rollout" in wanted or "rollout-aio" in wanted:
        build = RolloutCommand.prepare(tmp, "rollout", args.rollout_rev, args.rollout_src)
        builds["rollout"] = builds["rollout-aio"] = build
    if "rollout-base" in wanted:
        builds["rollout-base"] = RolloutCommand.prepare(
            tmp, "rollout-base", args.baseline_rev, args.baseline_src
        )
    for name, admin, loop in ROLLOUT_TARGETS:
        if name not in wanted:
            continue
        rollout = builds[name]
        config = rollout_config(tmp, ports, name, admin)
        notes.append(f"{name}: {rollout.source}")
        argv = [*rollout.argv, "serve", "-c", str(config), "--grace", "0"]
        if loop is not None:
            argv += ["--loop", loop]
        if args.workers is not None:
            if rollout.supports_workers():
                argv += ["--workers", str(args.workers)]
                rollout_workers = str(args.workers)
                notes.append(f"{name} serve --workers {args.workers}, all on CPUs {args.cpus}")
            else:
                notes.append(
                    f"{name}: --workers {args.workers} ignored: `serve --help` has no --workers"
                )
        service = procs.start(name, argv, tmp / f"{name}.log", args.cpus, rollout.env)
        admin_url = f"http://127.0.0.1:{ports[admin]}"
        wait_until_up(service, admin_url + "/-/ready", timeout=30)
        targets[name] = Target(name, f"http://127.0.0.1:{ports[name]}", service)
        admins[name] = admin_url

    for target in targets.values():
        if target.service is not None:
            wait_until_up(target.service, target.url + "/")
        check_split(target)
    return Setup(targets, upstream, admins, rollout_workers, notes)


def check_split(target: Target, samples: int = 400) -> None:
    """Every proxy answers 200 with the 208-byte body and sends about 10 % to signal."""
    to_signal = 0
    for _ in range(samples):
        status, headers, body = http_get(
            target.url + REQUEST_PATH, {"X-Session-Id": uuid.uuid4().hex}
        )
        if status != 200 or len(body) != nginx.BODY_BYTES:
            raise BenchError(f"{target.name}: {status} with {len(body)} bytes")
        to_signal += headers.get("X-Upstream") == "signal"
    share = to_signal / samples
    if target.name != "direct" and not 0.04 <= share <= 0.18:
        raise BenchError(f"{target.name} sent {share:.0%} of sessions to signal, expected ~10%")


# ---------------------------------------------------------------------------------------
# measuring


def first_cpu(cpus: str) -> int:
    match = re.match(r"\d+", cpus)
    if match is None:
        raise BenchError(f"cannot read a CPU number from {cpus!r}")
    return int(match.group())


def measure(
    procs: Processes, setup: Setup, name: str, connections: int, rnd: int, args: argparse.Namespace
) -> Run:
    """Warm up, then one measured wrk run with the proxy's CPU, core and memory figures."""
    target = setup.targets[name]
    url = target.url + REQUEST_PATH
    if args.warmup > 0:
        run_wrk(procs, url, connections, args.warmup, args)
    pids = tree_pids(target.service.proc.pid) if target.service else []
    upstream_pids = tree_pids(setup.upstream.proc.pid)
    reset_peak_rss(pids)
    proxy_core, load_core = first_cpu(args.cpus), first_cpu(args.load_cpus)
    cpu_before, core_before = cpu_ticks(pids), CoreTime.read(proxy_core)
    load_before, upstream_before = CoreTime.read(load_core), sum(cpu_ticks(upstream_pids))
    calib = calibrate(proxy_core)
    wrk_before = _children_cpu_seconds()
    result = run_wrk(procs, url, connections, args.duration, args)
    cpu_after, core = cpu_ticks(pids), CoreTime.read(proxy_core) - core_before
    load = CoreTime.read(load_core) - load_before
    # wrk has been waited for, so its CPU time is in RUSAGE_CHILDREN now.
    harness = (_children_cpu_seconds() - wrk_before) * CLK_TCK
    harness += sum(cpu_ticks(upstream_pids)) - upstream_before
    rss = peak_rss_kib(pids) / 1024 if pids else None

    user, system = (after - before for after, before in zip(cpu_after, cpu_before, strict=True))
    used = user + system
    measured = bool(pids and result.requests)
    percentiles = result.latency_us["percentiles"]
    run = Run(
        config=name,
        connections=connections,
        round=rnd,
        rps=result.rps,
        requests=result.requests,
        p50_us=percentiles["50"],
        p90_us=percentiles["90"],
        p99_us=percentiles["99"],
        p999_us=percentiles["99.9"],
        max_us=result.latency_us["max"],
        socket_errors=result.socket_errors,
        errors=result.errors,
        non_2xx_3xx=result.errors["status"],
        cpu_us_per_req=used * 1e6 / CLK_TCK / result.requests if measured else None,
        sys_share_pct=100 * system / used if measured and used else None,
        proxy_core_pct=core.pct(used) if pids else None,
        others_core_pct=core.pct(max(core.task - used, 0)),
        load_others_pct=load.pct(max(load.task - round(harness), 0)),
        irq_core_pct=core.pct(core.irq),
        steal_core_pct=core.pct(core.steal),
        load_core_pct=load.pct(load.task + load.irq),
        peak_rss_mib=rss,
        calib_ms=calib,
    )
    if name in setup.admins:
        run.guard_tripped = rollout_guard_check(setup.admins[name])
    return run


def calibrate(core: int) -> float:
    """Milliseconds for a fixed pure-Python loop on `core` (best of 3): the machine's speed.

    On a shared VM the same work can take 1.5x longer from one minute to the next; this
    number, taken next to each run, shows when that happened.
    """
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            total = 0
            for i in range(200_000):
                total += i * i % 7
            times.append((time.perf_counter() - started) * 1000)
        return min(times)
    finally:
        os.sched_setaffinity(0, previous)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Measurer:
    """Runs `measure`, repeating a run that another load on the machine disturbed.

    Retries are bounded by a time budget, so a busy machine costs at most that much extra;
    every discarded attempt is kept in the results.
    """

    def __init__(
        self, procs: Processes, setup: Setup, args: argparse.Namespace, discarded: list[Run]
    ) -> None:
        self.procs, self.setup, self.args = procs, setup, args
        self.retry_budget = args.retry_budget
        self.quiet_budget = args.quiet_wait
        self.waited = 0.0
        self.discarded = discarded

    def wait_for_quiet(self) -> None:
        """Between runs our servers idle: busy cores mean another load; wait it out (bounded)."""
        cores = {first_cpu(self.args.cpus), first_cpu(self.args.load_cpus)}
        deadline = time.monotonic() + QUIET_WAIT_PER_RUN
        while self.quiet_budget > 0 and time.monotonic() < deadline:
            before = {core: CoreTime.read(core) for core in cores}
            time.sleep(0.5)
            deltas = [CoreTime.read(core) - before[core] for core in cores]
            if max(delta.pct(delta.task) for delta in deltas) <= self.args.max_disturbance:
                return
            self.quiet_budget -= 1.5
            self.waited += 1.5
            time.sleep(1)

    def run(self, name: str, connections: int, rnd: int) -> Run:
        args = self.args
        best: Run | None = None
        for attempt in range(1, args.retries + 2):
            self.wait_for_quiet()
            started = time.monotonic()
            run = measure(self.procs, self.setup, name, connections, rnd, args)
            run.attempts = attempt
            if best is None or run.disturbance_pct < best.disturbance_pct:
                if best is not None:
                    self.discarded.append(best)
                best = run
            else:
                self.discarded.append(run)
            if best.disturbance_pct <= args.max_disturbance or attempt > args.retries:
                break
            self.retry_budget -= time.monotonic() - started
            if self.retry_budget <= 0:
                break
            print(
                f"  c={connections:<4} round {rnd + 1} {name}: other processes took "
                f"{run.disturbance_pct:.0f}% of a core the run depends on, repeating",
                file=sys.stderr,
            )
        assert best is not None
        return best


def rollout_guard_check(admin: str) -> bool:
    """Was rollout's guard tripped by the run? Reset it so the next run starts clean."""
    _, _, body = http_get(admin + "/-/status")
    tripped = bool(json.loads(body)["guard"]["tripped"])
    if tripped:
        http_post(admin + "/-/guard/reset")
    return tripped


def rollout_counters(admin: str) -> dict[str, float]:
    """rollout's own view after the runs: routing split, and any non-200, error, fallback."""
    _, _, body = http_get(admin + "/metrics")
    wanted = (
        "rollout_routing_decisions_total",
        "rollout_requests_total",
        "rollout_upstream_errors_total",
        "rollout_fallbacks_total",
    )
    found: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(wanted) and 'code="200"' not in line:
            series, _, value = line.rpartition(" ")
            if float(value):
                found[series] = float(value)
    return found


# ---------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="rollout-proxy vs nginx split_clients vs a minimal aiohttp proxy, loopback",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See bench/README.md for how to read the table.",
    )
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds before each run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per level")
    parser.add_argument("--connections", type=int, default=50, help="main concurrency level")
    parser.add_argument(
        "--quick", action="store_true", help="only --connections (skip the 1 and 500 runs)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAMES",
        help=f"comma-separated subset of {','.join(CONFIGS)} (repeatable)",
    )
    parser.add_argument("--workers", type=int, help="pass --workers N to `rollout serve`")
    parser.add_argument(
        "--rollout-rev",
        metavar="REV",
        help="benchmark `git archive REV proxy` instead of the working tree (e.g. HEAD)",
    )
    parser.add_argument(
        "--rollout-src",
        type=Path,
        metavar="DIR",
        help="benchmark the `proxy` package in DIR (e.g. a patched copy) with the venv",
    )
    parser.add_argument(
        "--baseline-rev",
        metavar="REV",
        help="add `rollout-base`: `git archive REV proxy`, started like `rollout`, to compare",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        metavar="DIR",
        help="add `rollout-base` from the `proxy` package in DIR instead of a revision",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="write all results as JSON to PATH ('-': stdout, no table)"
    )
    parser.add_argument("--time-limit", type=float, help="hard limit in seconds (default: auto)")
    parser.add_argument("--cpus", default="0", help="taskset CPU list for the proxy under test")
    parser.add_argument("--load-cpus", default="1", help="taskset CPU list for wrk and upstream")
    parser.add_argument("--wrk-timeout", type=int, default=5, help="wrk --timeout seconds")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    parser.add_argument(
        "--max-disturbance",
        type=float,
        default=10,
        metavar="PCT",
        help="repeat a run when other processes took more than PCT%% of the proxy or load core",
    )
    parser.add_argument("--retries", type=int, default=2, help="repeats of a disturbed run")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120,
        metavar="SECONDS",
        help="total time the runs may wait for another load on the cores to stop",
    )
    parser.add_argument(
        "--retry-budget", type=float, help="seconds all repeats may add (default: 25%% of the plan)"
    )
    args = parser.parse_args(argv)
    baseline = args.baseline_rev is not None or args.baseline_src is not None
    default = [n for n in CONFIGS if baseline or n != "rollout-base"]
    wanted = [n for group in args.only or [",".join(default)] for n in group.split(",") if n]
    unknown = sorted(set(wanted) - set(CONFIGS))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    if args.rollout_rev and args.rollout_src:
        parser.error("--rollout-rev and --rollout-src exclude each other")
    if args.baseline_rev and args.baseline_src:
        parser.error("--baseline-rev and --baseline-src exclude each other")
    if "rollout-base" in wanted and not baseline:
        parser.error("rollout-base needs --baseline-rev REV or --baseline-src DIR")
    if baseline and "rollout-base" not in wanted:
        parser.error("--baseline-rev/--baseline-src: add rollout-base to --only")
    args.configs = [n for n in CONFIGS if n in wanted]
    levels = [args.connections] if args.quick else [args.connections, 1, TAIL_CONNECTIONS]
    args.levels = list(dict.fromkeys(levels))
    if args.duration < 1 or args.rounds < 1 or args.connections < 1:
        parser.error("--duration, --rounds and --connections must be positive")
    return args


def estimate_seconds(args: argparse.Namespace) -> float:
    runs = len(args.levels) * args.rounds * len(args.configs)
    per_run = args.duration + args.warmup + (1.5 if args.warmup > 0 else 0.8)
    return float(20 + runs * per_run)


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeLimitError(f"time limit of {seconds:.0f} s reached")

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, expire), signal.signal(signal.SIGTERM, terminate)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


APT_PACKAGES = {"nginx": "nginx", "wrk": "wrk", "taskset": "util-linux"}


def prepare_process(tools: Sequence[str]) -> bool:
    """Find the tools (also in /usr/sbin), take Ctrl-C, raise the fd limit; False if missing."""
    for tool in tools:
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} not found (apt-get install {APT_PACKAGES[tool]})", file=sys.stderr)
            return False
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    # Started in the background by a non-interactive shell, SIGINT would be ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise_nofile()
    return True


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError as exc:
            return str(exc)
        return (done.stdout + done.stderr).strip().splitlines()[0]

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": os.uname().release,
        "nginx": first_line(["nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]),
        "python": sys.version.split()[0],
        "aiohttp": aiohttp.__version__,
        "mmh3": importlib.metadata.version("mmh3"),
        "git": _git_head(),
    }


def benchmark(procs: Processes, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Start everything, then every level, round and configuration; fills `results`."""
    setup = start_all(procs, args, args.configs)
    results["notes"] += setup.notes
    results["rollout_workers"] = setup.rollout_workers
    measurer = Measurer(procs, setup, args, discarded=results["discarded_runs"])
    for connections in args.levels:
        for rnd in range(args.rounds):
            # Rotate the order each round so no configuration always goes first.
            shift = rnd % len(args.configs)
            for name in args.configs[shift:] + args.configs[:shift]:
                run = measurer.run(name, connections, rnd)
                results["runs"].append(run)
                print(progress_line(run, args.rounds), file=sys.stderr)
    if measurer.waited:
        results["notes"].append(
            f"waited {measurer.waited:.0f} s in all for other loads on the cores to stop"
        )
    # rollout's counters (or rollout-aio's, sharing its build), and the baseline's apart.
    first = next((name for name in ("rollout", "rollout-aio") if name in setup.admins), None)
    if first is not None:
        results["rollout_counters"] = rollout_counters(setup.admins[first])
    if "rollout-base" in setup.admins:
        results["rollout_base_counters"] = rollout_counters(setup.admins["rollout-base"])
    for target in setup.targets.values():
        if target.service and target.service.proc.poll() is not None:
            code = target.service.proc.returncode
            results["notes"].append(f"{target.name} exited during the benchmark ({code})")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not prepare_process(("nginx", "wrk", "taskset")):
        return 2
    estimate = estimate_seconds(args)
    if args.retry_budget is None:
        args.retry_budget = 0.25 * estimate
    limit = args.time_limit or estimate + args.retry_budget + args.quiet_wait + 0.25 * estimate + 60
    print(
        f"bench: {args.configs} at connections {args.levels}, {args.rounds} round(s) of "
        f"{args.warmup:g}+{args.duration:g} s: about {estimate / 60:.1f} min "
        f"(hard limit {limit:.0f} s)",
        file=sys.stderr,
    )
    args.tmp = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    args.tmp.chmod(0o755)  # nginx workers run as nobody when started by root
    procs = Processes(ROOT)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": versions(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("tmp", "only", "keep_tmp")},
        "runs": [],
        "discarded_runs": [],
        "notes": [],
    }
    exit_code = 0
    began = time.monotonic()
    try:
        with time_limit(limit):
            benchmark(procs, args, results)
    except (TimeLimitError, BenchError) as exc:
        results["notes"].append(f"aborted: {exc}")
        print(f"bench: {exc}", file=sys.stderr)
        exit_code = 1
    except KeyboardInterrupt:
        results["notes"].append("interrupted")
        print("bench: interrupted, cleaning up", file=sys.stderr)
        exit_code = 130
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop_all()
        signal.signal(signal.SIGINT, previous)
        results["log_problems"] = log_problems(args.tmp)
        if args.keep_tmp:
            print(f"bench: configs and logs kept in {args.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(args.tmp, ignore_errors=True)
    results["elapsed_seconds"] = round(time.monotonic() - began, 1)
    results["levels"] = summarise_levels(results["runs"], args.levels)
    results["runs"] = [run_record(r) for r in results["runs"]]
    results["discarded_runs"] = [run_record(r) for r in results["discarded_runs"]]

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
