"""The trainer's and the ingest's batch decode (:class:`DecodedBatch`, columns) against the
per-record decode they replaced (one :func:`decode_rating` per message, as main's code did):
the same ratings, positions and dead letters (kind, reason, original bytes), on any input."""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.decoded_batch import DecodedBatch
from agents.ingest import rated_by_user
from agents.ports import reference_time
from models.events import Rating
from models.wire import DeadLetter, Undecodable, decode_rating
from tests.unit import hostile
from tests.unit.agents.fakes import FakeMessage
from tests.unit.models.test_rating_columns import LIMIT, SKEW, records

WALL = 1.8e9  # the readers' wall clock, fixed (time.time patched) so reasons compare exactly
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STAMPS = st.one_of(
    st.none(),
    st.sampled_from([-1, 0, int(hostile.NOW * 1000), int(hostile.NOW * 1e6), 2**62]),
    st.integers(0, 4_000_000_000_000),
)


def one_by_one(messages: list[FakeMessage]) -> tuple[list[Rating], list[Any], list[Any]]:
    """What the trainer's decode was before the columns: each message on its own."""
    wall = WALL
    ratings, positions, letters = [], [], []
    for m in messages:
        try:
            rating = decode_rating(
                m.key, m.value, max_bytes=LIMIT, reference=reference_time(m, wall), max_skew=SKEW
            )
        except Undecodable as exc:
            letters.append(DeadLetter.of(exc, key=m.key, value=m.value, topic=m.topic,
                                         partition=m.partition, offset=m.offset))  # fmt: skip
            continue
        ratings.append(rating)
        positions.append((m.partition, m.offset))
    return ratings, positions, letters


@st.composite
def batches(draw: st.DrawFn) -> list[FakeMessage]:
    drawn = draw(st.lists(st.tuples(records(), STAMPS, st.integers(0, 2)), max_size=10))
    offsets = {0: 0, 1: 0, 2: 0}
    out = []
    for (key, value, _), stamp, partition in drawn:
        out.append(FakeMessage("ratings", partition, offsets[partition], key, value, stamp))
        offsets[partition] += 1
    return out


@FUZZ
@given(batches())
def test_the_trainer_decodes_a_batch_as_it_decoded_each_message(
    messages: list[FakeMessage],
) -> None:
    with patch("time.time", return_value=WALL):
        batch = DecodedBatch.of(messages, LIMIT, SKEW)
    ratings, positions, letters = one_by_one(messages)
    assert list(batch.ratings) == ratings
    assert batch.positions == positions
    assert batch.dead_letters == letters
    assert batch.events == len(messages)


@FUZZ
@given(batches())
def test_the_ingest_decodes_a_batch_as_it_decoded_each_message(messages: list[FakeMessage]) -> None:
    with patch("time.time", return_value=WALL):
        by_user, bad = rated_by_user(messages, LIMIT, SKEW)
    ratings, positions, letters = one_by_one(messages)
    expected: dict[str, tuple[int, list[str]]] = {}
    for rating, (partition, _) in zip(ratings, positions, strict=True):
        expected.setdefault(rating.user, (partition, []))[1].append(rating.item)
    assert by_user == expected
    assert [(m.offset, m.partition, e.kind, e.reason) for m, e in bad] == [
        (d.offset, d.partition, d.kind, d.reason) for d in letters
    ]
