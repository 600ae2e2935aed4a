"""Instant queries against Prometheus' HTTP API, for `rollout report` and the autopilot."""

from __future__ import annotations

import json
import urllib.parse
from typing import TypedDict

from proxy.control.client import LiveError, fetch

TIMEOUT_S = 10.0


class Row(TypedDict):
    """One series of an instant vector: its labels and `[timestamp, "value"]`."""

    metric: dict[str, str]
    value: list[float | str]


def shown(url: str) -> str:
    """The URL as messages show it: without any `user:password@`."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url.rstrip("/")
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/")


def query(prometheus: str, expr: str, *, at: float | None = None) -> list[Row]:
    """The instant vector `expr` evaluates to (at `at`, Unix seconds; default: now).

    `LiveError` naming Prometheus (never the query string's whole URL) when it cannot be
    reached, answers non-200 or not its JSON, or refuses the query.
    """
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    url = f"{prometheus.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode(params)
    where = f"Prometheus {shown(prometheus)}"
    try:
        body = fetch(url, None, timeout=TIMEOUT_S)
    except LiveError as exc:
        raise LiveError(f"{where}: {str(exc).removeprefix(url + ': ')}") from exc
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise LiveError(f"{where}: the answer is not JSON (is that URL Prometheus?)") from exc
    if not isinstance(data, dict) or "status" not in data:
        raise LiveError(f"{where}: not a Prometheus API answer (is that URL Prometheus?)")
    if data["status"] != "success":
        raise LiveError(f"{where}: query failed: {data.get('error', data)}")
    result = data.get("data", {}).get("result") if isinstance(data.get("data"), dict) else None
    if not isinstance(result, list):
        raise LiveError(f"{where}: not a Prometheus API answer")
    return result  # the API's documented vector shape: a list of Row


def value_of(row: Row) -> float:
    return float(row["value"][1])
