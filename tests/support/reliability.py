"""Helpers of the reliability suite: the proxy started fast, shared, and checked clean."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ProxyProcess, write_config

# A short drain keeps teardown fast; the shutdown tests pass their own `--grace`.
FAST_STOP = ("--grace", "0.1")


CALL_FAILED = pytest.StashKey[bool]()


StartProxy = Callable[..., Any]


@contextlib.contextmanager
def running_cleanly(request: pytest.FixtureRequest, proxy: ProxyProcess) -> Iterator[None]:
    """Around one test on a shared proxy: still running after it, and no traceback logged
    meanwhile (unless the test failed already: its own assertion says more)."""
    logged_before = len(proxy.logs())
    yield
    assert proxy.proc is not None
    assert proxy.proc.poll() is None, proxy.logs()
    if not request.node.stash.get(CALL_FAILED, False):
        assert "Traceback" not in proxy.logs()[logged_before:]


@contextlib.contextmanager
def shared_proxy(directory: Path, data: dict[str, Any], *args: str) -> Iterator[ProxyProcess]:
    """A proxy for a module- or session-scoped fixture, stopped on exit."""
    path = write_config(directory / "rollout.yaml", data)
    proxy = ProxyProcess(path, data, directory / "rollout.log")
    try:
        yield proxy.start(*(args or FAST_STOP))
    finally:
        proxy.stop()
