"""The autopilot's webhooks (SPEC 13): `events` posted after a decision, `confirm` asked
before a promotion.

An events post must never hold up a decision, so `Notifier` hands it to one background
thread through a bounded queue and forgets it; a failed post is one WARNING line. A
confirm hook is a question whose answer the promotion waits for, so `confirm` is
synchronous, with a bound on how long it may take.

URLs are shown as `scheme://host:port/…` only: chat webhooks carry their token in the
path or the query.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from proxy import __version__

log = logging.getLogger("rollout.webhooks")

QUEUE_SIZE = 1000


def shown(url: str) -> str:
    """The URL without credentials, path or query: safe to log."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    rest = "/…" if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _post_once(url: str, body: bytes, timeout: float) -> str | None:
    """POST once; None when the hook answered 2xx, else what went wrong, in words."""
    request = urllib.request.Request(  # noqa: S310 (the operator's configured hook)
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": f"rollout-proxy/{__version__}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read()
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"answered {exc.code}"
    except TimeoutError:
        return f"did not answer within {timeout:g} s"
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return f"did not answer within {timeout:g} s"
        return f"cannot be reached: {exc.reason}"
    except OSError as exc:
        return f"cannot be reached: {exc}"
    except http.client.HTTPException as exc:  # answered, but not in HTTP
        return f"gave an answer that is not HTTP ({type(exc).__name__})"
    except ValueError as exc:  # not a URL urllib can post to
        return f"is not a usable URL ({exc})"
    return None if 200 <= status < 300 else f"answered {status}"


def _body(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(payload), ensure_ascii=False, default=str).encode("utf-8")


class Notifier:
    """Posts each payload to every URL from a daemon thread; `post` returns at once."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.urls = tuple(urls)
        self.timeout, self.attempts, self.backoff = timeout, max(1, attempts), backoff
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = threading.Condition()
        self._busy = False  # a payload is being delivered
        self._closing = False
        self._abort = threading.Event()  # close() gave up waiting: stop retrying
        self._thread: threading.Thread | None = None

    def post(self, payload: Mapping[str, Any]) -> None:
        if not self.urls:
            return
        body = _body(payload)
        with self._wake:
            if self._closing:
                log.warning("webhook payload dropped: the notifier is closed")
                return
            if len(self._queue) >= QUEUE_SIZE:
                self._queue.popleft()
                log.warning("webhook queue full (%d): the oldest payload was dropped", QUEUE_SIZE)
            self._queue.append(body)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="rollout-webhooks", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def close(self, timeout: float = 10.0) -> int:
        """Wait up to `timeout` s for pending posts; how many payloads were not delivered."""
        with self._wake:
            self._closing = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._wake:
            left = len(self._queue) + (1 if self._busy else 0)
            self._abort.set()
            self._queue.clear()
        if left:
            log.warning("webhooks: %d payload(s) left undelivered at shutdown", left)
        return left

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                body = self._queue.popleft()
                self._busy = True
            try:
                for url in self.urls:
                    try:
                        self._deliver(url, body)
                    except Exception as exc:  # the thread must outlive any one post
                        log.warning("events webhook %s failed: %r", shown(url), exc)
            finally:
                with self._wake:
                    self._busy = False

    def _deliver(self, url: str, body: bytes) -> None:
        problem: str | None = None
        for attempt in range(self.attempts):
            if self._abort.is_set():
                break
            problem = _post_once(url, body, self.timeout)
            if problem is None:
                return
            if attempt + 1 < self.attempts and self._abort.wait(self.backoff * 2**attempt):
                break
        log.warning(
            "events webhook %s %s; gave up after %d attempt(s)",
            shown(url),
            problem or "was not tried",
            self.attempts,
        )


def confirm(
    urls: Sequence[str],
    payload: Mapping[str, Any],
    *,
    timeout: float = 5.0,
    attempts: int = 2,
) -> list[str]:
    """Ask every URL; the problems, one per URL that did not answer 2xx (empty: confirmed).

    A 4xx is the hook's answer and is not retried; a 5xx or no answer is, within
    `attempts` x `timeout` per URL.
    """
    body = _body(payload)
    problems: list[str] = []
    for url in urls:
        deadline = time.monotonic() + max(1, attempts) * timeout
        problem: str | None = None
        for _ in range(max(1, attempts)):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            problem = _post_once(url, body, min(timeout, left))
            if problem is None or problem.startswith("answered 4"):
                break
            if problem.startswith("did not answer"):  # said with the configured figure
                problem = f"did not answer within {timeout:g} s"
        if problem is not None:
            problems.append(f"confirm hook {shown(url)} {problem}")
    return problems
