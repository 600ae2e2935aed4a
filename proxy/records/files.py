"""Atomic replacement of a file: what the config, the history and the state file share."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from proxy.errors import EditError


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so the proxy's reload loop sees the old file or the new one,
    never half of either, and a crash cannot leave an empty file behind."""
    if path.is_symlink():
        raise EditError(
            f"{path} is a symlink to {os.readlink(path)}: it is managed elsewhere "
            "(a Kubernetes ConfigMap?); edit the source and apply it"
        )
    original = path.stat() if path.exists() else None
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
            file.write(text)
            file.flush()
            if original is not None:  # a CLI run as root must not take the file over
                with contextlib.suppress(PermissionError):
                    os.fchown(file.fileno(), original.st_uid, original.st_gid)
            # mkstemp creates 0600: keep the file readable by whoever could read it before.
            os.fchmod(file.fileno(), stat.S_IMODE(original.st_mode) if original else 0o644)
            os.fsync(file.fileno())
        os.replace(tmp, path)
        tmp = ""
        # The rename itself is only durable once the directory entry is on disk.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise EditError(f"cannot write {path}: {exc}") from exc
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
