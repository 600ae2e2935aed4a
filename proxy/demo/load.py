"""The demo's own traffic: a bounded, steady load of simulated users through the proxy.

`rollout demo --autopilot` needs requests for the autopilot to analyse. A few hundred
sessions (so the share served by signal follows the rollout percentage, SPEC 3) and one
test session (so signal has attempts to judge even at 0 %, SPEC 13) ask for the paths
`rollout test` uses at a modest, fixed rate. Bounded every way: a request rate, a cap on
requests in flight, a maximum duration and count, and a stop event; failures are counted,
never raised, so a proxy that is down or draining only shows up in the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

LOAD_PATHS = ("/signals?limit=10", "/signals/stats", "/health")
TEST_SESSION = "demo-qa"
UPSTREAM_HEADER = "X-Rollout-Upstream"
FALLBACK_HEADER = "X-Rollout-Fallback"


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What to send: `rate` requests per second in all, `test_share` of them as the test
    session, the rest spread over `users` sessions named `demo-user-NNNN`."""

    base_url: str
    users: int = 400
    test_session: str = TEST_SESSION
    test_share: float = 0.15
    rate: float = 80.0
    max_in_flight: int = 16
    max_duration: float = 900.0  # seconds; a demo left running stops loading by itself
    max_requests: int | None = None
    timeout: float = 5.0
    session_header: str = "X-Session-Id"
    paths: tuple[str, ...] = LOAD_PATHS
    seed: int = 17

    def session(self, rng: random.Random) -> str:
        if rng.random() < self.test_share:
            return self.test_session
        return f"demo-user-{rng.randrange(self.users):04d}"


@dataclass(frozen=True, slots=True)
class LoadFigures:
    """Counts since the load started; `since` gives a period's."""

    sent: int = 0
    answered: int = 0
    failed: int = 0  # no answer: connect refused, timeout, reset
    server_errors: int = 0  # answered with a 5xx
    fallbacks: int = 0  # answered by legacy after signal failed (X-Rollout-Fallback)
    skipped: int = 0  # due while max_in_flight were still out: not sent
    by_upstream: dict[str, int] = field(default_factory=dict)  # X-Rollout-Upstream
    in_flight: int = 0

    @property
    def errors(self) -> int:
        return self.failed + self.server_errors

    def since(self, earlier: LoadFigures) -> LoadFigures:
        return LoadFigures(
            sent=self.sent - earlier.sent,
            answered=self.answered - earlier.answered,
            failed=self.failed - earlier.failed,
            server_errors=self.server_errors - earlier.server_errors,
            fallbacks=self.fallbacks - earlier.fallbacks,
            skipped=self.skipped - earlier.skipped,
            by_upstream={
                side: count - earlier.by_upstream.get(side, 0)
                for side, count in self.by_upstream.items()
            },
            in_flight=self.in_flight,
        )


def traffic_line(period: LoadFigures, seconds: float) -> str:
    """One line for the newcomer: how much went through, how much of it signal served."""
    finished = period.answered + period.failed
    signal = period.by_upstream.get("signal", 0)
    signal_share = 100.0 * signal / period.answered if period.answered else 0.0
    error_share = 100.0 * period.errors / finished if finished else 0.0
    return (
        f"traffic: {period.sent} req in {seconds:.0f} s, signal {signal_share:.0f} %, "
        f"fallbacks {period.fallbacks}, errors {error_share:.1f} %"
    )


class Load:
    """The load's counters, read by the demo while `run` sends."""

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self._counts: Counter[str] = Counter()
        self._by_upstream: Counter[str] = Counter()

    def figures(self) -> LoadFigures:
        c = self._counts
        return LoadFigures(
            sent=c["sent"],
            answered=c["answered"],
            failed=c["failed"],
            server_errors=c["server_errors"],
            fallbacks=c["fallbacks"],
            skipped=c["skipped"],
            by_upstream=dict(self._by_upstream),
            in_flight=c["in_flight"],
        )

    async def run(self, stop: asyncio.Event) -> LoadFigures:
        """Send until `stop` is set, `max_duration` passes or `max_requests` are due."""
        plan = self.plan
        rng = random.Random(plan.seed)
        pending: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        deadline = started + plan.max_duration
        timeout = aiohttp.ClientTimeout(total=plan.timeout)
        connector = aiohttp.TCPConnector(limit=plan.max_in_flight)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            due = 0
            while not stop.is_set() and time.monotonic() < deadline:
                if plan.max_requests is not None and due >= plan.max_requests:
                    break
                # A slow proxy lowers the rate rather than piling requests up.
                if self._counts["in_flight"] >= plan.max_in_flight:
                    self._counts["skipped"] += 1
                else:
                    url = plan.base_url + plan.paths[due % len(plan.paths)]
                    headers = {plan.session_header: plan.session(rng)}
                    self._counts["sent"] += 1
                    self._counts["in_flight"] += 1
                    task = asyncio.create_task(self._send(http, url, headers))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                due += 1
                # A fixed schedule (not a sleep after each send), so the rate holds.
                next_at = min(started + due / plan.rate, deadline)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            if pending:
                await asyncio.wait(set(pending), timeout=plan.timeout + 1)
            left = set(pending)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
        return self.figures()

    async def _send(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> None:
        counts = self._counts
        try:
            async with http.get(url, headers=headers) as resp:
                await resp.read()
                counts["answered"] += 1
                if resp.status >= 500:
                    counts["server_errors"] += 1
                if FALLBACK_HEADER in resp.headers:
                    counts["fallbacks"] += 1
                self._by_upstream[resp.headers.get(UPSTREAM_HEADER, "none")] += 1
        except (aiohttp.ClientError, TimeoutError, OSError):
            counts["failed"] += 1
        finally:
            counts["in_flight"] -= 1
