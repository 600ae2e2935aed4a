"""What changed between two configurations, and a plain-data view of one; no secrets.

Both walk the dataclasses generically: a field marked `secret` is never shown, a tuple
marked `keyed_by` is compared item by item under that key, and derived fields
(`compare=False`, e.g. `Upstream.host` from `url`) are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from proxy.config.values import Config, format_value


def diff_configs(old: Config, new: Config) -> list[str]:
    """Human-readable changes between two configs: `rollout.percentage 10 -> 30`."""
    changes: list[str] = []
    _diff(old, new, "", changes)
    return changes


def _diff(old: object, new: object, path: str, out: list[str], keyed_by: str | None = None) -> None:
    if old == new:
        return
    if is_dataclass(old) and is_dataclass(new) and type(old) is type(new):
        for f in fields(old):
            if not f.compare:
                continue
            key = _join(path, f.name)
            if f.metadata.get("secret"):
                if getattr(old, f.name) != getattr(new, f.name):
                    out.append(f"{key} changed")
                continue
            _diff(getattr(old, f.name), getattr(new, f.name), key, out, f.metadata.get("keyed_by"))
        return
    if keyed_by is not None and isinstance(old, tuple) and isinstance(new, tuple):
        old_items = {getattr(item, keyed_by): item for item in old}
        new_items = {getattr(item, keyed_by): item for item in new}
        for name in sorted(old_items.keys() | new_items.keys()):
            o, n = old_items.get(name), new_items.get(name)
            if o is None:
                out.append(f"{path}.{name} added")
            elif n is None:
                out.append(f"{path}.{name} removed")
            else:
                _diff(o, n, f"{path}.{name}", out)
        return
    out.append(f"{path} {format_value(old)} -> {format_value(new)}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def as_mapping(value: object) -> Mapping[str, Any]:
    """Plain-data view of a config value (for `/-/status` and `--json`); no secrets."""
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            if not f.compare:
                continue
            if f.metadata.get("secret"):
                out[f.name] = None if getattr(value, f.name) is None else "***"
                continue
            out[f.name] = as_mapping(getattr(value, f.name))
        return out
    if isinstance(value, frozenset):
        return sorted(value)  # type: ignore[return-value]
    if isinstance(value, tuple):
        return [as_mapping(v) for v in value]  # type: ignore[return-value]
    return value  # type: ignore[return-value]
