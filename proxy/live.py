"""Reading a running proxy's live state from its admin listener (for the CLI)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from proxy.config.values import Config


class LiveError(Exception):
    """The admin listener could not be read."""


def admin_url(config: Config, override: str | None) -> str:
    if override:
        return override.rstrip("/")
    host = config.admin.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind is reachable on loopback
    return f"http://{host}:{config.admin.port}"


def fetch(url: str, token: str | None, *, timeout: float = 3.0) -> str:
    request = urllib.request.Request(url)  # noqa: S310 (URL is the operator's own admin endpoint)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return str(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise LiveError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LiveError(f"{url}: {reason}") from None


def fetch_status(base: str, token: str | None) -> dict[str, Any]:
    """`GET /-/status` as a dict; `LiveError` when the proxy is unreachable."""
    try:
        data: dict[str, Any] = json.loads(fetch(base + "/-/status", token))
    except json.JSONDecodeError as exc:
        raise LiveError(f"{base}/-/status: not JSON ({exc})") from None
    return data


def fetch_metrics(base: str, token: str | None) -> str:
    return fetch(base + "/metrics", token)
