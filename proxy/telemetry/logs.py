"""Logging: one line per event on stderr; client mistakes never dump a traceback.

A malformed request is the client's fault, not ours, and a hostile client could fill the
disk with reports of them: each becomes one WARNING line, at most one per interval, with
a count of what was folded in. The public server reports through `RateLimitedWarning`;
aiohttp (the admin listener) logs a traceback at ERROR, which `ClientErrorFilter` turns
into the same one-liner.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RateLimiter:
    """At most one event per `interval`; counts the ones folded in between."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last = -interval
        self._folded = 0

    def take(self) -> int | None:
        """None: fold this event; else log it, with the number folded since the last."""
        now = self._clock()
        if now - self._last < self.interval:
            self._folded += 1
            return None
        folded, self._folded, self._last = self._folded, 0, now
        return folded


def _since(folded: int) -> str:
    return f" ({folded} more since)" if folded else ""


class RateLimitedWarning:
    """A WARNING line that repeats at most once per interval."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.limiter = RateLimiter(interval, clock)

    def warn(self, message: str, *args: object) -> None:
        folded = self.limiter.take()
        if folded is not None:
            self.logger.warning(message + "%s", *args, _since(folded))


class ClientErrorFilter(logging.Filter):
    """Turns aiohttp's traceback for a malformed request into a rate-limited one-liner."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.limiter = RateLimiter(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        folded = self.limiter.take()
        if folded is None:
            return False
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        # Only the parser's reason: its message goes on to quote the offending bytes,
        # which can be a session id or a token.
        message = str(exc.message or "").split(":", 1)[0]
        detail = " ".join(message.split()) or type(exc).__name__
        record.msg = "rejected a malformed request from %s: %s %s%s"
        record.args = (peer, exc.code, detail, _since(folded))
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format=FORMAT, stream=sys.stderr
    )
    logging.getLogger("aiohttp.server").addFilter(ClientErrorFilter())
