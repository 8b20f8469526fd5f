import math
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import events
from models.events import (
    MAX_ID_LENGTH,
    InvalidEvent,
    Rating,
    RecRequest,
    is_topic_name,
    parse_rating,
    parse_request,
)
from tests.unit import hostile

GOOD = {"event_id": "e1", "user": "u1", "item": "i1", "rating": 4.5, "ts": 1_700_000_000}


def test_parse_rating_valid_event():
    assert parse_rating(GOOD) == Rating("e1", "u1", "i1", 4.5, 1_700_000_000.0)


def test_int_ids_are_canonicalised_to_strings():
    rating = parse_rating({**GOOD, "user": 7, "item": 42, "event_id": 3})
    assert (rating.user, rating.item, rating.event_id) == ("7", "42", "3")
    assert parse_rating({**GOOD, "user": "7"}).user == rating.user


def test_rating_is_frozen():
    with pytest.raises(AttributeError):
        parse_rating(GOOD).rating = 1.0  # type: ignore[misc]


def test_default_event_id_is_used_only_when_missing():
    no_id = {k: v for k, v in GOOD.items() if k != "event_id"}
    assert parse_rating(no_id, default_event_id="ratings:0:17").event_id == "ratings:0:17"
    assert parse_rating(GOOD, default_event_id="x").event_id == "e1"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"rating": 5.01}, "between 0 and 5"),
        ({"rating": -0.5}, "between 0 and 5"),
        ({"rating": math.nan}, "finite"),
        ({"rating": math.inf}, "finite"),
        ({"rating": "4"}, "rating must be a number"),
        ({"rating": True}, "rating must be a number"),
        ({"rating": None}, "got null"),
        ({"rating": 10**400}, "out of range"),
        ({"ts": -1}, "ts must be >= 0"),
        ({"ts": math.nan}, "finite"),
        ({"user": ""}, "user must not be empty"),
        ({"user": 1.0}, "user must be a string or an integer"),
        ({"user": False}, "user must be a string or an integer"),
        ({"item": ["a"]}, "item must be a string or an integer"),
        ({"item": "x" * (MAX_ID_LENGTH + 1)}, "longer than 256"),
        ({"event_id": None}, "event_id must be a string"),
    ],
)
def test_invalid_ratings_are_refused_with_a_reason(change, reason):
    with pytest.raises(InvalidEvent) as info:
        parse_rating({**GOOD, **change})
    assert reason in info.value.reason


def test_boundaries_are_inclusive():
    assert parse_rating({**GOOD, "rating": 0}).rating == 0.0
    assert parse_rating({**GOOD, "rating": 5}).rating == 5.0
    assert parse_rating({**GOOD, "ts": 0}).ts == 0.0
    assert parse_rating({**GOOD, "user": "u" * MAX_ID_LENGTH}).user == "u" * MAX_ID_LENGTH


def test_missing_fields_are_all_named():
    with pytest.raises(InvalidEvent, match=r"missing field.*event_id, rating, ts"):
        parse_rating({"user": "u", "item": "i"})


def test_non_object_is_refused():
    with pytest.raises(InvalidEvent, match="JSON object, got list"):
        parse_rating([1, 2])  # type: ignore[arg-type]


def test_unknown_fields_are_ignored():
    assert parse_rating({**GOOD, "extra": {"nested": 1}}).item == "i1"


def test_parse_request_defaults_and_values():
    assert parse_request({"request_id": "r1", "user": 5}) == RecRequest("r1", "5", 10, True, None)
    assert parse_request({"request_id": "r", "user": "u"}, default_k=3).k == 3
    request = parse_request(
        {"request_id": "r", "user": "u", "k": 1000, "exclude_seen": False, "reply_to": "a.b-c_1"}
    )
    assert request == RecRequest("r", "u", 1000, False, "a.b-c_1")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"k": 0}, "between 1 and 1000"),
        ({"k": 1001}, "between 1 and 1000"),
        ({"k": 2.0}, "k must be an integer"),
        ({"k": True}, "k must be an integer"),
        ({"exclude_seen": "yes"}, "exclude_seen must be true or false"),
        ({"reply_to": "has space"}, "not a valid Kafka topic"),
        ({"reply_to": ".."}, "not a valid Kafka topic"),
        ({"reply_to": "t" * 250}, "not a valid Kafka topic"),
        ({"reply_to": 5}, "not a valid Kafka topic"),
        ({"request_id": ""}, "request_id must not be empty"),
    ],
)
def test_invalid_requests_are_refused(change, reason):
    with pytest.raises(InvalidEvent) as info:
        parse_request({"request_id": "r", "user": "u", **change})
    assert reason in info.value.reason


def test_request_missing_fields():
    with pytest.raises(InvalidEvent, match="request_id, user"):
        parse_request({})


def test_topic_names():
    assert is_topic_name("rec-responses")
    assert is_topic_name("t" * 249)
    assert not is_topic_name("")
    assert not is_topic_name(".")
    assert not is_topic_name("a/b")


_NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
    hostile.NUMBERS,  # past 4,300 digits, ms/µs timestamps, 1e300
)


@given(rating=_NUMBERS, ts=_NUMBERS, user=st.one_of(st.just("u1"), hostile.IDS))
def test_the_fast_path_accepts_and_returns_what_the_rules_do(
    rating: object, ts: object, user: object
) -> None:
    """parse_rating's fast path (the trainer's and ingest's hot path) agrees with the rules
    one by one, for ints, floats, bools, huge and non-finite numbers, strings and None, and
    ids of any unicode (lone surrogates) or any integer (past 4,300 digits)."""
    obj = {"event_id": "e1", "user": user, "item": "i1", "rating": rating, "ts": ts}

    def by_the_rules() -> object:
        with patch.object(events, "_well_formed_rating", lambda obj: None):
            try:
                return events.parse_rating(obj)
            except events.InvalidEvent as exc:
                return type(exc)

    try:
        fast: object = events.parse_rating(obj)
    except events.InvalidEvent as exc:
        fast = type(exc)
    assert fast == by_the_rules()
    if isinstance(fast, events.Rating):
        assert type(fast.rating) is float and type(fast.ts) is float


_IDS = st.one_of(
    st.text(min_size=1, max_size=3), st.sampled_from(["", "x" * 300, 7, None]), hostile.IDS
)
_ODD = st.one_of(st.none(), st.booleans(), st.floats(-1, 20), st.text(max_size=2))


@settings(max_examples=300)
@given(
    request_id=_IDS,
    user=_IDS,
    k=st.one_of(st.integers(-2, 1002), _ODD),
    exclude_seen=st.one_of(st.booleans(), _ODD),
    reply_to=st.one_of(st.none(), st.sampled_from(["client-replies", "a/b", ""]), _ODD),
    absent=st.sets(
        st.sampled_from(["request_id", "user", "k", "exclude_seen", "reply_to"]), max_size=1
    ),
)
def test_the_request_fast_path_agrees_with_the_rules(
    request_id: object,
    user: object,
    k: object,
    exclude_seen: object,
    reply_to: object,
    absent: set[str],
) -> None:
    """parse_request's glance at a plain dict (the scorer's hot path) accepts and returns
    exactly what the rules one by one do (they run for any other Mapping)."""
    from types import MappingProxyType

    values = {"request_id": request_id, "user": user, "k": k}
    values |= {"exclude_seen": exclude_seen, "reply_to": reply_to}
    fields = {name: v for name, v in values.items() if name not in absent}

    def outcome(obj: object) -> object:
        try:
            return events.parse_request(obj)  # type: ignore[arg-type]
        except events.InvalidEvent as exc:
            return str(exc)

    assert outcome(dict(fields)) == outcome(MappingProxyType(dict(fields)))
