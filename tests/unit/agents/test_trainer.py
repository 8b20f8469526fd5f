"""The trainer agent against a small fake consumer, fake sinks and the real local store.

Every test runs the agent's own fetch loop (``Trainer.run``) on an in-memory "topic" of
four partitions; restarts are new ``Trainer`` objects restored from the same store, with
the dead-letter marks a real trainer reads from the DLQ's tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiokafka import TopicPartition

import agents.consolidation as consolidation_module
from agents.decoded_batch import DecodedBatch
from agents.deltas import DeltaPublisher
from agents.state import ModelHolder
from agents.trainer import Trainer, restore_model
from models.bounds import Capacity
from models.config import ModelConfig
from models.incremental import IncrementalModel
from models.signing import Keyring
from models.synthetic import generate_ratings
from models.wire import DeadLetter, ModelDelta, ModelUpdate, encode_rating, open_delta
from storage import SnapshotStore, open_store
from tests.unit.agents.fakes import FakeMessage, FakeSink
from tests.unit.agents.test_deltas import ListSink


def opened(raw: bytes | None) -> ModelDelta:
    """The delta in a signed delta message (the trainer signs with the dev key here)."""
    return ModelDelta.decode(open_delta(raw, Keyring.dev()))


TOPIC = "ratings"
PARTITIONS = 4
MAX_BYTES = 4096  # the trainer's message size limit in these tests
# A dedupe memory of one event id: the model's own duplicate filter cannot hide a rating
# that the trainer's offsets let through twice.
CONFIG = ModelConfig(no_components=8, epochs_per_batch=1, seed=1, dedupe_memory=1)


@dataclass
class FakeConsumer:
    """Four partitions of records; ``getmany`` returns what is there from each position."""

    log: dict[int, list[FakeMessage]] = field(default_factory=lambda: {p: [] for p in range(4)})
    positions: dict[int, int] = field(default_factory=dict)
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    seeks: dict[int, int] = field(default_factory=dict)

    def produce(self, key: bytes | None, value: bytes | None, partition: int | None = None) -> None:
        p = partition if partition is not None else sum(key or b"") % PARTITIONS
        self.log[p].append(FakeMessage(TOPIC, p, len(self.log[p]), key, value))

    def produce_ratings(self, ratings: Sequence) -> None:
        for r in ratings:
            self.produce(*encode_rating(r))

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Mapping[TopicPartition, Sequence[FakeMessage]]:
        out: dict[TopicPartition, list[FakeMessage]] = {}
        room = max_records or 1 << 30
        for p, records in self.log.items():
            if p not in self.positions:
                continue
            taken = records[self.positions[p] : self.positions[p] + room]
            if taken:
                out[TopicPartition(TOPIC, p)] = taken
                self.positions[p] += len(taken)
                room -= len(taken)
        if not out:
            await asyncio.sleep(min(timeout_ms, 20) / 1000)
        else:
            self.batches.append(sum(len(v) for v in out.values()))
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition.partition] = self.seeks[partition.partition] = offset

    async def seek_to_beginning(self, *partitions: TopicPartition) -> bool:
        for tp in partitions:
            self.seek(tp, 0)
        return True

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, p) for p in self.positions}

    def end(self) -> int:
        return sum(len(r) for r in self.log.values())


@dataclass
class FakeDLQ:
    letters: list[DeadLetter] = field(default_factory=list)

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)

    def marks(self) -> dict[int, int]:
        """What ``agents.kafka.dead_letter_marks`` reads from the real DLQ's tail."""
        marks: dict[int, int] = {}
        for d in self.letters:
            marks[d.partition] = max(marks.get(d.partition, -1), d.offset)
        return marks


async def start(
    store: SnapshotStore, consumer: FakeConsumer, dlq: FakeDLQ, **kw
) -> tuple[Trainer, asyncio.Task[None]]:
    model = await restore_model(store, kw.pop("config", CONFIG))
    batch_max = kw.pop("batch_max", 500)
    trainer = Trainer(
        model=model,
        holder=ModelHolder(),
        store=store,
        updates=FakeSink(),
        dead_letters=dlq,
        dead_lettered=dlq.marks(),
        max_bytes=kw.pop("max_bytes", MAX_BYTES),
        snapshot_every_batches=kw.pop("snapshot_every_batches", 1000),
        snapshot_every_seconds=kw.pop("snapshot_every_seconds", 600),
        consumer=consumer,
        capacity=kw.pop("capacity", Capacity()),
        **kw,
    )
    await trainer.on_assigned({TopicPartition(TOPIC, p) for p in range(PARTITIONS)})
    task = asyncio.create_task(trainer.run(batch_max=batch_max, poll_seconds=0.05))
    return trainer, task


async def until(predicate, within: float = 20.0) -> None:
    """Poll ``predicate`` (state the agent changes between awaits) for ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def stop(trainer: Trainer, task: asyncio.Task[None], *, snapshot: bool = True) -> None:
    trainer.stop()
    await task
    if snapshot:
        await trainer.snapshot_now("test")


def bad_messages() -> list[tuple[bytes | None, bytes | None, str]]:
    good = {"event_id": "e", "user": "u1", "item": "i1", "rating": 4.0, "ts": 1.0}
    return [
        (b"u1", b"{not json", "malformed"),
        (b"u1", json.dumps({**good, "rating": 11}).encode(), "invalid"),
        (b"u2", json.dumps(good).encode(), "invalid"),  # keyed by another user
        (b"u1", None, "empty"),
        (b"u1", json.dumps({**good, "item": "x" * 5000}).encode(), "too_large"),
    ]


@pytest.fixture
async def store(tmp_path: Path):
    async with open_store(f"file://{tmp_path / 'models'}") as s:
        yield s


async def test_trains_every_valid_rating_and_dead_letters_every_invalid_one(store) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    ratings = generate_ratings(100, 40, 1200, 4, seed=2)
    consumer.produce_ratings(ratings[:600])
    for key, value, _ in bad_messages():
        consumer.produce(key, value, partition=2)
    consumer.produce_ratings(ratings[600:])
    trainer, task = await start(store, consumer, dlq)
    await until(lambda: trainer.model.trained_events == len(ratings))
    await until(lambda: sum(trainer.model.offsets.values()) == consumer.end())
    await stop(trainer, task)

    assert [d.kind for d in dlq.letters] == [kind for _, _, kind in bad_messages()]
    assert all(d.reason and d.topic == TOPIC and d.partition == 2 for d in dlq.letters)
    assert [d.value for d in dlq.letters] == [v for _, v, _ in bad_messages()]  # original bytes
    # The shutdown snapshot covers everything and is committed.
    _, manifest = await store.get(await store.latest())
    assert manifest["trained_events"] == len(ratings)
    assert sum(manifest["offsets"].values()) == consumer.end()
    committed = consumer.commits[-1]
    assert {tp.partition: o for tp, o in committed.items()} == {
        p: len(consumer.log[p]) for p in range(PARTITIONS)
    }
    assert trainer.holder.view is not None and trainer.holder.info["trained_events"] == 1200


async def test_batches_are_what_is_available_up_to_batch_max(store) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    ratings = generate_ratings(100, 30, 1000, 2, seed=3)
    consumer.produce_ratings(ratings)
    trainer, task = await start(store, consumer, dlq, batch_max=300)
    await until(lambda: trainer.model.trained_events == 1000)
    assert max(consumer.batches) == 300 and sum(consumer.batches) == 1000
    # A lone rating is trained as a batch of one: no window waits for more.
    lone = generate_ratings(100, 30, 1001, 2, seed=4)[-1:]
    consumer.produce_ratings(lone)
    await until(lambda: trainer.model.trained_events == 1001, within=5)
    assert consumer.batches[-1] == 1
    await stop(trainer, task)


async def test_consolidations_run_beside_the_batches_and_are_installed_when_they_end(
    store,
) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    ratings = generate_ratings(200, 60, 3000, 4, seed=5)
    consumer.produce_ratings(ratings)
    config = replace(CONFIG, consolidate_every=1000, consolidate_epochs=3, blend_neighbours=5)
    trainer, task = await start(store, consumer, dlq, batch_max=300, config=config)
    model = trainer.model
    assert model.defer_consolidation
    await until(lambda: model.trained_events == 3000)
    # No timer runs here: the consolidation thread's end installs it (and cuts the next
    # one while due) on the loop; /model/ says when none is pending any more.
    await until(lambda: trainer.holder.info.get("consolidation_pending") is False)
    assert not model.consolidation_pending and model.since_consolidation < 1000
    assert model._neighbours is not None  # installed (only consolidations build them here)
    assert trainer.holder.view is not None and trainer.holder.view.version == model.version
    users, items = model.event_counts()
    assert sum(users.values()) == sum(items.values()) == 3000  # each rating applied once
    await trainer.tick()  # nothing left to do
    assert trainer.holder.view.version == model.version
    await stop(trainer, task)


async def test_a_consolidations_delta_gets_its_snapshot_without_waiting_for_a_tick(
    store,
) -> None:
    # One batch crosses the mark; the consolidation ends after it, with no batch to follow
    # and no timer running. Its delta carries the rows; scorers need the snapshot for the
    # new blending neighbours.
    consumer, dlq = FakeConsumer(), FakeDLQ()
    consumer.produce_ratings(generate_ratings(200, 60, 1000, 4, seed=5))
    config = replace(CONFIG, consolidate_every=1000, consolidate_epochs=3, blend_neighbours=5)
    trainer, task = await start(store, consumer, dlq, batch_max=1000, config=config)
    sink = ListSink()
    trainer.deltas = DeltaPublisher(sink, max_bytes=1 << 20)
    await until(lambda: any(opened(raw).replaces_neighbours for _, raw in sink.sent))
    delta = opened(sink.sent[-1][1])
    assert not delta.snapshot_needed
    assert 0 < delta.rows_touched <= delta.n_users + delta.n_items  # the rows it changed
    marker = delta.version
    # The delta is on the wire before the trainer's publish returns and records it.
    await until(lambda: "snapshot_due" in trainer.holder.info)
    due = trainer.holder.info["snapshot_due"]  # /model/ shows it
    assert due["version"] == marker and due["reason"] == "neighbours"
    await until(lambda: trainer.holder.info.get("snapshot", {}).get("version", -1) >= marker)
    assert await store.current() >= marker and trainer.updates.sent  # written and announced
    await stop(trainer, task)


async def test_a_marker_during_a_snapshot_write_gets_the_next_one_right_after(store) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    consumer.produce_ratings(generate_ratings(100, 40, 200, 4, seed=6))
    trainer, task = await start(store, consumer, dlq)
    await until(lambda: trainer.model.trained_events == 200)
    entered, gate = asyncio.Event(), asyncio.Event()
    put = store.put

    async def slow_put(*args, **kwargs):
        entered.set()
        await gate.wait()
        return await put(*args, **kwargs)

    store.put = slow_put  # type: ignore[method-assign]
    writer = asyncio.create_task(trainer._snapshots.write())
    trainer._snapshots._task = writer
    await entered.wait()  # its state is cut: it will not cover the marker
    trainer.model.version += 1  # the consolidation's new state, announced by a marker
    trainer._schedule.urgent_version = trainer.model.version
    trainer._snapshots.soon()
    gate.set()
    assert await writer
    # No batch, no tick: a second snapshot, of the marker's state, follows the first.
    await until(
        lambda: trainer.holder.info["snapshot"]["version"] >= trainer._schedule.urgent_version
    )
    await stop(trainer, task)


async def test_a_consolidation_yields_to_a_backlog_between_epochs_for_a_bounded_time(
    store, monkeypatch
) -> None:
    monkeypatch.setattr(consolidation_module, "CONSOLIDATION_MAX_PAUSE", 0.2)
    trainer, task = await start(store, FakeConsumer(), FakeDLQ())
    started = time.monotonic()
    trainer._consolidation.yield_to_batches()  # no backlog: no wait
    assert time.monotonic() - started < 0.1
    trainer._consolidation.backlog = True  # the last fetch was large: ratings are waiting
    started = time.monotonic()
    trainer._consolidation.yield_to_batches()
    assert 0.2 <= time.monotonic() - started < 2.0
    await stop(trainer, task, snapshot=False)


async def test_restart_after_a_crash_trains_nothing_twice_and_loses_nothing(store) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    ratings = generate_ratings(150, 60, 3000, 4, seed=5)
    consumer.produce_ratings(ratings[:1000])
    trainer, task = await start(store, consumer, dlq, snapshot_every_batches=1)
    await until(lambda: trainer.model.trained_events == 1000)
    await until(lambda: store_has_offsets(trainer))
    snapshotted = trainer.model.trained_events
    consumer.produce_ratings(ratings[1000:2000])
    await until(lambda: trainer.model.trained_events >= 1500)
    task.cancel()  # a crash: whatever was trained after the last snapshot is gone
    with pytest.raises(asyncio.CancelledError):
        await task
    writer = trainer._snapshots.task  # a crash ends a background snapshot write too
    if writer is not None and not writer.done():
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    assert snapshotted <= 1000

    consumer.positions.clear()  # the new member of the group gets an assignment
    consumer.produce_ratings(ratings[2000:])
    again, task = await start(store, consumer, dlq)
    _, manifest = await store.get(await store.current() or await store.latest())  # restored
    assert {f"{TOPIC}:{p}": o for p, o in consumer.seeks.items()} == {
        **{f"{TOPIC}:{p}": 0 for p in range(PARTITIONS)},
        **manifest["offsets"],
    }  # resumed exactly where the snapshot ends
    await until(lambda: again.model.trained_events == len(ratings))
    await stop(again, task)
    _, manifest = await store.get(await store.latest())
    assert manifest["trained_events"] == len(ratings)  # each rating exactly once


def store_has_offsets(trainer: Trainer) -> bool:
    trainer._snapshots.start()  # what the worker's snapshot timer does (Trainer.tick)
    return trainer._schedule.offsets == trainer.model.offsets and bool(trainer.model.offsets)


async def test_dead_letters_exactly_once_across_a_crash_before_the_snapshot(store) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    ratings = generate_ratings(60, 20, 400, 4, seed=6)
    consumer.produce_ratings(ratings[:200])
    for key, value, _ in bad_messages():
        consumer.produce(key, value, partition=1)
    consumer.produce_ratings(ratings[200:])
    trainer, task = await start(store, consumer, dlq)
    await until(lambda: len(dlq.letters) == len(bad_messages()))
    await until(lambda: trainer.model.trained_events == len(ratings))
    task.cancel()  # killed after the DLQ sends, before any snapshot
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.latest() is None

    more_bad = (b"u3", b"[1, 2]")
    consumer.produce(*more_bad, partition=1)
    consumer.positions.clear()
    again, task = await start(store, consumer, dlq)
    await until(lambda: again.model.trained_events == len(ratings))
    await until(lambda: len(dlq.letters) == len(bad_messages()) + 1)
    await stop(again, task)
    assert sorted((d.partition, d.offset) for d in dlq.letters) == sorted(
        {(d.partition, d.offset) for d in dlq.letters}
    ), "a rating was dead-lettered twice"
    assert dlq.letters[-1].value == more_bad[1]


def test_a_redelivered_batch_keeps_only_what_the_model_has_not_seen() -> None:
    records = [
        FakeMessage(TOPIC, 0, o, *encode_rating(r))
        for o, r in enumerate(generate_ratings(5, 5, 6, 1, seed=1))
    ]
    records.insert(3, FakeMessage(TOPIC, 0, 99, b"u1", b"nope"))
    batch = DecodedBatch.of(records, max_bytes=MAX_BYTES)
    assert len(batch.ratings) == 6 and [d.offset for d in batch.dead_letters] == [99]
    assert batch.next_offsets == {f"{TOPIC}:0": 100} and batch.first_offsets[f"{TOPIC}:0"] == 0
    assert batch.after({}, {}) is batch
    later = batch.after({f"{TOPIC}:0": 4}, {})
    assert [p for p in later.positions] == [(0, 4), (0, 5)] and len(later.dead_letters) == 1
    assert batch.after({}, {0: 99}).dead_letters == []


async def test_a_flood_of_new_users_past_the_bound_is_dead_lettered_the_same_after_a_crash(
    store,
) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    known = generate_ratings(30, 20, 300, 4, seed=7)
    consumer.produce_ratings(known)
    capacity = Capacity(max_users=40, max_items=25)
    trainer, task = await start(store, consumer, dlq, capacity=capacity, snapshot_every_batches=1)
    await until(lambda: trainer.model.trained_events == len(known))
    await until(lambda: store_has_offsets(trainer))
    users0 = trainer.model.n_users
    trainer.snapshot_every_batches = 1 << 30  # no snapshot covers the flood
    flood = [
        replace(r, event_id=f"flood-{n}", user=f"fake-{n}", item=r.item if n % 2 else f"new-{n}")
        for n, r in enumerate(generate_ratings(60, 20, 500, 4, seed=8))
    ]
    again_known = [replace(r, event_id=f"again-{r.event_id}") for r in known[:100]]
    consumer.produce_ratings(flood + again_known)
    await until(lambda: trainer.model.trained_events == len(known) + 100 + 40 - users0)
    await until(lambda: sum(trainer.model.offsets.values()) == consumer.end())
    assert trainer.model.n_users == 40 and trainer.model.n_items <= 25
    sent = len(dlq.letters)
    assert sent == len(flood) - (40 - users0)
    assert {d.kind for d in dlq.letters} == {"capacity"}
    assert all("STREAMREC_MAX_" in d.reason and d.value is not None for d in dlq.letters)
    values = {encode_rating(r)[1] for r in flood}
    assert all(d.value in values for d in dlq.letters)  # the original bytes
    task.cancel()  # a crash before the next snapshot: the flood is read again
    with pytest.raises(asyncio.CancelledError):
        await task
    consumer.positions.clear()
    again, task = await start(store, consumer, dlq, capacity=capacity)
    await until(lambda: sum(again.model.offsets.values()) == consumer.end())
    await stop(again, task)
    assert again.model.n_users == 40 and again.model.trained_events == trainer.model.trained_events
    assert len(dlq.letters) == sent  # the same ones refused, none sent twice


def test_capacity_letters_keep_offset_order_with_the_other_dead_letters() -> None:
    records = [
        FakeMessage(TOPIC, 0, o, *encode_rating(replace(r, user=f"new-{o}")))
        for o, r in enumerate(generate_ratings(5, 5, 6, 1, seed=1))
    ]
    records.insert(3, FakeMessage(TOPIC, 0, 3, b"u1", b"nope"))
    for n, record in enumerate(records):
        record.offset = n
    batch = DecodedBatch.of(records, max_bytes=MAX_BYTES)
    model = IncrementalModel(CONFIG)
    within = batch.within(model, Capacity(max_users=2))
    assert [r.user for r in within.ratings] == ["new-0", "new-1"]
    assert [(d.offset, d.kind) for d in within.dead_letters] == [
        (2, "capacity"),
        (3, "malformed"),
        (4, "capacity"),
        (5, "capacity"),
        (6, "capacity"),
    ]
    assert batch.within(model, Capacity()) is batch


async def test_every_delta_makes_the_next_version_and_everything_is_signed(store) -> None:
    """A snapshot of moved offsets only (a batch of invalid ratings) needs a new version:
    a delta without rows carries it, so the chain never skips one (next_step refuses any
    other step). Snapshots and their announcements are signed with the trainer's key."""
    keys = Keyring(b"the trainer's own model key")
    consumer, dlq = FakeConsumer(), FakeDLQ()
    consumer.produce_ratings(generate_ratings(50, 20, 200, 2, seed=7))
    trainer, task = await start(store, consumer, dlq)
    trainer.keys = keys
    sink = ListSink()
    trainer.deltas = DeltaPublisher(sink, max_bytes=1 << 20, keys=keys)
    await until(lambda: trainer.model.trained_events == 200)
    await trainer.snapshot_now("test")
    for key, value, _ in bad_messages():  # offsets move, no rows
        consumer.produce(key, value, partition=1)
    await until(lambda: sum(trainer.model.offsets.values()) == consumer.end())
    await trainer.snapshot_now("test")
    consumer.produce_ratings(generate_ratings(50, 20, 260, 2, seed=8)[200:])
    await until(lambda: trainer.model.trained_events == 260)
    await stop(trainer, task)
    deltas = [ModelDelta.decode(open_delta(raw, keys)) for _, raw in sink.sent]
    assert any(d.rows_touched == 0 for d in deltas)  # the offsets-only version's
    steps = itertools.pairwise(deltas)
    assert all(b.version == a.version + 1 == b.base_version + 1 for a, b in steps)
    restored = await restore_model(store, CONFIG, keys=keys)  # signed: restored
    assert restored.version == await store.latest()
    with pytest.raises(RuntimeError, match="untrusted snapshot"):
        await restore_model(store, CONFIG, keys=Keyring(b"some other key, not the trainer's"))
    assert trainer.updates.sent
    for sent in trainer.updates.sent:
        ModelUpdate.parse(sent["value"]).check(keys)
