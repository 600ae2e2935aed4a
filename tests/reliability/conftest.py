"""Fixtures of the reliability suite: fakes on their own loop, the proxy in front of them.

The slowloris probe needs two minutes of wall-clock time whatever the proxy does; it runs
in a background thread from the suite's first test on, and its test is moved to the end
of the run, so those two minutes overlap the rest of the suite instead of adding to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import ProxyProcess, config_dict
from tests.support.fakes import FakeLoop, closed_port
from tests.support.reliability import CALL_FAILED, FAST_STOP, StartProxy, shared_proxy
from tests.support.slowloris import SLOWLORIS_TESTS, BigAnswers, SlowClients


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: a reliability test that runs for many seconds (load, leaks, timeouts)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Note a failed test body, so teardown checks do not report the same defect twice."""
    report = yield
    if report.when == "call" and report.failed:
        item.stash[CALL_FAILED] = True
    return report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    last = [item for item in items if item.name in SLOWLORIS_TESTS]
    items[:] = [item for item in items if item.name not in SLOWLORIS_TESTS] + last


@pytest.fixture
def fakes() -> Iterator[FakeLoop]:
    with FakeLoop() as loop:
        yield loop


@pytest.fixture
def start_proxy(serve_proxy: Callable[..., ProxyProcess]) -> StartProxy:
    """`await start_proxy(signal_url, legacy_url, *serve_args, **config_sections)`."""

    async def start(signal_url: str, legacy_url: str, *args: str, **sections: Any) -> ProxyProcess:
        data = config_dict(signal_url, legacy_url, **sections)
        return await asyncio.to_thread(serve_proxy, data, *(args or FAST_STOP))

    return start


@pytest.fixture(scope="session", autouse=True)
def slow_clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowClients]:
    """The slowloris probe, started with the suite (see the module docstring)."""
    directory = tmp_path_factory.mktemp("slowloris")
    unused = f"http://127.0.0.1:{closed_port()}"
    with BigAnswers() as legacy, shared_proxy(directory, config_dict(unused, legacy.url)) as proxy:
        clients = SlowClients(proxy.port)
        clients.start()
        yield clients
        clients.stop()
