"""GET|POST /-/preview on a real `rollout serve`: who a change moves, from the bucket rule
and the proxy's own activity counters, checked against the sessions the test sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.support import ProxyProcess, UpstreamFactory, config_dict, server_url
from tests.support.admin import apply_config
from tests.support.sessions import in_buckets, mint_sessions, ok_app, plan_of, send_sessions

pytestmark = pytest.mark.e2e

ANOMALY = "/signals/anomaly"
TOKEN = "preview-token"


def within_estimate(estimate: float, sessions: int) -> bool:
    """The estimator's stated tolerance (2 %), or one session for a small count."""
    return abs(estimate - sessions) <= max(1.0, 0.02 * sessions)


async def get_preview(
    proxy: ProxyProcess, params: dict[str, str] | None = None, *, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as client:
        url = proxy.admin_url + "/-/preview"
        if body is None:
            request = client.get(url, params=params, headers=headers)
        else:
            request = client.post(url, json=body, headers=headers)
        async with request as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def proxy(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> ProxyProcess:
    signal, legacy = await upstream(ok_app("signal")), await upstream(ok_app("legacy"))
    data = config_dict(
        server_url(signal),
        server_url(legacy),
        admin={"token": TOKEN},
        rollout={
            "percentage": 10,
            "test_sessions": ["qa-1"],
            "features": {"anomaly": {"paths": [ANOMALY], "percentage": 50}},
        },
    )
    return serve_proxy(data)


async def test_a_raise_and_a_lowering_match_the_sessions_sent(proxy: ProxyProcess) -> None:
    plan = plan_of(300)
    sent = await send_sessions(proxy.url, plan)
    minted = await mint_sessions(proxy.url, 10)  # a minted id counts like a sent one
    plan.update(dict.fromkeys(minted, 1))
    await send_sessions(proxy.url, {"qa-1": 7})  # a test session: counted apart
    total = sent + len(minted) + 7

    status, raise_to_30 = await get_preview(proxy, {"percentage": "30"})
    assert status == 200, raise_to_30
    assert raise_to_30["source"] == "proxy"
    assert raise_to_30["window_seconds"] == 900
    default = raise_to_30["features"][0]
    assert (default["feature"], default["before"], default["after"]) == ("default", 10, 30)
    assert (default["share"], default["to_signal_share"], default["to_legacy_share"]) == (
        20.0,
        20.0,
        0.0,
    )
    moving = in_buckets(plan, 1000, 3000)
    assert 30 < len(moving) < 100  # the ids spread over the buckets as expected
    to_signal = default["to_signal"]
    assert to_signal["requests"] == sum(moving.values())
    assert to_signal["request_share"] == round(100 * sum(moving.values()) / total, 2)
    assert within_estimate(to_signal["sessions"], len(moving)), (to_signal, len(moving))
    assert default["to_legacy"]["requests"] == 0
    assert default["recent"]["requests"] == total
    assert default["recent"]["test_session_requests"] == 7
    assert within_estimate(default["recent"]["sessions"], len(plan))
    # The feature with a percentage of its own does not move with the global one.
    anomaly = raise_to_30["features"][1]
    assert (anomaly["feature"], anomaly["share"], anomaly["to_signal"]["requests"]) == (
        "anomaly",
        0.0,
        0,
    )

    status, lower_to_5 = await get_preview(proxy, {"percentage": "5"})
    assert status == 200, lower_to_5
    default = lower_to_5["features"][0]
    leaving = in_buckets(plan, 500, 1000)
    assert (default["share"], default["to_legacy_share"]) == (5.0, 5.0)
    assert default["to_legacy"]["requests"] == sum(leaving.values())
    assert default["to_legacy"]["request_share"] == round(100 * sum(leaving.values()) / total, 2)
    assert within_estimate(default["to_legacy"]["sessions"], len(leaving))
    assert default["to_signal"]["requests"] == 0


async def test_a_feature_emergency_and_a_seed_change(proxy: ProxyProcess) -> None:
    plan = plan_of(200, prefix="anomaly-user")
    sent = await send_sessions(proxy.url, plan, path=ANOMALY + "/latest")
    await send_sessions(proxy.url, {"qa-1": 3}, path=ANOMALY)

    status, doc = await get_preview(proxy, {"percentage": "60", "feature": "anomaly"})
    assert status == 200, doc
    anomaly = next(f for f in doc["features"] if f["feature"] == "anomaly")
    moving = in_buckets(plan, 5000, 6000)
    assert anomaly["to_signal"]["requests"] == sum(moving.values())
    assert anomaly["to_signal"]["request_share"] == round(
        100 * sum(moving.values()) / (sent + 3), 2
    )
    assert within_estimate(anomaly["to_signal"]["sessions"], len(moving))
    assert doc["features"][0]["share"] == 0.0  # the global percentage stays

    # Emergency: everyone on signal goes, the test session's requests with them.
    status, doc = await get_preview(proxy, body={"emergency": True})
    assert status == 200, doc
    anomaly = next(f for f in doc["features"] if f["feature"] == "anomaly")
    on_signal = in_buckets(plan, 0, 5000)
    assert anomaly["to_legacy"]["requests"] == sum(on_signal.values()) + 3
    assert anomaly["test_sessions_to_legacy"] == 1

    # A new seed: a warning, and expected figures.
    status, doc = await get_preview(proxy, body={"seed": "reshuffle"})
    assert status == 200, doc
    assert any("reshuffles every session" in w for w in doc["warnings"])
    anomaly = next(f for f in doc["features"] if f["feature"] == "anomaly")
    assert anomaly["expected"] is True
    assert anomaly["share"] == 50.0  # 0.5 * 0.5 + 0.5 * 0.5


async def test_the_endpoint_needs_the_token_and_names_bad_input(proxy: ProxyProcess) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.admin_url + "/-/preview?percentage=30") as resp:
            assert resp.status == 401
        async with client.post(proxy.admin_url + "/-/preview", json={}) as resp:
            assert resp.status == 401
    for params, message in [
        ({"percentage": "150"}, "percentage: '150' is not within 0-100"),
        ({"percentage": "1.234"}, "percentage: '1.234' has more than two decimals"),
        ({"percentage": "x"}, "percentage: 'x' is not a number"),
        ({"percentage": "5", "feature": "nope"}, "feature: unknown feature 'nope'"),
        ({"emergency": "maybe"}, "emergency: 'maybe' is not true or false"),
    ]:
        status, doc = await get_preview(proxy, params)
        assert status == 400
        assert doc["error"].startswith(message), doc
    status, doc = await get_preview(proxy, body={"percentages": {"default": 101}})
    assert (status, doc["error"]) == (400, "percentages.default: 101 is not within 0-100")
    status, doc = await get_preview(proxy, body=["not", "an", "object"])
    assert (status, doc["error"]) == (400, "body: a JSON object is expected")
    # Nothing proposed: nobody moves.
    status, doc = await get_preview(proxy)
    assert (status, doc["changed"]) == (200, False)


async def test_sessions_seen_during_an_emergency_are_counted_by_bucket(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> None:
    signal, legacy = await upstream(ok_app("signal")), await upstream(ok_app("legacy"))
    data = config_dict(server_url(signal), server_url(legacy), rollout={"percentage": 20})
    proxy = serve_proxy(data)
    await apply_config(proxy, {**data, "rollout": {"percentage": 20, "emergency": True}})
    plan = plan_of(250, prefix="emergency-user")
    total = await send_sessions(proxy.url, plan)  # all served by legacy
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.admin_url + "/-/preview", params={"emergency": "false"}) as resp,
    ):
        assert resp.status == 200
        doc = await resp.json()
    default = doc["features"][0]
    assert (default["before"], default["before_held"], default["after"]) == (0, "emergency", 20)
    back = in_buckets(plan, 0, 2000)
    assert default["to_signal"]["requests"] == sum(back.values())
    assert default["to_signal"]["request_share"] == round(100 * sum(back.values()) / total, 2)
    assert within_estimate(default["to_signal"]["sessions"], len(back))
