"""The exception tree of rollout-proxy.

    RolloutError
    ├── ConfigError            the YAML file is unreadable or invalid (every problem listed)
    ├── ClientGoneError        the client disconnected while its request was being read
    └── UpstreamError          one attempt against one upstream failed
        ├── UpstreamConnectError   refused / connect timeout: nothing was sent
        ├── UpstreamTimeoutError   no response headers within the deadline
        └── UpstreamResetError     the connection dropped, or the answer was not HTTP

Client library exceptions are translated into these in one place
(`proxy.forward.translate_errors`); the status a client sees for each is `status`.
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


class ClientGoneError(RolloutError):
    """The client went away mid-request; deliberately not an OSError, so that it is never
    mistaken for (and counted as) an upstream connection failure."""


class FailureReason(StrEnum):
    """Why an attempt against an upstream did not produce a usable answer."""

    CONNECT = "connect"
    TIMEOUT = "timeout"
    RESET = "reset"
    STATUS = "status"


class UpstreamError(RolloutError):
    reason: FailureReason
    status: int

    def __init__(self, upstream: str, detail: str) -> None:
        self.upstream = upstream
        self.detail = detail
        super().__init__(f"{upstream}: {self.reason.value}: {detail}")


class UpstreamConnectError(UpstreamError):
    reason = FailureReason.CONNECT
    status = 502


class UpstreamTimeoutError(UpstreamError):
    reason = FailureReason.TIMEOUT
    status = 504


class UpstreamResetError(UpstreamError):
    reason = FailureReason.RESET
    status = 502
