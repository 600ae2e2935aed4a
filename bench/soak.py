"""Soak test (not CI): `rollout serve` under mixed traffic while config and signal churn.

On 127.0.0.1: a signal and a legacy upstream (proxy.demo.apis, one process each, faults
switched on by `POST /-/fault?mode=status|slow|reset&seconds=S&share=F`) and the proxy
(30 %, guard on). Traffic at --rate / --concurrency while config reloads (some invalid),
signal restarts, fault bursts and SIGHUPs happen at random. A GET must get a 2xx, a POST
/echo a 200 with its body's sha256, or a 5xx from signal during a signal fault (SPEC 5);
an exception or timeout is LOST. Exit 0 when nothing was lost or unexpected, else 1.
See bench/README.md, "Soak".

    .venv/bin/python bench/soak.py                            # 10 minutes
    .venv/bin/python bench/soak.py --minutes 0.25 --rate 50   # a smoke check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from procs import Processes, Service, tree_pids

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
STAGES = (0, 10, 30, 50, 80, 100)
TIMEOUTS = {"connect": 0.5, "signal": 1.0, "total": 10.0}
GUARD = {"window_seconds": 10, "min_requests": 30, "max_error_rate": 0.2, "max_p95_ms": 900}
FAULT_SLACK = 1.5  # seconds after a fault in which a POST may still get signal's 5xx
GETS = ("/signals?limit=10", "/signals?limit=10", "/signals/stats", "/health")
INVALID = ("rollout:\n  percentage: [\n", "", "PCT150")  # PCT150: a valid YAML, 150 %
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Span = tuple[float, float]

# --- the upstream processes (this file run with --upstream NAME --port N) ---------------


@dataclass
class Fault:
    mode: str = ""
    until: float = 0.0
    share: float = 1.0


FAULT = web.AppKey("fault", Fault)


@web.middleware
async def inject_faults(request: web.Request, handler: Handler) -> web.StreamResponse:
    fault = request.app[FAULT]
    if request.path == "/-/fault" or time.monotonic() >= fault.until:
        return await handler(request)
    if random.random() >= fault.share:
        return await handler(request)
    if fault.mode == "status":
        return web.json_response({"error": "injected"}, status=random.choice((500, 502, 503)))
    if fault.mode == "slow":  # around timeouts.signal (1 s): some answer late, some time out
        await asyncio.sleep(random.uniform(0.2, 1.8))
        return await handler(request)
    transport = request.transport  # "reset": RST before any response byte
    if transport is not None:
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    raise asyncio.CancelledError  # aiohttp drops the request quietly


async def set_fault(request: web.Request) -> web.Response:
    seconds = float(request.query.get("seconds", "0"))
    fault = request.app[FAULT]
    fault.mode, fault.share = request.query.get("mode", ""), float(request.query.get("share", "1"))
    fault.until = time.monotonic() + seconds
    return web.json_response({"mode": fault.mode, "seconds": seconds, "share": fault.share})


def serve_upstream(name: str, port: int) -> None:
    from proxy.demo import apis as demo_apis

    app = demo_apis.signal_app() if name == "signal" else demo_apis.legacy_app()
    app[FAULT] = Fault()
    app.middlewares.append(inject_faults)
    app.router.add_post("/-/fault", set_fault)
    web.run_app(app, host=HOST, port=port, print=None, access_log=None)


# --- the soak ---------------------------------------------------------------------------


@dataclass
class Stats:
    sent: int = 0
    answered: int = 0
    lost: int = 0
    unexpected: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    interval_ms: list[float] = field(default_factory=list)
    all_ms: list[float] = field(default_factory=list)
    trips: dict[float, str] = field(default_factory=dict)  # tripped_at -> reason
    rejects: set[float] = field(default_factory=set)  # at of rejected reloads seen
    rss_kib: list[int] = field(default_factory=list)  # first, max, last
    fds: list[int] = field(default_factory=list)
    status_errors: int = 0
    notes: list[str] = field(default_factory=list)

    def fail(self, kind: str, detail: str, *, lost: bool) -> None:
        label = "LOST" if lost else "UNEXPECTED"
        self.errors[f"{label.lower()} {kind}"] += 1
        self.lost, self.unexpected = self.lost + lost, self.unexpected + (not lost)
        if len(self.examples) < 10:
            self.examples.append(f"{label} {detail}")


@dataclass
class Soak:
    args: argparse.Namespace
    procs: Processes
    tmp: Path
    stats: Stats
    ports: dict[str, int] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    faults: list[list[float]] = field(default_factory=list)  # [start, end] on signal
    percentage: float = 30
    began: float = field(default_factory=time.monotonic)
    traffic_s: float = 0.0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    rng: random.Random = field(default_factory=random.Random)
    block: bytes = field(default_factory=lambda: os.urandom(256 * 1024))

    def url(self, name: str, path: str) -> str:
        return f"http://{HOST}:{self.ports[name]}{path}"

    def in_fault(self, start: float, end: float) -> bool:
        return any(s <= end and start <= e + FAULT_SLACK for s, e in self.faults)


def free_ports(count: int) -> list[int]:
    """Free loopback ports in 20000-32000, below the ephemeral range (no self-connects)."""
    ports: list[int] = []
    for port in random.sample(range(20_000, 32_000), 400):
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind((HOST, port))
            ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free ports in 20000-32000")


def config_text(soak: Soak, percentage: float) -> str:
    doc = yaml.safe_load((ROOT / "config" / "rollout.yaml").read_text())
    doc["listen"] = {"host": HOST, "port": soak.ports["proxy"]}
    doc["admin"] = {"host": HOST, "port": soak.ports["admin"], "token": None}
    doc["upstreams"] = {n: {"url": soak.url(n, "")} for n in ("signal", "legacy")}
    doc["timeouts"] = TIMEOUTS
    doc["rollout"]["percentage"] = percentage
    doc["guard"] = {"enabled": True, **GUARD}
    return yaml.safe_dump(doc, sort_keys=False)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


async def wait_http(http: aiohttp.ClientSession, url: str, service: Service, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited: {service.log.read_text()[-2000:]}")
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{service.name} not up at {url} after {limit:.0f} s")


def start_upstream(soak: Soak, name: str) -> Service:
    argv = [sys.executable, str(Path(__file__).resolve()), "--upstream", name]
    argv += ["--port", str(soak.ports[name])]
    soak.services[name] = soak.procs.start(name, argv, soak.tmp / f"{name}.log", None)
    return soak.services[name]


async def one_request(soak: Soak, http: aiohttp.ClientSession) -> None:
    rng, stats = soak.rng, soak.stats
    headers = {} if rng.random() < 0.05 else {"X-Session-Id": f"soak-{rng.randrange(1000)}"}
    body: bytes | None = None
    if rng.random() < 0.2:
        size = rng.choice((0, rng.randrange(1, 4096), rng.randrange(4096, len(soak.block))))
        offset = rng.randrange(len(soak.block) - size + 1)
        method, path, body = "POST", "/echo", soak.block[offset : offset + size]
        headers["Content-Type"] = "application/octet-stream"
    else:
        method, path = "GET", rng.choice(GETS)
    what = f"{method} {path}"
    stats.sent += 1
    start = time.monotonic()
    try:
        async with http.request(method, soak.url("proxy", path), headers=headers, data=body) as r:
            status, data, upstream = r.status, await r.read(), r.headers.get("X-Rollout-Upstream")
            fallback = r.headers.get("X-Rollout-Fallback")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        stats.fail(type(exc).__name__, f"{what}: {exc!r}", lost=True)
        return
    end = time.monotonic()
    stats.answered += 1
    stats.classes[f"{status // 100}xx"] += 1
    stats.interval_ms.append((end - start) * 1000)
    if fallback:
        stats.fallbacks[fallback] += 1
    try:
        doc: Any = json.loads(data)
    except ValueError:
        doc = None
    if method == "GET":
        good = {"/health": "status", "/signals/stats": "total"}.get(path, "signals")
        if not (200 <= status < 300 and isinstance(doc, dict) and good in doc):
            stats.fail(
                f"{status} GET", f"{what} -> {status} via {upstream}: {data[:120]!r}", lost=False
            )
    elif status == 200:
        sha = hashlib.sha256(body or b"").hexdigest()
        if not isinstance(doc, dict) or doc.get("body_sha256") != sha:
            stats.fail("echo sha256", f"{what} ({len(body or b'')} B) body mismatch", lost=False)
    elif status >= 500 and upstream == "signal" and soak.in_fault(start, end):
        stats.errors[f"allowed {status} POST"] += 1
    else:
        stats.fail(f"{status} POST", f"{what} -> {status} via {upstream} {fallback}", lost=False)


async def traffic(soak: Soak, http: aiohttp.ClientSession, until: float) -> None:
    """Open loop at --rate, at most --concurrency in flight; then wait for the stragglers."""
    slots = asyncio.Semaphore(soak.args.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    step, due = 1 / soak.args.rate, time.monotonic()
    while not soak.stop.is_set() and (now := time.monotonic()) < until:
        if due > now:
            await asyncio.sleep(due - now)
        due = max(due + step, time.monotonic() - 1)  # no catch-up burst after a stall
        await slots.acquire()
        task = asyncio.create_task(one_request(soak, http))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(lambda _: slots.release())
    if tasks:
        await asyncio.wait(tasks, timeout=TIMEOUTS["total"] + 6)
    for task in [t for t in tasks if not t.done()]:  # not finished within the client timeout: lost
        task.cancel()
        soak.stats.fail("unfinished", "request still in flight at the end", lost=True)


async def ticks(soak: Soak, first: Span, then: Span) -> AsyncIterator[None]:
    """Yield after random pauses (the first one early, so a short run sees every kind)."""
    span = first
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(soak.stop.wait(), soak.rng.uniform(*span))
        if soak.stop.is_set():
            return
        span = then
        yield


async def reloads(soak: Soak, path: Path) -> None:
    async for _ in ticks(soak, (2, 6), (4, 12)):
        if soak.rng.random() < 0.2:
            bad = soak.rng.choice(INVALID)
            write_atomic(path, config_text(soak, 150) if bad == "PCT150" else bad)
            soak.stats.injected["invalid config"] += 1
            await asyncio.sleep(soak.rng.uniform(1.5, 3))
        soak.percentage = soak.rng.choice([p for p in STAGES if p != soak.percentage])
        write_atomic(path, config_text(soak, soak.percentage))
        soak.stats.injected["reload"] += 1


async def restarts(soak: Soak, http: aiohttp.ClientSession) -> None:
    async for _ in ticks(soak, (4, 10), (25, 60)):
        window = [time.monotonic(), math.inf]
        soak.faults.append(window)
        old = soak.services["signal"]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(soak.procs.stop, old)
        await asyncio.sleep(soak.rng.uniform(0.5, 3))
        new = start_upstream(soak, "signal")
        await wait_http(http, soak.url("signal", "/health"), new, 15)
        window[1] = time.monotonic()
        soak.stats.injected["signal restart"] += 1


async def bursts(soak: Soak, http: aiohttp.ClientSession) -> None:
    async for _ in ticks(soak, (3, 8), (10, 25)):
        mode, seconds = soak.rng.choice(("status", "slow", "reset")), soak.rng.uniform(2, 6)
        share = round(soak.rng.uniform(0.5, 1), 2)
        soak.faults.append([time.monotonic(), time.monotonic() + seconds])
        query = f"/-/fault?mode={mode}&seconds={seconds:.1f}&share={share}"
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            async with http.post(soak.url("signal", query), timeout=aiohttp.ClientTimeout(2)):
                soak.stats.injected[f"burst {mode}"] += 1
        await asyncio.sleep(seconds)


async def sighups(soak: Soak) -> None:
    async for _ in ticks(soak, (1, 5), (5, 15)):
        os.kill(soak.services["proxy"].proc.pid, signal.SIGHUP)
        soak.stats.injected["SIGHUP"] += 1


def proc_figures(pid: int) -> tuple[int, int]:
    """VmRSS (KiB) and open fds over the process and its children."""
    rss = fds = 0
    for each in tree_pids(pid):
        with contextlib.suppress(OSError):
            fds += len(os.listdir(f"/proc/{each}/fd"))
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
    return rss, fds


def fmt(counter: Counter[str], empty: str = "-") -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or empty


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


def progress(soak: Soak) -> str:
    s = soak.stats
    ms = s.interval_ms
    s.all_ms.extend(ms)
    line = (
        f"[{time.monotonic() - soak.began:5.0f}s] req {s.sent} | {fmt(s.classes)} | fallback "
        f"{sum(s.fallbacks.values())} ({fmt(s.fallbacks)}) | errors: {fmt(s.errors)} | "
        f"lost {s.lost} | "
        f"p50 {percentile(ms, 0.5):.1f} p99 {percentile(ms, 0.99):.1f} ms | "
        f"rss {s.rss_kib[-1] / 1024 if s.rss_kib else 0:.1f} MiB fds {s.fds[-1] if s.fds else 0}"
        f" | guard trips {len(s.trips)}"
    )
    s.interval_ms = []
    return line


async def watch(soak: Soak, http: aiohttp.ClientSession) -> None:
    """Once a second: /-/status, RSS and fds, process health; a progress line per interval."""
    s, next_line = soak.stats, time.monotonic() + soak.args.interval
    while not soak.stop.is_set():
        try:
            async with http.get(
                soak.url("admin", "/-/status"), timeout=aiohttp.ClientTimeout(2)
            ) as r:
                doc = await r.json()
            if doc["guard"]["tripped"]:
                s.trips[doc["guard"]["tripped_at"]] = doc["guard"]["reason"]
            if not doc["config"]["last_reload"]["ok"]:
                s.rejects.add(doc["config"]["last_reload"]["at"])
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
            s.status_errors += 1
        for name in ("proxy", "legacy"):
            if (code := soak.services[name].proc.poll()) is not None:
                s.notes.append(f"{name} exited ({code}) at {time.monotonic() - soak.began:.0f} s")
                soak.stop.set()
        rss, fds = proc_figures(soak.services["proxy"].proc.pid)
        s.rss_kib = [s.rss_kib[0] if s.rss_kib else rss, max([rss, *s.rss_kib]), rss]
        s.fds = [s.fds[0] if s.fds else fds, max([fds, *s.fds]), fds]
        if time.monotonic() >= next_line:
            next_line += soak.args.interval
            print(progress(soak), flush=True)
        await asyncio.sleep(1)


async def soak_run(soak: Soak) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    seconds = soak.args.minutes * 60
    connector = aiohttp.TCPConnector(limit=soak.args.concurrency + 8)
    timeout = aiohttp.ClientTimeout(total=TIMEOUTS["total"] + 5)
    jar = aiohttp.DummyCookieJar()  # a minted session cookie must not stick
    # Hard limit: minutes + 45 s, and up to ~15 s of clean-up: within minutes + 1.
    async with (
        asyncio.timeout(seconds + 45),
        aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=jar) as http,
    ):
        names = ("signal", "legacy", "proxy", "admin")
        soak.ports = dict(zip(names, free_ports(len(names)), strict=True))
        for name in ("signal", "legacy"):
            await wait_http(http, soak.url(name, "/health"), start_upstream(soak, name), 20)
        config = soak.tmp / "rollout.yaml"
        write_atomic(config, config_text(soak, soak.percentage))
        argv = [str(VENV_BIN / "rollout"), "serve", "-c", str(config), "--grace", "0"]
        proxy = soak.procs.start("proxy", argv, soak.tmp / "proxy.log", None)
        soak.services["proxy"] = proxy
        await wait_http(http, soak.url("admin", "/-/ready"), proxy, 30)
        await wait_http(http, soak.url("proxy", "/health"), proxy, 10)
        print(
            f"soak: {soak.args.minutes:g} min at {soak.args.rate:g} req/s, concurrency "
            f"{soak.args.concurrency}; ports {soak.ports}; logs in {soak.tmp}",
            flush=True,
        )
        soak.began = time.monotonic()
        coros = [watch(soak, http), reloads(soak, config), restarts(soak, http), bursts(soak, http)]
        helpers = [asyncio.create_task(c) for c in [*coros, sighups(soak)]]
        try:
            await traffic(soak, http, soak.began + seconds)
        finally:
            soak.traffic_s = time.monotonic() - soak.began
            soak.stop.set()
            await asyncio.wait(helpers, timeout=5)
            for task in helpers:
                if task.done() and not task.cancelled() and task.exception():
                    soak.stats.notes.append(f"injector failed: {task.exception()!r}")
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        print(progress(soak), flush=True)
        if soak.services["proxy"].proc.poll() is None:
            write_atomic(config, config_text(soak, soak.percentage))  # undo a pending invalid
            await asyncio.sleep(2.5)
            async with http.get(soak.url("admin", "/-/status")) as r:
                doc = await r.json()
            live, reload = doc["percentages"]["default"], doc["config"]["last_reload"]
            ok = live == soak.percentage and reload["ok"]
            soak.stats.notes.append(
                f"config check {'ok' if ok else 'MISMATCH'}: live {live}% (last written "
                f"{soak.percentage:g}%), generation {doc['config']['generation']}"
            )


def summary(soak: Soak, elapsed: float) -> str:
    s, ms = soak.stats, soak.stats.all_ms + soak.stats.interval_ms
    log = soak.tmp / "proxy.log"
    tracebacks = log.read_text(errors="replace").count("Traceback") if log.exists() else 0
    rows = [
        ("elapsed", f"{elapsed:.0f} s"),
        ("requests sent", f"{s.sent} ({s.sent / max(soak.traffic_s, 1):.0f}/s)"),
        ("answered", f"{s.answered}: {fmt(s.classes)}"),
        ("fallbacks", f"{sum(s.fallbacks.values())}: {fmt(s.fallbacks)}"),
        ("LOST", str(s.lost)),
        ("unexpected status/body", str(s.unexpected)),
        ("accounted", f"{s.answered} answered + {s.lost} lost = {s.answered + s.lost} of {s.sent}"),
        ("latency ms", f"p50 {percentile(ms, 0.5):.1f}  p99 {percentile(ms, 0.99):.1f}"),
        ("proxy RSS MiB", "first/max/last " + "/".join(f"{k / 1024:.1f}" for k in s.rss_kib)),
        ("proxy fds", "first/max/last " + "/".join(map(str, s.fds))),
        ("guard trips", f"{len(s.trips)}" + "".join(f"; {r}" for r in list(s.trips.values())[:3])),
        ("rejected reloads seen", str(len(s.rejects))),
        ("injected", fmt(s.injected)),
        ("status poll failures", str(s.status_errors)),
        ("proxy log tracebacks", str(tracebacks)),
    ]
    rows += [("errors", f"{k}: {v}") for k, v in sorted(s.errors.items())]
    rows += [("note", n) for n in s.notes] + [("example", e) for e in s.examples]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--concurrency", type=int, default=20, help="requests in flight")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds per progress line")
    parser.add_argument("--keep-tmp", action="store_true", help="keep config and logs")
    parser.add_argument("--upstream", choices=("signal", "legacy"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream(args.upstream, args.port)
        return 0
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with `&`
    soak = Soak(args, Processes(ROOT), Path(tempfile.mkdtemp(prefix="rollout-soak-")), Stats())
    ok = False
    try:
        asyncio.run(soak_run(soak))
        ok = True
    except (KeyboardInterrupt, asyncio.CancelledError):
        soak.stats.notes.append("interrupted")
    except TimeoutError:
        soak.stats.notes.append("hard time limit (minutes + 1) reached")
    except Exception as exc:
        soak.stats.notes.append(f"aborted: {exc!r}")
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        soak.procs.stop_all()
        signal.signal(signal.SIGINT, previous)
    print(summary(soak, time.monotonic() - soak.began))
    if args.keep_tmp:
        print(f"soak: logs kept in {soak.tmp}")
    else:
        shutil.rmtree(soak.tmp, ignore_errors=True)
    passed = ok and soak.stats.lost == 0 and soak.stats.unexpected == 0 and soak.stats.sent > 0
    print("soak: PASS" if passed else "soak: FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
