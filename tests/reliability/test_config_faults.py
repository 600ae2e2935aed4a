"""The config file misbehaves under a running proxy; SIGHUP arrives in storms.

A broken file (deleted, corrupt bytes, half written, replaced by a directory) must leave
the last good configuration serving, show the error on `/-/status`, and let the next
good write in. Routing is checked with `alice` (bucket 9177): signal at 100 %, legacy at
anything below 91.78 %, including the 10 % default a half-read file would fall back to.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support import ProxyProcess, metric_value
from tests.support.fakes import FakeLoop
from tests.support.reliability import StartProxy

pytestmark = pytest.mark.e2e

SEEN_WITHIN = 30.0  # a bound on a wait, generous for a loaded machine (the watcher polls 1/s)


async def admin(proxy: ProxyProcess, path: str) -> Any:
    async with aiohttp.ClientSession() as client, client.get(proxy.admin_url + path) as resp:
        assert resp.status == 200
        return await (resp.json() if path != "/metrics" else resp.text())


async def side_of(proxy: ProxyProcess, session: str) -> str:
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.url + "/who", headers={"X-Session-Id": session}) as resp,
    ):
        assert resp.status == 200
        return resp.headers["X-Rollout-Upstream"]


async def wait_for(proxy: ProxyProcess, check: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + SEEN_WITHIN
    while True:
        doc = await admin(proxy, "/-/status")
        if check(doc) or time.monotonic() > deadline:
            return doc
        await asyncio.sleep(0.05)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def break_file(path: Path, kind: str) -> str:
    """Break the config file; returns what the error on /-/status must mention."""
    text = path.read_text(encoding="utf-8")
    if kind == "deleted":
        path.unlink()
        return "file not found"
    if kind == "corrupt":
        path.write_bytes(b"\xff\xfe\x00\x9c" + os.urandom(64))
        return "cannot read"
    if kind == "partial":
        # What a reader sees in the middle of a non-atomic write.
        path.write_text(text[: text.index("legacy:") + len("legacy:")], encoding="utf-8")
        return "upstreams.legacy"
    path.unlink()
    path.mkdir()
    return "is a directory"


def with_percentage(data: dict[str, Any], pct: float) -> dict[str, Any]:
    return {**data, "rollout": {**data["rollout"], "percentage": pct}}


@pytest.mark.parametrize("kind", ["deleted", "corrupt", "partial", "directory"])
async def test_broken_config_file_keeps_the_last_good_config_serving(
    fakes: FakeLoop, start_proxy: StartProxy, kind: str
) -> None:
    signal_up, legacy_up = fakes.upstream("signal"), fakes.upstream("legacy")
    proxy = await start_proxy(signal_up.url, legacy_up.url, rollout={"percentage": 100})
    path = proxy.config_path
    assert await side_of(proxy, "alice") == "signal"

    expected_error = break_file(path, kind)
    doc = await wait_for(proxy, lambda d: d["config"]["last_reload"]["ok"] is False)
    assert doc["config"]["last_reload"]["ok"] is False, doc
    assert expected_error in doc["config"]["last_reload"]["error"]
    assert doc["config"]["generation"] == 1
    assert doc["percentages"]["default"] == 100
    metrics = await admin(proxy, "/metrics")
    assert metric_value(metrics, "rollout_config_last_reload_successful") == 0
    sides = await asyncio.gather(*(side_of(proxy, "alice") for _ in range(50)))
    assert set(sides) == {"signal"}

    if kind == "directory":
        path.rmdir()
    path.write_text(yaml.safe_dump(with_percentage(proxy.data, 50)), encoding="utf-8")
    doc = await wait_for(proxy, lambda d: d["config"]["generation"] == 2)
    assert doc["config"]["generation"] == 2, doc
    assert doc["config"]["last_reload"]["ok"] is True
    assert await side_of(proxy, "alice") == "legacy"
    assert "Traceback" not in proxy.logs()


async def test_sighup_storm_keeps_serving_and_applies_a_change_once(
    fakes: FakeLoop, start_proxy: StartProxy
) -> None:
    signal_up, legacy_up = fakes.upstream("signal"), fakes.upstream("legacy")
    proxy = await start_proxy(signal_up.url, legacy_up.url, rollout={"percentage": 100})
    assert proxy.proc is not None
    stop = asyncio.Event()

    async def traffic() -> list[str]:
        sides = []
        while not stop.is_set():
            sides.append(await side_of(proxy, "alice"))
        return sides

    async def storm() -> None:
        for _ in range(50):
            proxy.signal(signal.SIGHUP)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # let the last handlers run

    load = [asyncio.create_task(traffic()) for _ in range(4)]
    await storm()
    doc = await admin(proxy, "/-/status")
    assert doc["config"]["generation"] == 1  # same content: nothing applied
    assert doc["config"]["last_reload"]["ok"] is True

    write_atomically(
        proxy.config_path, yaml.safe_dump(with_percentage(proxy.data, 50), sort_keys=False)
    )
    await storm()
    # However slowly a loaded machine runs the handlers: wait for the change, then check
    # it was applied once.
    doc = await wait_for(proxy, lambda d: d["config"]["generation"] >= 2)
    stop.set()
    sides = [side for task in load for side in await task]

    assert proxy.proc.poll() is None, proxy.logs()
    assert doc["config"]["generation"] == 2, doc
    assert proxy.logs().count("config reloaded") == 1
    metrics = await admin(proxy, "/metrics")
    assert metric_value(metrics, "rollout_config_reloads_total", result="success") == 1
    assert metric_value(metrics, "rollout_config_reloads_total", result="failure") == 0
    assert len(sides) > 50
    assert set(sides) <= {"signal", "legacy"}
    assert await side_of(proxy, "alice") == "legacy"
