"""proxy.gateway.activity: requests and sessions by bucket over a sliding 15 minutes."""

from __future__ import annotations

import random

import pytest

from proxy.config.values import Config, Feature, RolloutConfig, Upstream, Upstreams
from proxy.gateway.activity import SLOT_SECONDS, WINDOW_SECONDS, Activity
from proxy.rollout.routing import Decision, Reason, Side, choose_upstream

START = 60.0 * 16_666  # a monotonic origin at the start of a minute


def config(**rollout: object) -> Config:
    return Config(
        upstreams=Upstreams(Upstream("signal", "http://a"), Upstream("legacy", "http://b")),
        rollout=RolloutConfig(**rollout),  # type: ignore[arg-type]
    )


def ids(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(96):x}" for _ in range(count)]


def send(
    activity: Activity, cfg: Config, session_id: str | None, now: float, path: str = "/"
) -> None:
    activity.count(choose_upstream(cfg.rollout, session_id, path), session_id, cfg.rollout, now)


def test_requests_exact_and_sessions_estimated_per_range() -> None:
    cfg = config(percentage=10)
    activity = Activity(cfg, START)
    sessions = ids(3000)
    buckets = {i: choose_upstream(cfg.rollout, i, "/").bucket for i in sessions}
    for n, i in enumerate(sessions):
        for _ in range(1 + n % 3):
            send(activity, cfg, i, START + n * 0.1)
    now = START + 400
    everyone = activity.buckets("default", 0, 10_000, now)
    assert everyone.requests == sum(1 + n % 3 for n in range(3000))
    assert everyone.sessions == pytest.approx(3000, rel=0.02)
    assert not everyone.saturated
    inside = [n for n, i in enumerate(sessions) if 1000 <= (buckets[i] or 0) < 3000]
    part = activity.buckets("default", 1000, 3000, now)
    assert part.requests == sum(1 + n % 3 for n in inside)
    assert part.sessions == pytest.approx(len(inside), rel=0.03)
    assert activity.buckets("default", 5000, 5000, now).requests == 0


@pytest.mark.parametrize("sessions", [300, 30_000, 300_000])
def test_the_estimate_is_within_2_percent_up_to_300000_sessions(sessions: int) -> None:
    cfg = config()
    activity = Activity(cfg, START)
    rng = random.Random(sessions)
    hashes = [rng.getrandbits(32) for _ in range(sessions)]
    for k, h in enumerate(hashes):
        decision = Decision(Side.LEGACY, Reason.BUCKET, "default", h % 10_000, h)
        activity.count(decision, "id", cfg.rollout, START + (k % 900))
    now = START + 899
    assert activity.buckets("default", 0, 10_000, now).sessions == pytest.approx(
        len(set(hashes)), rel=0.02
    )
    low = len({h for h in hashes if h % 10_000 < 2500})
    assert activity.buckets("default", 0, 2500, now).sessions == pytest.approx(low, rel=0.02)


def test_one_session_in_a_bucket_counts_as_one_however_often() -> None:
    cfg = config()
    activity = Activity(cfg, START)
    for k in range(50):
        send(activity, cfg, "alice", START + k * 10)  # across 9 one-minute slots
    seen = activity.buckets("default", 9177, 9178, START + 500)
    assert (seen.sessions, seen.requests) == (1.0, 50)


def test_slots_expire_after_15_minutes() -> None:
    cfg = config()
    activity = Activity(cfg, START)
    send(activity, cfg, "alice", START)  # minute 0
    send(activity, cfg, "bob", START + 5 * SLOT_SECONDS)  # minute 5
    assert activity.buckets("default", 0, 10_000, START + 14 * SLOT_SECONDS).requests == 2
    # Minute 15 reuses minute 0's slot: alice's request is gone, bob's is not.
    at_15 = activity.buckets("default", 0, 10_000, START + WINDOW_SECONDS)
    assert (at_15.requests, at_15.sessions) == (1, 1.0)
    assert activity.buckets("default", 1133, 1134, START + WINDOW_SECONDS).requests == 1
    assert activity.buckets("default", 0, 10_000, START + 20 * SLOT_SECONDS).requests == 0
    # A request after a long quiet spell finds every slot cleared.
    send(activity, cfg, "carol", START + 10_000)
    later = activity.buckets("default", 0, 10_000, START + 10_001)
    assert (later.requests, later.sessions) == (1, 1.0)


def test_features_count_apart_and_reloads_keep_counts() -> None:
    feature = Feature("anomaly", ("/signals/anomaly",), 50.0)
    cfg = config(features=(feature,))
    activity = Activity(cfg, START)
    send(activity, cfg, "alice", START, "/signals/anomaly")
    send(activity, cfg, "bob", START, "/other")
    assert activity.buckets("anomaly", 0, 10_000, START).requests == 1
    assert activity.buckets("default", 0, 10_000, START).requests == 1
    activity.configure(config(features=(feature,), percentage=30))  # same seed and features
    assert activity.buckets("anomaly", 0, 10_000, START).requests == 1
    activity.configure(config())  # the feature is gone: so are its counters
    assert list(activity.features) == ["default"]
    assert activity.buckets("default", 0, 10_000, START).requests == 1
    activity.configure(config(seed="new"))  # new buckets for everyone: start afresh
    assert activity.buckets("default", 0, 10_000, START).requests == 0
    assert activity.memory_bytes == 15 * 10_000 * 12 + 15 * 8


def test_test_sessions_emergency_and_no_session() -> None:
    cfg = config(percentage=30, test_sessions=frozenset({"qa"}))
    activity = Activity(cfg, START)
    send(activity, cfg, "qa", START)
    send(activity, cfg, None, START)  # no session id: not counted
    emergency = config(percentage=30, emergency=True, test_sessions=frozenset({"qa"}))
    send(activity, emergency, "qa", START)
    send(activity, emergency, "bob", START)  # routing hashed nothing; counted by its bucket
    assert activity.pinned("default", START) == 2
    assert activity.buckets("default", 1133, 1134, START).requests == 1
    assert activity.buckets("default", 0, 10_000, START).requests == 1


def test_a_full_bucket_is_flagged_as_a_floor() -> None:
    cfg = config()
    activity = Activity(cfg, START)
    # Hashes whose quotients cover all 64 bits of bucket 42 (as ~300 sessions would).
    for q in range(64):
        decision = Decision(Side.LEGACY, Reason.BUCKET, "default", 42, q * 10_000 + 42)
        activity.count(decision, "anyone", cfg.rollout, START)
    seen = activity.buckets("default", 42, 43, START)
    assert seen.requests == 64
    assert seen.saturated
    assert seen.sessions > 64 * 4  # more than the bits can tell apart: a floor
    assert not activity.buckets("default", 43, 10_000, START).saturated
