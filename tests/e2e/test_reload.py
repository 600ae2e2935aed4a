"""SPEC 6 end to end: every way the config file changes reaches the running `rollout serve`."""

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
from aiohttp import web

from proxy.demo.apis import legacy_app, signal_app
from tests.support import ProxyProcess, UpstreamFactory, config_dict, metric_value, server_url

# A bound on waits for a reload, not the latency the SPEC promises (2 s, the watcher
# polls once a second): that is a timing, and a loaded 2-core machine may take longer.
APPLY_WITHIN = 30.0


async def status(proxy: ProxyProcess) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.admin_url + "/-/status") as resp,
    ):
        data: dict[str, Any] = await resp.json()
        return data


async def metrics_text(proxy: ProxyProcess) -> str:
    async with aiohttp.ClientSession() as client, client.get(proxy.admin_url + "/metrics") as r:
        return await r.text()


async def wait_for_percentage(proxy: ProxyProcess, pct: float) -> float:
    """Seconds until /-/status shows `pct`; fails after APPLY_WITHIN."""
    start = time.monotonic()
    while time.monotonic() - start < APPLY_WITHIN:
        if (await status(proxy))["percentages"]["default"] == pct:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"percentage {pct} not applied within {APPLY_WITHIN} s:\n{proxy.logs()}")


async def side_of(proxy: ProxyProcess, session: str) -> str:
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.url + "/health", headers={"X-Session-Id": session}) as resp,
    ):
        assert resp.status == 200
        return resp.headers["X-Rollout-Upstream"]


@pytest.fixture
async def apis(upstream: UpstreamFactory) -> tuple[str, str]:
    signal = await upstream(signal_app())
    legacy = await upstream(legacy_app())
    return server_url(signal), server_url(legacy)


def with_percentage(data: dict[str, Any], pct: float) -> dict[str, Any]:
    return {**data, "rollout": {**data["rollout"], "percentage": pct}}


def dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def write_in_place(path: Path, text: str) -> None:
    with path.open("r+", encoding="utf-8") as f:
        f.seek(0)
        f.write(text)
        f.truncate()


def write_by_rename(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def configmap_layout(directory: Path, text: str) -> Path:
    """Lay out a directory as the kubelet does for a mounted ConfigMap."""
    directory.mkdir()
    first = directory / "..2026_11_27_00_00_00.000000001"
    first.mkdir()
    (first / "rollout.yaml").write_text(text, encoding="utf-8")
    (directory / "..data").symlink_to(first.name)
    link = directory / "rollout.yaml"
    link.symlink_to("..data/rollout.yaml")
    return link


def configmap_swap(directory: Path, text: str, n: int) -> None:
    """The kubelet's atomic update: new timestamped dir, `..data` swapped by rename."""
    old = (directory / "..data").resolve()
    new = directory / f"..2026_11_27_00_00_0{n}.00000000{n}"
    new.mkdir()
    (new / "rollout.yaml").write_text(text, encoding="utf-8")
    tmp_link = directory / "..data_tmp"
    tmp_link.symlink_to(new.name)
    os.replace(tmp_link, directory / "..data")
    for child in old.iterdir():
        child.unlink()
    old.rmdir()


@pytest.mark.parametrize("how", ["in_place", "rename", "delete_recreate"])
async def test_file_changes_are_applied(
    apis: tuple[str, str], serve_proxy: Callable[..., ProxyProcess], how: str
) -> None:
    data = config_dict(*apis, rollout={"percentage": 10})
    proxy = serve_proxy(data)
    assert await side_of(proxy, "bob") == "legacy"  # bucket 1133 >= 1000
    new_text = dump(with_percentage(data, 30))
    if how == "in_place":
        write_in_place(proxy.config_path, new_text)
    elif how == "rename":
        write_by_rename(proxy.config_path, new_text)
    else:
        proxy.config_path.unlink()
        await asyncio.sleep(1.5)  # let the watcher see the file missing
        proxy.config_path.write_text(new_text, encoding="utf-8")
    await wait_for_percentage(proxy, 30)
    assert await side_of(proxy, "bob") == "signal"
    assert "rollout.percentage 10 -> 30" in proxy.logs()


async def test_configmap_symlink_swaps_apply_three_times_in_a_row(
    apis: tuple[str, str], serve_proxy: Callable[..., ProxyProcess], tmp_path: Path
) -> None:
    data = config_dict(*apis, rollout={"percentage": 10})
    directory = tmp_path / "configmap"
    link = configmap_layout(directory, dump(data))
    proxy = ProxyProcess(link, data, tmp_path / "cm.log").start()
    try:
        for n, pct in enumerate([30, 50, 80], start=1):
            configmap_swap(directory, dump(with_percentage(data, pct)), n)
            await wait_for_percentage(proxy, pct)
        assert (await status(proxy))["config"]["generation"] == 4
    finally:
        assert proxy.stop() == 0


async def test_sighup_reloads_without_the_watcher(
    apis: tuple[str, str], serve_proxy: Callable[..., ProxyProcess]
) -> None:
    data = config_dict(*apis, rollout={"percentage": 10})
    proxy = serve_proxy(data, "--poll-interval", "0")
    proxy.config_path.write_text(dump(with_percentage(data, 50)), encoding="utf-8")
    await asyncio.sleep(1.5)
    assert (await status(proxy))["percentages"]["default"] == 10  # no watcher: not yet
    proxy.signal(signal.SIGHUP)
    await wait_for_percentage(proxy, 50)
    assert "config reloaded (SIGHUP)" in proxy.logs()


async def test_post_reload_answers_with_the_result(
    apis: tuple[str, str], serve_proxy: Callable[..., ProxyProcess]
) -> None:
    data = config_dict(*apis, rollout={"percentage": 10})
    proxy = serve_proxy(data, "--poll-interval", "0")
    proxy.config_path.write_text(dump(with_percentage(data, 50)), encoding="utf-8")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.admin_url + "/-/reload") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["applied"] is True
        assert body["changes"] == ["rollout.percentage 10 -> 50"]
        proxy.config_path.write_text("rollout: {percentage: 500}\n", encoding="utf-8")
        async with client.post(proxy.admin_url + "/-/reload") as resp:
            assert resp.status == 422
            body = await resp.json()
    assert body["ok"] is False
    assert any("upstreams" in e for e in body["errors"])
    assert any("rollout.percentage: 500" in e for e in body["errors"])
    assert (await status(proxy))["percentages"]["default"] == 50


async def test_identical_content_is_not_reapplied(
    apis: tuple[str, str], serve_proxy: Callable[..., ProxyProcess]
) -> None:
    data = config_dict(*apis)
    proxy = serve_proxy(data)
    write_by_rename(proxy.config_path, dump(data))  # new inode, same content
    write_by_rename(proxy.config_path, "# a comment\n" + dump(data))  # new bytes, same config
    await asyncio.sleep(2.5)
    doc = await status(proxy)
    assert doc["config"]["generation"] == 1
    assert 'rollout_config_reloads_total{result="success"} 0.0' in await metrics_text(proxy)


BAD_FILES = {
    "invalid_yaml": "rollout: {percentage: [10\n",
    "wrong_value": None,  # filled from the good config
    "unknown_key": None,
    "empty": "",
    "partial": None,
    "missing": None,
}


def bad_content(kind: str, good: dict[str, Any]) -> str | None:
    text = dump(good)
    if kind == "wrong_value":
        return dump(with_percentage(good, 150))
    if kind == "unknown_key":
        return dump({**good, "rolout": {"percentage": 100}})
    if kind == "partial":
        return text[: text.index("upstreams")] + "upstreams:\n  signal: {u"
    if kind == "missing":
        return None
    return BAD_FILES[kind]


@pytest.mark.parametrize("kind", list(BAD_FILES))
async def test_a_rejected_file_keeps_routing_and_the_next_good_write_recovers(
    apis: tuple[str, str], serve_proxy: Callable[..., ProxyProcess], kind: str
) -> None:
    good = config_dict(*apis, rollout={"percentage": 30})
    proxy = serve_proxy(good)
    assert await side_of(proxy, "bob") == "signal"

    content = bad_content(kind, good)
    if content is None:
        proxy.config_path.unlink()
    else:
        write_in_place(proxy.config_path, content)

    deadline = time.monotonic() + APPLY_WITHIN
    while time.monotonic() < deadline:
        doc = await status(proxy)
        if not doc["config"]["last_reload"]["ok"]:
            break
        await asyncio.sleep(0.05)
    assert doc["config"]["last_reload"]["ok"] is False
    assert doc["config"]["last_reload"]["error"]
    assert doc["percentages"]["default"] == 30
    assert doc["config"]["generation"] == 1
    for _ in range(5):
        assert await side_of(proxy, "bob") == "signal"
    text = await metrics_text(proxy)
    assert 'rollout_config_reloads_total{result="failure"} 1.0' in text
    assert "rollout_config_last_reload_successful 0.0" in text
    assert "config reload (file change) rejected" in proxy.logs()

    proxy.config_path.write_text(dump(with_percentage(good, 10)), encoding="utf-8")
    await wait_for_percentage(proxy, 10)
    assert await side_of(proxy, "bob") == "legacy"
    text = await metrics_text(proxy)
    assert "rollout_config_last_reload_successful 1.0" in text
    assert (await status(proxy))["config"]["last_reload"]["ok"] is True


async def test_listener_change_is_reported_as_needing_a_restart(
    apis: tuple[str, str], serve_proxy: Callable[..., ProxyProcess]
) -> None:
    data = config_dict(*apis)
    proxy = serve_proxy(data)
    moved = {**data, "listen": {**data["listen"], "port": data["listen"]["port"] + 1}}
    write_by_rename(proxy.config_path, dump(moved))
    deadline = time.monotonic() + APPLY_WITHIN
    while "need a restart" not in proxy.logs() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert "need a restart to take effect" in proxy.logs()
    assert await side_of(proxy, "anyone") == "legacy"  # still serving on the old port


async def test_upstream_url_change_applies_immediately(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> None:
    first = await upstream(legacy_app())
    second = await upstream(signal_app())  # a different "legacy" marks itself as signal
    data = config_dict(server_url(first), server_url(first))
    proxy = serve_proxy(data)
    moved = {**data, "upstreams": {**data["upstreams"], "legacy": {"url": server_url(second)}}}
    write_by_rename(proxy.config_path, dump(moved))
    deadline = time.monotonic() + APPLY_WITHIN
    served_by = ""
    while time.monotonic() < deadline:
        async with (
            aiohttp.ClientSession() as client,
            client.get(proxy.url + "/health", headers={"X-Session-Id": "x"}) as resp,
        ):
            served_by = resp.headers["X-Served-By"]
        if served_by == "signal":
            break
        await asyncio.sleep(0.05)
    assert served_by == "signal"


async def test_no_failed_request_while_the_percentage_is_rewritten(
    apis: tuple[str, str], serve_proxy: Callable[..., ProxyProcess]
) -> None:
    # The guard is off: a slow machine (p95 over 500 ms) must not route everyone to legacy
    # before the split is counted; it is not under test here.
    data = config_dict(*apis, rollout={"percentage": 0}, guard={"enabled": False})
    proxy = serve_proxy(data)
    failures: list[str] = []
    stop = asyncio.Event()
    sessions = [f"user-{i}" for i in range(400)]

    async def client_loop(n: int) -> int:
        done = 0
        async with aiohttp.ClientSession() as client:
            while not stop.is_set() and done < 5000:
                sid = sessions[(n * 50 + done) % len(sessions)]
                try:
                    async with client.get(
                        proxy.url + "/signals?limit=2", headers={"X-Session-Id": sid}
                    ) as resp:
                        await resp.read()
                        if resp.status != 200:
                            failures.append(f"{sid}: {resp.status}")
                except aiohttp.ClientError as exc:
                    failures.append(f"{sid}: {exc!r}")
                done += 1
        return done

    clients = [asyncio.create_task(client_loop(n)) for n in range(8)]
    percentages = [100, 0, 50, 10, 80, 30, 100, 0, 60, 20, 90, 40, 70, 5, 95, 30]
    for pct in percentages:
        write_by_rename(proxy.config_path, dump(with_percentage(data, pct)))
        await asyncio.sleep(0.4)
    await wait_for_percentage(proxy, 30)
    stop.set()
    counts = await asyncio.gather(*clients)
    assert failures == []
    assert sum(counts) > 100

    # After the last write the split follows it: 30 % of many sessions, within sampling error.
    async with aiohttp.ClientSession() as client:
        on_signal = 0
        for i in range(1000):
            async with client.get(
                proxy.url + "/health", headers={"X-Session-Id": f"split-{i}"}
            ) as resp:
                on_signal += resp.headers["X-Rollout-Upstream"] == "signal"
    assert 240 <= on_signal <= 360


def _failing_signal() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": "boom"}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def test_guard_trips_on_failing_signal_and_rearms(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> None:
    signal_srv = await upstream(_failing_signal())
    legacy_srv = await upstream(legacy_app())
    data = config_dict(
        server_url(signal_srv),
        server_url(legacy_srv),
        rollout={"percentage": 100, "test_sessions": ["qa-1"]},
        guard={"min_requests": 20, "window_seconds": 30},
    )
    proxy = serve_proxy(data)

    async with aiohttp.ClientSession() as client:

        async def get(sid: str) -> tuple[int, str]:
            async with client.get(proxy.url + "/health", headers={"X-Session-Id": sid}) as r:
                await r.read()
                return r.status, r.headers["X-Rollout-Upstream"]

        statuses = [await get(f"u-{i}") for i in range(40)]
        assert all(code == 200 for code, _ in statuses)  # fallback hides nothing from users
        doc = await status(proxy)
        assert doc["guard"]["tripped"] is True
        assert "error rate" in doc["guard"]["reason"]
        assert doc["effective_percentages"]["default"] == 0
        assert doc["guard"]["figures"]["requests"] >= 20
        text = await metrics_text(proxy)
        assert "rollout_guard_tripped 1.0" in text
        assert 'rollout_effective_percentage{feature="default"} 0.0' in text
        assert "ERROR rollout.guard: guard tripped: error rate" in proxy.logs()

        # Tripped: sessions go straight to legacy (no fallback), test sessions still to signal.
        async with client.get(proxy.url + "/health", headers={"X-Session-Id": "u-1"}) as r:
            assert r.headers["X-Rollout-Upstream"] == "legacy"
            assert "X-Rollout-Fallback" not in r.headers
        async with client.get(proxy.url + "/health", headers={"X-Session-Id": "qa-1"}) as r:
            # Routed to signal (which fails), then replayed on legacy.
            assert r.status == 200
            assert r.headers["X-Rollout-Fallback"] == "status"
        text = await metrics_text(proxy)
        decisions = "rollout_routing_decisions_total"
        assert metric_value(text, decisions, reason="test_session", upstream="signal") == 1
        assert (metric_value(text, decisions, reason="guard", upstream="legacy") or 0) >= 1


async def test_guard_rearm_by_reset_and_by_config_edit(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> None:
    signal_srv = await upstream(_failing_signal())
    legacy_srv = await upstream(legacy_app())
    data = config_dict(
        server_url(signal_srv),
        server_url(legacy_srv),
        rollout={"percentage": 100},
        guard={"min_requests": 10},
    )
    proxy = serve_proxy(data)

    async def trip() -> None:
        async with aiohttp.ClientSession() as client:
            for i in range(15):
                async with client.get(
                    proxy.url + "/health", headers={"X-Session-Id": f"u-{i}"}
                ) as r:
                    assert r.status == 200
        assert (await status(proxy))["guard"]["tripped"] is True

    await trip()
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.admin_url + "/-/guard/reset") as r,
    ):
        assert (await r.json())["was_tripped"] is True
    doc = await status(proxy)
    assert doc["guard"]["tripped"] is False
    assert doc["upstreams"]["signal"]["requests"] == 0  # re-arming starts an empty window
    assert doc["effective_percentages"]["default"] == 100

    await trip()
    write_by_rename(proxy.config_path, dump(with_percentage(data, 80)))
    await wait_for_percentage(proxy, 80)
    doc = await status(proxy)
    assert doc["guard"]["tripped"] is False
    assert "guard re-armed by configuration change" in proxy.logs()
