"""proxy.config: the `autopilot:` keys (SPEC 13) and the per-replica port overrides."""

from __future__ import annotations

import pytest

from proxy.config.diff import as_mapping, diff_configs
from proxy.config.load import parse_config
from proxy.config.values import AutopilotConfig, CompareLegacy
from proxy.errors import ConfigError

MINIMAL = """\
upstreams:
  signal: {url: http://127.0.0.1:8000}
  legacy: {url: http://127.0.0.1:8001}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + text, "test.yaml")
    return info.value.problems


def test_defaults_are_spec_13() -> None:
    ap = parse_config(MINIMAL).autopilot
    assert ap == AutopilotConfig()
    assert (ap.enabled, ap.interval, ap.bake, ap.checks, ap.failure_limit) == (
        False,
        60.0,
        600.0,
        3,
        2,
    )
    assert (ap.min_requests, ap.max_inconclusive, ap.max_errors) == (100, 10, 5)
    assert ap.compare_legacy == CompareLegacy(0.005, 1.5)
    assert ap.gates == (100.0,)
    assert ap.on_failure == "previous"
    assert ap.prometheus is None
    assert ap.webhooks.confirm == ()
    assert ap.webhooks.events == ()


def test_every_key_is_read() -> None:
    ap = parse_config(
        MINIMAL
        + """
autopilot:
  enabled: true
  interval: 2
  bake: 0
  checks: 1
  failure_limit: 3
  min_requests: 20
  max_inconclusive: 4
  max_errors: 2
  compare_legacy: {max_error_rate_delta: 0.01, max_p95_ratio: 2}
  gates: [50, 100]
  on_failure: zero
  prometheus: http://127.0.0.1:9090
  webhooks: {confirm: ["http://127.0.0.1:1/ok"], events: ["https://hooks.example/t/abc"]}
"""
    ).autopilot
    assert ap.enabled
    assert ap.interval == 2.0
    assert ap.bake == 0.0
    assert ap.checks == 1
    assert (ap.failure_limit, ap.min_requests, ap.max_inconclusive, ap.max_errors) == (3, 20, 4, 2)
    assert ap.compare_legacy == CompareLegacy(0.01, 2.0)
    assert ap.gates == (50.0, 100.0)
    assert ap.on_failure == "zero"
    assert ap.prometheus == "http://127.0.0.1:9090"
    assert ap.webhooks.events == ("https://hooks.example/t/abc",)


def test_compare_legacy_null_turns_the_comparison_off() -> None:
    assert (
        parse_config(MINIMAL + "autopilot: {compare_legacy: null}").autopilot.compare_legacy is None
    )


def test_gradual_is_accepted() -> None:
    assert (
        parse_config(MINIMAL + "autopilot: {on_failure: gradual}").autopilot.on_failure == "gradual"
    )


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("autopilot: {checks: 0}", "autopilot.checks: 0 must be at least 1"),
        ("autopilot: {failure_limit: 0}", "autopilot.failure_limit: 0 must be at least 1"),
        ("autopilot: {min_requests: -1}", "autopilot.min_requests: -1 must be at least 1"),
        ("autopilot: {interval: 0}", "autopilot.interval: 0 is not within 0.1-86400 seconds"),
        ("autopilot: {bake: -5}", "autopilot.bake: -5 must be 0 or more seconds"),
        (
            "autopilot: {gates: [25]}",
            "autopilot.gates[0]: 25 is not a stage (rollout.stages: [0, 10, 30, 50, 80, 100])",
        ),
        (
            "rollout: {stages: [0, 25, 100]}\nautopilot: {gates: [30]}",
            "autopilot.gates[0]: 30 is not a stage (rollout.stages: [0, 25, 100])",
        ),
        (
            "autopilot: {on_failure: sideways}",
            "autopilot.on_failure: 'sideways' is not one of previous, zero, gradual",
        ),
        (
            "autopilot: {compare_legacy: {max_p95_ratio: 0.9}}",
            "autopilot.compare_legacy.max_p95_ratio: 0.9 must be at least 1",
        ),
        (
            "autopilot: {compare_legacy: {max_error_rate_delta: 2}}",
            "autopilot.compare_legacy.max_error_rate_delta: 2 is not a ratio within 0-1",
        ),
        (
            "autopilot: {prometheus: localhost:9090}",
            "autopilot.prometheus: 'localhost:9090' is not",
        ),
        ("autopilot: {webhooks: {events: [ftp://x]}}", "autopilot.webhooks.events[0]: 'ftp://x'"),
        ("autopilot: {webhooks: {confirm: 3}}", "autopilot.webhooks.confirm: 3 is not a list"),
        ("autopilot: {webhooks: {other: []}}", "autopilot.webhooks.other: unknown key"),
        ("autopilot: {interval_s: 3}", "autopilot.interval_s: unknown key"),
        ("autopilot: {enabled: yes please}", "autopilot.enabled: 'yes please' is not true/false"),
    ],
)
def test_bad_values_name_the_key_and_value(yaml_text: str, expected: str) -> None:
    problems = problems_of(yaml_text)
    assert any(p.startswith(expected) for p in problems), problems


def test_webhook_urls_are_secret_in_diffs_and_views() -> None:
    old = parse_config(MINIMAL + "autopilot: {webhooks: {events: ['https://h.example/t/OLD']}}")
    new = parse_config(MINIMAL + "autopilot: {webhooks: {events: ['https://h.example/t/NEW']}}")
    changes = diff_configs(old, new)
    assert changes == ["autopilot.webhooks.events changed"]
    assert "OLD" not in str(as_mapping(old))
    assert "NEW" not in " ".join(changes)


def test_port_overrides_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_LISTEN_PORT", "18080")
    monkeypatch.setenv("ROLLOUT_ADMIN_PORT", "19180")
    config = parse_config(MINIMAL + "listen: {port: 8080}\nadmin: {port: 9180}")
    assert (config.listen.port, config.admin.port) == (18080, 19180)


@pytest.mark.parametrize("bad", ["x", "70000", "-1"])
def test_a_bad_port_override_names_the_variable(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("ROLLOUT_ADMIN_PORT", bad)
    problems = problems_of("")
    assert problems == [f"admin.port: $ROLLOUT_ADMIN_PORT={bad!r} is not a port number (0-65535)"]
