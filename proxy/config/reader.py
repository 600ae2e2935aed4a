"""Reading one YAML document into typed values, recording every problem instead of raising.

`_Section` wraps one mapping; its getters check the kind of each value and run a check
that returns the message following the value (`150 is not within 0-100`), so one pass
lists every problem with its key path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import yaml

from proxy.config.values import format_value


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML silently overwrites."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


T = TypeVar("T")
_MISSING: Any = object()


def describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return format_value(value)


class Section:
    """One YAML mapping being read: typed getters that record problems, not raise."""

    def __init__(self, data: object, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error("", f"{describe(data)} is not a mapping")
            data = {}
        self.data: dict[Any, Any] = data

    def key(self, name: str) -> str:
        return join(self.path, name)

    def error(self, name: str, message: str) -> None:
        where = self.key(name) if name else (self.path or "top level")
        self.problems.append(f"{where}: {message}")

    def has(self, name: str) -> bool:
        return name in self.data

    def section(self, name: str, *, required: bool = False) -> Section:
        if required and name not in self.data:
            self.error(name, "is required")
        return Section(self.data.get(name), self.key(name), self.problems)

    def get(
        self,
        name: str,
        kind: type[T] | tuple[type, ...],
        default: T,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        value = self.data.get(name, _MISSING)
        if value is _MISSING:
            return default
        if not _is_kind(value, kind):
            expected = _kind_name(kind)
            self.error(name, f"{describe(value)} is not {expected}")
            return default
        if isinstance(value, int) and not isinstance(value, bool) and kind is float:
            value = float(value)
        if check is not None:
            message = check(value)
            if message:
                self.error(name, f"{describe(value)} {message}")
                return default
        return value  # type: ignore[no-any-return]

    def get_list(
        self,
        name: str,
        item_kind: type[T] | tuple[type, ...],
        default: tuple[T, ...],
        check: Callable[[Any], str | None] | None = None,
    ) -> tuple[T, ...]:
        value = self.data.get(name, _MISSING)
        if value is _MISSING:
            return default
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(name, f"{describe(value)} is not a list")
            return default
        items: list[T] = []
        ok = True
        for i, item in enumerate(value):
            if not _is_kind(item, item_kind):
                self.error(f"{name}[{i}]", f"{describe(item)} is not {_kind_name(item_kind)}")
                ok = False
                continue
            if isinstance(item, int) and not isinstance(item, bool) and item_kind is float:
                item = float(item)
            if check is not None and (message := check(item)):
                self.error(f"{name}[{i}]", f"{describe(item)} {message}")
                ok = False
                continue
            items.append(item)
        return tuple(items) if ok else default

    def finish(self, known: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in known:
                self.error(
                    str(key),
                    f"unknown key (known keys here: {', '.join(known)})",
                )


def _is_kind(value: object, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        bool: "true/false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        type(None): "null",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
