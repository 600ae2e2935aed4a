"""Shadow comparison (SPEC 11): mirror sampled legacy-served requests to signal, compare.

It wraps the relay (`mirrored`), as Traefik's mirror wraps a handler: the request path
never knows about it. For a sampled request the relay writes through a `Tee` that keeps
what the client got; once the client's response from legacy is complete, the mirror
runs as its own task, bounded: at most `shadow.max_in_flight` at once (more are dropped
and counted, never queued), signal's timeouts apply, and a body is kept only up to
`fallback.max_body_bytes`. Nothing here can delay, alter or fail a client's response.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from proxy.config.values import Config, ShadowConfig, Upstream
from proxy.errors import UpstreamError
from proxy.gateway.attempt import upstream_head
from proxy.gateway.headers import upstream_target
from proxy.gateway.relay import Exchange, Relay, Sink
from proxy.http.client import Pool, translate_errors
from proxy.rollout.compare import Answer, FieldDiff, Ignore, compare, json_paths_that_differ
from proxy.rollout.routing import Side

log = logging.getLogger("rollout.shadow")

SHADOW_HEADER = "X-Rollout-Shadow"
MAX_NOISE_ROUTES = 1000  # learned-noise memory is bounded like everything else


class Result:
    MATCH = "match"
    MISMATCH = "mismatch"
    ERROR = "error"
    DROPPED = "dropped"


def should_mirror(shadow: ShadowConfig, method: str, draw: float) -> bool:
    """Sample a legacy-served request; `draw` is uniform in [0, 1). Pure."""
    return shadow.enabled and method in shadow.methods and draw * 100 < shadow.percentage


@dataclass(frozen=True, slots=True)
class Mirror:
    """What is needed to replay one request against signal and judge the answer."""

    method: str
    target: str  # raw path and query, for the diff and learned noise
    feature: str
    signal_head: bytes  # request line and headers as signal gets them
    legacy_head: bytes | None  # for learn_noise's second legacy request
    body: bytes | None
    legacy: Answer


Count = Callable[[str, str], None]  # (feature, result) -> increments the metric
PoolFor = Callable[[Upstream], Pool]


@dataclass(frozen=True, slots=True)
class Diff:
    at: float
    method: str
    path: str
    feature: str
    legacy_status: int
    signal_status: int | None
    fields: list[FieldDiff]


@dataclass(eq=False)
class Shadow:
    """Runtime state of the comparison: in-flight mirrors, kept diffs, learned noise."""

    in_flight: int = 0
    diffs: collections.deque[Diff] = field(default_factory=lambda: collections.deque(maxlen=100))
    noise: dict[str, set[str]] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    rng: random.Random = field(default_factory=random.Random)

    def configure(self, shadow: ShadowConfig) -> None:
        if self.diffs.maxlen != shadow.keep_diffs:
            # Newest first: keep the head of the list, not its tail.
            newest = list(self.diffs)[: shadow.keep_diffs]
            self.diffs = collections.deque(newest, maxlen=shadow.keep_diffs)

    def sampled(self, shadow: ShadowConfig, method: str) -> bool:
        return should_mirror(shadow, method, self.rng.random())

    def start(self, mirror: Mirror, config: Config, pool_for: PoolFor, count: Count) -> None:
        """Launch a mirror, or count it dropped when `max_in_flight` are running."""
        if self.in_flight >= config.shadow.max_in_flight:
            count(mirror.feature, Result.DROPPED)
            return
        self.in_flight += 1
        task = asyncio.create_task(self._run(mirror, config, pool_for, count))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.in_flight -= 1

    async def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _run(self, mirror: Mirror, config: Config, pool_for: PoolFor, count: Count) -> None:
        signal = config.upstreams.signal
        try:
            answer = await _fetch(
                mirror.method, mirror.signal_head, mirror.body, pool_for(signal), config
            )
            if config.shadow.learn_noise and mirror.legacy_head is not None:
                legacy = config.upstreams.legacy
                second = await _fetch(
                    mirror.method, mirror.legacy_head, mirror.body, pool_for(legacy), config
                )
                self._learn(mirror, second)
        except UpstreamError as err:
            count(mirror.feature, Result.ERROR)
            log.debug("shadow %s %s: %s", mirror.method, mirror.target, err)
            return
        route = _route(mirror)
        ignore = Ignore([*config.shadow.ignore, *self.noise.get(route, ())])
        fields = compare(mirror.legacy, answer, ignore)
        if not fields:
            count(mirror.feature, Result.MATCH)
            return
        count(mirror.feature, Result.MISMATCH)
        self.diffs.appendleft(
            Diff(
                at=time.time(),
                method=mirror.method,
                path=mirror.target,
                feature=mirror.feature,
                legacy_status=mirror.legacy.status,
                signal_status=answer.status,
                fields=fields,
            )
        )

    def _learn(self, mirror: Mirror, second: Answer) -> None:
        """Fields that differ between legacy's two answers to one request are noise."""
        if mirror.legacy.body is None or second.body is None:
            return
        noisy = json_paths_that_differ(mirror.legacy.body, second.body)
        if not noisy:
            return
        route = _route(mirror)
        if route not in self.noise and len(self.noise) >= MAX_NOISE_ROUTES:
            self.noise.pop(next(iter(self.noise)))
        known = self.noise.setdefault(route, set())
        if not noisy <= known:
            log.info("shadow: learned noisy fields on %s: %s", route, ", ".join(sorted(noisy)))
            known |= noisy


def mirrored(relay: Relay, shadow: Shadow, pool_for: PoolFor, count: Count) -> Relay:
    """`relay`, plus a shadow comparison of the requests it samples."""

    def relay_and_mirror(exchange: Exchange, sink: Sink) -> Awaitable[int]:
        config = exchange.config
        if (
            config.shadow.enabled
            and exchange.decision.side is Side.LEGACY
            and exchange.request.upgrade is None  # a handshake is never replayed
            and exchange.body.buffered
            and shadow.sampled(config.shadow, exchange.request.method)
        ):
            return relay_teed(exchange, sink)
        # Not sampled: the relay's own coroutine, no frame of ours around it (hot path).
        return relay(exchange, sink)

    async def relay_teed(exchange: Exchange, sink: Sink) -> int:
        config = exchange.config
        tee = Tee(sink, config.fallback.max_body_bytes)
        status = await relay(exchange, tee)
        if tee.complete:
            # The client has its whole answer; the comparison runs in a task of its own.
            shadow.start(_mirror_of(exchange, tee), config, pool_for, count)
        return status

    return relay_and_mirror


class Tee:
    """A sink that passes everything on and keeps the body the client got, up to a limit."""

    __slots__ = ("_chunks", "_sink", "_size", "complete", "limit", "overflow")

    def __init__(self, sink: Sink, limit: int) -> None:
        self._sink = sink
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.overflow = False
        self.complete = False  # the whole answer reached the client

    @property
    def body(self) -> bytes | None:
        return None if self.overflow else b"".join(self._chunks)

    def _keep(self, chunk: bytes) -> None:
        if self.overflow:
            return
        self._size += len(chunk)
        if self._size > self.limit:
            self.overflow = True
            self._chunks.clear()
        else:
            self._chunks.append(chunk)

    def respond(
        self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> None:
        self._sink.respond(status, reason, headers, body)
        self._keep(body)
        self.complete = True

    def respond_head(self, status: int, reason: str, head: bytes, body: bytes) -> None:
        self._sink.respond_head(status, reason, head, body)
        self._keep(body)
        self.complete = True

    def start(
        self, status: int, reason: str, headers: list[tuple[str, str]], length: int | None
    ) -> None:
        self._sink.start(status, reason, headers, length)

    async def write(self, data: bytes) -> None:
        await self._sink.write(data)
        self._keep(data)

    def finish(self) -> None:
        self._sink.finish()
        self.complete = True

    def abort(self) -> None:
        self._sink.abort()


def _mirror_of(exchange: Exchange, tee: Tee) -> Mirror:
    """What the comparison needs of a request legacy has answered in full."""
    request, config, body = exchange.request, exchange.config, exchange.body
    marked = {SHADOW_HEADER: "1"}
    if exchange.minted:
        marked = {config.session.header: exchange.minted, **marked}
    upstreams = config.upstreams
    response = exchange.response
    content_type = next((v for k, v in response.headers if k.lower() == "content-type"), "")
    return Mirror(
        method=request.method,
        target=upstream_target(request),
        feature=exchange.decision.feature,
        signal_head=upstream_head(request, upstreams.signal, body, marked)[0],
        legacy_head=(
            upstream_head(request, upstreams.legacy, body, marked)[0]
            if config.shadow.learn_noise
            else None
        ),
        body=body.data,
        legacy=Answer(response.status, content_type, tee.body),
    )


def _route(mirror: Mirror) -> str:
    return f"{mirror.method} {mirror.target.partition('?')[0]}"


async def _fetch(
    method: str, head: bytes, body: bytes | None, pool: Pool, config: Config
) -> Answer:
    limit = config.fallback.max_body_bytes
    too_large = False
    deadline = asyncio.get_running_loop().time() + config.timeouts.signal
    with translate_errors(pool.name):
        response = await pool.request(
            method,
            head,
            body,
            chunked=False,
            connect_timeout=config.timeouts.connect,
            deadline=deadline,
        )
        try:
            async with asyncio.timeout(config.timeouts.total):
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.iter_chunks():
                    size += len(chunk)
                    if size > limit:
                        too_large = True
                        break
                    chunks.append(chunk)
        finally:
            if too_large:
                response.close()
            else:
                response.release()
    content_type = next((v for k, v in response.headers if k.lower() == "content-type"), "")
    body = None if too_large else b"".join(chunks)
    return Answer(response.status, content_type, body)
