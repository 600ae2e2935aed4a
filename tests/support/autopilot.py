"""Autopilot end to end: upstreams whose health a test turns, a bounded load, webhook
receivers, and `rollout autopilot` as a real process.

A fleet is two `rollout serve` replicas reading ONE config file (the file the autopilot
writes), each on its own ports through `ROLLOUT_LISTEN_PORT` / `ROLLOUT_ADMIN_PORT`, with a
real Prometheus scraping both.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.support import HOST, ProxyProcess, free_port, write_config

TEST_SESSION = "qa-autopilot"  # in rollout.test_sessions: reaches signal at 0 %


@dataclass
class Health:
    """How an API answers now; the test changes it while traffic runs.

    Errors are deterministic: `fail` of every `per` requests answer 500 (8 % = 2 of 25), so
    an interval's error rate does not depend on chance.
    """

    fail: int = 0
    per: int = 25
    delay: float = 0.0
    served: int = 0
    failed: int = 0

    def set(
        self, *, fail: int | None = None, per: int | None = None, delay: float | None = None
    ) -> None:
        if fail is not None:
            self.fail = fail
        if per is not None:
            self.per = per
        if delay is not None:
            self.delay = delay


def api_app(name: str, health: Health) -> web.Application:
    """A stand-in for the Signal or Legacy API: JSON on every path, health as told."""

    async def handle(request: web.Request) -> web.Response:
        n = health.served
        health.served += 1
        if health.delay:
            await asyncio.sleep(health.delay)
        if health.fail and n % health.per < health.fail:
            health.failed += 1
            return web.json_response({"error": "broken on purpose", "service": name}, status=500)
        return web.json_response({"service": name, "path": request.path, "n": n})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@dataclass
class Load:
    """A bounded load over the replicas: `rate` requests/s at most, stops by itself."""

    urls: list[str]
    rate: float = 120.0
    sessions: int = 400
    test_share: int = 5  # every n-th request carries the test session
    max_seconds: float = 240.0
    concurrency: int = 16
    sent: int = 0
    by_upstream: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    _task: asyncio.Task[None] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        sem = asyncio.Semaphore(self.concurrency)
        ids = itertools.cycle(range(self.sessions))
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            pending: set[asyncio.Task[None]] = set()
            i = 0
            while not self._stop.is_set() and time.monotonic() < deadline:
                await sem.acquire()
                session = TEST_SESSION if i % self.test_share == 0 else f"user-{next(ids)}"
                url = self.urls[i % len(self.urls)] + "/signals?limit=3"
                task = asyncio.create_task(self._one(http, url, session, sem))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
                await asyncio.sleep(1 / self.rate)
            if pending:
                await asyncio.wait(pending, timeout=15)

    async def _one(
        self, http: aiohttp.ClientSession, url: str, session: str, sem: asyncio.Semaphore
    ) -> None:
        try:
            async with http.get(url, headers={"X-Session-Id": session}) as resp:
                await resp.read()
                side = resp.headers.get("X-Rollout-Upstream", "none")
                self.by_upstream[side] = self.by_upstream.get(side, 0) + 1
        except (aiohttp.ClientError, TimeoutError):
            self.errors += 1
        finally:
            self.sent += 1
            sem.release()


@dataclass
class Hooks:
    """What the webhook receiver got, and how it answers confirm posts."""

    events: list[dict[str, Any]] = field(default_factory=list)
    confirms: list[dict[str, Any]] = field(default_factory=list)
    confirm_status: int = 200

    def app(self) -> web.Application:
        async def events(request: web.Request) -> web.Response:
            self.events.append(await request.json())
            return web.json_response({"ok": True})

        async def confirm(request: web.Request) -> web.Response:
            self.confirms.append(await request.json())
            return web.json_response({"ok": self.confirm_status < 300}, status=self.confirm_status)

        app = web.Application()
        app.router.add_post("/events", events)
        app.router.add_post("/confirm", confirm)
        return app

    def kinds(self) -> list[str]:
        return [str(e["event"]) for e in self.events]


@dataclass
class AutopilotProcess:
    """`rollout autopilot` as a real process, its output captured to a file."""

    config_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    def start(self, *extra: str, env: dict[str, str] | None = None) -> AutopilotProcess:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "autopilot", "-c", str(self.config_path), *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", **(env or {})},
        )
        return self

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode

    def output(self) -> str:
        if self._log is not None:
            self._log.flush()
        return (
            self.log_path.read_text(encoding="utf-8", errors="replace")
            if self.log_path.exists()
            else ""
        )


def history(config_path: Path) -> list[dict[str, Any]]:
    path = config_path.parent / "rollout-history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def pilot_events(config_path: Path) -> list[tuple[str, Any, Any]]:
    """(event, before, after) of the autopilot's history lines, in order."""
    return [
        (str(e.get("event")), e.get("before"), e.get("after"))
        for e in history(config_path)
        if e.get("command") == "autopilot"
    ]


def promotions(config_path: Path) -> list[tuple[float, float]]:
    """(from, to) of every autopilot promotion in the history."""
    return [
        (b["rollout.percentage"], a["rollout.percentage"])
        for event, b, a in pilot_events(config_path)
        if event == "promote"
    ]


def saved_state(config_path: Path) -> dict[str, Any]:
    path = config_path.parent / "rollout-autopilot.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


async def eventually(
    check: Callable[[], bool], *, timeout: float, what: str, explain: Callable[[], str] = str
) -> None:
    """Poll `check` every 0.1 s until true; fail after `timeout` s saying what and why."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}\n{explain()}")
        await asyncio.sleep(0.1)


def fleet_replicas(tmp: Path, data: dict[str, Any], count: int = 2) -> list[ProxyProcess]:
    """`count` replicas of one config file, each on its own ports (not started)."""
    path = write_config(tmp / "rollout.yaml", data)
    replicas = []
    for i in range(count):
        env = {"ROLLOUT_LISTEN_PORT": str(free_port()), "ROLLOUT_ADMIN_PORT": str(free_port())}
        replicas.append(ProxyProcess(path, data, tmp / f"replica-{i}.log", env=env))
    return replicas


async def served_percentage(http: aiohttp.ClientSession, replica: ProxyProcess) -> float:
    async with http.get(replica.admin_url + "/-/status") as resp:
        status = await resp.json()
    return float(status["percentages"]["default"])


def run_cli(
    config_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args, "-c", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
        check=False,
    )


@contextlib.asynccontextmanager
async def running_load(urls: list[str], **kwargs: Any) -> AsyncIterator[Load]:
    load = Load(urls, **kwargs).start()
    try:
        yield load
    finally:
        await load.stop()


__all__ = [
    "HOST",
    "TEST_SESSION",
    "AutopilotProcess",
    "Health",
    "Hooks",
    "Load",
    "api_app",
    "eventually",
    "fleet_replicas",
    "history",
    "pilot_events",
    "promotions",
    "run_cli",
    "running_load",
    "saved_state",
    "served_percentage",
]
