"""Incremental checkpoints in the trainer (agents.snapshot_writer, agents.checkpoints): a full
snapshot, then segments of the changed rows; restores (the trainer's and the scorers') are
base + segments, refused like corrupt snapshots when a link is broken; retention prunes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.checkpoints import fetch_chain, load_view
from agents.state import ModelHolder
from agents.trainer import Trainer, restore_model
from models.errors import SnapshotError
from models.incremental import IncrementalModel
from models.ownership import Share
from models.segment import Segment, decode_segment
from models.synthetic import generate_ratings
from storage import open_store
from storage.base import manifest_key, payload_key, retention_plan
from storage.errors import StoreUnavailable
from tests.unit.agents.test_trainer import (
    CONFIG,
    FakeConsumer,
    FakeDLQ,
    start,
    stop,
    store_has_offsets,
    until,
)

SEGMENTS = {"checkpoint_segments": 3, "checkpoint_chain_fraction": 10.0, "batch_max": 50}
"""Three segments after each base; the tests decide when checkpoints are written."""


@pytest.fixture
async def store(tmp_path: Path):
    async with open_store(f"file://{tmp_path / 'models'}") as s:
        yield s


async def manifests(store) -> dict[int, dict]:
    return {i.version: (await store.get(i.version))[1] for i in await store.list() if i.complete}


def same_arrays(a, b) -> None:
    left, right = a.snapshot_state(), b.snapshot_state()
    for name in left.arrays:
        np.testing.assert_array_equal(left.arrays[name], right.arrays[name], err_msg=name)
    assert (left.user_ids, left.item_ids, left.offsets) == (
        right.user_ids,
        right.item_ids,
        right.offsets,
    )
    assert left.recent_event_ids == right.recent_event_ids
    assert left.window.keys() == right.window.keys()
    for name in left.window:
        np.testing.assert_array_equal(left.window[name], right.window[name], err_msg=name)
    assert (left.popularity_ts, left.since_consolidation) == (
        right.popularity_ts,
        right.since_consolidation,
    )


async def trained(store, ratings, chunk: int = 200, first: int = 0, **kw) -> Trainer:
    """Train ``ratings`` ``chunk`` at a time (the ``first`` at once), a checkpoint after
    each chunk."""
    consumer, dlq = FakeConsumer(), FakeDLQ()
    trainer, task = await start(store, consumer, dlq, **{**SEGMENTS, **kw})
    for at, end in itertools.pairwise(
        [0, *range(first or chunk, len(ratings), chunk), len(ratings)]
    ):
        consumer.produce_ratings(ratings[at:end])
        await until(lambda: sum(trainer.model.offsets.values()) == consumer.end())
        await trainer.snapshot_now("test")
    await stop(trainer, task)
    return trainer


async def test_the_trainer_writes_segments_and_restores_base_plus_segments(
    store, monkeypatch
) -> None:
    cuts: list[str] = []  # what the trainer cut under its lock
    cut_checkpoint = IncrementalModel.cut_checkpoint

    def spy(model: IncrementalModel, **kw: Any) -> Any:
        cut = cut_checkpoint(model, **kw)
        cuts.append(type(cut).__name__)
        return cut

    monkeypatch.setattr(IncrementalModel, "cut_checkpoint", spy)
    ratings = generate_ratings(150, 60, 2000, 4, seed=5)
    trainer = await trained(store, ratings)
    found = await manifests(store)
    segments = [m for m in found.values() if "parent" in m]
    assert len(segments) == 7 and len(found) == 10  # b s s s b s s s b s
    # only the first full snapshot was a copy under the lock; the others were compacted
    # from the stored chain and the segment cut, outside it
    assert cuts == ["SnapshotState"] + ["Segment"] * 9
    assert all(m["parent"] in found for m in segments)
    head = await store.current()
    assert "parent" in found[head] or len(found) == 1
    restored = await restore_model(store, CONFIG)
    same_arrays(restored, trainer.model)  # bit for bit
    assert restored.trained_events == len(ratings)
    view, _, manifest = await load_view(store, head)  # what a scorer serves
    assert view.version == manifest["version"] == trainer.model.version
    live = trainer.model.full_view()
    for name, array in live.scoring_arrays().items():
        np.testing.assert_array_equal(view.scoring_arrays()[name], array, err_msg=name)
    assert view.user_ids() == live.user_ids() and view.item_ids() == live.item_ids()


def spy_cuts(monkeypatch) -> list[Any]:
    """What the trainer cuts under its lock, in order."""
    cuts: list[Any] = []
    cut_checkpoint = IncrementalModel.cut_checkpoint

    def spy(model: IncrementalModel, **kw: Any) -> Any:
        cuts.append(cut_checkpoint(model, **kw))
        return cuts[-1]

    monkeypatch.setattr(IncrementalModel, "cut_checkpoint", spy)
    return cuts


async def train_then_checkpoint(trainer: Trainer, consumer: FakeConsumer, ratings) -> None:
    consumer.produce_ratings(ratings)
    await until(lambda: sum(trainer.model.offsets.values()) == consumer.end())
    await trainer.snapshot_now("test")


async def test_a_restarted_trainer_continues_the_restored_chain(store, monkeypatch) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    ratings = generate_ratings(150, 60, 1400, 4, seed=11)
    trainer, task = await start(store, consumer, dlq, **SEGMENTS)
    for at in range(0, 800, 200):
        await train_then_checkpoint(trainer, consumer, ratings[at : at + 200])  # b s s s
    await stop(trainer, task)
    restored = await store.current()
    cuts = spy_cuts(monkeypatch)
    consumer.positions.clear()
    again, task = await start(store, consumer, dlq, **{**SEGMENTS, "checkpoint_segments": 5})
    await train_then_checkpoint(again, consumer, ratings[800:1100])
    # the first checkpoint after the restart: a segment of the restored chain, cut under
    # the lock in O(rows changed), not a copy of the whole state
    assert [type(c).__name__ for c in cuts] == ["Segment"]
    found = await manifests(store)
    first = max(found)
    assert found[first]["parent"] == restored
    assert found[first]["base"] == found[restored]["base"]
    assert found[first]["parent_sha256"] == found[restored]["sha256"]
    same_arrays(await restore_model(store, CONFIG), again.model)  # bit for bit
    # and the chain goes on: the restored chain's 3 segments + this one + 1 = 5, then a base
    for at in (1100, 1250):
        await train_then_checkpoint(again, consumer, ratings[at : at + 150])
    await stop(again, task)
    found = await manifests(store)
    *_, before, last = sorted(found)
    assert "parent" in found[before] and "parent" not in found[last]
    assert all(isinstance(c, Segment) for c in cuts)  # the base compacted outside the lock
    same_arrays(await restore_model(store, CONFIG), again.model)


async def test_after_a_failed_write_the_next_segment_carries_both_cuts(store, monkeypatch) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    ratings = generate_ratings(150, 60, 900, 4, seed=12)
    cuts = spy_cuts(monkeypatch)
    trainer, task = await start(store, consumer, dlq, **SEGMENTS)
    await train_then_checkpoint(trainer, consumer, ratings[:500])  # the base
    put, failures = store.put, []

    async def fails_once(*args: Any, **kw: Any) -> Any:
        if not failures:
            failures.append(args[0])
            raise StoreUnavailable("the store is down (a test)")
        return await put(*args, **kw)

    monkeypatch.setattr(store, "put", fails_once)
    await train_then_checkpoint(trainer, consumer, ratings[500:700])  # cut, not written
    await train_then_checkpoint(trainer, consumer, ratings[700:])
    await stop(trainer, task)
    assert failures and [type(c).__name__ for c in cuts] == ["SnapshotState", *["Segment"] * 2]
    found = await manifests(store)
    base, segment = sorted(found)
    assert failures[0] not in found and found[segment]["parent"] == base
    carried = decode_segment(*(await store.get(segment)))
    model = trainer.model
    for users in (cuts[1].user_rows, cuts[2].user_rows):  # both cuts' rows
        assert set(users.tolist()) <= set(carried.user_rows.tolist())
    # both cuts' events (200 + 200), and the new ids since the base
    assert carried.recent_tail == model.snapshot_state().recent_event_ids[-400:]
    assert carried.parent_sizes == (cuts[0].arrays["user_biases"].shape[0], len(cuts[0].item_ids))
    same_arrays(await restore_model(store, CONFIG), model)  # bit for bit


async def test_segments_cost_the_rows_they_change(store) -> None:
    ratings = generate_ratings(300, 60, 3000, 4, seed=6)
    few = sorted({r.user for r in ratings[:5]})  # after the first 3000, only a few users rate
    later = [
        dataclasses.replace(r, event_id=f"later-{i}", user=few[i % len(few)])
        for i, r in enumerate(generate_ratings(300, 60, 300, 4, seed=7))
    ]
    await trained(store, ratings + later, 100, len(ratings))
    found = await manifests(store)
    full = [m["payload_bytes"] for m in found.values() if "parent" not in m]
    parts = [m["payload_bytes"] for m in found.values() if "parent" in m]
    assert len(full) == 1 and len(parts) == 3
    assert max(parts) < full[0] / 4


async def test_a_crash_with_segments_trains_nothing_twice_and_loses_nothing(store) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    ratings = generate_ratings(150, 60, 3000, 4, seed=7)
    consumer.produce_ratings(ratings[:1000])
    trainer, task = await start(store, consumer, dlq, **SEGMENTS, snapshot_every_batches=1)
    await until(lambda: trainer.model.trained_events == 1000)
    await until(lambda: store_has_offsets(trainer))
    consumer.produce_ratings(ratings[1000:2000])
    await until(lambda: trainer.model.trained_events >= 1500)
    task.cancel()  # a crash
    with pytest.raises(asyncio.CancelledError):
        await task
    writer = trainer._snapshots.task
    if writer is not None and not writer.done():
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    consumer.positions.clear()
    consumer.produce_ratings(ratings[2000:])
    again, task = await start(store, consumer, dlq, **SEGMENTS, snapshot_every_batches=1)
    await until(lambda: again.model.trained_events == len(ratings))
    await stop(again, task)
    _, manifest = await store.get(await store.latest())
    assert manifest["trained_events"] == len(ratings)  # each rating exactly once
    counts = again.model.event_counts()[0]
    assert sum(counts.values()) == len(ratings)


async def test_a_corrupt_or_missing_segment_is_refused_and_an_older_one_restored(
    store, tmp_path
) -> None:
    await trained(store, generate_ratings(150, 60, 2200, 4, seed=8))  # 11 checkpoints
    found = await manifests(store)
    *_, link, previous, head = sorted(found)  # base, segment, segment
    assert "parent" in found[head] and found[previous]["parent"] == link
    root = tmp_path / "models"
    (root / payload_key(head)).write_bytes(b"not the segment")  # corrupt
    holder = ModelHolder()
    model = await restore_model(store, CONFIG, holder)
    assert model.trained_events == found[previous]["trained_events"]  # the next newest
    assert holder.info["last_refused"]["version"] == head

    # a missing link: every version that needs it is refused with a clear reason
    (root / manifest_key(link)).unlink()
    with pytest.raises(SnapshotError, match=f"needs v{link}, which is missing"):
        await fetch_chain(store, previous)
    model = await restore_model(store, CONFIG, holder)
    assert model.trained_events < found[link]["trained_events"]  # an older one


async def test_after_a_fallback_the_trainer_continues_the_chain_it_restored(
    store, tmp_path
) -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    ratings = generate_ratings(150, 60, 1000, 4, seed=13)
    trainer, task = await start(store, consumer, dlq, **SEGMENTS)
    for at in range(0, 600, 200):
        await train_then_checkpoint(trainer, consumer, ratings[at : at + 200])  # b s s
    await stop(trainer, task)
    *_, fallback, head = sorted(await manifests(store))
    (tmp_path / "models" / payload_key(head)).write_bytes(b"not the segment")  # corrupt
    consumer.positions.clear()
    again, task = await start(store, consumer, dlq, **SEGMENTS)
    assert again.model.trained_events == 400  # the fallback's
    await train_then_checkpoint(again, consumer, ratings[600:])
    await stop(again, task)
    newest = (await store.get(await store.latest()))[1]
    assert newest["version"] > head and newest["parent"] == fallback  # not the refused head
    same_arrays(await restore_model(store, CONFIG), again.model)


async def test_a_parent_rewritten_under_a_segment_is_refused(store, tmp_path) -> None:
    await trained(store, generate_ratings(150, 60, 2000, 4, seed=9))
    found = await manifests(store)
    head = max(v for v, m in found.items() if "parent" in m)
    parent = found[head]["parent"]
    # another parent with a valid checksum (say, a version re-written after a prune)
    path = tmp_path / "models" / manifest_key(parent)
    other = b"forged payload"
    (tmp_path / "models" / payload_key(parent)).write_bytes(other)
    manifest = json.loads(path.read_text())
    manifest["sha256"] = __import__("hashlib").sha256(other).hexdigest()
    path.write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError):
        await load_view(store, head)


async def test_a_scorer_load_hashes_each_stored_payload_once(store, monkeypatch) -> None:
    """Issue 19 (a scorer joining at 1M users): the store checks each payload against its
    manifest's sha256 as it reads it; the scorer's load does not hash it again (800 MB at
    1M users, a second or more of the join: ``python -m benchmarks.share --join``)."""
    await trained(store, generate_ratings(150, 60, 1000, 4, seed=21))
    found = await manifests(store)
    head = max(v for v, m in found.items() if "parent" in m)  # a base and its segments
    payloads = sorted(len(payload) for payload, _ in await fetch_chain(store, head))
    assert len(payloads) >= 2
    hashed: list[int] = []
    sha256 = hashlib.sha256

    def counting(data: bytes = b"", **kw: Any) -> Any:
        hashed.append(len(data))
        return sha256(data, **kw)

    monkeypatch.setattr(hashlib, "sha256", counting)
    for share in (None, Share.of(4, {1, 2})):
        hashed.clear()
        view, _, manifest = await load_view(store, head, share=share)
        assert view.version == manifest["version"] == head
        assert sorted(n for n in hashed if n in payloads) == payloads  # once each


def test_retention_keeps_the_newest_bases_and_the_chain_current_needs() -> None:
    #  1 base, 2-3 segments; 4 base, 5-6; 7 base, 8; 9 incomplete (a write in progress)
    parents = {1: None, 2: 1, 3: 2, 4: None, 5: 4, 6: 5, 7: None, 8: 7}
    versions = {v: True for v in parents} | {9: False}
    assert retention_plan(versions, 8, 2, parents) == [1, 2, 3]
    assert retention_plan(versions, 8, 1, parents) == [1, 2, 3, 4, 5, 6]
    assert retention_plan(versions, 3, 1, parents) == [4, 5, 6]  # rolled back to 3
    assert retention_plan(versions, 8, 3, parents) == []
    with pytest.raises(ValueError):
        retention_plan(versions, 8, 0, parents)


async def test_the_trainer_prunes_by_retention_and_still_restores(store) -> None:
    ratings = generate_ratings(150, 60, 3000, 4, seed=10)
    trainer = await trained(store, ratings, checkpoint_keep_bases=1, checkpoint_segments=2)
    found = await manifests(store)
    bases = [v for v, m in found.items() if "parent" not in m]
    assert len(bases) == 1 and min(found) == bases[0]  # nothing older than the newest base
    same_arrays(await restore_model(store, CONFIG), trainer.model)
    # prune(keep=1) keeps the chain the newest version needs
    await store.prune(keep=1)
    same_arrays(await restore_model(store, CONFIG), trainer.model)
