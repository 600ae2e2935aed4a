"""`rollout demo --autopilot`: what runs beside the proxy so a newcomer watches it move.

Four things, started once the proxy listens and stopped before it is torn down: the
built-in load (`load.py`), a traffic line every few seconds, the autopilot controller in a
thread of its own, and with `--break-signal` a watcher that makes the signal API fail once
the live percentage reaches 30 %. The controller lives in `proxy.control` (a layer above
this one), so the demo is handed it as an `AutopilotRunner` and never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import aiohttp

from proxy.config.values import DEFAULT_FEATURE
from proxy.demo.apis import Faults
from proxy.demo.load import Load, LoadPlan, traffic_line
from proxy.status import StatusDocument

log = logging.getLogger("rollout.demo")

# Runs the controller on the demo's config until the event is set; prints one line per
# decision itself and returns its exit code. Called in a thread: it may block.
AutopilotRunner = Callable[[Path, threading.Event], int]

BREAK_AT = 30.0  # live percentage at which --break-signal starts failing signal
BREAK_RATE = 0.15  # three times the guard's 5 % trigger: the rollback is not a close call
REPORT_EVERY = 10.0  # seconds between traffic lines
JOIN_SECONDS = 10.0  # how long Ctrl-C waits for the controller to finish its step
WATCH_EVERY = 1.0  # seconds between looks at the live percentage


@dataclass(frozen=True, slots=True)
class PilotPlan:
    config_path: Path
    proxy_url: str
    admin_url: str
    runner: AutopilotRunner
    break_signal: bool = False
    report_every: float = REPORT_EVERY
    join_seconds: float = JOIN_SECONDS
    load: LoadPlan | None = None  # None: LoadPlan(proxy_url)


def say(line: str) -> None:
    # One write per line (print writes the newline apart): the controller's thread and the
    # log handler share the terminal, and half lines would interleave.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class PilotedDemo:
    """The load, the traffic lines, the controller thread and the breakage watcher."""

    def __init__(self, plan: PilotPlan, faults: Faults) -> None:
        self.plan = plan
        self.faults = faults
        self.load = Load(plan.load or LoadPlan(base_url=plan.proxy_url))
        self._stop_tasks = asyncio.Event()
        self._stop_runner = threading.Event()
        self._tasks: list[asyncio.Task[object]] = []
        self._runner_done: asyncio.Future[int] | None = None

    def start(self) -> None:
        """Called from the running loop once the proxy listens."""
        self._tasks.append(asyncio.create_task(self.load.run(self._stop_tasks)))
        self._tasks.append(asyncio.create_task(self._report_traffic()))
        if self.plan.break_signal:
            self._tasks.append(asyncio.create_task(self._break_signal_at(BREAK_AT)))
        self._runner_done = self._start_runner()

    async def stop(self) -> None:
        """Stop the controller (bounded wait), then the tasks; never raises."""
        self._stop_runner.set()
        self._stop_tasks.set()
        if self._runner_done is not None and not self._runner_done.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._runner_done), self.plan.join_seconds)
            except TimeoutError:
                # Its thread is a daemon: it cannot keep the demo from exiting.
                log.warning(
                    "the autopilot did not stop within %g s; leaving it", self.plan.join_seconds
                )
        for task in self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), self.plan.join_seconds)
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start_runner(self) -> asyncio.Future[int]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()

        def settle(code: int) -> None:
            if not done.done():
                done.set_result(code)

        def target() -> None:
            try:
                code = self.plan.runner(self.plan.config_path, self._stop_runner)
            except Exception:
                log.exception("the autopilot failed")
                code = 1
            # The loop is gone when Ctrl-C gave up waiting for this thread.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, code)

        # A thread of its own, not asyncio.to_thread: the default executor is joined
        # without a bound at exit, and a controller stuck in a read must not hang Ctrl-C.
        threading.Thread(target=target, name="rollout-demo-autopilot", daemon=True).start()
        done.add_done_callback(self._runner_exited)
        return done

    def _runner_exited(self, done: asyncio.Future[int]) -> None:
        if not self._stop_runner.is_set():
            say(
                f"autopilot exited with {done.result()}; the proxy keeps serving "
                "(Ctrl-C stops the demo)"
            )

    async def _report_traffic(self) -> None:
        every = self.plan.report_every
        before, since = self.load.figures(), time.monotonic()
        while not await _stopped_within(self._stop_tasks, every):
            now, figures = time.monotonic(), self.load.figures()
            say(traffic_line(figures.since(before), now - since))
            before, since = figures, now

    async def _break_signal_at(self, at: float) -> None:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not await _stopped_within(self._stop_tasks, WATCH_EVERY):
                percentage = await live_percentage(http, self.plan.admin_url)
                if percentage is not None and percentage >= at:
                    self.faults.failure_rate = BREAK_RATE
                    say(
                        f"signal API now fails {BREAK_RATE * 100:g} % of requests "
                        "(--break-signal); watch the guard trip and the autopilot roll back"
                    )
                    return


async def live_percentage(http: aiohttp.ClientSession, admin_url: str) -> float | None:
    """The global percentage the proxy serves now, from `/-/status`; None if unreadable."""
    try:
        async with http.get(admin_url + "/-/status") as resp:
            if resp.status != 200:
                return None
            status = cast(StatusDocument, await resp.json())
            return float(status["percentages"][DEFAULT_FEATURE])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
        return None  # not up yet, draining, or not a proxy: look again later


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
