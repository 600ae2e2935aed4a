"""Comparing two HTTP answers for the shadow comparison (SPEC 11). Pure: values in, diffs out.

JSON bodies are compared structurally: key order never matters, and fields matching an
ignore pattern are left out. Patterns:

- `a.b`, `items[*].x`: that path (`[*]` matches any list index);
- a bare name such as `ts` or `trace_id`: that key at any depth.

Anything else is compared byte for byte; bodies over the size limit by status only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

MAX_SHOWN = 200  # characters of a value kept in a diff
MAX_FIELDS = 50  # differing fields kept per diff

_INDEX = re.compile(r"\[\d+\]")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    content_type: str
    body: bytes | None  # None: too large to compare


class FieldDifference(TypedDict):
    path: str
    legacy: str
    signal: str


@dataclass(frozen=True, slots=True)
class FieldDiff:
    path: str
    legacy: str
    signal: str

    def as_dict(self) -> FieldDifference:
        return {"path": self.path, "legacy": self.legacy, "signal": self.signal}


def normalise(path: str) -> str:
    """`items[3].x` -> `items[*].x`: the form ignore patterns and learned noise use."""
    return _INDEX.sub("[*]", path)


class Ignore:
    """Compiled ignore patterns (configured plus learned), matched against field paths."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.paths: set[str] = set()
        self.names: set[str] = set()
        for pattern in patterns:
            if "." in pattern or "[" in pattern:
                self.paths.add(normalise(pattern))
            else:
                self.names.add(pattern)

    def __call__(self, path: str, key: str | None) -> bool:
        return (key is not None and key in self.names) or normalise(path) in self.paths


def compare(legacy: Answer, signal: Answer, ignore: Ignore) -> list[FieldDiff]:
    """Differences between legacy's and signal's answers; empty means a match."""
    diffs: list[FieldDiff] = []
    if legacy.status != signal.status:
        diffs.append(FieldDiff("(status)", str(legacy.status), str(signal.status)))
    if _media_type(legacy.content_type) != _media_type(signal.content_type):
        diffs.append(FieldDiff("(content-type)", legacy.content_type, signal.content_type))
    if legacy.body is None or signal.body is None:
        return diffs  # too large: status (and type) only
    left, right = _json(legacy), _json(signal)
    if left is not _NOT_JSON and right is not _NOT_JSON:
        _walk(left, right, "", None, ignore, diffs)
    elif legacy.body != signal.body:
        diffs.append(FieldDiff("(body)", _bytes(legacy.body), _bytes(signal.body)))
    return diffs[:MAX_FIELDS]


def json_paths_that_differ(first: bytes, second: bytes) -> set[str]:
    """Normalised paths whose values differ between two JSON bodies (for learn_noise)."""
    a, b = _parse(first), _parse(second)
    if a is _NOT_JSON or b is _NOT_JSON:
        return set()
    diffs: list[FieldDiff] = []
    _walk(a, b, "", None, Ignore(()), diffs)
    return {normalise(d.path) for d in diffs}


_NOT_JSON: Any = object()


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _json(answer: Answer) -> Any:
    if "json" not in _media_type(answer.content_type) or answer.body is None:
        return _NOT_JSON
    return _parse(answer.body)


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


def _walk(
    left: Any, right: Any, path: str, key: str | None, ignore: Ignore, out: list[FieldDiff]
) -> None:
    if len(out) >= MAX_FIELDS or (path and ignore(path, key)):
        return
    if isinstance(left, dict) and isinstance(right, dict):
        for k in sorted(left.keys() | right.keys(), key=str):
            child = f"{path}.{k}" if path else str(k)
            if k not in left or k not in right:
                if not ignore(child, k):
                    a, b = left.get(k, _MISSING), right.get(k, _MISSING)
                    out.append(FieldDiff(child, _show(a), _show(b)))
                continue
            _walk(left[k], right[k], child, k, ignore, out)
        return
    if isinstance(left, list) and isinstance(right, list):
        for i in range(max(len(left), len(right))):
            child = f"{path}[{i}]"
            if i >= len(left) or i >= len(right):
                a = left[i] if i < len(left) else _MISSING
                b = right[i] if i < len(right) else _MISSING
                out.append(FieldDiff(child, _show(a), _show(b)))
                continue
            _walk(left[i], right[i], child, None, ignore, out)
        return
    # 1 and 1.0 are the same JSON number; true and 1 are not (Python says they are).
    if left != right or isinstance(left, bool) != isinstance(right, bool):
        out.append(FieldDiff(path or "(root)", _show(left), _show(right)))


_MISSING: Any = type("Missing", (), {"__repr__": lambda self: "(absent)"})()


def _show(value: Any) -> str:
    text = "(absent)" if value is _MISSING else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _bytes(body: bytes) -> str:
    text = body[: MAX_SHOWN * 2].decode("utf-8", "replace")
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def match_rate(counts: Mapping[str, float]) -> float | None:
    """Shadow matches over comparisons (match + mismatch); errors and drops compare nothing."""
    compared = counts.get("match", 0) + counts.get("mismatch", 0)
    return counts.get("match", 0) / compared if compared else None
