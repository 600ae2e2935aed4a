"""The exception tree of rollout-proxy.

    RolloutError
    ├── ConfigError            the YAML file is unreadable or invalid (every problem listed)
    ├── ClientGoneError        the client disconnected while its request was being read
    ├── EditError              a file edit cannot be made safely (nothing was written)
    └── UpstreamError          one attempt against one upstream failed
        ├── UpstreamConnectError   refused / connect timeout: nothing was sent
        │   └── UpstreamTLSError   the TLS handshake failed (nothing was sent either)
        ├── UpstreamTimeoutError   no response headers within the deadline
        └── UpstreamResetError     the connection dropped, or the answer was not HTTP

Foreign exceptions (`TimeoutError`, `OSError`, `ssl.SSLError`) are translated into these
in one place, `proxy.http.client.translate_errors`, always chained (`raise ... from exc`).
The status a client sees for each is one table, `STATUS` (as Caddy's `statusError`).
"""

from __future__ import annotations

from enum import StrEnum


class RolloutError(Exception):
    """Base of every error rollout-proxy raises on purpose."""


class ConfigError(RolloutError):
    """The configuration file cannot be used; `problems` names each key path and value."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class EditError(RolloutError):
    """A file edit cannot be made safely; the message names the key path or the file."""


class ClientGoneError(RolloutError):
    """The client went away mid-request; deliberately not an OSError, so that it is never
    mistaken for (and counted as) an upstream connection failure."""


class FailureReason(StrEnum):
    """Why an attempt against an upstream did not produce a usable answer."""

    CONNECT = "connect"
    TIMEOUT = "timeout"
    RESET = "reset"
    STATUS = "status"
    TLS = "tls"


# What the proxy answers for a failed attempt it cannot fall back from.
STATUS = {
    FailureReason.CONNECT: 502,
    FailureReason.RESET: 502,
    FailureReason.TIMEOUT: 504,
    FailureReason.TLS: 502,
}
# nginx's "client closed the request": nobody receives it, metrics count it.
CLIENT_GONE = 499


class UpstreamError(RolloutError):
    reason: FailureReason

    def __init__(self, upstream: str, detail: str) -> None:
        self.upstream = upstream
        self.detail = detail
        super().__init__(f"{upstream}: {self.reason.value}: {detail}")

    @property
    def status(self) -> int:
        return STATUS[self.reason]


class UpstreamConnectError(UpstreamError):
    reason = FailureReason.CONNECT


class UpstreamTLSError(UpstreamConnectError):
    """A connect failure of its own kind: every method may fall back from it (SPEC 5)."""

    reason = FailureReason.TLS


class UpstreamTimeoutError(UpstreamError):
    reason = FailureReason.TIMEOUT


class UpstreamResetError(UpstreamError):
    reason = FailureReason.RESET
