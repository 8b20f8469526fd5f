"""The impressions message (strict parse, encode after decode) and the hit matcher (window,
threshold, once per impression, bounded memory)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.events import MAX_K, InvalidEvent, Rating
from models.impressions import HitMatcher, Impressions
from models.interleaving import Placed
from models.wire import DLQ_KINDS, Undecodable
from tests.unit import hostile

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T = 1.7e9


def shown(user: str, ts: float, *pairs: tuple[str, str], experiment: str = "exp") -> Impressions:
    return Impressions.of(experiment, user, ts, pairs)  # type: ignore[arg-type]


def rating(user: str, item: str, value: float, ts: float) -> Rating:
    return Rating(event_id=f"{user}:{item}:{ts}", user=user, item=item, rating=value, ts=ts)


def test_the_message_is_compact_keyed_by_user_and_round_trips() -> None:
    imp = Impressions.of("exp", "alice", T, [Placed("m1", "control"), Placed("m2", "candidate")])
    key, value = imp.encode()
    assert key == b"alice"
    assert json.loads(value) == {
        "experiment": "exp",
        "user": "alice",
        "ts": T,
        "items": ["m1", "m2"],
        "teams": "01",
    }
    assert Impressions.parse(key, value) == imp
    assert list(imp) == [("m1", "control"), ("m2", "candidate")]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"teams": "0"}, "teams must be a string of one '0' or '1' per item"),
        ({"teams": "02"}, "teams must be a string of one '0' or '1' per item"),
        ({"items": ["a", "a"], "teams": "01"}, "an item appears twice"),
        ({"items": ["a"] * (MAX_K + 1)}, f"at most {MAX_K} ids"),
        ({"items": [True, "b"]}, "item must be a string or an integer"),
        ({"ts": 1e400}, "ts must be unix seconds between 0 and"),
        ({"ts": -1}, "ts must be unix seconds between 0 and"),
        ({"ts": 2**1024}, "ts must be unix seconds between 0 and"),
        ({"ts": T * 1000}, "milliseconds instead of seconds?"),
        ({"experiment": "a b"}, "experiment 'a b' must be 1 to 64"),
        ({"extra": 0}, "unknown field(s): 'extra'"),
    ],
)
def test_bad_impressions_are_refused(body: dict[str, object], reason: str) -> None:
    message = {"experiment": "exp", "user": "u", "ts": T, "items": ["a", "b"], "teams": "01"}
    with pytest.raises(Undecodable, match="not impressions") as caught:
        Impressions.parse(b"u", hostile.to_json({**message, **body}))
    assert reason in caught.value.reason


def test_the_key_must_be_the_user() -> None:
    _, value = shown("u", T, ("a", "control")).encode()
    with pytest.raises(Undecodable, match="not the impression's user"):
        Impressions.parse(b"v", value)
    with pytest.raises(InvalidEvent, match="1 items but 2 teams"):
        Impressions("exp", "u", T, ("a",), ("control", "control"))


ID = st.one_of(st.text(min_size=1, max_size=6), hostile.IDS)
FIELDS = {
    "experiment": st.one_of(st.just("exp"), hostile.IDS),
    "user": ID,
    "ts": st.one_of(st.floats(0, 2e9), hostile.NUMBERS),
    "items": st.one_of(st.lists(ID, max_size=4), hostile.IDS, hostile.JSON),
    "teams": st.text("01", max_size=4) | hostile.ANY_TEXT,
}
# every field present (each valid or hostile), or any of them and an odd extra one
MESSAGES = st.fixed_dictionaries(FIELDS) | hostile.objects_like(FIELDS)
WELL_FORMED = st.lists(st.text(min_size=1, max_size=6), max_size=5, unique=True).flatmap(
    lambda items: st.fixed_dictionaries(
        {
            "experiment": st.from_regex(r"[a-z0-9][a-z0-9._-]{0,8}", fullmatch=True),
            "user": st.text(min_size=1, max_size=6) | st.integers(0, 10**9),
            "ts": st.floats(0, 4e9) | st.integers(0, 2**31),
            "items": st.just(items),
            "teams": st.text("01", min_size=len(items), max_size=len(items)),
        }
    )
)


def key_of(body: object) -> bytes:
    user = body.get("user") if isinstance(body, dict) else None
    if isinstance(user, str):
        return user.encode("utf-8", "surrogatepass")
    return str(user).encode() if isinstance(user, int) and abs(user) < 10**100 else b""


@FUZZ
@given(
    st.one_of(MESSAGES, WELL_FORMED).map(lambda b: (key_of(b), hostile.to_json(b)))
    | hostile.RAW.map(lambda r: (b"u", r))
)
def test_any_message_parses_or_is_refused_and_what_parses_encodes_back(
    message: tuple[bytes, bytes],
) -> None:
    key, raw = message
    try:
        imp = Impressions.parse(key, raw)
    except Undecodable as exc:
        assert exc.kind in DLQ_KINDS and exc.reason
        exc.reason.encode()
        return
    assert Impressions.parse(*imp.encode()) == imp


# --- the matcher ------------------------------------------------------------------------
def test_a_positive_rating_within_the_window_is_one_hit_for_the_team_that_placed_it() -> None:
    matcher = HitMatcher(window=3600, positive_threshold=4)
    assert matcher.show(shown("u", T, ("a", "control"), ("b", "candidate"))) == [
        ("a", "control"),
        ("b", "candidate"),
    ]
    assert matcher.match(rating("u", "b", 3.5, T + 10)) is None  # below the threshold
    assert matcher.match(rating("u", "b", 4, T - 1)) is None  # before it was shown
    assert matcher.match(rating("v", "b", 5, T + 10)) is None  # another user
    hit = matcher.match(rating("u", "b", 4, T + 10))
    assert hit is not None and (hit.experiment, hit.item, hit.team) == ("exp", "b", "candidate")
    assert matcher.match(rating("u", "b", 5, T + 20)) is None  # once
    assert matcher.match(rating("u", "a", 5, T + 3601)) is None  # past the window
    assert matcher.match(rating("u", "a", 5, T + 3600)) is not None  # the window's edge


def test_an_item_shown_again_while_pending_is_not_a_new_impression() -> None:
    matcher = HitMatcher(window=100, positive_threshold=4)
    matcher.show(shown("u", T, ("a", "control")))
    assert matcher.show(shown("u", T + 50, ("a", "candidate"), ("b", "candidate"))) == [
        ("b", "candidate")
    ]
    assert matcher.show(shown("u", T + 150, ("a", "candidate"))) == [("a", "candidate")]


def test_memory_is_bounded_and_what_it_drops_is_counted() -> None:
    matcher = HitMatcher(window=1e6, positive_threshold=4, max_users=3, max_per_user=2)
    for n in range(10):
        matcher.show(shown(f"u{n}", T + n, ("a", "control"), ("b", "control"), ("c", "control")))
    assert len(matcher) == 3 * 2
    assert matcher.dropped == 10 * 3 - 6
    assert matcher.match(rating("u9", "c", 5, T + 20)) is not None
    assert matcher.match(rating("u9", "a", 5, T + 20)) is None  # the oldest of u9, dropped
    assert matcher.match(rating("u0", "c", 5, T + 20)) is None  # the oldest user, dropped


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.sampled_from("uv"),
            st.sampled_from("ab"),
            st.sampled_from([3.0, 5.0]),
            st.integers(0, 40),  # seconds since the previous event
        ),
        min_size=10,
        max_size=60,
    )
)
def test_hits_never_exceed_new_impressions_of_the_same_item(
    events: list[tuple[bool, str, str, float, int]],
):
    """Each counted impression is hit at most once, and memory stays within its bounds."""
    matcher = HitMatcher(window=100, positive_threshold=4, max_users=2, max_per_user=1)
    impressions: Counter[tuple[str, str]] = Counter()
    hits: Counter[tuple[str, str]] = Counter()
    ts = T
    for is_show, user, item, value, step in events:
        ts += step
        if is_show:
            impressions[user, item] += len(matcher.show(shown(user, ts, (item, "control"))))
        else:
            hits[user, item] += matcher.match(rating(user, item, value, ts)) is not None
        assert hits[user, item] <= impressions[user, item]
        assert len(matcher) <= 2 * 1


def test_bad_matcher_settings() -> None:
    with pytest.raises(ValueError, match="window"):
        HitMatcher(window=0, positive_threshold=4)
    with pytest.raises(ValueError, match="max_users"):
        HitMatcher(window=1, positive_threshold=4, max_users=0)
