"""The current configuration and its provenance; replaced in one assignment."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from proxy.config.values import Config


@dataclass(eq=False)
class ConfigStore:
    path: Path
    config: Config
    generation: int = 1
    last_reload_ok: bool = True
    last_error: str | None = None
    last_reload_at: float = field(default_factory=time.time)
    last_changes: list[str] = field(default_factory=list)
