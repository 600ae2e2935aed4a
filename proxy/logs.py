"""Logging: one line per event on stderr; client mistakes never dump a traceback.

aiohttp logs every malformed request (bad request line, too many headers, ...) with a
full traceback at ERROR. That is the client's fault, not ours, and a hostile client could
fill the disk with it; it becomes one WARNING line, at most one per interval, with a
count of what was folded in.
"""

from __future__ import annotations

import logging
import sys
import time

from aiohttp.http_exceptions import HttpProcessingError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ClientErrorFilter(logging.Filter):
    """Turns aiohttp's traceback for a malformed request into a rate-limited one-liner."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = -interval
        self._folded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            self._folded += 1
            return False
        folded, self._folded, self._last = self._folded, 0, now
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        # Only the parser's reason: its message goes on to quote the offending bytes,
        # which can be a session id or a token.
        message = str(exc.message or "").split(":", 1)[0]
        detail = " ".join(message.split()) or type(exc).__name__
        record.msg = "rejected a malformed request from %s: %s %s%s"
        record.args = (peer, exc.code, detail, f" ({folded} more since)" if folded else "")
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format=FORMAT, stream=sys.stderr
    )
    logging.getLogger("aiohttp.server").addFilter(ClientErrorFilter())
