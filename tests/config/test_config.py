"""proxy.config: the example file, SPEC 2 defaults, every validation rule, diffs, secrets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from proxy.config.diff import as_mapping, diff_configs
from proxy.config.load import load_config, parse_config, resolve_config_path
from proxy.config.values import Config, Feature
from proxy.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "rollout.yaml"

MINIMAL = """\
upstreams:
  signal: {url: http://127.0.0.1:8000}
  legacy: {url: http://127.0.0.1:8001}
"""

SECRET = "s3cr3t-Adm1n-T0ken"


def problems_of(text: str) -> list[str]:
    """The problems `parse_config` reports for `text` (which must be invalid)."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "test.yaml")
    assert info.value.problems, "ConfigError raised without any problem listed"
    return info.value.problems


def with_minimal(extra: str) -> str:
    return MINIMAL + extra


# --- the example file ---------------------------------------------------------------------


def test_example_config_holds_the_migration_plan() -> None:
    config = load_config(EXAMPLE)

    assert config.upstreams.signal.url == "http://127.0.0.1:8000"
    assert config.upstreams.legacy.url == "http://127.0.0.1:8001"
    assert config.rollout.percentage == 10
    assert config.rollout.seed == "rollout"
    assert config.rollout.emergency is False
    assert config.rollout.stages == (0, 10, 30, 50, 80, 100)
    assert config.rollout.test_sessions == frozenset({"qa-tester-1", "qa-tester-2"})
    features = {f.name: f for f in config.rollout.features}
    assert features == {
        "anomalyDetection": Feature("anomalyDetection", ("/signals/anomaly",), 10.0),
        "limitUpPrediction": Feature("limitUpPrediction", ("/signals/limit-up",), 10.0),
    }
    assert config.promotion.max_error_rate == 0.01
    assert config.promotion.max_p95_ms == 200
    assert config.guard.enabled is True
    assert config.guard.max_error_rate == 0.05
    assert config.guard.max_p95_ms == 500
    assert config.fallback.enabled is True
    assert config.fallback.statuses == frozenset({500, 502, 503, 504})
    assert config.admin.token is None


def test_example_config_feature_percentages() -> None:
    config = load_config(EXAMPLE)
    assert config.feature_percentages() == {
        "default": 10,
        "anomalyDetection": 10,
        "limitUpPrediction": 10,
    }


def test_load_config_accepts_str_path_and_matches_parse_config() -> None:
    assert load_config(str(EXAMPLE)) == parse_config(EXAMPLE.read_text("utf-8"), str(EXAMPLE))


# --- defaults -----------------------------------------------------------------------------


def test_minimal_config_gets_spec_defaults() -> None:
    c = parse_config(MINIMAL)

    assert (c.listen.host, c.listen.port) == ("0.0.0.0", 8080)
    assert (c.admin.host, c.admin.port, c.admin.token) == ("127.0.0.1", 9180, None)
    assert (c.timeouts.connect, c.timeouts.signal, c.timeouts.total) == (1.0, 5.0, 30.0)
    assert c.timeouts.idle == 60.0
    assert c.session.header == "X-Session-Id"
    assert c.session.cookie == "session_id"
    assert c.session.set_cookie is True
    assert c.rollout.percentage == 10
    assert c.rollout.seed == "rollout"
    assert c.rollout.emergency is False
    assert c.rollout.test_sessions == frozenset()
    assert c.rollout.stages == (0, 10, 30, 50, 80, 100)
    assert c.rollout.features == ()
    assert c.fallback.enabled is True
    assert c.fallback.statuses == frozenset({500, 502, 503, 504})
    assert c.fallback.max_body_bytes == 1048576
    assert c.guard.enabled is True
    assert c.guard.window_seconds == 60
    assert c.guard.min_requests == 50
    assert c.guard.max_error_rate == 0.05
    assert c.guard.max_p95_ms == 500
    assert c.promotion.min_requests == 100
    assert c.promotion.max_error_rate == 0.01
    assert c.promotion.max_p95_ms == 200
    assert c.shadow.enabled is False


def test_empty_sections_mean_defaults() -> None:
    text = with_minimal("listen:\nrollout:\nguard: {}\n")
    assert parse_config(text) == parse_config(MINIMAL)


def test_feature_without_percentage_follows_the_global_one() -> None:
    config = parse_config(
        with_minimal(
            "rollout:\n"
            "  percentage: 25.5\n"
            "  features:\n"
            "    limitUpPrediction: {paths: [/signals/limit-up]}\n"
            "    anomalyDetection: {paths: [/signals/anomaly], percentage: 3.25}\n"
        )
    )
    (limit_up, anomaly) = config.rollout.features
    assert limit_up.percentage is None
    assert anomaly.percentage == 3.25
    assert config.feature_percentages() == {
        "default": 25.5,
        "limitUpPrediction": 25.5,
        "anomalyDetection": 3.25,
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://10.0.0.5:8000/", "http://10.0.0.5:8000"),
        ("https://signal.internal", "https://signal.internal"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_valid_upstream_urls_are_kept_without_trailing_slash(raw: str, expected: str) -> None:
    config = parse_config(MINIMAL.replace("http://127.0.0.1:8000", repr(raw)))
    assert config.upstreams.signal.url == expected


@pytest.mark.parametrize("value", ["0", "100", "0.01", "99.99", "12.5", "33.33", "0.07", "100.00"])
def test_percentages_with_up_to_two_decimals_are_accepted(value: str) -> None:
    config = parse_config(with_minimal(f"rollout: {{percentage: {value}}}\n"))
    assert config.rollout.percentage == float(value)


# --- validation, one rule per row ---------------------------------------------------------

# (id, YAML appended to MINIMAL, key path the message must start with, bad value it must name)
INVALID = [
    # unknown keys
    ("unknown-top-level", "listn: {port: 1}\n", "listn", "unknown key"),
    ("unknown-nested", "rollout: {percent: 10}\n", "rollout.percent", "unknown key"),
    (
        "unknown-in-feature",
        "rollout: {features: {anomalyDetection: {paths: [/a], pct: 5}}}\n",
        "rollout.features.anomalyDetection.pct",
        "unknown key",
    ),
    ("unknown-in-guard", "guard: {max_error: 0.1}\n", "guard.max_error", "unknown key"),
    # wrong types
    ("port-as-string", "listen: {port: '8080'}\n", "listen.port", "'8080'"),
    ("port-as-float", "listen: {port: 8080.5}\n", "listen.port", "8080.5"),
    ("timeout-as-string", "timeouts: {connect: 1s}\n", "timeouts.connect", "'1s'"),
    ("percentage-as-string", "rollout: {percentage: ten}\n", "rollout.percentage", "'ten'"),
    ("emergency-as-string", "rollout: {emergency: maybe}\n", "rollout.emergency", "'maybe'"),
    ("set-cookie-as-number", "session: {set_cookie: 1}\n", "session.set_cookie", "1"),
    ("seed-as-number", "rollout: {seed: 42}\n", "rollout.seed", "42"),
    ("statuses-not-a-list", "fallback: {statuses: 500}\n", "fallback.statuses", "500"),
    ("status-item-string", "fallback: {statuses: [500, x]}\n", "fallback.statuses[1]", "'x'"),
    ("test-session-number", "rollout: {test_sessions: [123]}\n", "rollout.test_sessions[0]", "123"),
    ("section-as-scalar", "listen: 8080\n", "listen", "8080"),
    ("features-as-list", "rollout: {features: [anomaly]}\n", "rollout.features", "a list"),
    ("token-as-list", "admin: {token: [a]}\n", "admin.token", "not a string"),
    # bool where a number is expected
    ("bool-percentage", "rollout: {percentage: true}\n", "rollout.percentage", "true"),
    ("bool-port", "listen: {port: false}\n", "listen.port", "false"),
    ("bool-ratio", "guard: {max_error_rate: yes}\n", "guard.max_error_rate", "true"),
    ("bool-timeout", "timeouts: {signal: true}\n", "timeouts.signal", "true"),
    ("bool-body-bytes", "fallback: {max_body_bytes: true}\n", "fallback.max_body_bytes", "true"),
    ("bool-stage", "rollout: {stages: [0, true, 30]}\n", "rollout.stages[1]", "true"),
    (
        "bool-feature-percentage",
        "rollout: {features: {a: {paths: [/a], percentage: true}}}\n",
        "rollout.features.a.percentage",
        "true",
    ),
    # percentage outside 0-100
    ("percentage-150", "rollout: {percentage: 150}\n", "rollout.percentage", "150"),
    ("percentage-negative", "rollout: {percentage: -1}\n", "rollout.percentage", "-1"),
    ("percentage-100.01", "rollout: {percentage: 100.01}\n", "rollout.percentage", "100.01"),
    ("percentage-nan", "rollout: {percentage: .nan}\n", "rollout.percentage", "nan"),
    ("percentage-inf", "rollout: {percentage: .inf}\n", "rollout.percentage", "inf"),
    (
        "feature-percentage-101",
        "rollout: {features: {a: {paths: [/a], percentage: 101}}}\n",
        "rollout.features.a.percentage",
        "101",
    ),
    ("stage-150", "rollout: {stages: [0, 50, 150]}\n", "rollout.stages[2]", "150"),
    ("shadow-percentage-200", "shadow: {percentage: 200}\n", "shadow.percentage", "200"),
    # more than two decimals
    ("percentage-3-decimals", "rollout: {percentage: 10.125}\n", "rollout.percentage", "10.125"),
    ("percentage-0.001", "rollout: {percentage: 0.001}\n", "rollout.percentage", "0.001"),
    (
        "feature-percentage-3-decimals",
        "rollout: {features: {a: {paths: [/a], percentage: 33.333}}}\n",
        "rollout.features.a.percentage",
        "33.333",
    ),
    ("stage-3-decimals", "rollout: {stages: [0, 12.345]}\n", "rollout.stages[1]", "12.345"),
    # stages
    ("stages-decreasing", "rollout: {stages: [0, 30, 10]}\n", "rollout.stages", "[0, 30, 10]"),
    (
        "stages-repeated",
        "rollout: {stages: [0, 10, 10, 30]}\n",
        "rollout.stages",
        "[0, 10, 10, 30]",
    ),
    ("stages-empty", "rollout: {stages: []}\n", "rollout.stages", "at least one"),
    # feature paths
    (
        "feature-path-no-slash",
        "rollout: {features: {anomalyDetection: {paths: [signals/anomaly]}}}\n",
        "rollout.features.anomalyDetection.paths[0]",
        "'signals/anomaly'",
    ),
    (
        "feature-path-empty",
        "rollout: {features: {anomalyDetection: {paths: ['']}}}\n",
        "rollout.features.anomalyDetection.paths[0]",
        "''",
    ),
    (
        "feature-without-paths",
        "rollout: {features: {anomalyDetection: {percentage: 10}}}\n",
        "rollout.features.anomalyDetection.paths",
        "at least one",
    ),
    (
        "feature-path-twice",
        "rollout: {features: {a: {paths: [/x]}, b: {paths: [/x]}}}\n",
        "rollout.features.b.paths",
        "'/x'",
    ),
    (
        "feature-named-default",
        "rollout: {features: {default: {paths: [/x]}}}\n",
        "rollout.features.default",
        "feature name",
    ),
    # other range checks
    ("port-too-big", "listen: {port: 70000}\n", "listen.port", "70000"),
    ("timeout-zero", "timeouts: {connect: 0}\n", "timeouts.connect", "0"),
    ("idle-zero", "timeouts: {idle: 0}\n", "timeouts.idle", "0"),
    ("idle-as-string", "timeouts: {idle: forever}\n", "timeouts.idle", "'forever'"),
    ("signal-over-total", "timeouts: {signal: 40}\n", "timeouts.signal", "40"),
    ("ratio-over-one", "guard: {max_error_rate: 5}\n", "guard.max_error_rate", "5"),
    ("status-out-of-range", "fallback: {statuses: [700]}\n", "fallback.statuses[0]", "700"),
    ("header-with-space", "session: {header: 'X Session'}\n", "session.header", "'X Session'"),
    ("empty-token", "admin: {token: ''}\n", "admin.token", "empty"),
]


@pytest.mark.parametrize(
    ("extra", "key_path", "bad_value"),
    [pytest.param(extra, path, value, id=name) for name, extra, path, value in INVALID],
)
def test_invalid_value_is_reported_with_key_path_and_value(
    extra: str, key_path: str, bad_value: str
) -> None:
    problems = problems_of(with_minimal(extra))
    at_path = [p for p in problems if p.startswith(f"{key_path}: ")]
    assert at_path, f"no problem names {key_path!r}: {problems}"
    assert any(bad_value in p for p in at_path), f"{bad_value!r} not named in {at_path}"


# Upstream problems need their own `upstreams` section, so these are whole files.
UPSTREAM_PROBLEMS = [
    ("missing-upstreams", "rollout: {percentage: 10}\n", "upstreams", "is required"),
    (
        "missing-legacy",
        "upstreams:\n  signal: {url: http://127.0.0.1:8000}\n",
        "upstreams.legacy",
        "is required",
    ),
    (
        "upstream-without-url",
        "upstreams:\n  signal: {}\n  legacy: {url: http://127.0.0.1:8001}\n",
        "upstreams.signal.url",
        "is required",
    ),
    (
        "unknown-upstream",
        MINIMAL + "  canary: {url: http://127.0.0.1:8002}\n",
        "upstreams.canary",
        "unknown key",
    ),
    (
        "unknown-key-in-upstream",
        "upstreams:\n  signal: {url: http://127.0.0.1:8000, weight: 3}\n"
        "  legacy: {url: http://127.0.0.1:8001}\n",
        "upstreams.signal.weight",
        "unknown key",
    ),
    *[
        (
            f"url-{name}",
            MINIMAL.replace("http://127.0.0.1:8000", repr(url)),
            "upstreams.signal.url",
            repr(url),
        )
        for name, url in [
            ("ftp", "ftp://127.0.0.1:8000"),
            ("no-scheme", "127.0.0.1:8000"),
            ("file", "file:///etc/passwd"),
            ("no-host", "http://"),
            ("words", "not a url"),
            ("with-path", "http://127.0.0.1:8000/api"),
            ("with-query", "http://127.0.0.1:8000?x=1"),
        ]
    ],
    (
        "url-not-a-string",
        MINIMAL.replace("http://127.0.0.1:8001", "8001"),
        "upstreams.legacy.url",
        "8001",
    ),
]


@pytest.mark.parametrize(
    ("text", "key_path", "bad_value"),
    [pytest.param(text, path, value, id=name) for name, text, path, value in UPSTREAM_PROBLEMS],
)
def test_invalid_upstreams_are_reported(text: str, key_path: str, bad_value: str) -> None:
    problems = problems_of(text)
    at_path = [p for p in problems if p.startswith(f"{key_path}: ")]
    assert at_path, f"no problem names {key_path!r}: {problems}"
    assert any(bad_value in p for p in at_path), f"{bad_value!r} not named in {at_path}"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("upstreams:\n", id="null"),
        pytest.param("upstreams: {}\n", id="empty-mapping"),
    ],
)
def test_empty_upstreams_section_is_an_error(text: str) -> None:
    """SPEC 2: `upstreams` is the one required key; an empty one must not mean defaults."""
    problems = problems_of(text)
    assert any(p.startswith("upstreams") for p in problems), problems


def test_percentage_message_reads_as_the_spec_example() -> None:
    assert problems_of(with_minimal("rollout: {percentage: 150}\n")) == [
        "rollout.percentage: 150 is not within 0-100"
    ]


def test_unknown_key_message_lists_the_known_keys() -> None:
    (problem,) = problems_of(with_minimal("rollout: {percent: 10}\n"))
    assert problem.startswith("rollout.percent: unknown key")
    assert "percentage" in problem


# --- YAML-level problems ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key", "line"),
    [
        pytest.param(
            "rollout:\n  percentage: 10\n  percentage: 20\n", "percentage", 6, id="nested"
        ),
        pytest.param("rollout: {seed: a}\nrollout: {seed: b}\n", "rollout", 5, id="top-level"),
        pytest.param(
            "rollout:\n  features:\n    a: {paths: [/a], paths: [/b]}\n",
            "paths",
            6,
            id="in-feature",
        ),
    ],
)
def test_duplicate_yaml_keys_are_errors(extra: str, key: str, line: int) -> None:
    (problem,) = problems_of(with_minimal(extra))
    assert f"duplicate key {key!r}" in problem
    assert f"line {line}," in problem


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        pytest.param("rollout:\n  percentage: 10\n   seed: x\n", 6, id="bad-indentation"),
        pytest.param("rollout:\n\tpercentage: 10\n", 5, id="tab"),
        pytest.param("listen: {host: [a, b}\n", 4, id="unbalanced-brackets"),
        pytest.param("rollout:\n  seed: 'unterminated\n", 6, id="unterminated-quote"),
    ],
)
def test_invalid_yaml_names_the_line(extra: str, line: int) -> None:
    (problem,) = problems_of(with_minimal(extra))
    assert problem.startswith("invalid YAML: ")
    assert f"line {line}," in problem


@pytest.mark.parametrize("text", ["", "   \n\n", "\t\n"])
def test_empty_file_is_an_error(text: str) -> None:
    assert problems_of(text) == ["file is empty"]


def test_comment_only_file_reports_missing_upstreams() -> None:
    assert problems_of("# nothing here yet\n") == [
        "upstreams: is required (signal.url and legacy.url)"
    ]


@pytest.mark.parametrize(
    ("text", "first"),
    [
        pytest.param("- a\n- b\n", "top level: a list is not a mapping", id="list"),
        pytest.param("hello\n", "top level: 'hello' is not a mapping", id="scalar"),
    ],
)
def test_top_level_must_be_a_mapping(text: str, first: str) -> None:
    assert problems_of(text)[0] == first


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["file not found"]
    assert info.value.source == str(path)
    assert str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.source == str(tmp_path)
    assert len(info.value.problems) == 1
    assert "directory" in info.value.problems[0]


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + b"rollout: {seed: caf\xe9}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("cannot read")


def test_load_config_reads_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text(with_minimal("rollout: {percentage: 42.5}\n"), encoding="utf-8")
    assert load_config(path).rollout.percentage == 42.5


def test_error_message_names_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(with_minimal("rollout: {percentage: 150}\n"), "/etc/rollout/rollout.yaml")
    assert info.value.source == "/etc/rollout/rollout.yaml"
    assert str(info.value) == (
        "/etc/rollout/rollout.yaml: rollout.percentage: 150 is not within 0-100"
    )


def test_every_problem_is_reported_at_once() -> None:
    text = """\
upstreams:
  signal: {url: ftp://127.0.0.1:8000}
listen: {port: '80'}
rollout:
  percentage: 150
  stages: [0, 30, 10]
  features:
    anomalyDetection: {paths: [signals/anomaly], percentage: 10.125}
guard: {max_error_rate: true}
bogus: 1
"""
    problems = problems_of(text)
    expected_paths = [
        "upstreams.signal.url",
        "upstreams.legacy",
        "listen.port",
        "rollout.percentage",
        "rollout.stages",
        "rollout.features.anomalyDetection.paths[0]",
        "rollout.features.anomalyDetection.percentage",
        "guard.max_error_rate",
        "bogus",
    ]
    for path in expected_paths:
        assert any(p.startswith(f"{path}: ") for p in problems), f"{path} missing: {problems}"
    assert len(problems) >= len(expected_paths)


# --- diff_configs -------------------------------------------------------------------------


def replace_rollout(config: Config, **changes: Any) -> Config:
    return dataclasses.replace(config, rollout=dataclasses.replace(config.rollout, **changes))


def test_diff_of_equal_configs_is_empty() -> None:
    assert diff_configs(load_config(EXAMPLE), load_config(EXAMPLE)) == []


def test_diff_percentage() -> None:
    old = parse_config(with_minimal("rollout: {percentage: 10}\n"))
    new = parse_config(with_minimal("rollout: {percentage: 30}\n"))
    assert diff_configs(old, new) == ["rollout.percentage 10 -> 30"]


def test_diff_keeps_decimals() -> None:
    old = parse_config(with_minimal("rollout: {percentage: 12.5}\n"))
    new = parse_config(with_minimal("rollout: {percentage: 0.25}\n"))
    assert diff_configs(old, new) == ["rollout.percentage 12.5 -> 0.25"]


def test_diff_emergency() -> None:
    old = parse_config(MINIMAL)
    new = parse_config(with_minimal("rollout: {emergency: true}\n"))
    assert diff_configs(old, new) == ["rollout.emergency false -> true"]
    assert diff_configs(new, old) == ["rollout.emergency true -> false"]


def test_diff_lists_every_change() -> None:
    old = load_config(EXAMPLE)
    new = dataclasses.replace(
        replace_rollout(old, percentage=30.0, seed="reshuffle"),
        guard=dataclasses.replace(old.guard, max_p95_ms=400.0),
    )
    changes = diff_configs(old, new)
    assert sorted(changes) == sorted(
        [
            "rollout.percentage 10 -> 30",
            "rollout.seed rollout -> reshuffle",
            "guard.max_p95_ms 500 -> 400",
        ]
    )


def test_diff_upstream_url() -> None:
    old = parse_config(MINIMAL)
    new = parse_config(MINIMAL.replace("127.0.0.1:8001", "10.0.0.2:9001"))
    assert diff_configs(old, new) == [
        "upstreams.legacy.url http://127.0.0.1:8001 -> http://10.0.0.2:9001"
    ]


def test_diff_test_sessions() -> None:
    old = load_config(EXAMPLE)
    new = replace_rollout(old, test_sessions=frozenset({"qa-tester-1"}))
    (change,) = diff_configs(old, new)
    assert change.startswith("rollout.test_sessions ")
    assert "qa-tester-2" in change


FEATURES_BEFORE = """\
rollout:
  features:
    anomalyDetection: {paths: [/signals/anomaly], percentage: 10}
    limitUpPrediction: {paths: [/signals/limit-up], percentage: 10}
    backtest: {paths: [/backtest]}
"""
FEATURES_AFTER = """\
rollout:
  features:
    anomalyDetection: {paths: [/signals/anomaly], percentage: 30}
    backtest: {paths: [/backtest, /replay]}
    sectorRotation: {paths: [/signals/sector]}
"""


def test_diff_features_added_removed_changed() -> None:
    old = parse_config(with_minimal(FEATURES_BEFORE))
    new = parse_config(with_minimal(FEATURES_AFTER))
    changes = diff_configs(old, new)
    assert sorted(changes) == sorted(
        [
            "rollout.features.anomalyDetection.percentage 10 -> 30",
            "rollout.features.backtest.paths [/backtest] -> [/backtest, /replay]",
            "rollout.features.limitUpPrediction removed",
            "rollout.features.sectorRotation added",
        ]
    )


def test_diff_feature_percentage_set_from_global() -> None:
    old = parse_config(with_minimal("rollout:\n  features:\n    a: {paths: [/a]}\n"))
    new = parse_config(with_minimal("rollout:\n  features:\n    a: {paths: [/a], percentage: 5}\n"))
    assert diff_configs(old, new) == ["rollout.features.a.percentage null -> 5"]


def test_diff_ignores_feature_order() -> None:
    old = parse_config(with_minimal(FEATURES_BEFORE))
    new = replace_rollout(old, features=tuple(reversed(old.rollout.features)))
    assert diff_configs(old, new) == []


# --- the admin token is a secret ----------------------------------------------------------


def with_token(token: str | None) -> Config:
    value = "null" if token is None else repr(token)
    return parse_config(with_minimal(f"admin: {{token: {value}}}\n"))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(None, SECRET, id="set"),
        pytest.param(SECRET, None, id="cleared"),
        pytest.param(SECRET, SECRET[::-1], id="rotated"),
    ],
)
def test_diff_never_shows_the_token(old: str | None, new: str | None) -> None:
    changes = diff_configs(with_token(old), with_token(new))
    assert changes == ["admin.token changed"]
    for secret in (SECRET, SECRET[::-1]):
        assert all(secret not in line for line in changes)


def test_diff_of_same_token_is_empty() -> None:
    assert diff_configs(with_token(SECRET), with_token(SECRET)) == []


def test_diff_with_token_and_other_changes_hides_token() -> None:
    old = with_token(SECRET)
    new = replace_rollout(with_token(SECRET + "-new"), percentage=50.0)
    changes = diff_configs(old, new)
    assert sorted(changes) == ["admin.token changed", "rollout.percentage 10 -> 50"]
    assert SECRET not in "\n".join(changes)


def test_as_mapping_masks_the_token() -> None:
    config = with_token(SECRET)
    assert config.admin.token == SECRET
    mapping = as_mapping(config)
    assert mapping["admin"]["token"] == "***"
    assert SECRET not in json.dumps(mapping)


def test_as_mapping_without_token() -> None:
    assert as_mapping(parse_config(MINIMAL))["admin"]["token"] is None


def test_repr_does_not_show_the_token() -> None:
    config = with_token(SECRET)
    assert SECRET not in repr(config)
    assert SECRET not in repr(config.admin)


# --- as_mapping ---------------------------------------------------------------------------


def test_as_mapping_is_plain_json_data() -> None:
    mapping = as_mapping(load_config(EXAMPLE))
    assert json.loads(json.dumps(mapping)) == mapping
    assert mapping["rollout"]["percentage"] == 10
    assert mapping["rollout"]["stages"] == [0, 10, 30, 50, 80, 100]
    assert mapping["rollout"]["test_sessions"] == ["qa-tester-1", "qa-tester-2"]
    assert mapping["fallback"]["statuses"] == [500, 502, 503, 504]
    assert mapping["upstreams"]["signal"]["url"] == "http://127.0.0.1:8000"
    assert mapping["rollout"]["features"][0] == {
        "name": "anomalyDetection",
        "paths": ["/signals/anomaly"],
        "percentage": 10,
    }
    assert set(mapping) == {f.name for f in dataclasses.fields(Config)}


# --- resolve_config_path ------------------------------------------------------------------


def test_resolve_config_path_prefers_the_cli_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_CONFIG", "/from/env.yaml")
    assert resolve_config_path("/from/cli.yaml") == Path("/from/cli.yaml")


def test_resolve_config_path_falls_back_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_CONFIG", "/from/env.yaml")
    assert resolve_config_path(None) == Path("/from/env.yaml")


@pytest.mark.parametrize("env", [None, ""])
def test_resolve_config_path_default(monkeypatch: pytest.MonkeyPatch, env: str | None) -> None:
    if env is None:
        monkeypatch.delenv("ROLLOUT_CONFIG", raising=False)
    else:
        monkeypatch.setenv("ROLLOUT_CONFIG", env)
    assert resolve_config_path(None) == Path("config/rollout.yaml")


def test_one_bad_feature_path_is_one_problem() -> None:
    text = (
        "upstreams: {signal: {url: http://a}, legacy: {url: http://b}}\n"
        "rollout: {features: {anomalyDetection: {paths: [/signals/anomaly, signals/x]}}}\n"
    )
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    assert exc.value.problems == [
        "rollout.features.anomalyDetection.paths[1]: 'signals/x' does not start with '/'"
    ]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "get"])
def test_shadow_mirrors_only_safe_methods(method: str) -> None:
    text = (
        "upstreams: {signal: {url: http://a}, legacy: {url: http://b}}\n"
        f"shadow: {{enabled: true, methods: [GET, {method}]}}\n"
    )
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    assert exc.value.problems == [
        f"shadow.methods[1]: '{method}' cannot be mirrored: only GET, HEAD and OPTIONS "
        "change nothing when replayed"
    ]
