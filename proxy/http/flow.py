"""Write backpressure for our asyncio protocols (the public server's connections and the
upstream client's): `drain()` waits while the transport's buffer is above its high-water
mark, as asyncio's own streams do, and fails with the protocol's error once the
connection is lost."""

from __future__ import annotations

import asyncio


class WriteFlow:
    """Mixin for an `asyncio.Protocol`: `pause_writing`/`resume_writing` and `drain()`."""

    _write_paused: bool = False
    _drain_waiter: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._end_drain(None)

    def _end_drain(self, error: Exception | None) -> None:
        """Wake a waiting `drain()`: writable again, or `error` (the connection is gone,
        and a later `drain()` has nothing to wait for)."""
        if error is not None:
            self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    async def drain(self) -> None:
        if self._write_paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
