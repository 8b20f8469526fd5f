"""The follower's delta handling, with a fake consumer and a local snapshot store.

Kafka is replaced by a list of messages and a consumer that records seeks; the snapshot
store is the real local one. What goes through the real broker is in
tests/integration/service/test_deltas.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition

from agents import metrics
from agents.follower import ModelFollower
from agents.state import ModelHolder
from models.config import ModelConfig
from models.delta import ModelDelta
from models.incremental import IncrementalModel
from models.scoring import ScoringView
from models.signing import Keyring
from models.snapshot import sign_manifest
from models.wire import ModelUpdate, open_delta, seal_delta
from storage import SnapshotStore, open_store
from tests.unit.models.test_incremental import ratings

UPDATES, DELTAS = "model-updates", "model-deltas"
KEYS = Keyring.dev()  # the follower's default: the trainer here signs with it too


def opened(record: Record) -> ModelDelta:
    """The delta in a (signed) delta record."""
    return ModelDelta.decode(open_delta(record.value, KEYS))


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None = None


@dataclass
class FakeConsumer:
    """What the follower asks of its consumer outside ``getmany``."""

    seeks: list[int] = field(default_factory=list)
    high: int = 0

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append(offset)

    async def seek_to_end(self, *tps: Any) -> None:
        self.seeks.append(-1)

    async def offsets_for_times(self, stamps: dict[Any, int]) -> dict[Any, Any]:
        return dict.fromkeys(stamps)

    def highwater(self, tp: Any) -> int:
        return self.high


class Trainer:
    """A model that trains batches and keeps its deltas as topic records, as the trainer does."""

    def __init__(self, model: IncrementalModel | None = None) -> None:
        self.model = model or IncrementalModel(ModelConfig(no_components=8, initial_capacity=4))
        self.records: list[Record] = []

    def batch(self, seed: int) -> Record:
        self.model.train_batch(
            ratings(30, 20, 80, seed=seed, prefix=f"t{id(self)}-{seed}-", ts0=100.0 * seed)
        )
        self.model.view()
        return self.record(self.model.last_delta.encode())

    def record(self, raw: bytes) -> Record:
        offset = len(self.records)
        self.records.append(Record(DELTAS, 0, offset, b"k", seal_delta(raw, KEYS), 1_000))
        self.model.delta_offset = offset + 1
        return self.records[-1]

    async def snapshot(self, store: SnapshotStore) -> ModelUpdate:
        payload, manifest = self.model.to_bytes()
        manifest = sign_manifest(manifest, KEYS)
        uri = await store.put(manifest["version"], payload, manifest)
        await store.promote(manifest["version"])
        update = ModelUpdate.from_manifest(uri, manifest, created_at=manifest["created_at"])
        return update.signed(KEYS)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SnapshotStore]:
    async with open_store(f"file://{tmp_path}") as store:
        yield store


@pytest.fixture
def follower(store: SnapshotStore) -> ModelFollower:
    follower = ModelFollower(ModelHolder(), store, {}, UPDATES, deltas_topic=DELTAS)
    follower._consumer = FakeConsumer()  # type: ignore[assignment]
    return follower


def same(view: ScoringView | None, model: IncrementalModel) -> bool:
    full = model.full_view()
    if view is None or view.version != full.version or view.user_ids() != full.user_ids():
        return False
    ours = view.scoring_arrays()
    return all(np.array_equal(a, ours[n]) for n, a in full.scoring_arrays().items())


async def test_a_fresh_chain_is_followed_from_its_first_delta(follower: ModelFollower) -> None:
    trainer = Trainer()
    for seed in range(4):
        assert not await follower.on_delta(trainer.batch(seed))
    assert same(follower.holder.view, trainer.model)
    chain = follower.holder.info["deltas"]
    assert chain["applied"] == 4 and chain["resyncs"] == 0
    assert chain["last_applied"]["version"] == trainer.model.version
    # A redelivered delta (after a seek, say) is skipped.
    assert not await follower.on_delta(trainer.records[1])
    assert same(follower.holder.view, trainer.model)


async def test_a_candidate_lineage_leaves_the_served_models_version_gauge(
    store: SnapshotStore,
) -> None:
    def gauge() -> float | None:
        return metrics.REGISTRY.get_sample_value("streamrec_model_version")

    metrics.MODEL_VERSION.set(-7)  # the served model's
    follower = ModelFollower(ModelHolder(), store, {}, UPDATES, deltas_topic=DELTAS, served=False)
    follower._consumer = FakeConsumer()  # type: ignore[assignment]
    old = Trainer()
    await follower.on_delta(old.batch(0))
    await old.snapshot(store)
    payload, manifest = await store.get(await store.current())
    trainer = Trainer(IncrementalModel.from_bytes(payload, manifest))  # a snapshot loaded
    trainer.records = old.records
    for seed in range(1, 4):
        assert not await follower.on_delta(trainer.batch(seed))
    assert same(follower.holder.view, trainer.model) and gauge() == -7
    served = ModelFollower(ModelHolder(), store, {}, UPDATES, deltas_topic=DELTAS)
    served._consumer = FakeConsumer()  # type: ignore[assignment]
    for record in trainer.records:
        await served.on_delta(record)
    assert gauge() == trainer.model.version


async def test_a_corrupt_delta_is_never_served_and_resyncs(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    trainer = Trainer()
    await follower.on_delta(trainer.batch(0))
    await trainer.snapshot(store)
    good = trainer.batch(1)
    inner = open_delta(good.value, KEYS)  # signed, but corrupt (a trainer bug, say)
    bad = replace(good, value=seal_delta(inner[:-1] + bytes([inner[-1] ^ 1]), KEYS))
    served = follower.holder.view
    assert await follower.on_delta(bad)  # resynced: the position moved
    assert follower.holder.view is not served and follower.holder.view.version == 1
    assert follower._consumer.seeks == [1]  # the snapshot's delta offset
    # Read again from there: the bad offset is skipped, the chain then has a gap, and the
    # same snapshot is not loaded again: it waits for the next announced one.
    assert not await follower.on_delta(bad)
    assert not await follower.on_delta(trainer.batch(2))
    assert follower._waiting and follower.holder.view.version == 1
    update = await trainer.snapshot(store)
    await follower.on_update(update)
    assert not follower._waiting and same(follower.holder.view, trainer.model)


async def test_a_gap_resyncs_from_the_newest_snapshot(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    trainer = Trainer()
    await follower.on_delta(trainer.batch(0))
    trainer.batch(1)  # missed
    await trainer.snapshot(store)
    later = trainer.batch(2)
    assert await follower.on_delta(later)
    assert follower.holder.view.version == 2 and follower._consumer.seeks == [2]
    assert not await follower.on_delta(later)  # read on from the snapshot's offset
    assert same(follower.holder.view, trainer.model)


async def test_a_restarted_trainer_is_joined_from_its_snapshot(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    old = Trainer()
    await follower.on_delta(old.batch(0))
    await old.snapshot(store)
    await follower.on_delta(old.batch(1))  # never snapshotted: the new run retrains it
    payload, manifest = await store.get(await store.current())
    new = Trainer(IncrementalModel.from_bytes(payload, manifest))
    new.records = old.records  # one topic
    first = new.batch(7)
    assert not await follower.on_delta(first)  # loads its origin, then joins, no seek
    assert follower._consumer.seeks == []
    assert same(follower.holder.view, new.model)
    assert follower.holder.info["deltas"]["lineage"] == new.model.lineage


async def test_rollback_pins_until_the_trainer_announces_again(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    trainer = Trainer()
    await follower.on_delta(trainer.batch(0))
    first = await trainer.snapshot(store)
    for seed in (1, 2):
        await follower.on_delta(trainer.batch(seed))
    await store.rollback(to=first.version)
    rollback = replace(first, metrics={"reason": "rollback"}, signature=None)
    await follower.on_update(rollback.signed(KEYS))  # an operator's: signed with the key
    assert follower.holder.view.version == first.version and follower.chain.pinned
    assert not await follower.on_delta(trainer.batch(3))  # the running lineage does not win
    assert follower.holder.view.version == first.version
    await follower.on_update(await trainer.snapshot(store))
    assert not follower.chain.pinned and same(follower.holder.view, trainer.model)


async def test_a_too_large_delta_waits_for_its_snapshot(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    trainer = Trainer()
    await follower.on_delta(trainer.batch(0))
    trainer.batch(1)
    marker = trainer.record(opened(trainer.records[-1]).as_marker().encode())
    await follower.on_delta(marker)
    assert follower._waiting and follower.holder.view.version == 1
    await follower.on_update(await trainer.snapshot(store))
    assert same(follower.holder.view, trainer.model)


async def test_an_announcement_the_deltas_reached_is_not_loaded(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    trainer = Trainer()
    await follower.on_delta(trainer.batch(0))
    served = follower.holder.view
    await follower.on_update(await trainer.snapshot(store))
    assert follower.holder.view is served
    assert follower.holder.info["snapshot"]["version"] == trainer.model.version


async def test_lag_stays_live_while_waiting_for_a_snapshot(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    trainer = Trainer()
    consumer = follower._consumer
    old = (time.time() - 30) * 1000  # published 30 s ago
    for seed in range(2):
        record = replace(trainer.batch(seed), timestamp=old)
        consumer.high = record.offset + 1
        await follower.on_delta(record)
    chain = follower.holder.info["deltas"]
    assert chain["lag_versions"] == 0 and chain["lag_seconds"] >= 30  # publish -> serve
    # A consolidation's marker, then two deltas the waiting scorer ignores.
    unsent = opened(trainer.batch(2))
    trainer.records.pop()  # the trainer sends the marker instead of these rows
    waiting_since = time.time() - 8
    marker = trainer.record(unsent.as_marker().encode())
    later = [marker, trainer.batch(3), trainer.batch(4)]
    for n, record in enumerate(later):
        record = replace(record, timestamp=(waiting_since + n) * 1000)
        consumer.high = record.offset + 1
        await follower.on_delta(record)
        chain = follower.holder.info["deltas"]
        assert chain["waiting_for_snapshot"] and chain["lag_versions"] == n + 1, chain
        assert 8 <= chain["lag_seconds"] < 30, chain  # the marker's age, not the last apply
    assert follower.holder.view.version == 2 and chain["last_applied"]["version"] == 2
    # No new message: the follow loop's refresh still ages the lag.
    follower._behind_since -= 5
    follower._refresh_lag()
    assert follower.holder.info["deltas"]["lag_seconds"] >= 13
    # A snapshot announced ahead of the chain counts too, before it is loaded.
    update = await trainer.snapshot(store)
    follower._waiting = False
    await follower.on_update(update)
    assert follower._announced is not None  # deltas may still bring it: a grace period
    follower._refresh_lag()
    assert follower.holder.info["deltas"]["lag_versions"] >= update.version - 2
    # Loaded: nothing on the topic after the snapshot's offset, so no lag.
    follower._waiting = True
    await follower.on_update(update)
    chain = follower.holder.info["deltas"]
    assert same(follower.holder.view, trainer.model)
    assert chain["lag_versions"] == 0 and chain["lag_seconds"] == 0, chain


async def test_a_consolidations_rows_are_served_at_once_and_its_neighbours_follow(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    config = ModelConfig(no_components=8, initial_capacity=4, blend_neighbours=5)
    trainer = Trainer(IncrementalModel(config))
    await follower.on_delta(trainer.batch(0))
    assert trainer.model.consolidate()  # retrained: its window's rows, new neighbours
    consolidation = trainer.batch(1)
    assert opened(consolidation).replaces_neighbours
    await follower.on_delta(consolidation)
    # Not waiting for a snapshot: the rows are served, the deltas after it apply too.
    assert not follower._waiting and same(follower.holder.view, trainer.model)
    assert follower.holder.view.blending()[0] is None  # (the old neighbours: none yet)
    await follower.on_delta(trainer.batch(2))
    assert same(follower.holder.view, trainer.model)
    # The snapshot the deltas reached brings the neighbours, fetched beside the deltas.
    await follower.on_update(await trainer.snapshot(store))
    assert follower._neighbour_fetch is not None
    await follower._neighbour_fetch
    assert follower.install_neighbours()
    view = follower.holder.view
    neighbours, _ = view.blending()
    assert neighbours is not None and (neighbours != trainer.model._neighbours).nnz == 0
    assert same(view, trainer.model) and follower._neighbours_due is None
    assert not follower.install_neighbours()  # once


# --- trust: only what the trainer signed, only deltas that make the next version -------
ATTACKER = Keyring(b"an attacker's own key, not ours")


def refused(what: str, kind: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "streamrec_model_refused_total", {"message": what, "reason": kind}
        )
        or 0.0
    )


def forge(trainer: Trainer, value: bytes) -> Record:
    """A record written straight to the delta topic by someone who is not the trainer."""
    record = Record(DELTAS, 0, len(trainer.records), b"k", value, 1_000)
    trainer.records.append(record)
    return record


def huge(follower: ModelFollower) -> ModelDelta:
    """A delta on the live lineage, from the version served to a huge one, no rows."""
    view, chain = follower.holder.view, follower.chain
    assert view is not None and chain.lineage is not None
    return ModelDelta(
        lineage=chain.lineage,
        origin=-1,
        start=0,
        base_version=chain.version,
        version=10**15,
        n_users=view.n_users,
        n_items=view.n_items,
        trained_events=0,
    )


async def test_forged_deltas_are_refused_and_the_real_ones_still_apply(
    follower: ModelFollower,
) -> None:
    trainer = Trainer()
    await follower.on_delta(trainer.batch(0))
    before = {k: refused("delta", k) for k in ("unsigned", "unknown_key", "chain")}
    raw = huge(follower).encode()
    for value in (raw, seal_delta(raw, ATTACKER)):  # unsigned; signed with another key
        assert not await follower.on_delta(forge(trainer, value))
    # Signed with our key but not the next version (what main applied): the chain rule.
    assert not await follower.on_delta(forge(trainer, seal_delta(raw, KEYS)))
    assert follower.holder.view.version == 1 and follower.chain.version == 1
    for seed in (1, 2):  # the trainer's real deltas apply: nothing was resynced or skipped
        assert not await follower.on_delta(trainer.batch(seed))
    assert same(follower.holder.view, trainer.model) and follower.holder.view.version == 3
    info = follower.holder.info
    assert info["deltas"]["resyncs"] == 0 and not info["deltas"]["waiting_for_snapshot"]
    assert info["refused"]["counts"] == {
        "delta/unsigned": 1,
        "delta/unknown_key": 1,
        "delta/chain": 1,
    }
    assert info["refused"]["last"]["kind"] == "chain"
    assert "next version" in info["refused"]["last"]["reason"]
    for kind, count in before.items():
        assert refused("delta", kind) == count + 1, kind


async def test_a_forged_rollback_does_not_pin(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    trainer = Trainer()
    await follower.on_delta(trainer.batch(0))
    first = await trainer.snapshot(store)
    await follower.on_delta(trainer.batch(1))
    rollback = replace(first, metrics={"reason": "rollback"}, signature=None)
    messages = [
        Record(UPDATES, 0, 0, b"model", first.encode()[1]),  # the trainer's own
        Record(UPDATES, 0, 1, b"model", rollback.encode()[1]),  # unsigned
        Record(UPDATES, 0, 2, b"model", rollback.signed(ATTACKER).encode()[1]),
        Record(UPDATES, 0, 3, b"model", replace(first, version=0).encode()[1]),  # tampered
    ]
    before = refused("update", "unsigned")
    assert follower._last_update(messages) == first  # the newest one we trust
    await follower._handle({TopicPartition(UPDATES, 0): messages[1:]})  # forged only: ignored
    assert not follower.chain.pinned and follower.holder.view.version == 2
    counts = follower.holder.info["refused"]["counts"]
    assert counts == {"update/unsigned": 2, "update/unknown_key": 2, "update/bad_signature": 2}
    assert refused("update", "unsigned") == before + 2


async def test_an_unsigned_or_foreign_snapshot_is_refused(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    trainer = Trainer()
    await follower.on_delta(trainer.batch(0))
    trainer.batch(1)
    payload, manifest = trainer.model.to_bytes()
    version = manifest["version"]
    await store.put(version, payload, sign_manifest(manifest, ATTACKER))
    update = ModelUpdate.from_manifest("x", manifest).signed(KEYS)  # even if announced
    assert not await follower.load(version, update, seek=True)
    assert follower.holder.view.version == 1  # still the trusted view
    last = follower.holder.info["refused"]["last"]
    assert last["message"] == "snapshot" and last["kind"] == "unknown_key"
    assert "untrusted snapshot" in follower.holder.info["last_refused"]["reason"]


async def test_unsigned_legacy_snapshots_load_only_when_allowed(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    trainer = Trainer()
    trainer.batch(0)
    payload, manifest = trainer.model.to_bytes()  # as written before signing existed
    await store.put(manifest["version"], payload, manifest)
    assert not await follower.load(manifest["version"], None, seek=False)
    assert follower.holder.info["refused"]["last"]["kind"] == "unsigned"
    follower.keys = Keyring(KEYS.signing, allow_unsigned_snapshots=True)
    assert await follower.load(manifest["version"], None, seek=False)
    assert follower.holder.view.version == manifest["version"]


async def test_rotation_old_and_new_keys_verify_until_the_old_one_is_dropped(
    follower: ModelFollower,
) -> None:
    old, new = Keyring(b"the old model key, 2025"), Keyring(b"the new model key, 2026")
    trainer = Trainer()
    follower.keys = Keyring(new.signing, (old.signing,))  # step 1: scorers verify both

    def signed(keys: Keyring, seed: int) -> Record:
        record = trainer.batch(seed)
        record.value = seal_delta(open_delta(record.value, KEYS), keys)
        return record

    await follower.on_delta(signed(old, 0))  # the trainer still signs with the old key
    await follower.on_delta(signed(new, 1))  # step 2: it switched
    assert follower.holder.view.version == 2 and "refused" not in follower.holder.info
    follower.keys = new  # step 3: the old key dropped
    assert not await follower.on_delta(signed(old, 2))
    assert follower.holder.view.version == 2
    assert follower.holder.info["refused"]["last"]["kind"] == "unknown_key"


async def test_a_replayed_rollback_does_not_pin(
    follower: ModelFollower, store: SnapshotStore
) -> None:
    """A genuinely signed rollback, written again after the pointer moved on (a replay, or
    an announcement that arrived late), names a version that is no longer current: refused
    as stale, no pin. The operator's real rollback (the pointer there) still pins."""
    trainer = Trainer()
    await follower.on_delta(trainer.batch(0))
    first = await trainer.snapshot(store)
    await store.rollback(to=first.version)
    rollback = replace(first, metrics={"reason": "rollback"}, signature=None).signed(KEYS)
    for seed in (1, 2):
        await follower.on_delta(trainer.batch(seed))
    await trainer.snapshot(store)  # the trainer promotes v3: the old rollback is stale
    before = refused("update", "stale")
    await follower.on_update(rollback)
    assert not follower.chain.pinned and follower.holder.view.version == 3
    assert refused("update", "stale") == before + 1
    assert follower.holder.info["refused"]["counts"]["update/stale"] == 1
    await store.rollback(to=first.version)  # the operator rolls back for real
    await follower.on_update(rollback)
    assert follower.chain.pinned and follower.holder.view.version == first.version
