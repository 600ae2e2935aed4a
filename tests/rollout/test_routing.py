"""proxy.rollout.routing: buckets, the SPEC 3 decision order, feature matching, session ids."""

from __future__ import annotations

import random
import re
from http.cookies import SimpleCookie

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.config.values import Feature, RolloutConfig, SessionConfig
from proxy.rollout.routing import (
    BUCKETS,
    Decision,
    Reason,
    Side,
    bucket,
    choose_upstream,
    find_session_id,
    match_feature,
    mint_session_id,
    threshold,
)

SEED = "rollout"

# SPEC 3 vectors, seed "rollout".
VECTORS = [
    ("alice", 9177),
    ("bob", 1133),
    ("carol", 7131),
    ("qa-tester-1", 3492),
    ("session-000001", 5359),
    ("会话-42", 520),
]

ANOMALY = Feature("anomalyDetection", ("/signals/anomaly",), 10.0)
LIMIT_UP = Feature("limitUpPrediction", ("/signals/limit-up",), 10.0)

# Any session id text, plus ids that arrived as arbitrary bytes (aiohttp decodes
# header bytes with surrogateescape, so invalid UTF-8 shows up as U+DC80..U+DCFF).
session_ids = st.one_of(
    st.text(min_size=1),
    st.binary(min_size=1).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)
two_decimal_percentages = st.integers(0, 10_000).map(lambda hundredths: hundredths / 100)


def seeded_ids(count: int) -> list[str]:
    rng = random.Random(20240601)
    return [f"{rng.getrandbits(128):032x}" for _ in range(count)]


# --- bucket -------------------------------------------------------------------------------


@pytest.mark.parametrize(("session_id", "expected"), VECTORS)
def test_spec_vectors(session_id: str, expected: int) -> None:
    assert bucket(session_id, SEED) == expected


@given(session_id=session_ids, seed=st.text())
def test_bucket_is_the_spec_formula(session_id: str, seed: str) -> None:
    key = f"{seed}:{session_id}".encode("utf-8", "surrogateescape")
    expected = mmh3.hash(key, 0, signed=False) % 10_000
    assert bucket(session_id, seed) == expected
    assert 0 <= bucket(session_id, seed) < BUCKETS


def test_seed_reshuffles_sessions() -> None:
    ids = seeded_ids(1000)
    moved = sum(bucket(i, SEED) != bucket(i, "reshuffled") for i in ids)
    assert moved > 990


@pytest.mark.parametrize(
    ("session_id", "raw"),
    [
        ("\udcff", b"\xff"),
        ("abc\udc80\udcfe", b"abc\x80\xfe"),
        ("\udcc3\udca9t\udce9", b"\xc3\xa9t\xe9"),
    ],
)
def test_non_utf8_ids_hash_as_their_bytes(session_id: str, raw: bytes) -> None:
    expected = mmh3.hash(b"rollout:" + raw, 0, signed=False) % 10_000
    assert bucket(session_id, SEED) == expected
    decision = choose_upstream(RolloutConfig(percentage=100), session_id, "/")
    assert decision == Decision(Side.SIGNAL, Reason.BUCKET, "default", expected)


# --- threshold ----------------------------------------------------------------------------


def test_threshold_of_every_two_decimal_percentage_is_exact() -> None:
    for hundredths in range(10_001):
        whole, frac = divmod(hundredths, 100)
        assert threshold(float(f"{whole}.{frac:02d}")) == hundredths
        assert threshold(hundredths / 100) == hundredths


@pytest.mark.parametrize(
    ("percentage", "expected"),
    [(0, 0), (0.01, 1), (0.07, 7), (10, 1000), (12.34, 1234), (99.99, 9999), (100, 10_000)],
)
def test_threshold_examples(percentage: float, expected: int) -> None:
    assert threshold(percentage) == expected


def test_zero_and_hundred_percent_are_absolute() -> None:
    ids = seeded_ids(5000)
    at_zero = RolloutConfig(percentage=0)
    at_hundred = RolloutConfig(percentage=100)
    assert all(choose_upstream(at_zero, i, "/").side is Side.LEGACY for i in ids)
    assert all(choose_upstream(at_hundred, i, "/").side is Side.SIGNAL for i in ids)


# --- split accuracy -----------------------------------------------------------------------


@pytest.mark.parametrize("percentage", [10, 30, 50])
def test_split_matches_the_percentage(percentage: float) -> None:
    ids = seeded_ids(100_000)
    rollout = RolloutConfig(percentage=percentage)
    to_signal = sum(choose_upstream(rollout, i, "/signals").side is Side.SIGNAL for i in ids)
    share = to_signal / len(ids) * 100
    assert abs(share - percentage) <= 0.5, f"{share:.2f} % sent to signal at {percentage} %"


@pytest.mark.parametrize("percentage", [10, 30, 50])
def test_split_matches_the_feature_percentage(percentage: float) -> None:
    ids = seeded_ids(100_000)
    feature = Feature("anomalyDetection", ("/signals/anomaly",), float(percentage))
    rollout = RolloutConfig(percentage=80, features=(feature,))
    to_signal = sum(
        choose_upstream(rollout, i, "/signals/anomaly/x").side is Side.SIGNAL for i in ids
    )
    share = to_signal / len(ids) * 100
    assert abs(share - percentage) <= 0.5, f"{share:.2f} % sent to signal at {percentage} %"


# --- stickiness ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    session_id=session_ids,
    low=two_decimal_percentages,
    high=two_decimal_percentages,
    seed=st.sampled_from([SEED, "other-seed", ""]),
)
def test_raising_the_percentage_never_moves_a_session_back_to_legacy(
    session_id: str, low: float, high: float, seed: str
) -> None:
    low, high = min(low, high), max(low, high)
    before = choose_upstream(RolloutConfig(percentage=low, seed=seed), session_id, "/x")
    after = choose_upstream(RolloutConfig(percentage=high, seed=seed), session_id, "/x")
    assert before.bucket == after.bucket
    if before.side is Side.SIGNAL:
        assert after.side is Side.SIGNAL


@settings(max_examples=300, deadline=None)
@given(session_id=session_ids, low=two_decimal_percentages, high=two_decimal_percentages)
def test_raising_a_feature_percentage_never_moves_a_session_back_to_legacy(
    session_id: str, low: float, high: float
) -> None:
    low, high = min(low, high), max(low, high)

    def side_at(pct: float) -> Side:
        feature = Feature("anomalyDetection", ("/signals/anomaly",), pct)
        rollout = RolloutConfig(percentage=50, features=(feature,))
        return choose_upstream(rollout, session_id, "/signals/anomaly").side

    assert not (side_at(low) is Side.SIGNAL and side_at(high) is Side.LEGACY)


@pytest.mark.parametrize("percentage", [1, 10, 33.33, 50, 98.76])
def test_one_session_sees_one_side_across_features_at_equal_percentages(
    percentage: float,
) -> None:
    rollout = RolloutConfig(
        percentage=percentage,
        features=(
            Feature("anomalyDetection", ("/signals/anomaly",), percentage),
            Feature("limitUpPrediction", ("/signals/limit-up",), percentage),
            Feature("backtest", ("/backtest",), None),
        ),
    )
    paths = ["/signals/anomaly/1", "/signals/limit-up", "/backtest/run", "/health"]
    sides_seen = set()
    for session_id in seeded_ids(3000):
        decisions = [choose_upstream(rollout, session_id, p) for p in paths]
        assert [d.feature for d in decisions] == [
            "anomalyDetection",
            "limitUpPrediction",
            "backtest",
            "default",
        ]
        assert len({d.side for d in decisions}) == 1, (session_id, decisions)
        assert len({d.bucket for d in decisions}) == 1
        sides_seen.add(decisions[0].side)
    assert sides_seen == {Side.SIGNAL, Side.LEGACY}


def test_same_session_same_decision_every_time() -> None:
    rollout = RolloutConfig(percentage=37.5)
    for session_id in seeded_ids(200):
        first = choose_upstream(rollout, session_id, "/a")
        assert all(choose_upstream(rollout, session_id, "/a") == first for _ in range(5))


# --- decision order -----------------------------------------------------------------------

# At 10 %: "会话-42" (bucket 520) goes to signal by its bucket, "bob" (1133) to legacy, and
# "qa-tester-1" (3492) would go to legacy were it not a test session.
TEST_SESSION = "qa-tester-1"
IN_BUCKET = "会话-42"
OUT_OF_BUCKET = "bob"


@pytest.mark.parametrize(
    ("emergency", "guard", "session_id", "expected"),
    [
        # emergency beats everything
        pytest.param(
            True, True, TEST_SESSION, (Side.LEGACY, Reason.EMERGENCY, None), id="emergency>all"
        ),
        pytest.param(
            True, False, TEST_SESSION, (Side.LEGACY, Reason.EMERGENCY, None), id="emergency>test"
        ),
        pytest.param(
            True, False, IN_BUCKET, (Side.LEGACY, Reason.EMERGENCY, None), id="emergency>bucket"
        ),
        pytest.param(
            True, False, None, (Side.LEGACY, Reason.EMERGENCY, None), id="emergency-no-session"
        ),
        # test sessions beat the guard and the bucket
        pytest.param(
            False, True, TEST_SESSION, (Side.SIGNAL, Reason.TEST_SESSION, None), id="test>guard"
        ),
        pytest.param(
            False, False, TEST_SESSION, (Side.SIGNAL, Reason.TEST_SESSION, None), id="test>bucket"
        ),
        # a tripped guard beats the bucket
        pytest.param(False, True, IN_BUCKET, (Side.LEGACY, Reason.GUARD, 520), id="guard>bucket"),
        pytest.param(
            False, True, OUT_OF_BUCKET, (Side.LEGACY, Reason.GUARD, 1133), id="guard-legacy-bucket"
        ),
        # the bucket rule
        pytest.param(False, False, IN_BUCKET, (Side.SIGNAL, Reason.BUCKET, 520), id="bucket-in"),
        pytest.param(
            False, False, OUT_OF_BUCKET, (Side.LEGACY, Reason.BUCKET, 1133), id="bucket-out"
        ),
        # no session id
        pytest.param(False, False, None, (Side.LEGACY, Reason.NO_SESSION, None), id="no-session"),
        pytest.param(
            False, True, None, (Side.LEGACY, Reason.NO_SESSION, None), id="no-session-guard"
        ),
    ],
)
def test_decision_order(
    emergency: bool,
    guard: bool,
    session_id: str | None,
    expected: tuple[Side, Reason, int | None],
) -> None:
    rollout = RolloutConfig(
        percentage=10, emergency=emergency, test_sessions=frozenset({TEST_SESSION})
    )
    decision = choose_upstream(rollout, session_id, "/signals", guard_tripped=guard)
    assert (decision.side, decision.reason, decision.bucket) == expected
    assert decision.feature == "default"


def test_test_session_goes_to_signal_at_zero_percent() -> None:
    rollout = RolloutConfig(percentage=0, test_sessions=frozenset({"qa"}))
    assert choose_upstream(rollout, "qa", "/").side is Side.SIGNAL
    assert choose_upstream(rollout, "qa-2", "/").side is Side.LEGACY


def test_emergency_sends_everyone_to_legacy_at_hundred_percent() -> None:
    feature = Feature("anomalyDetection", ("/signals/anomaly",), 100.0)
    rollout = RolloutConfig(percentage=100, emergency=True, features=(feature,))
    for session_id in seeded_ids(500):
        for path in ("/", "/signals/anomaly"):
            decision = choose_upstream(rollout, session_id, path)
            assert (decision.side, decision.reason) == (Side.LEGACY, Reason.EMERGENCY)


def test_guard_default_is_not_tripped() -> None:
    decision = choose_upstream(RolloutConfig(percentage=10), IN_BUCKET, "/")
    assert decision.reason is Reason.BUCKET


@pytest.mark.parametrize(
    ("session_id", "bucket_of_id"),
    [(sid, b) for sid, b in VECTORS if sid != "qa-tester-1"],
)
@pytest.mark.parametrize("percentage", [5.2, 11.33, 52, 71.31, 71.32, 91.77, 91.78])
def test_bucket_rule_is_strictly_below_threshold(
    session_id: str, bucket_of_id: int, percentage: float
) -> None:
    decision = choose_upstream(RolloutConfig(percentage=percentage), session_id, "/")
    expected = Side.SIGNAL if bucket_of_id < round(percentage * 100) else Side.LEGACY
    assert decision == Decision(expected, Reason.BUCKET, "default", bucket_of_id)


def test_bucket_on_the_threshold_goes_to_legacy() -> None:
    # bob is bucket 1133: signal from 11.34 %, legacy at 11.33 %.
    assert choose_upstream(RolloutConfig(percentage=11.33), "bob", "/").side is Side.LEGACY
    assert choose_upstream(RolloutConfig(percentage=11.34), "bob", "/").side is Side.SIGNAL


# --- features -----------------------------------------------------------------------------


def test_feature_percentage_overrides_the_global_one() -> None:
    # qa-tester-1 is bucket 3492: in at 50 %, out at 10 %.
    feature = Feature("anomalyDetection", ("/signals/anomaly",), 50.0)
    rollout = RolloutConfig(percentage=10, features=(feature,))
    on_feature = choose_upstream(rollout, "qa-tester-1", "/signals/anomaly/today")
    elsewhere = choose_upstream(rollout, "qa-tester-1", "/signals/other")
    assert on_feature == Decision(Side.SIGNAL, Reason.BUCKET, "anomalyDetection", 3492)
    assert elsewhere == Decision(Side.LEGACY, Reason.BUCKET, "default", 3492)


def test_feature_can_be_lower_than_the_global_one() -> None:
    feature = Feature("anomalyDetection", ("/signals/anomaly",), 0.0)
    rollout = RolloutConfig(percentage=100, features=(feature,))
    assert choose_upstream(rollout, "alice", "/signals/anomaly").side is Side.LEGACY
    assert choose_upstream(rollout, "alice", "/signals").side is Side.SIGNAL


def test_feature_without_percentage_uses_the_global_one() -> None:
    feature = Feature("limitUpPrediction", ("/signals/limit-up",), None)
    at_50 = RolloutConfig(percentage=50, features=(feature,))
    at_30 = RolloutConfig(percentage=30, features=(feature,))
    assert choose_upstream(at_50, "qa-tester-1", "/signals/limit-up") == Decision(
        Side.SIGNAL, Reason.BUCKET, "limitUpPrediction", 3492
    )
    assert choose_upstream(at_30, "qa-tester-1", "/signals/limit-up") == Decision(
        Side.LEGACY, Reason.BUCKET, "limitUpPrediction", 3492
    )


def test_decision_names_the_feature_for_every_reason() -> None:
    rollout = RolloutConfig(features=(ANOMALY,), test_sessions=frozenset({"qa"}))
    path = "/signals/anomaly"
    assert choose_upstream(rollout, None, path).feature == "anomalyDetection"
    assert choose_upstream(rollout, "qa", path).feature == "anomalyDetection"
    assert choose_upstream(rollout, "x", path, guard_tripped=True).feature == "anomalyDetection"
    emergency = RolloutConfig(emergency=True, features=(ANOMALY,))
    assert choose_upstream(emergency, "x", path).feature == "anomalyDetection"


SIGNALS = Feature("signals", ("/signals",), 1.0)
ANOMALY_ONLY = Feature("anomaly", ("/signals/anomaly",), 2.0)
ANOMALY_DEEP = Feature("anomalyDeep", ("/signals/anomaly/deep",), 3.0)
SLASHED = Feature("api", ("/api/",), 4.0)
MULTI = Feature("reports", ("/reports", "/exports/csv"), 5.0)
FEATURES = (SIGNALS, ANOMALY_ONLY, ANOMALY_DEEP, SLASHED, MULTI)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/signals/anomaly", ANOMALY_ONLY),
        ("/signals/anomaly/", ANOMALY_ONLY),
        ("/signals/anomaly/x", ANOMALY_ONLY),
        ("/signals/anomaly/deep", ANOMALY_DEEP),
        ("/signals/anomaly/deep/1", ANOMALY_DEEP),
        ("/signals/anomaly/deeper", ANOMALY_ONLY),
        ("/signals/anomalyx", SIGNALS),
        ("/signals/anomaly-v2/x", SIGNALS),
        ("/signals", SIGNALS),
        ("/signals/", SIGNALS),
        ("/signals/stats", SIGNALS),
        ("/signalsx", None),
        ("/signal", None),
        ("/", None),
        ("", None),
        ("/health", None),
        ("/api/", SLASHED),
        ("/api/v1/x", SLASHED),
        ("/api", None),
        ("/apix", None),
        ("/reports", MULTI),
        ("/reports/2024", MULTI),
        ("/exports/csv/all", MULTI),
        ("/exports", None),
        ("/SIGNALS", None),
    ],
)
def test_match_feature(path: str, expected: Feature | None) -> None:
    assert match_feature(path, FEATURES) == expected
    assert match_feature(path, tuple(reversed(FEATURES))) == expected


def test_match_feature_without_features() -> None:
    assert match_feature("/signals/anomaly", ()) is None


def test_root_prefix_catches_everything_but_loses_to_longer_prefixes() -> None:
    everything = Feature("everything", ("/",), 1.0)
    features = (everything, ANOMALY)
    assert match_feature("/health", features) == everything
    assert match_feature("/signals/anomaly/1", features) == ANOMALY


def test_longest_prefix_wins_within_and_across_features() -> None:
    wide = Feature("wide", ("/a", "/a/b/c"), 1.0)
    narrow = Feature("narrow", ("/a/b",), 2.0)
    for features in [(wide, narrow), (narrow, wide)]:
        assert match_feature("/a/x", features) == wide
        assert match_feature("/a/b/x", features) == narrow
        assert match_feature("/a/b/c/x", features) == wide


# --- session ids --------------------------------------------------------------------------

SESSION = SessionConfig()


@pytest.mark.parametrize(
    ("headers", "cookie", "expected"),
    [
        pytest.param({"X-Session-Id": "h1"}, None, "h1", id="header"),
        pytest.param({}, "session_id=c1", "c1", id="cookie"),
        pytest.param({"X-Session-Id": "h1"}, "session_id=c1", "h1", id="header-beats-cookie"),
        pytest.param({"X-Session-Id": ""}, "session_id=c1", "c1", id="empty-header-uses-cookie"),
        pytest.param({}, None, None, id="nothing"),
        pytest.param({}, "", None, id="empty-cookie-header"),
        pytest.param({}, "other=1", None, id="other-cookie-only"),
        pytest.param({}, "session_id=", None, id="empty-cookie-value"),
        pytest.param({}, "a=1; session_id=c2; b=2", "c2", id="among-other-cookies"),
        pytest.param({}, 'session_id="quoted"', "quoted", id="quoted-cookie"),
        pytest.param({}, "session_id_old=x; session_id=c3", "c3", id="similar-name"),
        pytest.param({"X-Other": "h"}, "session_id=c1", "c1", id="other-header"),
    ],
)
def test_find_session_id(headers: dict[str, str], cookie: str | None, expected: str | None) -> None:
    assert find_session_id(headers, cookie, SESSION) == expected


@pytest.mark.parametrize("name", ["x-session-id", "X-SESSION-ID", "X-Session-Id"])
def test_header_name_is_case_insensitive_with_request_headers(name: str) -> None:
    headers = CIMultiDict({name: "h1"})
    assert find_session_id(headers, "session_id=c1", SESSION) == "h1"


def test_configured_header_and_cookie_names_are_used() -> None:
    custom = SessionConfig(header="X-User", cookie="uid", set_cookie=False)
    assert find_session_id({"X-User": "u1"}, "uid=u2", custom) == "u1"
    assert find_session_id({}, "uid=u2", custom) == "u2"
    assert find_session_id({"X-Session-Id": "h1"}, "session_id=c1", custom) is None


@pytest.mark.parametrize(
    "cookie",
    [
        "session_id",
        "=abc",
        ";;;",
        "\x00\x01\x02",
        "=",
    ],
)
def test_malformed_cookie_header_yields_none(cookie: str) -> None:
    assert find_session_id({}, cookie, SESSION) is None


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param("theme=dark mode; session_id=abc", id="space-in-other-value"),
        pytest.param('prefs={"a":1}; session_id=abc', id="json-in-other-value"),
        pytest.param("nameless; session_id=abc", id="nameless-cookie-before"),
        pytest.param("session_id=abc; nameless", id="nameless-cookie-after"),
    ],
)
def test_session_cookie_survives_sloppy_unrelated_cookies(cookie: str) -> None:
    """Browsers send other sites' non-RFC 6265 cookies too (aiohttp's own request.cookies
    still finds `session_id` in each of these). Losing the session here would mint a new id
    on every request and move the user between signal and legacy."""
    assert find_session_id({}, cookie, SESSION) == "abc"


def test_non_utf8_header_id_is_routed() -> None:
    session_id = b"user-\xff\xfe".decode("utf-8", "surrogateescape")
    found = find_session_id({"X-Session-Id": session_id}, None, SESSION)
    assert found == session_id
    decision = choose_upstream(RolloutConfig(percentage=50), found, "/")
    assert decision.bucket == mmh3.hash(b"rollout:user-\xff\xfe", 0, signed=False) % 10_000


@given(session_id=st.text(alphabet=st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)))
def test_any_surrogateescape_id_hashes(session_id: str) -> None:
    assert 0 <= bucket(session_id, SEED) < BUCKETS


def test_minted_ids_are_random_hex_and_cookie_safe() -> None:
    minted = [mint_session_id() for _ in range(1000)]
    assert len(set(minted)) == len(minted)
    for session_id in minted[:50]:
        assert re.fullmatch(r"[0-9a-f]{32}", session_id)
        jar: SimpleCookie = SimpleCookie()
        jar["session_id"] = session_id
        header = jar.output(header="", attrs=[]).strip()
        assert find_session_id({}, header, SESSION) == session_id


def test_minted_ids_spread_over_both_sides() -> None:
    rollout = RolloutConfig(percentage=50)
    sides = {choose_upstream(rollout, mint_session_id(), "/").side for _ in range(200)}
    assert sides == {Side.SIGNAL, Side.LEGACY}
