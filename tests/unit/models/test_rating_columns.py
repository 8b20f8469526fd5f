"""The batch decode (:func:`models.wire.decode_ratings`, columns) against the per-record one
(:func:`models.wire.decode_rating`, a :class:`Rating` each): the same verdict, reason and
values on any input (hypothesis, the hostile input space of tests/unit/hostile.py), and
:class:`RatingColumns` as the sequence of ratings it stands for."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.events import Rating
from models.rating_columns import RatingColumns
from models.wire import Undecodable, decode_rating, decode_ratings, encode_rating
from tests.unit import hostile

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMIT = 8192
SKEW = 300.0

GOOD_IDS = st.one_of(
    st.text(alphabet=hostile.ANY_CHAR, min_size=1, max_size=12),
    st.text(alphabet="abc012", min_size=1, max_size=8),
    st.integers(-(10**6), 10**6),
)
FIELDS = {
    "event_id": st.one_of(GOOD_IDS, hostile.IDS),
    "user": st.one_of(GOOD_IDS, hostile.IDS),
    "item": st.one_of(GOOD_IDS, hostile.IDS),
    "rating": st.one_of(st.integers(0, 5), st.floats(0, 5), hostile.NUMBERS, hostile.JSON),
    "ts": st.one_of(
        st.sampled_from(hostile.TIMES),
        st.floats(0, 2e9),
        st.integers(0, 2**60),
        hostile.NUMBERS,
        hostile.JSON,
    ),
}
RATING_LIKE = st.one_of(
    st.fixed_dictionaries(FIELDS),  # every field there: mostly the fast path
    hostile.objects_like(FIELDS),
)


ASCII_IDS = st.one_of(
    st.text(alphabet="abcu019-_:", min_size=1, max_size=10),
    st.sampled_from(["u", "0", "a" * 256, "a" * 257]),
)


@st.composite
def well_formed(draw: st.DrawFn) -> tuple[bytes | None, bytes | None, float | None]:
    """The trainer's common case and its edges: ascii string ids, numbers in range, keyed
    by the user or not, stamped just inside or just past the reference clock's window."""
    reference = draw(st.sampled_from([hostile.NOW, 1.0, 0.0]) | st.floats(0, 4e9))
    skew = draw(st.sampled_from([-1e9, -1.0, 0.0, 1e-3, 299.0, 300.0, 300.0001, 301, 599, 601]))
    ts = draw(
        st.one_of(
            st.just(reference + skew),
            st.sampled_from(hostile.TIMES),
            st.integers(0, 2**53 + 2),
            st.floats(-1, 5e9),
        )
    )
    body = {
        "event_id": draw(ASCII_IDS),
        "user": draw(ASCII_IDS),
        "item": draw(ASCII_IDS),
        "rating": draw(st.sampled_from([0, 5, 5.0, -0.0, 4.5, 5.000001, -1e-9, True])),
        "ts": ts,
    }
    key = draw(st.one_of(st.just(body["user"].encode()), st.none(), st.binary(max_size=3)))
    ref = draw(st.one_of(st.just(reference), st.none()))
    return key, hostile.to_json(body), ref


@st.composite
def hostile_records(draw: st.DrawFn) -> tuple[bytes | None, bytes | None, float | None]:
    """(key, value, reference): rating-shaped JSON (with NaN literals, huge integers, lone
    surrogates), keyed by its user or not; any bytes; tombstones; values past the limit."""
    value: bytes | None
    body: dict[str, Any] | None = None
    kind = draw(st.sampled_from(["rating", "rating", "rating", "raw", "none", "large"]))
    if kind == "rating":
        body = draw(RATING_LIKE)
        value = hostile.to_json(body)
    elif kind == "raw":
        value = draw(hostile.RAW)
    elif kind == "none":
        value = None
    else:
        body = {"event_id": "e", "user": "u", "item": "i", "rating": 4, "ts": 1}
        value = json.dumps({**body, "pad": "x" * LIMIT}).encode()
    user = body.get("user") if isinstance(body, dict) else None
    own_key = b"u"
    if isinstance(user, str):
        own_key = user.encode("utf-8", "surrogatepass")
    elif type(user) is int and abs(user) < 10**100:
        own_key = str(user).encode()
    key = draw(st.one_of(st.just(own_key), st.none(), st.binary(max_size=8)))
    reference = draw(
        st.one_of(
            st.none(),
            st.sampled_from([hostile.NOW, 0.0, 1e300]),
            st.floats(0, 4e9),
        )
    )
    return key, value, reference


def records() -> st.SearchStrategy[tuple[bytes | None, bytes | None, float | None]]:
    """Any record: hostile, or well-formed at the edges of the rules."""
    return st.one_of(hostile_records(), well_formed())


def one_by_one(
    batch: list[tuple[bytes | None, bytes | None, float | None]],
) -> list[Rating | tuple[str, str] | type]:
    """What :func:`decode_rating` says of each record: the rating, (kind, reason), or the
    type of any other exception."""
    out: list[Rating | tuple[str, str] | type] = []
    for key, value, reference in batch:
        try:
            out.append(
                decode_rating(key, value, max_bytes=LIMIT, reference=reference, max_skew=SKEW)
            )
        except Undecodable as exc:
            out.append((exc.kind, exc.reason))
        except Exception as exc:
            out.append(type(exc))
    return out


def in_batch(
    batch: list[tuple[bytes | None, bytes | None, float | None]], with_references: bool
) -> list[Rating | tuple[str, str] | type]:
    keys = [k for k, _, _ in batch]
    values = [v for _, v, _ in batch]
    refs: list[float | None] | None = [r for _, _, r in batch] if with_references else None
    columns, accepted, refused = decode_ratings(keys, values, refs, max_bytes=LIMIT, max_skew=SKEW)
    assert len(columns) == len(accepted)
    assert columns.ratings.dtype == np.float64 and columns.stamps.dtype == np.float64
    out: dict[int, Rating | tuple[str, str] | type] = dict(zip(accepted, columns, strict=True))
    for n, exc in refused:
        assert n not in out
        out[n] = (exc.kind, exc.reason) if isinstance(exc, Undecodable) else type(exc)
    assert sorted(out) == list(range(len(batch)))
    return [out[n] for n in range(len(batch))]


@FUZZ
@given(st.lists(records(), max_size=12), st.booleans())
def test_batch_decode_agrees_with_one_by_one(
    batch: list[tuple[bytes | None, bytes | None, float | None]], with_references: bool
) -> None:
    if not with_references:
        batch = [(k, v, None) for k, v, _ in batch]
    expected = one_by_one(batch)
    got = in_batch(batch, with_references)
    assert got == expected
    for a, b in zip(got, expected, strict=True):  # floats exactly, -0.0 and all
        if isinstance(a, Rating) and isinstance(b, Rating):
            assert type(a.rating) is type(b.rating) is float and type(a.ts) is float
            assert math.copysign(1, a.rating) == math.copysign(1, b.rating)


@FUZZ
@given(st.lists(records(), max_size=8))
def test_accepted_ratings_encode_and_decode_again(
    batch: list[tuple[bytes | None, bytes | None, float | None]],
) -> None:
    columns, _, _ = decode_ratings(
        [k for k, _, _ in batch], [v for _, v, _ in batch], None, max_bytes=LIMIT
    )
    for rating in columns:
        key, value = encode_rating(rating)
        assert decode_rating(key, value, max_bytes=LIMIT) == rating


def test_the_hostile_cases_by_name() -> None:
    """Each refusal of the per-record decoder, through the batch: same kind and reason."""
    good = {"event_id": "e", "user": "u", "item": "i", "rating": 4, "ts": 1_700_000_000}
    cases = [
        json.dumps({**good, "user": "\ud800"}).encode(),  # a lone surrogate (escaped)
        b'{"event_id":"e","user":"\xed\xa0\x80","item":"i","rating":4,"ts":1}',  # its bytes
        hostile.to_json({**good, "ts": 10**4400}),  # past 4,300 digits
        hostile.to_json({**good, "rating": math.nan}),
        json.dumps({**good, "rating": True}).encode(),  # a bool is not a number
        b'{"event_id":"e","user":"u","user":"v","item":"i","rating":4,"ts":1}',  # duplicate key
        json.dumps({**good, "ts": 1_700_000_000_000}).encode(),  # milliseconds
        json.dumps({**good, "ts": 1_700_000_000_000_000}).encode(),  # microseconds
        json.dumps({**good, "ts": -1}).encode(),  # far past
        json.dumps(good).encode(),  # valid
        None,
        b"",
    ]
    batch = [(b"u", value, hostile.NOW) for value in cases]
    got = in_batch(batch, True)
    assert got == one_by_one(batch)
    assert isinstance(got[9], Rating)
    assert [g[0] for g in got if isinstance(g, tuple)] == [
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        "invalid",
        "invalid",  # duplicate keys: the last wins (user "v"), so the key does not match
        "ts_in_future",
        "ts_in_future",
        "invalid",
        "empty",
        "malformed",
    ]


def test_columns_are_the_sequence_of_their_ratings() -> None:
    ratings = [Rating(f"e{n}", f"u{n % 3}", f"i{n}", n / 2, 1e9 + n) for n in range(7)]
    columns = RatingColumns.of(ratings)
    assert list(columns) == ratings and columns == ratings and len(columns) == 7
    assert columns[2] == ratings[2] and columns[-1] == ratings[-1]
    assert list(columns[1:4]) == ratings[1:4]
    assert list(columns.take([5, 0, 5])) == [ratings[5], ratings[0], ratings[5]]
    assert list(columns.take([])) == [] and RatingColumns.of(columns) is columns
    assert RatingColumns.of(iter(ratings)) == ratings
    with pytest.raises(ValueError, match="lengths"):
        RatingColumns(["e"], [], ["i"], np.zeros(1), np.zeros(1))
