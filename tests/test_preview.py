"""proxy.preview: the proposed state a query describes, and the document against a runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.app import build_runtime
from proxy.config.load import parse_config
from proxy.config.values import Config
from proxy.preview import (
    PreviewQueryError,
    file_preview,
    preview_document,
    proposed_state,
    query_from_body,
    query_from_params,
    query_of,
)

CONFIG = """
upstreams:
  signal: {url: http://127.0.0.1:1}
  legacy: {url: http://127.0.0.1:2}
rollout:
  percentage: 10
  test_sessions: [qa-1]
  features:
    own: {paths: [/own], percentage: 50}
    follows: {paths: [/follows]}
guard: {min_requests: 1}
"""


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG)


def test_a_proposed_global_percentage_carries_the_features_that_follow_it(config: Config) -> None:
    state = proposed_state(config, {"percentages": {"default": 30}})
    assert dict(state.percentages) == {"default": 30, "own": 50, "follows": 30}
    state = proposed_state(config, {"percentages": {"own": 60, "new": 5}})
    assert dict(state.percentages) == {"default": 10, "own": 60, "follows": 10, "new": 5}
    assert (state.seed, state.emergency, state.test_sessions) == ("rollout", False, {"qa-1"})
    assert proposed_state(config, {"emergency": True, "seed": "x"}).emergency


def test_a_whole_file_is_a_query(config: Config) -> None:
    query = query_of(config)
    assert query == {
        "percentages": {"default": 10, "own": 50, "follows": 10},
        "emergency": False,
        "seed": "rollout",
        "test_sessions": ["qa-1"],
    }
    assert query_from_body(dict(query)) == query


@pytest.mark.parametrize(
    ("params", "query"),
    [
        ({}, {}),
        ({"percentage": "30"}, {"percentages": {"default": 30.0}}),
        ({"percentage": "12.25", "feature": "own"}, {"percentages": {"own": 12.25}}),
        ({"emergency": "TRUE"}, {"emergency": True}),
        ({"seed": "s2"}, {"seed": "s2"}),
    ],
)
def test_the_page_form(config: Config, params: dict[str, str], query: object) -> None:
    assert query_from_params(params, config) == query


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"percentage": 30}, "percentage: unknown key"),
        ({"percentages": [30]}, "percentages: an object feature -> percentage is expected"),
        ({"percentages": {"default": True}}, "percentages.default: True is not a number"),
        ({"percentages": {"x": -1}}, "percentages.x: -1 is not within 0-100"),
        ({"emergency": "yes"}, "emergency: 'yes' is not true or false"),
        ({"seed": 3}, "seed: 3 is not a string"),
        ({"test_sessions": "qa"}, "test_sessions: a list of strings is expected"),
    ],
)
def test_bad_bodies_name_the_key(body: object, message: str) -> None:
    with pytest.raises(PreviewQueryError) as caught:
        query_from_body(body)
    assert str(caught.value) == message


def test_a_tripped_guard_holds_unless_something_changes(config: Config, tmp_path: Path) -> None:
    runtime = build_runtime(tmp_path / "rollout.yaml", config)
    runtime.guard.record(ok=False, latency_ms=1)
    assert runtime.guard_tripped()
    same = preview_document(runtime, {}, 0.0)
    assert same["changed"] is False
    assert same["warnings"] == []
    assert [f["share"] for f in same["features"]] == [0.0, 0.0, 0.0]
    # Any change re-arms the guard: everyone below the percentages comes back.
    raised = preview_document(runtime, {"percentages": {"default": 20}}, 0.0)
    default, own, follows = raised["features"]
    assert (default["before"], default["after"], default["to_signal_share"]) == (0, 20, 20.0)
    assert (own["before"], own["after"]) == (0, 50)
    assert follows["after"] == 20
    assert any("guard is tripped" in w for w in raised["warnings"])
    assert default["recent"] == {
        "sessions": 0.0,
        "requests": 0,
        "test_session_requests": 0,
        "saturated": False,
    }
    assert default["to_signal"] is not None
    assert default["to_signal"]["request_share"] == 0.0


def test_without_a_proxy_the_bucket_rule_alone(config: Config) -> None:
    proposed = parse_config(CONFIG.replace("percentage: 10", "percentage: 25"))
    doc = file_preview(config, proposed)
    assert (doc["source"], doc["generation"], doc["changed"]) == ("file", None, True)
    default = doc["features"][0]
    assert (default["share"], default["to_signal"], default["recent"]) == (15.0, None, None)
