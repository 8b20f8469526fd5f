"""The wire contract: each message's encode and parse agree, and the transport rules bite."""

from __future__ import annotations

import json

import pytest

from models.events import Rating, RecRequest
from models.wire import (
    DLQ_KINDS,
    MODEL_UPDATE_KEY,
    DeadLetter,
    ModelUpdate,
    Reply,
    ReplyItem,
    Undecodable,
    decode_rating,
    decode_request,
    encode_rating,
    encode_request,
)

LIMIT = 64 * 1024


def test_rating_round_trip_is_keyed_by_user() -> None:
    rating = Rating("e1", "42", "1193", 5.0, 1.7e9)
    key, value = encode_rating(rating)
    assert key == b"42"
    assert decode_rating(key, value, max_bytes=LIMIT) == rating


@pytest.mark.parametrize("key", [None, b"43", b""])
def test_a_rating_keyed_by_another_user_is_invalid(key: bytes | None) -> None:
    _, value = encode_rating(Rating("e1", "42", "1", 4.0, 0.0))
    with pytest.raises(Undecodable) as caught:
        decode_rating(key, value, max_bytes=LIMIT)
    assert caught.value.kind == "invalid" and "key" in caught.value.reason


def test_request_round_trip_leaves_out_absent_fields() -> None:
    request = RecRequest("r1", "u1", 5, exclude_seen=False)
    key, value = encode_request(request)
    assert "reply_to" not in json.loads(value)
    assert decode_request(key, value, max_bytes=LIMIT) == request
    with pytest.raises(Undecodable, match="key"):
        decode_request(b"u2", value, max_bytes=LIMIT)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "empty"),
        (b"x" * (LIMIT + 1), "too_large"),
        (b"{not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (b"\xff\xfe", "malformed"),
        (b'{"user": "u1"}', "invalid"),
    ],
)
def test_undecodable_values_say_which_kind(value: bytes | None, kind: str) -> None:
    with pytest.raises(Undecodable) as caught:
        decode_rating(b"u1", value, max_bytes=LIMIT)
    assert caught.value.kind == kind and caught.value.kind in DLQ_KINDS


def test_reply_round_trip_with_and_without_titles() -> None:
    reply = Reply(
        "r1", "u1", [ReplyItem("i1", 1.5, "Heat (1995)"), ReplyItem("i2", 0.25)], 7, "model", 3.2
    )
    key, value = reply.encode()
    assert key == b"u1"
    body = json.loads(value)
    assert body["items"] == [
        {"item": "i1", "score": 1.5, "title": "Heat (1995)"},
        {"item": "i2", "score": 0.25},
    ]
    assert Reply.parse(value) == reply
    with pytest.raises(Undecodable):
        Reply.parse(b'{"request_id": "r1", "user": "u1", "items": [], "source": "magic"}')


def test_model_update_round_trip_and_refusals() -> None:
    manifest = {"version": 3, "sha256": "ab" * 32, "trained_events": 10}
    update = ModelUpdate.from_manifest("file:///m/3", manifest, reason="promote")
    key, value = update.encode()
    assert key == MODEL_UPDATE_KEY
    assert ModelUpdate.parse(value) == update
    for bad in (b'{"version": "3"}', b'{"version": true}', b'{"version": -1}', b"[]"):
        with pytest.raises(Undecodable):
            ModelUpdate.parse(bad)


def test_dead_letter_keeps_the_original_bytes_and_reads_back() -> None:
    original = b"\x00not json\xff"
    letter = DeadLetter.of(
        Undecodable("malformed", "not valid JSON"),
        key=b"u1",
        value=original,
        topic="ratings",
        partition=2,
        offset=41,
    )
    assert letter.value == original
    assert DeadLetter.parse(letter.key, letter.value, letter.headers) == letter
    with pytest.raises(Undecodable):
        DeadLetter.parse(b"u1", original, {})
