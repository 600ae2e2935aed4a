"""The running proxy's admin listener from a test: status, metrics, a reload applied."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ProxyProcess

# A bound on waiting for a reload, not a promised latency.
APPLY_WITHIN = 30.0


async def admin_status(proxy: ProxyProcess) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.admin_url + "/-/status") as resp,
    ):
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


async def scrape(proxy: ProxyProcess) -> str:
    async with aiohttp.ClientSession() as client, client.get(proxy.admin_url + "/metrics") as r:
        assert r.status == 200
        return await r.text()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def wait_for_metric(proxy: ProxyProcess, value: float, name: str, **labels: str) -> float:
    """Poll /metrics (bounded) until `metric_sum(name, labels) == value`."""
    deadline = time.monotonic() + APPLY_WITHIN
    seen = None
    while time.monotonic() < deadline:
        seen = metric_sum(await scrape(proxy), name, **labels)
        if seen == value:
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}{labels} stayed {seen}, never {value}")


async def apply_config(proxy: ProxyProcess, data: dict[str, Any]) -> int:
    """Write `data` as the config (atomically), reload, and wait until /-/status shows a
    new generation; returns it."""
    before = (await admin_status(proxy))["config"]["generation"]
    tmp = proxy.config_path.with_name(f".{proxy.config_path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    os.replace(tmp, proxy.config_path)
    proxy.data = data
    async with aiohttp.ClientSession() as client, client.post(proxy.admin_url + "/-/reload") as r:
        assert r.status == 200, await r.text()
    deadline = time.monotonic() + APPLY_WITHIN
    while time.monotonic() < deadline:
        generation = int((await admin_status(proxy))["config"]["generation"])
        if generation > before:
            return generation
        await asyncio.sleep(0.05)
    raise AssertionError(f"config not applied within {APPLY_WITHIN} s:\n{proxy.logs()}")
