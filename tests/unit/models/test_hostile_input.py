"""Every decoder over the whole input space (tests/unit/hostile.py), and an encode after
every decode.

For each message type: any input either decodes or raises :class:`Undecodable` with a
kind of :data:`DLQ_KINDS` and a reason (nothing else escapes: a ValueError of a 5,000-digit
integer or a UnicodeEncodeError of a lone surrogate would crash or stall its reader), and
whatever decodes encodes without raising and decodes back to the same value.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.catalog import CatalogItem, parse_catalog_item
from models.events import InvalidEvent, Rating, RecRequest, canonical_id, parse_rating
from models.seen import decode_row, encode_row, item_hashes, remember
from models.wire import (
    DLQ_KIND,
    DLQ_KINDS,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    REPLY_SOURCES,
    DeadLetter,
    ModelUpdate,
    Reply,
    Undecodable,
    decode_catalog_item,
    decode_rating,
    decode_request,
    encode_catalog_item,
    encode_rating,
    encode_request,
)
from tests.unit import hostile

LIMIT = 64 * 1024
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(decode: Any, *args: Any, **kwargs: Any) -> Any:
    """The decoded value, or the :class:`Undecodable` (any other exception fails the test)."""
    try:
        return decode(*args, **kwargs)
    except Undecodable as exc:
        assert exc.kind in DLQ_KINDS and exc.reason
        exc.reason.encode()  # a reason can always go into a header
        return exc


def key_of(value: Any) -> bytes:
    """The key a producer would give a message about ``value`` (surrogates and all)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return b"\x00" if isinstance(value, int) and abs(value) > 10**300 else str(value).encode()


def message(body: dict[str, Any], user_field: str = "user") -> tuple[bytes, bytes]:
    return key_of(body.get(user_field)), hostile.to_json(body)


# A valid value or a hostile one, per field: most examples are close to valid.
ID = st.one_of(st.text(min_size=1, max_size=8), hostile.IDS)
NUMBER = st.one_of(st.floats(0, 5), hostile.NUMBERS)
TS = st.one_of(st.floats(0, 2e9), hostile.NUMBERS)

RATINGS = st.fixed_dictionaries(
    {"event_id": ID, "user": ID, "item": ID, "rating": NUMBER, "ts": TS}
).map(message)
REQUESTS = st.fixed_dictionaries(
    {"request_id": ID, "user": ID},
    optional={
        "k": st.one_of(st.integers(1, 1000), hostile.NUMBERS),
        "exclude_seen": st.one_of(st.booleans(), hostile.JSON),
        "reply_to": st.one_of(st.just("client-replies"), hostile.ANY_TEXT, hostile.NUMBERS),
    },
).map(message)
CATALOG = st.fixed_dictionaries(
    {"item": ID, "title": st.one_of(st.text(min_size=1, max_size=12), hostile.ANY_TEXT)},
    optional={"genres": st.lists(st.one_of(st.just("Drama"), hostile.ANY_TEXT), max_size=3)},
).map(lambda body: message(body, "item"))
REPLY_ITEMS = st.fixed_dictionaries(
    {"item": ID, "score": st.one_of(st.floats(-10, 10), hostile.NUMBERS)},
    optional={"title": st.one_of(st.none(), hostile.ANY_TEXT, hostile.NUMBERS)},
)
REPLIES = st.fixed_dictionaries(
    {
        "request_id": ID,
        "user": ID,
        "items": st.lists(REPLY_ITEMS, max_size=3),
        "source": st.one_of(st.sampled_from(REPLY_SOURCES), hostile.ANY_TEXT),
    },
    optional={
        "model_version": st.one_of(st.none(), st.integers(0, 10**6), hostile.NUMBERS),
        "latency_ms": st.one_of(st.none(), st.floats(0, 1e4), hostile.NUMBERS),
    },
).map(hostile.to_json)
UPDATES = st.fixed_dictionaries(
    {"version": st.one_of(st.integers(0, 10**6), hostile.NUMBERS)},
    optional={
        "uri": st.one_of(st.just("s3://b/p/v1"), hostile.ANY_TEXT),
        "sha256": hostile.ANY_TEXT,
        "trained_events": st.one_of(st.integers(0, 10**9), hostile.NUMBERS),
        "metrics": st.dictionaries(hostile.ANY_TEXT, hostile.JSON, max_size=3),
        "lineage": st.one_of(st.none(), hostile.ANY_TEXT),
        "chain_version": st.one_of(st.none(), st.integers(0, 10**6), hostile.NUMBERS),
    },
).map(hostile.to_json)
VALUES = st.one_of(hostile.RAW, st.none())
KEYS = st.one_of(st.none(), st.binary(max_size=12), st.just(b"\xed\xa0\x80"))


# --- ratings ---------------------------------------------------------------------------
@FUZZ
@given(st.one_of(RATINGS, st.tuples(KEYS, VALUES)))
def test_a_rating_decodes_and_encodes_back_the_same_or_says_why_not(
    message: tuple[bytes | None, bytes | None],
) -> None:
    key, value = message
    got = outcome(decode_rating, key, value, max_bytes=LIMIT)
    if isinstance(got, Rating):
        encoded_key, encoded = encode_rating(got)
        assert encoded_key == key
        assert decode_rating(encoded_key, encoded, max_bytes=LIMIT) == got
        assert math.isfinite(got.rating) and math.isfinite(got.ts)


@FUZZ
@given(st.one_of(REQUESTS, st.tuples(KEYS, VALUES)))
def test_a_request_decodes_and_encodes_back_the_same_or_says_why_not(
    message: tuple[bytes | None, bytes | None],
) -> None:
    key, value = message
    got = outcome(decode_request, key, value, max_bytes=LIMIT)
    if isinstance(got, RecRequest):
        encoded_key, encoded = encode_request(got)
        assert encoded_key == key
        assert decode_request(encoded_key, encoded, max_bytes=LIMIT) == got


@pytest.mark.parametrize("field", ["event_id", "user", "item"])
@pytest.mark.parametrize(
    ("hostile_value", "reason"),
    [
        (10**5000, "more than 256 digits"),
        (-(10**4301), "more than 256 digits"),
        (10**300, "more than 256 digits"),
        ("\ud800", "lone surrogate"),
        ("ok\udfffok", "lone surrogate"),
    ],
    ids=["5000-digits", "minus-4302-digits", "301-digits", "lone-high", "lone-low-inside"],
)
def test_an_id_that_cannot_be_a_string_of_utf8_is_invalid(
    field: str, hostile_value: Any, reason: str
) -> None:
    body = {"event_id": "e", "user": "u", "item": "i", "rating": 4, "ts": 1}
    body[field] = hostile_value
    with pytest.raises(InvalidEvent, match=reason):
        parse_rating(body)
    key = b"u" if field != "user" else key_of(hostile_value)
    got = outcome(decode_rating, key, hostile.to_json(body), max_bytes=LIMIT)
    assert isinstance(got, Undecodable) and got.kind == "invalid"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id":"e","user":"u","item":"i","rating":4,"ts":1,"x":' + b"7" * 5000 + b"}",
        b'{"event_id":"e","user":"\\ud800","item":"i","rating":4,"ts":1}',
        b'{"event_id":"e","user":"u","item":"\xed\xa0\x80","rating":4,"ts":1}',  # raw bytes
        b'{"event_id":"e","user":"u","item":"i","rating":4,"ts":1,"\\udc00":1}',  # a key
    ],
)
def test_a_json_number_past_4300_digits_or_a_lone_surrogate_anywhere_is_invalid(
    raw: bytes,
) -> None:
    got = outcome(decode_rating, b"u", raw, max_bytes=LIMIT)
    assert isinstance(got, Undecodable) and got.kind == "invalid", got


def test_a_paired_surrogate_escape_is_one_character_and_valid() -> None:
    raw = b'{"event_id":"e","user":"u","item":"\\ud83c\\udfac","rating":4,"ts":1}'
    assert decode_rating(b"u", raw, max_bytes=LIMIT).item == "🎬"
    assert canonical_id("🎬", "item") == "🎬"


# --- catalog items -----------------------------------------------------------------------
@FUZZ
@given(st.one_of(CATALOG, st.tuples(KEYS, VALUES)))
def test_a_catalog_item_decodes_and_encodes_back_the_same_or_says_why_not(
    message: tuple[bytes | None, bytes | None],
) -> None:
    key, value = message
    got = outcome(decode_catalog_item, key, value, max_bytes=LIMIT)
    if isinstance(got, CatalogItem):
        encoded_key, encoded = encode_catalog_item(got)
        assert decode_catalog_item(encoded_key, encoded, max_bytes=LIMIT) == got


@pytest.mark.parametrize("field", ["title", "genres"])
def test_a_catalog_title_or_genre_with_a_lone_surrogate_is_invalid(field: str) -> None:
    body: dict[str, Any] = {"item": "i1", "title": "Heat (1995)", "genres": ["Drama"]}
    body[field] = "Heat \udc80" if field == "title" else ["Dr\ud800ma"]
    with pytest.raises(InvalidEvent, match="lone surrogate"):
        parse_catalog_item(body)
    got = outcome(decode_catalog_item, b"i1", hostile.to_json(body), max_bytes=LIMIT)
    assert isinstance(got, Undecodable) and got.kind == "invalid"


# --- replies, model updates, dead letters ---------------------------------------------------
@FUZZ
@given(st.one_of(REPLIES, VALUES))
def test_a_reply_parses_and_encodes_back_the_same_or_says_why_not(value: bytes | None) -> None:
    got = outcome(Reply.parse, value)
    if isinstance(got, Reply):
        again = Reply.parse(got.encode()[1])  # scores are sent rounded to 6 decimals
        assert [i.item for i in again.items] == [i.item for i in got.items]
        assert [i.title for i in again.items] == [i.title for i in got.items]
        assert all(
            abs(a.score - b.score) <= 1e-6 for a, b in zip(again.items, got.items, strict=True)
        )
        assert Reply.parse(again.encode()[1]) == again  # and then it stays the same


def test_a_reply_with_a_title_that_is_not_utf8_is_refused() -> None:
    raw = b'{"request_id":"r","user":"u","items":[{"item":"i","score":1,"title":"\\ud800"}],'
    raw += b'"source":"model"}'
    got = outcome(Reply.parse, raw)
    assert isinstance(got, Undecodable) and "lone surrogate" in got.reason


@FUZZ
@given(st.one_of(UPDATES, VALUES))
def test_a_model_update_parses_and_encodes_without_raising_or_says_why_not(
    value: bytes | None,
) -> None:
    got = outcome(ModelUpdate.parse, value)
    if isinstance(got, ModelUpdate):
        _, encoded = got.encode()
        again = ModelUpdate.parse(encoded)
        # The same announcement (NaN in free-form metrics is written as null, as JSON can).
        assert (again.version, again.uri, again.sha256, again.trained_events) == (
            got.version,
            got.uri,
            got.sha256,
            got.trained_events,
        )
        assert (again.lineage, again.chain_version) == (got.lineage, got.chain_version)
        assert ModelUpdate.parse(again.encode()[1]) == again


HEADER_VALUES = st.one_of(
    st.binary(max_size=12), st.sampled_from([b"0", b"7", b"1" * 5000, b"\xed\xa0\x80"])
)


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            h: HEADER_VALUES for h in (DLQ_KIND, DLQ_REASON, DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET)
        },
    ),
    st.one_of(st.none(), st.binary(max_size=8)),
)
def test_a_dead_letter_parses_and_encodes_back_the_same_or_says_why_not(
    headers: dict[str, bytes], value: bytes | None
) -> None:
    got = outcome(DeadLetter.parse, b"k", value, headers)
    if isinstance(got, DeadLetter):
        assert DeadLetter.parse(got.key, got.value, got.headers) == got


@FUZZ
@given(hostile.ANY_TEXT)
def test_a_dead_letter_of_any_reason_has_headers(reason: str) -> None:
    """A reason may quote the input (a lone surrogate too): its header never fails."""
    letter = DeadLetter(b"k", b"v", "invalid", reason, "ratings", 0, 1)
    again = DeadLetter.parse(letter.key, letter.value, letter.headers)
    assert again.reason == reason.encode("utf-8", "backslashreplace").decode()
    assert DeadLetter.parse(again.key, again.value, again.headers) == again


# --- seen-items rows ----------------------------------------------------------------------
@FUZZ
@given(st.one_of(st.binary(max_size=80), hostile.JSON.map(hostile.to_json), st.none()))
def test_a_seen_row_decodes_and_encodes_back_the_same(raw: bytes | None) -> None:
    hashes = decode_row(raw)  # anything unreadable is an empty row, never an exception
    assert decode_row(encode_row(hashes)).tolist() == hashes.tolist()


@FUZZ
@given(st.lists(hostile.ANY_TEXT, max_size=5))
def test_a_row_remembers_any_item_ids_without_raising(items: list[str]) -> None:
    row = remember(None, items, limit=10)
    assert set(decode_row(row).tolist()) == set(item_hashes(items).tolist())
    assert np.array_equal(item_hashes(items[:1]), item_hashes(items[:1]))
