"""Live reload (SPEC 6): read -> validate -> compare -> swap, and the file watcher.

The watcher `stat`s the path about once a second. `os.stat` follows symlinks, so a
Kubernetes ConfigMap `..data` swap, an editor's write-then-rename, an in-place write and
delete-then-recreate all show up as a new (device, inode, mtime, size) stamp; the content
is compared next, so touching a file without changing it applies nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.config.diff import diff_configs
from proxy.config.load import load_config
from proxy.errors import ConfigError
from proxy.gateway.state import Runtime, warn_unverified

log = logging.getLogger("rollout.reload")

POLL_INTERVAL = 1.0

# Keys whose change cannot take effect without binding new sockets.
RESTART_KEYS = ("listen.", "admin.host", "admin.port")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    applied: bool
    generation: int
    changes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "applied": self.applied,
            "generation": self.generation,
            "changes": self.changes,
            "errors": self.errors,
            "restart_required": self.restart_required,
        }


def reload_now(runtime: Runtime, *, trigger: str) -> ReloadResult:
    """Load the file and swap it in if valid and different; never raises for a bad file."""
    store = runtime.store
    metrics = runtime.metrics
    try:
        new = load_config(store.path)
    except ConfigError as exc:
        store.last_reload_ok = False
        store.last_error = "; ".join(exc.problems)
        store.last_reload_at = time.time()
        metrics.reloads.labels(result="failure").inc()
        metrics.last_reload_ok.set(0)
        log.error(
            "config reload (%s) rejected, still serving generation %d: %s",
            trigger,
            store.generation,
            exc,
        )
        return ReloadResult(False, False, store.generation, errors=exc.problems)

    warn_unverified(new)
    store.last_reload_ok = True
    store.last_error = None
    metrics.last_reload_ok.set(1)
    for hook in runtime.after_reload:
        hook()
    old = store.config
    if new == old:
        return ReloadResult(True, False, store.generation)

    changes = diff_configs(old, new)
    restart = [c for c in changes if c.startswith(RESTART_KEYS)]
    store.config = new  # the swap: requests already running keep the object they read
    store.generation += 1
    store.last_reload_at = time.time()
    store.last_changes = changes
    runtime.config_applied(new)
    metrics.reloads.labels(result="success").inc()
    log.info(
        "config reloaded (%s), generation %d: %s", trigger, store.generation, "; ".join(changes)
    )
    if restart:
        log.warning(
            "these changes need a restart to take effect (listeners are bound at start): %s",
            "; ".join(restart),
        )
    return ReloadResult(True, True, store.generation, changes, restart_required=restart)


Stamp = tuple[int, int, int, int] | None


def file_stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)  # follows symlinks: sees a ConfigMap `..data` swap
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


async def watch(runtime: Runtime, interval: float = POLL_INTERVAL) -> None:
    """Poll the config file forever; reload when its stamp and then its content change."""
    path = runtime.store.path
    last_stamp = file_stamp(path)
    last_bytes = _read_bytes(path)
    while True:
        await asyncio.sleep(interval)
        stamp = file_stamp(path)
        if stamp == last_stamp:
            continue
        last_stamp = stamp
        content = _read_bytes(path)
        if content is not None and content == last_bytes:
            continue
        last_bytes = content
        reload_now(runtime, trigger="file change")
