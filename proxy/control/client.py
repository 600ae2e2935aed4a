"""The admin listener's client: a running proxy's live state, for the `rollout` command."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import cast

from proxy.config.values import Config
from proxy.status import DiffsDocument, PreviewDocument, PreviewQuery, StatusDocument


class LiveError(Exception):
    """The admin listener could not be read."""


def admin_url(config: Config, override: str | None) -> str:
    if override:
        return override.rstrip("/")
    host = config.admin.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind is reachable on loopback
    return f"http://{host}:{config.admin.port}"


def fetch(url: str, token: str | None, *, timeout: float = 3.0, body: bytes | None = None) -> str:
    """GET `url`, or POST `body` as JSON when given."""
    request = urllib.request.Request(url, data=body)  # noqa: S310 (the operator's admin endpoint)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return str(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket
        raise LiveError(f"{url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise LiveError(f"{url}: {reason}") from exc


def fetch_status(base: str, token: str | None) -> StatusDocument:
    """`GET /-/status`; `LiveError` when the proxy is unreachable."""
    return cast(StatusDocument, _fetch_json(base + "/-/status", token, "version"))


def fetch_diffs(base: str, token: str | None) -> DiffsDocument:
    """`GET /-/diffs`: the kept shadow mismatches, newest first."""
    return cast(DiffsDocument, _fetch_json(base + "/-/diffs", token, "diffs"))


def fetch_preview(base: str, token: str | None, query: PreviewQuery) -> PreviewDocument:
    """`POST /-/preview`: who `query` would move on the running proxy."""
    body = json.dumps(query).encode()
    return cast(PreviewDocument, _fetch_json(base + "/-/preview", token, "features", body))


def _fetch_json(url: str, token: str | None, key: str, body: bytes | None = None) -> object:
    """A document of ours: JSON, and an object with `key` (anything else on that port is
    not a rollout-proxy admin listener)."""
    try:
        data = json.loads(fetch(url, token, body=body))
    except json.JSONDecodeError as exc:
        raise LiveError(f"{url}: not JSON ({exc})") from exc
    if not isinstance(data, dict) or key not in data:
        raise LiveError(f"{url}: not a rollout-proxy admin document")
    return data


def fetch_metrics(base: str, token: str | None) -> str:
    return fetch(base + "/metrics", token)


def live_status(config: Config, override: str | None) -> tuple[StatusDocument | None, str]:
    """The running proxy's status and the admin URL it came from, or None and why not."""
    url = admin_url(config, override)
    try:
        return fetch_status(url, config.admin.token), url
    except LiveError as exc:
        return None, str(exc)
