"""proxy.records.files: the atomic replace every file edit goes through."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from proxy.control.edit import set_value
from proxy.errors import EditError
from proxy.records.files import write_atomically

EXAMPLE = (Path(__file__).resolve().parents[2] / "config" / "rollout.yaml").read_text(
    encoding="utf-8"
)


def test_write_atomically_keeps_the_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "rollout.yaml"
    target.write_text(EXAMPLE, encoding="utf-8")
    target.chmod(0o640)
    text = set_value(EXAMPLE, ("rollout", "percentage"), 30).replace("\n", "\r\n")
    write_atomically(target, text)
    assert target.read_bytes() == text.encode("utf-8")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollout.yaml"]


def test_write_atomically_creates_a_missing_file_readable_by_others(tmp_path: Path) -> None:
    target = tmp_path / "new.yaml"
    write_atomically(target, "a: 1")
    assert target.read_bytes() == b"a: 1"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_atomically_refuses_a_configmap_symlink(tmp_path: Path) -> None:
    data = tmp_path / "..data"
    data.mkdir()
    (data / "rollout.yaml").write_text(EXAMPLE, encoding="utf-8")
    link = tmp_path / "rollout.yaml"
    link.symlink_to(Path("..data") / "rollout.yaml")
    with pytest.raises(EditError) as info:
        write_atomically(link, "a: 1\n")
    assert str(info.value) == (
        f"{link} is a symlink to ..data/rollout.yaml: it is managed elsewhere "
        "(a Kubernetes ConfigMap?); edit the source and apply it"
    )
    assert link.is_symlink()
    assert (data / "rollout.yaml").read_text(encoding="utf-8") == EXAMPLE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["..data", "rollout.yaml"]


def test_a_failed_write_leaves_the_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "rollout.yaml"
    target.write_text(EXAMPLE, encoding="utf-8")

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(EditError) as info:
        write_atomically(target, "a: 1\n")
    assert str(info.value) == f"cannot write {target}: [Errno 28] No space left on device"
    assert target.read_text(encoding="utf-8") == EXAMPLE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rollout.yaml"]


def test_write_atomically_into_a_missing_directory_is_an_edit_error(tmp_path: Path) -> None:
    with pytest.raises(EditError, match="cannot write"):
        write_atomically(tmp_path / "nope" / "rollout.yaml", "a: 1\n")
