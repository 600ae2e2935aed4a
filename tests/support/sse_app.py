"""A server-sent events upstream (Starlette + sse-starlette), run under uvicorn by
`tests.support.thirdparty.uvicorn_server`.

- `GET /gated/{name}?count=N`: N events, each emitted only once the test has allowed it
  with `POST /gated/{name}/allow`; `GET /gated/{name}/state` tells how many were
  allowed and emitted, so a test can check what the server had sent when its client
  held an event.
- `GET /ticks?count=N&every=S`: N events, S seconds apart, then the end of the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

BOUND = 60.0  # a gated stream nobody releases ends instead of living forever


class Gate:
    """Events allowed by the test and events emitted by the stream."""

    def __init__(self) -> None:
        self.allowed = 0
        self.emitted = 0
        self._changed = asyncio.Event()

    def allow(self, n: int) -> None:
        self.allowed += n
        self._changed.set()
        self._changed = asyncio.Event()

    async def turn(self) -> None:
        while self.emitted >= self.allowed:
            changed = self._changed
            await asyncio.wait_for(changed.wait(), BOUND)

    def state(self) -> dict[str, int]:
        return {"allowed": self.allowed, "emitted": self.emitted}


GATES: dict[str, Gate] = {}


async def gated(request: Request) -> EventSourceResponse:
    gate = GATES.setdefault(request.path_params["name"], Gate())
    count = int(request.query_params["count"])

    async def events() -> AsyncIterator[ServerSentEvent]:
        for n in range(count):
            await gate.turn()
            gate.emitted += 1
            yield ServerSentEvent(data=f"event {n}", id=str(n))

    return EventSourceResponse(events(), ping=600)


async def allow(request: Request) -> JSONResponse:
    gate = GATES.setdefault(request.path_params["name"], Gate())
    gate.allow(int(request.query_params.get("n", "1")))
    return JSONResponse(gate.state())


async def state(request: Request) -> JSONResponse:
    return JSONResponse(GATES.setdefault(request.path_params["name"], Gate()).state())


async def ticks(request: Request) -> EventSourceResponse:
    count = int(request.query_params["count"])
    every = float(request.query_params["every"])

    async def events() -> AsyncIterator[ServerSentEvent]:
        for n in range(count):
            if n:
                await asyncio.sleep(every)
            yield ServerSentEvent(data=f"tick {n}", id=str(n))

    return EventSourceResponse(events(), ping=600)


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/gated/{name}", gated),
        Route("/gated/{name}/allow", allow, methods=["POST"]),
        Route("/gated/{name}/state", state),
        Route("/ticks", ticks),
    ]
)
