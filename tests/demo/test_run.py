"""`rollout demo`'s configuration and banner, with and without --autopilot."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config.load import parse_config
from proxy.config.values import CompareLegacy
from proxy.demo.load import TEST_SESSION
from proxy.demo.run import DEMO_AUTOPILOT, DemoPorts, autopilot_banner, demo_config_text, run_demo

PORTS = DemoPorts(proxy=18080, admin=19180, signal=18000, legacy=18001)


def test_plain_demo_config_has_no_autopilot() -> None:
    config = parse_config(demo_config_text(PORTS), "demo")
    assert not config.autopilot.enabled
    assert config.rollout.percentage == 10
    assert TEST_SESSION not in config.rollout.test_sessions
    assert config.shadow.percentage == 100


def test_autopilot_demo_config_starts_at_zero_with_a_short_plan() -> None:
    config = parse_config(demo_config_text(PORTS, autopilot=True), "demo")
    plain = parse_config(demo_config_text(PORTS), "demo")
    autopilot = config.autopilot
    assert autopilot.enabled
    assert (autopilot.interval, autopilot.bake, autopilot.checks) == (
        DEMO_AUTOPILOT["interval"],
        DEMO_AUTOPILOT["bake"],
        DEMO_AUTOPILOT["checks"],
    )
    assert autopilot.gates == (100.0,)
    assert autopilot.on_failure == "previous"
    assert autopilot.compare_legacy == CompareLegacy(max_error_rate_delta=0.005, max_p95_ratio=2.0)
    assert config.rollout.percentage == 0
    # The demo's test session joins the example's own, which stay.
    assert config.rollout.test_sessions == plain.rollout.test_sessions | {TEST_SESSION}
    assert config.shadow.percentage == 10
    assert (config.listen.port, config.admin.port) == (18080, 19180)


@pytest.mark.parametrize("break_signal", [False, True])
def test_autopilot_banner_names_the_commands(break_signal: bool) -> None:
    path = Path("/tmp/rollout-demo-x/rollout.yaml")
    text = autopilot_banner(PORTS, path, break_signal=break_signal, report_every=10)
    assert f"rollout approve -c {path}" in text
    assert f"rollout autopilot status -c {path}" in text
    assert f"rollout history -c {path}" in text
    assert f"http://127.0.0.1:{PORTS.admin}/  (live status page)" in text
    assert "0 -> 10 -> 30 -> 50 -> 80 %" in text
    assert "a traffic line every 10 s" in text
    assert ("starts failing 15 % of requests" in text) == break_signal


async def test_break_signal_needs_an_autopilot() -> None:
    with pytest.raises(ValueError, match="break_signal needs an autopilot"):
        await run_demo(PORTS, break_signal=True)
