"""Event time at the agents (issue 17): the trainer dead-letters ratings stamped in the
future, the ingest skips them alike, 1990s history then live ratings never break the delta
chain, a delta the scorers would refuse is never sent as is, and a scorer whose chain
breaks asks the trainer for a snapshot, which it writes at once.

Fakes of Kafka (tests/unit/agents/fakes.py, the trainer tests' consumer) and the real
local store; tests/integration/service/test_event_time.py runs the same through Kafka.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agents.decoded_batch import DecodedBatch
from agents.deltas import DeltaPublisher
from agents.follower import ModelFollower
from agents.ingest import Ingest
from agents.resync import SnapshotAsker
from agents.state import ModelHolder
from models.delta import ModelDelta
from models.scoring import ScoringView
from models.signing import Keyring, SignatureError
from models.wire import (
    SnapshotRequest,
    open_delta,
    open_snapshot_request,
    seal_delta,
    seal_snapshot_request,
)
from storage import open_store
from tests.unit.agents.fakes import FakeMessage, FakeSeenTable, FakeSink
from tests.unit.agents.test_deltas import ListSink
from tests.unit.agents.test_follower import DELTAS, UPDATES
from tests.unit.agents.test_follower import FakeConsumer as FollowerConsumer
from tests.unit.agents.test_follower import Trainer as DeltaTrainer
from tests.unit.agents.test_trainer import (
    TOPIC,
    FakeConsumer,
    FakeDLQ,
    start,
    stop,
    until,
)

MOVIELENS = 880_000_000.0  # 1997-11-20
SKEW = 300.0


def rating(n: int, user: str, item: str, ts: float) -> bytes:
    body = {"event_id": f"e{n}-{user}-{item}", "user": user, "item": item, "rating": 5, "ts": ts}
    return json.dumps(body).encode()


def produce(consumer: FakeConsumer, user: str, item: str, ts: float, record_ms: int | None) -> None:
    """A rating on the user's partition, with the Kafka record timestamp ``record_ms``."""
    p = sum(user.encode()) % 4
    offset = len(consumer.log[p])
    value = rating(offset * 4 + p, user, item, ts)
    consumer.log[p].append(FakeMessage(TOPIC, p, offset, user.encode(), value, record_ms))


@pytest.fixture
async def store(tmp_path: Path):
    async with open_store(f"file://{tmp_path / 'models'}") as s:
        yield s


def test_the_reference_is_the_records_timestamp_not_the_time_it_is_read() -> None:
    """Replayed late (a backlog, a restarted trainer), a record is judged by its own
    timestamp: the same verdict however late it is read. No timestamp: the wall clock."""
    sent = 1_600_000_000  # 2020, read years later
    messages = [
        FakeMessage(TOPIC, 0, 0, b"u", rating(0, "u", "i", sent + SKEW), sent * 1000),
        FakeMessage(TOPIC, 0, 1, b"u", rating(1, "u", "i", sent + SKEW + 1), sent * 1000),
        FakeMessage(TOPIC, 0, 2, b"u", rating(2, "u", "i", time.time() * 1000), None),  # ms
        FakeMessage(TOPIC, 0, 3, b"u", rating(3, "u", "i", time.time()), None),
    ]
    batch = DecodedBatch.of(messages, 4096, SKEW)
    assert [offset for _, offset in batch.positions] == [0, 3]
    assert [(d.offset, d.kind) for d in batch.dead_letters] == [
        (1, "ts_in_future"),
        (2, "ts_in_future"),
    ]
    assert "past its reference clock" in batch.dead_letters[0].reason
    # A producer clock ahead of the reader's does not widen the window.
    ahead = FakeMessage(TOPIC, 0, 4, b"u", rating(4, "u", "i", time.time() + 3000), None)
    ahead.timestamp = int((time.time() + 3600) * 1000)
    assert DecodedBatch.of([ahead], 4096, SKEW).dead_letters[0].kind == "ts_in_future"


async def test_the_ingest_skips_what_the_trainer_dead_letters() -> None:
    now_ms = int(time.time() * 1000)
    messages = [
        FakeMessage(TOPIC, 0, 0, b"a", rating(0, "a", "i", now_ms), now_ms),  # ms: skipped
        FakeMessage(TOPIC, 0, 1, b"b", rating(1, "b", "i", now_ms / 1000), now_ms),
    ]
    table = FakeSeenTable()
    bad = Ingest(seen=table, max_bytes=4096, seen_limit=10, max_future_skew=SKEW).record(messages)
    assert [(m.offset, exc.kind) for m, exc in bad] == [(0, "ts_in_future")]
    assert table.get("a") is None and table.get("b") is not None
    trainer_letters = DecodedBatch.of(messages, 4096, SKEW).dead_letters
    assert [d.offset for d in trainer_letters] == [m.offset for m, _ in bad]


async def test_1990s_history_then_live_ratings_every_delta_applies_and_popularity_follows(
    store,
) -> None:
    """The issue's case through the trainer agent: MovieLens-era ratings, then ratings stamped
    now, with a rating in milliseconds among them. Every delta the trainer sends decodes and
    applies to the view a scorer serves (no marker, no gap); the ms rating is dead-lettered
    once as ts_in_future; the live ratings lead ``popular``."""
    consumer, dlq = FakeConsumer(), FakeDLQ()
    now = time.time()
    now_ms = int(now * 1000)
    trainer, task = await start(store, consumer, dlq, batch_max=25)
    sink = ListSink()
    trainer.deltas = DeltaPublisher(sink, max_bytes=1 << 20)
    for n in range(60):
        produce(consumer, f"old{n % 20}", f"classic{n % 3}", MOVIELENS + n * 3600, now_ms)
    await until(lambda: trainer.model.trained_events == 60)
    await until(
        lambda: trainer.holder.info.get("delta", {}).get("version") == trainer.model.version
    )
    served: ScoringView = trainer.holder.view  # a scorer that followed the history
    history = len(sink.sent)
    produce(consumer, "live0", "new-release", now, now_ms)
    produce(consumer, "clock-wrong", "poisoned", now * 1000, now_ms)  # milliseconds
    for n in range(1, 4):
        produce(consumer, f"live{n}", "new-release", now + n, now_ms + n)
    await until(lambda: trainer.model.trained_events == 64)
    await until(lambda: sum(trainer.model.offsets.values()) == consumer.end())
    await stop(trainer, task, snapshot=False)

    (letter,) = dlq.letters  # dead-lettered once, with its original bytes
    assert letter.kind == "ts_in_future" and json.loads(letter.value)["ts"] == now * 1000
    assert len(sink.sent) > history, "the live batches sent deltas"
    for _, raw in sink.sent[history:]:
        delta = ModelDelta.decode(
            open_delta(raw, Keyring.dev())
        )  # a scorer's checks: refused on main (decay 0.0)
        assert not delta.snapshot_needed and 0 < delta.popularity_decay <= 1
        served = served.with_delta(delta)
    assert served.version == trainer.model.version
    assert served.popular(1)[0].item == "new-release"
    assert served.popularity_ts is not None and served.popularity_ts <= time.time() + SKEW
    assert "snapshot_due" not in trainer.holder.info  # nothing made a snapshot urgent


async def test_a_delta_the_scorers_would_refuse_goes_out_as_a_marker_and_a_snapshot_follows(
    store,
) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    now_ms = int(time.time() * 1000)
    for n in range(20):
        produce(consumer, f"u{n}", f"i{n % 4}", time.time(), now_ms)
    trainer, task = await start(store, consumer, dlq, batch_max=10)
    sink = ListSink()
    trainer.deltas = DeltaPublisher(sink, max_bytes=1 << 20)
    await until(lambda: trainer.model.trained_events == 20)
    model = trainer.model
    view = model.view

    def broken_view() -> ScoringView:  # a delta decode would refuse (as main made them)
        made = view()
        if model.last_delta is not None:
            model.last_delta = replace(model.last_delta, popularity_decay=0.0)
        return made

    await until(lambda: trainer.holder.info.get("delta", {}).get("version") == model.version)
    before = len(sink.sent)
    model.view = broken_view  # type: ignore[method-assign]
    produce(consumer, "late", "i0", time.time(), now_ms)
    await until(lambda: len(sink.sent) > before)
    marker = ModelDelta.decode(
        open_delta(sink.sent[-1][1], Keyring.dev())
    )  # what scorers get: valid, "load the snapshot"
    assert marker.snapshot_needed and marker.version == model.version
    # The marker is on the wire before the trainer's publish returns and records it.
    await until(lambda: "snapshot_due" in trainer.holder.info)
    due = trainer.holder.info["snapshot_due"]
    assert due["reason"] == "refused" and due["version"] == marker.version
    assert "popularity_decay" in trainer.holder.info["delta"]["refused"]
    # Written and announced at once: no tick runs here, the interval is 600 s.
    await until(
        lambda: trainer.holder.info.get("snapshot", {}).get("version", -1) >= marker.version
    )
    assert trainer.updates.sent
    await stop(trainer, task)


async def test_a_scorers_request_gets_a_snapshot_at_once_rate_limited(store) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    now_ms = int(time.time() * 1000)
    for n in range(10):
        produce(consumer, f"u{n}", "i", time.time(), now_ms)
    trainer, task = await start(store, consumer, dlq)
    await until(lambda: trainer.model.trained_events == 10)
    request = SnapshotRequest("invalid delta", time.time(), "other", 3)
    assert trainer.snapshot_requested(request)
    await until(lambda: trainer.holder.info.get("snapshot", {}).get("version", -1) >= 1)
    first = trainer.holder.info["snapshot"]["version"]
    # Many scorers asking at once: one snapshot per answer_every.
    assert not trainer.snapshot_requested(request)
    # Nothing unsaved now: the next batch's state is snapshotted at once.
    trainer._schedule.answered_at = -1e9
    assert trainer.snapshot_requested(request)
    produce(consumer, "u-next", "i", time.time(), now_ms)
    await until(lambda: trainer.holder.info["snapshot"]["version"] > first)
    await stop(trainer, task)


async def test_a_follower_whose_chain_breaks_asks_the_trainer_for_a_snapshot(store) -> None:
    sink = FakeSink()
    asker = SnapshotAsker(sink, every=3600)
    follower = ModelFollower(ModelHolder(), store, {}, UPDATES, deltas_topic=DELTAS, asker=asker)
    follower._consumer = FollowerConsumer()  # type: ignore[assignment]
    trainer = DeltaTrainer()
    await follower.on_delta(trainer.batch(0))
    await trainer.snapshot(store)
    good = trainer.batch(1)
    inner = open_delta(good.value, Keyring.dev())  # signed by the trainer, but corrupt:
    bad = replace(good, value=seal_delta(inner[:-1] + bytes([inner[-1] ^ 1]), Keyring.dev()))
    assert await follower.on_delta(bad)  # refused: resync from the current snapshot
    (sent,) = sink.sent
    request = open_snapshot_request(sent["value"], Keyring.dev())  # signed
    assert sent["key"] == b"snapshot" and request.reason == "invalid delta"
    assert request.version == 1 and abs(request.at - time.time()) < 60
    # The chain then has a gap and the snapshot was loaded: it waits, and asks no more
    # often than ``every`` (many scorers, one trainer).
    assert not await follower.on_delta(bad)
    assert not await follower.on_delta(trainer.batch(2))
    assert follower._waiting and len(sink.sent) == 1
    asker.every = 0.0
    await follower._ask("waiting")
    assert open_snapshot_request(sink.sent[-1]["value"], Keyring.dev()).reason == "waiting"
    # The trainer's answer arrives: fresh again.
    await follower.on_update(await trainer.snapshot(store))
    assert not follower._waiting and follower.holder.view.version == trainer.model.version


async def test_an_asker_that_cannot_send_does_not_raise() -> None:
    class Down:
        async def send(self, **kwargs: object) -> None:
            raise ConnectionError("broker gone")

    from models.delta import Chain

    assert not await SnapshotAsker(Down()).ask("gap", Chain())
    await asyncio.sleep(0)


def test_a_snapshot_request_counts_only_when_signed_by_a_model_key() -> None:
    """Anyone who can write to model-requests could otherwise make the trainer snapshot
    (a whole-model write) every two seconds: the trainer opens only signed requests."""
    request = SnapshotRequest("gap", time.time(), "lineage", 7)
    key, value = seal_snapshot_request(request, Keyring.dev())
    assert key == b"snapshot" and open_snapshot_request(value, Keyring.dev()) == request
    with pytest.raises(SignatureError, match="not signed"):
        open_snapshot_request(request.encode()[1], Keyring.dev())  # plain JSON: forged
    other = Keyring(b"a key the trainer does not hold")
    with pytest.raises(SignatureError) as refused:
        open_snapshot_request(seal_snapshot_request(request, other)[1], Keyring.dev())
    assert refused.value.kind == "unknown_key"
