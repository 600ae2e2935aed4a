"""`--dry-run` on the editing commands and `rollout check --preview` (SPEC 10, 14):
they print who would move and write nothing."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.control import cli
from proxy.control.edit import set_value
from proxy.records.history import HISTORY_FILE
from tests.support import ProxyProcess, UpstreamFactory, config_dict, free_port, server_url
from tests.support.sessions import in_buckets, ok_app, plan_of, send_sessions

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "config" / "rollout.yaml"

# (argv, the change printed, the bucket line of the default feature)
EDITS = [
    (["set", "30"], "rollout.percentage 10 -> 30", "default  10 % -> 30 %: 20.00 % of buckets"),
    (
        ["set", "12.5", "--feature", "anomalyDetection"],
        "rollout.features.anomalyDetection.percentage 10 -> 12.5",
        "anomalyDetection  10 % -> 12.5 %: 2.50 % of buckets",
    ),
    (["stage", "3"], "rollout.percentage 10 -> 50", "default  10 % -> 50 %: 40.00 % of buckets"),
    (
        ["promote", "--force"],
        "rollout.percentage 10 -> 30",
        "default  10 % -> 30 %: 20.00 % of buckets",
    ),
    (["rollback"], "rollout.percentage 10 -> 0", "default  10 % -> 0 %: 10.00 % of buckets"),
    (
        ["emergency"],
        "rollout.emergency false -> true",
        "default  10 % -> 0 % (emergency): 10.00 % of buckets",
    ),
]


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR", "ROLLOUT_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Run:
    code: int
    out: str
    err: str


Rollout = Callable[..., Run]


@pytest.fixture
def rollout(capsys: pytest.CaptureFixture[str]) -> Rollout:
    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """The shipped config with its listeners on free ports (no proxy answers there)."""
    text = SHIPPED_CONFIG.read_text(encoding="utf-8")
    for key in (("listen", "port"), ("admin", "port")):
        text = set_value(text, key, free_port())
    path = tmp_path / "rollout.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def nothing_written(path: Path, original: bytes) -> None:
    """The config's bytes as they were; no history, no temp file beside it."""
    assert path.read_bytes() == original
    assert not (path.parent / HISTORY_FILE).exists()
    assert sorted(p.name for p in path.parent.iterdir() if p.suffix != ".log") == [path.name]


@pytest.mark.parametrize(("argv", "change", "buckets"), EDITS)
def test_dry_run_without_a_proxy_prints_the_bucket_share_and_writes_nothing(
    rollout: Rollout, config_file: Path, argv: list[str], change: str, buckets: str
) -> None:
    original = config_file.read_bytes()
    run = rollout(*argv, "--dry-run", "--reason", "trying", "-c", str(config_file))
    assert run.code == 0, run.out + run.err
    assert f"dry run: {change}" in run.out
    assert "not written, no history line" in run.out
    assert "proxy not reachable" in run.out
    assert buckets in run.out
    assert "recent sessions" not in run.out
    nothing_written(config_file, original)


def test_dry_run_of_an_emergency_counts_the_test_sessions(
    rollout: Rollout, config_file: Path
) -> None:
    run = rollout("emergency", "--dry-run", "-c", str(config_file))
    # The shipped file has two test sessions; an emergency sends them to legacy too.
    assert "test sessions  0 to signal, 2 to legacy" in run.out


def test_dry_run_refuses_an_invalid_result_like_the_edit(
    rollout: Rollout, config_file: Path
) -> None:
    original = config_file.read_bytes()
    run = rollout("set", "150", "--dry-run", "-c", str(config_file))
    assert run.code == 2
    assert "rollout.percentage: 150 is not within 0-100" in run.err
    nothing_written(config_file, original)


def test_check_preview_without_a_proxy_says_there_is_nothing_to_compare(
    rollout: Rollout, config_file: Path
) -> None:
    run = rollout("check", "--preview", "-c", str(config_file))
    assert run.code == 0
    assert "valid" in run.out
    assert "proxy not reachable" in run.out
    assert "nothing to compare the file with" in run.out


# --- against a running proxy ------------------------------------------------------------


async def in_thread(rollout: Rollout, *argv: str) -> Run:
    """The CLI blocks on HTTP while the upstreams run on this loop: a worker thread."""
    return await asyncio.to_thread(rollout, *argv)


@pytest.fixture
async def proxy(
    upstream: UpstreamFactory, serve_proxy: Callable[..., ProxyProcess]
) -> ProxyProcess:
    signal, legacy = await upstream(ok_app("signal")), await upstream(ok_app("legacy"))
    data = config_dict(
        server_url(signal),
        server_url(legacy),
        rollout={"percentage": 10, "test_sessions": ["qa-1"]},
    )
    # No file watcher: a hand edit stays unapplied, as it is before a reload.
    return serve_proxy(data, "--poll-interval", "0")


def figures(text: str, side: str) -> tuple[float, float, int]:
    """From `to SIDE  x % of buckets, ~N recent sessions with R requests (S % of recent
    requests)`: sessions, share, requests."""
    found = re.search(
        rf"to {side}  [\d.]+ % of buckets, ~(\d+) recent sessions with (\d+) requests "
        r"\(([\d.]+) % of recent requests\)",
        text,
    )
    assert found, text
    return float(found[1]), float(found[3]), int(found[2])


async def test_dry_run_and_check_preview_against_the_running_proxy(
    rollout: Rollout, proxy: ProxyProcess
) -> None:
    plan = plan_of(300)
    total = await send_sessions(proxy.url, plan)
    path = proxy.config_path
    c = ("-c", str(path))
    original = path.read_bytes()

    run = await in_thread(rollout, "set", "30", "--dry-run", *c)
    assert run.code == 0, run.out + run.err
    assert f"against what the proxy at {proxy.admin_url} serves, generation 1" in run.out
    assert "its activity in the last 15 min" in run.out
    assert "default  10 % -> 30 %: 20.00 % of buckets change side" in run.out
    moving = in_buckets(plan, 1000, 3000)
    sessions, share, requests = figures(run.out, "signal")
    assert requests == sum(moving.values())
    assert share == round(100 * requests / total, 2)
    assert abs(sessions - len(moving)) <= max(1, 0.02 * len(moving))
    nothing_written(path, original)

    run = await in_thread(rollout, "rollback", "--dry-run", *c)
    assert "default  10 % -> 0 %: 10.00 % of buckets change side" in run.out
    leaving = in_buckets(plan, 0, 1000)
    assert figures(run.out, "legacy")[2] == sum(leaving.values())
    nothing_written(path, original)

    # A hand edit the proxy has not applied yet: the file against what it serves.
    text = path.read_text(encoding="utf-8").replace("percentage: 10", "percentage: 5")
    path.write_text(text, encoding="utf-8")
    run = await in_thread(rollout, "check", "--preview", *c)
    assert run.code == 0, run.out + run.err
    assert "default  10 % -> 5 %: 5.00 % of buckets change side" in run.out
    assert figures(run.out, "legacy")[2] == sum(in_buckets(plan, 500, 1000).values())

    path.write_text(text.replace("percentage: 5", "percentage: 10") + "", encoding="utf-8")
    reseeded = path.read_text(encoding="utf-8").replace("rollout:\n", "rollout:\n  seed: other\n")
    path.write_text(reseeded, encoding="utf-8")
    run = await in_thread(rollout, "check", "--preview", *c)
    assert run.code == 0, run.out + run.err
    assert "rollout.seed 'rollout' -> 'other' reshuffles every session" in run.out
    assert "18.00 % of buckets change side (expected, not exact)" in run.out  # 2 x 0.1 x 0.9
