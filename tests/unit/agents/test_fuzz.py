"""Bad input, property-based (hypothesis): arbitrary bytes, arbitrary JSON and boundary
values into the wire decoders and the agents (the trainer runs its own fetch loop on the
local store).

Every message is either processed or dead-lettered with a kind and a reason; no exception
escapes a decoder (other than :class:`Undecodable`) or an agent; a dead letter carries the
original key and bytes, untouched. The agents run against the fakes of Faust's interface in
``tests/unit/agents/fakes.py`` (no Kafka is claimed here; tests/faults and the e2e suite
send bad input through the real broker).
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agents.decoded_batch import DecodedBatch
from agents.ingest import Ingest
from agents.scorer import Scorer
from agents.state import ModelHolder
from models.config import ModelConfig
from models.events import MAX_ID_LENGTH, Rating
from models.incremental import IncrementalModel
from models.wire import (
    DLQ_KIND,
    DLQ_KINDS,
    DLQ_OFFSET,
    DLQ_REASON,
    ModelUpdate,
    Reply,
    Undecodable,
    decode_rating,
    decode_request,
)
from storage import open_store
from tests.unit import hostile
from tests.unit.agents.fakes import FakeMessage, FakeSeenTable, FakeSink
from tests.unit.agents.test_trainer import MAX_BYTES as TRAINER_MAX_BYTES
from tests.unit.agents.test_trainer import (
    PARTITIONS,
    TOPIC,
    FakeConsumer,
    FakeDLQ,
    stop,
    until,
)
from tests.unit.agents.test_trainer import start as start_trainer  # "start" is a loop name here

LIMIT = 64 * 1024
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies (the whole input space: tests/unit/hostile.py) ---------------------------
BOUNDARY_NUMBERS = hostile.NUMBERS
IDS = hostile.IDS
JSON = hostile.JSON


def rating_like() -> st.SearchStrategy[dict[str, Any]]:
    """Objects shaped like ratings, with any field missing, wrong or on a boundary."""
    field = {
        "event_id": IDS,
        "user": IDS,
        "item": IDS,
        "rating": st.one_of(BOUNDARY_NUMBERS, st.floats(), JSON),
        "ts": st.one_of(BOUNDARY_NUMBERS, st.floats(), JSON),
    }
    return st.fixed_dictionaries({}, optional=field).flatmap(
        lambda d: st.dictionaries(st.text(max_size=6), JSON, max_size=2).map(lambda e: {**e, **d})
    )


def request_like() -> st.SearchStrategy[dict[str, Any]]:
    field = {
        "request_id": IDS,
        "user": IDS,
        "k": st.one_of(BOUNDARY_NUMBERS, st.integers(), JSON),
        "exclude_seen": JSON,
        "reply_to": st.one_of(IDS, st.just("client-replies"), st.just("ratings"), JSON),
    }
    return st.fixed_dictionaries({}, optional=field)


def sized(n: int) -> bytes:
    """A valid rating JSON padded (inside a string) to exactly ``n`` bytes."""
    body = {"event_id": "e", "user": "u", "item": "i", "rating": 4, "ts": 1, "pad": ""}
    room = n - len(json.dumps(body).encode())
    return json.dumps({**body, "pad": "x" * room}).encode()


encoded = hostile.to_json  # NaN/Infinity literals, huge integers, escaped surrogates

VALUES = st.one_of(
    hostile.RAW,
    rating_like().map(encoded),
    request_like().map(encoded),
    st.sampled_from([sized(LIMIT - 1), sized(LIMIT), sized(LIMIT + 1), b"", b"null"]),
    st.none(),  # a tombstone
)
KEYS = st.one_of(st.none(), st.binary(max_size=20), st.sampled_from([b"u", b"", b"\xff"]))
GOOD_IDS = st.text(min_size=1, max_size=12).filter(lambda t: t.strip() == t)


def keyed(body: dict[str, Any]) -> tuple[bytes, bytes]:
    return str(body["user"]).encode(), json.dumps(body).encode()


#: Valid messages, keyed by their user, mixed into the agents' input.
GOOD_RATINGS = st.fixed_dictionaries(
    {
        "event_id": GOOD_IDS,
        "user": GOOD_IDS,
        "item": GOOD_IDS,
        "rating": st.floats(0, 5),
        "ts": st.floats(0, 2e9),
    }
).map(keyed)
NOW = time.time()
#: Timestamps of every era and unit: 1990s seconds, now, milliseconds and microseconds (a
#: producer's mistake), the far future, the float limits.
STAMPS = st.one_of(
    st.floats(0, 2e9),
    st.floats(8e8, 9.5e8),  # MovieLens 100k/1M: 1997-2000
    st.sampled_from([0.0, NOW, NOW * 1e3, NOW * 1e6, 1e300, 2.0**53, 1.7976931348623157e308]),
)
#: Valid-looking ratings with any timestamp: trained, or dead-lettered as ``ts_in_future``.
STAMPED_RATINGS = st.fixed_dictionaries(
    {
        "event_id": GOOD_IDS,
        "user": GOOD_IDS,
        "item": GOOD_IDS,
        "rating": st.floats(0, 5),
        "ts": STAMPS,
    }
).map(keyed)
GOOD_REQUESTS = st.fixed_dictionaries(
    {"request_id": GOOD_IDS, "user": GOOD_IDS, "k": st.integers(1, 1000)},
    optional={"exclude_seen": st.booleans(), "reply_to": st.just("client-replies")},
).map(keyed)


# --- decoders -----------------------------------------------------------------------------
def decoded(decode: Any, key: bytes | None, value: bytes | None) -> Any:
    try:
        return decode(key, value, max_bytes=LIMIT)
    except Undecodable as exc:
        assert exc.kind in DLQ_KINDS and exc.reason
        return exc


@FUZZ
@given(KEYS, VALUES)
def test_the_rating_decoder_accepts_a_valid_rating_or_says_why_not(
    key: bytes | None, value: bytes | None
) -> None:
    got = decoded(decode_rating, key, value)
    if isinstance(got, Rating):
        assert key == got.user.encode()
        assert 0 <= got.rating <= 5 and math.isfinite(got.rating)
        assert got.ts >= 0 and math.isfinite(got.ts)
        assert 0 < len(got.user) <= MAX_ID_LENGTH and 0 < len(got.item) <= MAX_ID_LENGTH
        assert value is not None and len(value) <= LIMIT


@FUZZ
@given(KEYS, VALUES)
def test_the_request_decoder_accepts_a_valid_request_or_says_why_not(
    key: bytes | None, value: bytes | None
) -> None:
    got = decoded(decode_request, key, value)
    if not isinstance(got, Undecodable):
        assert key == got.user.encode() and 1 <= got.k <= 1000


@pytest.mark.parametrize(
    ("size", "kind"), [(LIMIT - 1, None), (LIMIT, None), (LIMIT + 1, "too_large")]
)
def test_the_size_limit_is_exact(size: int, kind: str | None) -> None:
    got = decoded(decode_rating, b"u", sized(size))
    assert (got.kind if isinstance(got, Undecodable) else None) == kind


@FUZZ
@given(st.one_of(st.binary(max_size=200), JSON.map(encoded), st.none()))
def test_model_updates_and_replies_parse_or_say_why_not(value: bytes | None) -> None:
    for parse in (ModelUpdate.parse, Reply.parse):
        try:
            parse(value)
        except Undecodable as exc:
            assert exc.kind in DLQ_KINDS and exc.reason


# --- agents -------------------------------------------------------------------------------
def messages_of(pairs: list[tuple[bytes | None, bytes | None]], topic: str) -> list[FakeMessage]:
    return [FakeMessage(topic, n % 4, n, k, v, timestamp=None) for n, (k, v) in enumerate(pairs)]


def check_dead_letters(sent: list[dict[str, Any]], messages: list[FakeMessage]) -> set[int]:
    """Each dead letter is an original message, untouched, with its kind and reason."""
    offsets = set()
    for letter in sent:
        original = messages[int(letter["headers"][DLQ_OFFSET])]
        assert (letter["key"], letter["value"]) == (original.key, original.value)
        assert letter["headers"][DLQ_KIND].decode() in DLQ_KINDS
        assert letter["headers"][DLQ_REASON]
        offsets.add(original.offset)
    assert len(offsets) == len(sent), "one dead letter per bad message"
    return offsets


@FUZZ
@given(
    st.lists(st.tuples(KEYS, VALUES) | GOOD_RATINGS | STAMPED_RATINGS, max_size=12),
    st.integers(1, 5),
)
async def test_the_trainer_trains_or_dead_letters_and_ingest_records_every_valid_rating(
    pairs: list[tuple[bytes | None, bytes | None]], max_batch: int
) -> None:
    messages = messages_of(pairs, "ratings")
    table = FakeSeenTable()
    agent = Ingest(seen=table, max_bytes=LIMIT, seen_limit=10)
    letters: list[dict[str, Any]] = []
    trained: set[int] = set()
    for start in range(0, len(messages), max_batch):  # slices, as the bulk readers hand them
        part = messages[start : start + max_batch]
        await agent.handle(part)  # nothing may escape
        batch = DecodedBatch.of(part, max_bytes=LIMIT)  # the trainer's decode step
        trained |= {offset for _, offset in batch.positions}
        letters += [
            {"key": d.key, "value": d.value, "headers": d.headers} for d in batch.dead_letters
        ]
    bad = check_dead_letters(letters, messages)
    assert trained | bad == {m.offset for m in messages} and not trained & bad
    for m in messages:
        if m.offset in trained:
            decode_rating(m.key, m.value, max_bytes=LIMIT)  # valid, so trained...
            assert table.get(m.key.decode()) is not None  # ...and recorded in its user's row


@functools.cache
def served_holder() -> ModelHolder:
    model = IncrementalModel(ModelConfig(no_components=4))
    model.train_batch([Rating(f"e{n}", f"u{n % 3}", f"i{n % 5}", 5.0, n) for n in range(20)])
    holder = ModelHolder()
    holder.publish(model.view())
    return holder


async def _exists(name: str) -> bool:
    return name == "client-replies"


@FUZZ
@given(
    st.lists(st.tuples(KEYS, VALUES) | GOOD_REQUESTS, max_size=12), st.integers(1, 5), st.booleans()
)
async def test_the_scorer_agent_answers_or_dead_letters_every_request(
    pairs: list[tuple[bytes | None, bytes | None]], max_batch: int, loaded: bool
) -> None:
    messages = messages_of(pairs, "rec-requests")
    replies, dlq, other = FakeSink(), FakeSink(), FakeSink()
    scorer = Scorer(
        holder=served_holder() if loaded else ModelHolder(),
        seen=FakeSeenTable(),
        default_reply=replies,
        dlq=dlq,
        reply_topic=lambda name: other,
        topic_exists=_exists,
        forbidden_replies=frozenset({"ratings"}),
        max_bytes=LIMIT,
        max_batch=max_batch,
    )
    await scorer.handle(messages)  # nothing may escape
    bad = check_dead_letters(dlq.sent, messages)
    answered = [Reply.parse(s["value"]) for s in replies.sent + other.sent]
    good = [m for m in messages if m.offset not in bad]
    assert sorted(r.request_id for r in answered) == sorted(
        decode_request(m.key, m.value, max_bytes=LIMIT).request_id for m in good
    )


TRAINER_FUZZ = settings(FUZZ, max_examples=40)  # each example runs a trainer on a store


@TRAINER_FUZZ
@given(
    st.lists(st.tuples(KEYS, VALUES) | GOOD_RATINGS | STAMPED_RATINGS, max_size=16),
    st.integers(1, 6),
)
async def test_the_trainer_agent_trains_valid_ratings_and_dead_letters_the_rest(
    pairs: list[tuple[bytes | None, bytes | None]], batch_max: int
) -> None:
    """The trainer's own fetch loop (``Trainer.run``, as tests/unit/agents/test_trainer.py
    drives it: a fake consumer of four partitions, a fake DLQ, the real local store) on
    arbitrary keys and values: every offset is consumed, each valid rating trained once
    (per user and per item counts exact), each invalid one dead-lettered once with its kind
    and reason and the original bytes; no exception escapes."""
    consumer, dlq = FakeConsumer(), FakeDLQ()
    for n, (key, value) in enumerate(pairs):
        consumer.produce(key, value, partition=n % PARTITIONS)
    valid: list[Rating] = []
    invalid: dict[tuple[int, int], str] = {}  # (partition, offset) -> kind
    for p, records in consumer.log.items():
        for m in records:
            try:
                valid.append(  # judged by the wall clock: the fake records have no timestamp
                    decode_rating(
                        m.key, m.value, max_bytes=TRAINER_MAX_BYTES, reference=time.time()
                    )
                )
            except Undecodable as exc:
                invalid[(p, m.offset)] = exc.kind
    assume(len({r.event_id for r in valid}) == len(valid))  # a repeated id is trained once
    with tempfile.TemporaryDirectory() as tmp:
        async with open_store(f"file://{tmp}") as store:
            trainer, task = await start_trainer(store, consumer, dlq, batch_max=batch_max)
            ends = {f"{TOPIC}:{p}": len(r) for p, r in consumer.log.items() if r}

            def consumed() -> bool:
                if task.done():
                    task.result()  # an exception that escaped the agent fails here
                return all(trainer.model.offsets.get(k) == n for k, n in ends.items())

            await until(consumed)
            await stop(trainer, task, snapshot=False)
    letters = {(d.partition, d.offset): d for d in dlq.letters}
    assert len(letters) == len(dlq.letters), "one dead letter per bad message"
    assert {at: d.kind for at, d in letters.items()} == invalid
    for (p, offset), letter in letters.items():
        original = consumer.log[p][offset]
        assert (letter.key, letter.value) == (original.key, original.value)
        assert letter.reason and letter.topic == TOPIC
    assert trainer.model.trained_events == len(valid)
    users, items = trainer.model.event_counts()
    assert users == dict(Counter(r.user for r in valid))
    assert items == dict(Counter(r.item for r in valid))
