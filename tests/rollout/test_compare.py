"""SPEC 11, the pure part: how the two answers are compared (proxy/rollout/compare.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.rollout.compare import (
    MAX_FIELDS,
    MAX_SHOWN,
    Answer,
    FieldDiff,
    Ignore,
    compare,
    json_paths_that_differ,
    match_rate,
    normalise,
)

JSON = "application/json"


def answer(body: Any, *, status: int = 200, content_type: str = JSON) -> Answer:
    """An answer whose body is `body` as JSON, or the bytes themselves."""
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return Answer(status, content_type, raw)


def diffs(legacy: Answer, signal: Answer, *ignore: str) -> list[tuple[str, str, str]]:
    return [(d.path, d.legacy, d.signal) for d in compare(legacy, signal, Ignore(ignore))]


# --- JSON bodies, structurally -------------------------------------------------------------

STRUCTURE = [
    pytest.param({"a": 1, "b": 2}, {"b": 2, "a": 1}, [], id="key-order-ignored"),
    pytest.param(
        {"a": {"b": {"c": 1, "d": 2}}},
        {"a": {"b": {"d": 2, "c": 1}}},
        [],
        id="nested-key-order-ignored",
    ),
    pytest.param({"a": {"b": 1}}, {"a": {"b": 2}}, [("a.b", "1", "2")], id="nested-path"),
    pytest.param(
        {"items": [{"x": 1}, {"x": 2}]},
        {"items": [{"x": 1}, {"x": 3}]},
        [("items[1].x", "2", "3")],
        id="list-path",
    ),
    pytest.param(
        {"grid": [[1, 2], [3, 4]]},
        {"grid": [[1, 2], [3, 5]]},
        [("grid[1][1]", "4", "5")],
        id="list-in-list-path",
    ),
    pytest.param(
        {"items": [1, 2]},
        {"items": [1]},
        [("items[1]", "2", "(absent)")],
        id="list-shorter",
    ),
    pytest.param(
        {"items": [1]},
        {"items": [1, {"k": "v"}]},
        [("items[1]", "(absent)", '{"k": "v"}')],
        id="list-longer",
    ),
    pytest.param({"a": 1}, {}, [("a", "1", "(absent)")], id="key-missing-on-signal"),
    pytest.param({}, {"a": [1]}, [("a", "(absent)", "[1]")], id="key-missing-on-legacy"),
    pytest.param({"a": None}, {}, [("a", "null", "(absent)")], id="null-is-not-absent"),
    pytest.param({"s": "x"}, {"s": "y"}, [("s", '"x"', '"y"')], id="strings-shown-as-json"),
    pytest.param({"s": "é"}, {"s": "ü"}, [("s", '"é"', '"ü"')], id="unicode-shown-as-is"),
    pytest.param({"a": {"b": 1}}, {"a": [1]}, [("a", '{"b": 1}', "[1]")], id="type-change"),
    pytest.param(1, 2, [("(root)", "1", "2")], id="root-scalar"),
    pytest.param([1, 2], [1, 3], [("[1]", "2", "3")], id="root-list"),
    pytest.param(
        {"b": 1, "a": 1, "c": {"z": 1, "y": 1}},
        {"b": 2, "a": 2, "c": {"z": 2, "y": 2}},
        [("a", "1", "2"), ("b", "1", "2"), ("c.y", "1", "2"), ("c.z", "1", "2")],
        id="reported-in-sorted-key-order",
    ),
]


@pytest.mark.parametrize(("legacy", "signal", "expected"), STRUCTURE)
def test_json_is_compared_structurally(legacy: Any, signal: Any, expected: list[Any]) -> None:
    assert diffs(answer(legacy), answer(signal)) == expected


NUMBERS = [
    pytest.param(1, 1.0, [], id="1-equals-1.0"),
    pytest.param(0, -0.0, [], id="0-equals-minus-0.0"),
    pytest.param(1e2, 100, [], id="1e2-equals-100"),
    pytest.param(True, 1, [("v", "true", "1")], id="true-is-not-1"),
    pytest.param(1, True, [("v", "1", "true")], id="1-is-not-true"),
    pytest.param(False, 0, [("v", "false", "0")], id="false-is-not-0"),
    pytest.param(0.0, False, [("v", "0.0", "false")], id="0.0-is-not-false"),
    pytest.param(True, True, [], id="true-equals-true"),
    pytest.param("1", 1, [("v", '"1"', "1")], id="string-is-not-number"),
    pytest.param(None, 0, [("v", "null", "0")], id="null-is-not-0"),
    pytest.param(0.1, 0.10000001, [("v", "0.1", "0.10000001")], id="close-is-not-equal"),
]


@pytest.mark.parametrize(("legacy", "signal", "expected"), NUMBERS)
def test_json_scalars_follow_json_not_python(legacy: Any, signal: Any, expected: list[Any]) -> None:
    assert diffs(answer({"v": legacy}), answer({"v": signal})) == expected


def test_json_number_spelling_does_not_matter() -> None:
    legacy = answer(b'{"price": 1.50, "n": 10, "e": 1E2}')
    signal = answer(b'{"e":100.0,"n":10.0,"price":1.5}')
    assert diffs(legacy, signal) == []


def test_whitespace_in_json_does_not_matter() -> None:
    assert diffs(answer(b'{"a":[1,2]}'), answer(b'{\n  "a": [ 1, 2 ]\n}\n')) == []


# --- ignore patterns -------------------------------------------------------------------------

LEGACY_DOC = {
    "ts": 1,
    "trace_id": "a",
    "meta": {"ts": 1, "host": "l1", "inner": {"ts": 1}},
    "items": [
        {"id": 1, "generated_at": "t1", "ts": 1, "score": 0.5},
        {"id": 2, "generated_at": "t2", "ts": 1, "score": 0.6},
    ],
    "ts_total": 1,
}
SIGNAL_DOC = {
    "ts": 2,
    "trace_id": "b",
    "meta": {"ts": 2, "host": "s1", "inner": {"ts": 2}},
    "items": [
        {"id": 1, "generated_at": "u1", "ts": 2, "score": 0.5},
        {"id": 2, "generated_at": "u2", "ts": 2, "score": 0.7},
    ],
    "ts_total": 2,
}
ALL_PATHS = [
    "items[0].generated_at",
    "items[0].ts",
    "items[1].generated_at",
    "items[1].score",
    "items[1].ts",
    "meta.host",
    "meta.inner.ts",
    "meta.ts",
    "trace_id",
    "ts",
    "ts_total",
]


def _without(*removed: str) -> list[str]:
    return [p for p in ALL_PATHS if p not in removed]


IGNORE = [
    pytest.param((), ALL_PATHS, id="nothing-ignored"),
    pytest.param(
        ("ts",),
        _without("ts", "meta.ts", "meta.inner.ts", "items[0].ts", "items[1].ts"),
        id="bare-name-at-any-depth",
    ),
    pytest.param(("ts_t",), ALL_PATHS, id="bare-name-is-whole-key-not-prefix"),
    pytest.param(
        ("items[*].generated_at",),
        _without("items[0].generated_at", "items[1].generated_at"),
        id="star-index-any-element",
    ),
    pytest.param(("meta.ts",), _without("meta.ts"), id="dotted-path-only-that-path"),
    pytest.param(("meta",), _without("meta.ts", "meta.host", "meta.inner.ts"), id="subtree"),
    pytest.param(
        ("meta.inner",),
        _without("meta.inner.ts"),
        id="dotted-subtree",
    ),
    pytest.param(
        ("items[*]",),
        _without(
            "items[0].generated_at",
            "items[0].ts",
            "items[1].generated_at",
            "items[1].score",
            "items[1].ts",
        ),
        id="every-element",
    ),
    pytest.param(
        ("ts", "trace_id", "items[*].generated_at", "meta.host"),
        ["items[1].score", "ts_total"],
        id="combined",
    ),
    pytest.param(("inner.ts",), ALL_PATHS, id="dotted-path-anchored-at-root"),
    pytest.param(("host",), _without("meta.host"), id="bare-name-nested"),
]


@pytest.mark.parametrize(("patterns", "expected_paths"), IGNORE)
def test_ignore_patterns(patterns: tuple[str, ...], expected_paths: list[str]) -> None:
    found = [path for path, _, _ in diffs(answer(LEGACY_DOC), answer(SIGNAL_DOC), *patterns)]
    assert found == expected_paths


@pytest.mark.parametrize(
    ("legacy", "signal", "patterns"),
    [
        pytest.param({"a": 1, "trace_id": "x"}, {"a": 1}, ("trace_id",), id="absent-on-signal"),
        pytest.param({"a": 1}, {"a": 1, "trace_id": "x"}, ("trace_id",), id="absent-on-legacy"),
        pytest.param(
            {"items": [{"g": 1}]},
            {"items": [{}]},
            ("items[*].g",),
            id="star-absent-on-signal",
        ),
        pytest.param({"m": {"x": 1}}, {}, ("m",), id="whole-object-absent"),
    ],
)
def test_ignored_field_may_be_missing_on_one_side(
    legacy: Any, signal: Any, patterns: tuple[str, ...]
) -> None:
    assert diffs(answer(legacy), answer(signal), *patterns) == []


@pytest.mark.parametrize(
    ("pattern", "path", "key", "ignored"),
    [
        ("ts", "ts", "ts", True),
        ("ts", "a.b[3].ts", "ts", True),
        ("ts", "a.ts_x", "ts_x", False),
        ("ts", "ts[0]", None, False),  # a list element has no key of its own
        ("a.b", "a.b", "b", True),
        ("a.b", "c.b", "b", False),
        ("a.b", "b", "b", False),
        ("items[*].x", "items[0].x", "x", True),
        ("items[*].x", "items[12].x", "x", True),
        ("items[*].x", "items[0].y", "y", False),
        ("items[*].x", "other[0].x", "x", False),
        ("a[*][*]", "a[1][2]", None, True),
    ],
)
def test_ignore_matching(pattern: str, path: str, key: str | None, ignored: bool) -> None:
    assert Ignore([pattern])(path, key) is ignored


# --- not JSON: bytes -----------------------------------------------------------------------

BYTES = [
    pytest.param(b"hello", b"hello", "text/plain", [], id="same-bytes"),
    pytest.param(b"hello", b"hellp", "text/plain", [("(body)", "hello", "hellp")], id="differ"),
    pytest.param(
        b'{"a":1,"b":2}',
        b'{"b":2,"a":1}',
        "text/plain",
        [("(body)", '{"a":1,"b":2}', '{"b":2,"a":1}')],
        id="json-text-under-non-json-type-is-bytes",
    ),
    pytest.param(
        b"{not json",
        b"{not json!",
        JSON,
        [("(body)", "{not json", "{not json!")],
        id="invalid-json-is-bytes",
    ),
    pytest.param(b"{not json", b"{not json", JSON, [], id="invalid-json-same-bytes"),
    pytest.param(
        b"\xff\xfe", b"\xff\xfd", JSON, [("(body)", "\ufffd\ufffd", "\ufffd\ufffd")], id="binary"
    ),
    pytest.param(b"", b"", "text/plain", [], id="both-empty"),
    pytest.param(b"", b"x", "text/plain", [("(body)", "", "x")], id="one-empty"),
]


@pytest.mark.parametrize(("legacy", "signal", "content_type", "expected"), BYTES)
def test_non_json_is_compared_byte_for_byte(
    legacy: bytes, signal: bytes, content_type: str, expected: list[Any]
) -> None:
    got = diffs(
        answer(legacy, content_type=content_type), answer(signal, content_type=content_type)
    )
    assert got == expected


def test_one_side_json_other_not_is_compared_by_bytes() -> None:
    legacy = answer(b'{"a": 1}', content_type=JSON)
    signal = answer(b'{"a": 1}', content_type="text/plain")
    assert diffs(legacy, signal) == [("(content-type)", JSON, "text/plain")]


@pytest.mark.parametrize(
    "content_type", [JSON, "application/problem+json", "application/vnd.api+json"]
)
def test_json_media_types_are_compared_structurally(content_type: str) -> None:
    legacy = answer(b'{"a":1,"b":2}', content_type=content_type)
    signal = answer(b'{"b":2,"a":1}', content_type=content_type)
    assert diffs(legacy, signal) == []


# --- status and Content-Type -------------------------------------------------------------

CONTENT_TYPES = [
    pytest.param(JSON, "application/json; charset=utf-8", [], id="charset-ignored"),
    pytest.param("text/html; charset=iso-8859-1", "text/html; charset=utf-8", [], id="charsets"),
    pytest.param("Application/JSON", "application/json", [], id="case-ignored"),
    pytest.param("application/json ;charset=utf-8", JSON, [], id="spaces-ignored"),
    pytest.param(
        "text/html; charset=utf-8",
        JSON,
        [("(content-type)", "text/html; charset=utf-8", JSON)],
        id="different-media-type-shown-in-full",
    ),
    pytest.param("", JSON, [("(content-type)", "", JSON)], id="missing-on-legacy"),
]


@pytest.mark.parametrize(("legacy", "signal", "expected"), CONTENT_TYPES)
def test_content_type_media_type_is_compared(legacy: str, signal: str, expected: list[Any]) -> None:
    got = diffs(answer(b"same", content_type=legacy), answer(b"same", content_type=signal))
    assert got == expected


def test_status_difference_comes_first() -> None:
    legacy = answer({"a": 1}, status=200)
    signal = answer({"a": 2}, status=500)
    assert diffs(legacy, signal) == [("(status)", "200", "500"), ("a", "1", "2")]


def test_same_status_same_body_is_a_match() -> None:
    assert diffs(answer({"a": 1}, status=404), answer({"a": 1}, status=404)) == []


TOO_LARGE = [
    pytest.param(answer(None), answer(None), [], id="both-too-large-same-status"),
    pytest.param(answer(None), answer(b"x" * 10), [], id="legacy-too-large"),
    pytest.param(answer({"a": 1}), answer(None), [], id="signal-too-large"),
    pytest.param(
        answer(None, status=200),
        answer(None, status=502),
        [("(status)", "200", "502")],
        id="status-still-compared",
    ),
    pytest.param(
        answer(None, content_type=JSON),
        answer(None, content_type="text/plain"),
        [("(content-type)", JSON, "text/plain")],
        id="content-type-still-compared",
    ),
]


@pytest.mark.parametrize(("legacy", "signal", "expected"), TOO_LARGE)
def test_too_large_bodies_are_compared_by_status_only(
    legacy: Answer, signal: Answer, expected: list[Any]
) -> None:
    assert diffs(legacy, signal) == expected


# --- what a diff holds -------------------------------------------------------------------------


def test_long_json_values_are_truncated() -> None:
    long_value = "x" * 1000
    [diff] = compare(answer({"v": long_value}), answer({"v": "short"}), Ignore(()))
    assert len(diff.legacy) == MAX_SHOWN
    assert diff.legacy.endswith("…")
    assert diff.legacy.startswith('"xxx')
    assert diff.signal == '"short"'


def test_value_of_exactly_max_shown_is_not_truncated() -> None:
    value = "y" * (MAX_SHOWN - 2)  # plus the two quotes
    [diff] = compare(answer({"v": value}), answer({"v": 1}), Ignore(()))
    assert diff.legacy == json.dumps(value)
    assert len(diff.legacy) == MAX_SHOWN


def test_long_structures_are_truncated() -> None:
    big = {"list": list(range(500))}
    [diff] = compare(answer({"v": big}), answer({}), Ignore(()))
    assert len(diff.legacy) == MAX_SHOWN
    assert diff.legacy.endswith("…")
    assert diff.signal == "(absent)"


def test_long_bodies_are_truncated() -> None:
    legacy = answer(b"a" * 10_000, content_type="text/plain")
    signal = answer(b"b" * 10_000, content_type="text/plain")
    [diff] = compare(legacy, signal, Ignore(()))
    assert diff.path == "(body)"
    assert diff.legacy == "a" * (MAX_SHOWN - 1) + "…"
    assert diff.signal == "b" * (MAX_SHOWN - 1) + "…"


def test_number_of_fields_is_capped() -> None:
    legacy = {f"k{n:04d}": n for n in range(MAX_FIELDS * 3)}
    signal = {k: v + 1 for k, v in legacy.items()}
    found = compare(answer(legacy), answer(signal), Ignore(()))
    assert len(found) == MAX_FIELDS
    assert found[0].path == "k0000"


def test_cap_includes_status_and_content_type() -> None:
    legacy = answer({f"k{n:04d}": n for n in range(MAX_FIELDS * 2)})
    signal = Answer(500, "text/json", b"{}")
    found = compare(legacy, signal, Ignore(()))
    assert len(found) == MAX_FIELDS
    assert [d.path for d in found[:3]] == ["(status)", "(content-type)", "k0000"]


def test_cap_applies_inside_lists() -> None:
    legacy = {"items": list(range(MAX_FIELDS * 2))}
    signal = {"items": [n + 1 for n in range(MAX_FIELDS * 2)]}
    found = compare(answer(legacy), answer(signal), Ignore(()))
    assert len(found) == MAX_FIELDS
    assert found[-1].path == f"items[{MAX_FIELDS - 1}]"


def test_field_diff_as_dict() -> None:
    assert FieldDiff("a.b", "1", "2").as_dict() == {"path": "a.b", "legacy": "1", "signal": "2"}


# --- learned noise -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("items[3].x", "items[*].x"),
        ("a[0][12].b", "a[*][*].b"),
        ("[7]", "[*]"),
        ("a.b", "a.b"),
        ("items[*].x", "items[*].x"),
        ("ts", "ts"),
    ],
)
def test_normalise(path: str, expected: str) -> None:
    assert normalise(path) == expected


PATHS_THAT_DIFFER = [
    pytest.param(
        {"trace_id": "a", "v": 1},
        {"trace_id": "b", "v": 1},
        {"trace_id"},
        id="top-level",
    ),
    pytest.param(
        {"items": [{"t": 1, "v": 1}, {"t": 2, "v": 1}, {"t": 3, "v": 1}]},
        {"items": [{"t": 4, "v": 1}, {"t": 5, "v": 1}, {"t": 6, "v": 1}]},
        {"items[*].t"},
        id="indexes-normalised",
    ),
    pytest.param(
        {"a": {"b": [[1, 2]]}, "c": 1},
        {"a": {"b": [[1, 3]]}, "c": 1},
        {"a.b[*][*]"},
        id="nested-lists",
    ),
    pytest.param({"a": 1}, {"b": 1}, {"a", "b"}, id="keys-present-on-one-side"),
    pytest.param({"a": 1, "b": 2}, {"b": 2, "a": 1}, set(), id="same"),
    pytest.param({"a": 1}, {"a": 1.0}, set(), id="1-equals-1.0"),
]


@pytest.mark.parametrize(("first", "second", "expected"), PATHS_THAT_DIFFER)
def test_json_paths_that_differ(first: Any, second: Any, expected: set[str]) -> None:
    got = json_paths_that_differ(json.dumps(first).encode(), json.dumps(second).encode())
    assert got == expected


@pytest.mark.parametrize(
    ("first", "second"),
    [(b"not json", b"{}"), (b"{}", b"<html>"), (b"\xff", b"\xfe"), (b"a", b"b")],
)
def test_json_paths_that_differ_is_empty_for_non_json(first: bytes, second: bytes) -> None:
    assert json_paths_that_differ(first, second) == set()


def test_learned_paths_work_as_ignore_patterns() -> None:
    first = json.dumps({"items": [{"t": 1}, {"t": 2}], "trace_id": "a"}).encode()
    second = json.dumps({"items": [{"t": 3}, {"t": 4}], "trace_id": "b"}).encode()
    learned = json_paths_that_differ(first, second)
    legacy = answer({"items": [{"t": 9}] * 5, "trace_id": "c", "v": 1})
    signal = answer({"items": [{"t": 8}] * 5, "trace_id": "d", "v": 2})
    assert diffs(legacy, signal, *learned) == [("v", "1", "2")]


@pytest.mark.parametrize(
    ("counts", "rate"),
    [
        ({"match": 3, "mismatch": 1, "error": 9, "dropped": 9}, 0.75),
        ({"match": 0, "mismatch": 2}, 0.0),
        ({"error": 5}, None),  # nothing compared: no rate, not 0 %
        ({}, None),
    ],
)
def test_match_rate_is_matches_over_comparisons(counts: dict[str, int], rate: float | None) -> None:
    assert match_rate(counts) == rate
