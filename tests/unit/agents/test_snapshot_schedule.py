"""The trainer's snapshot decisions (:class:`agents.snapshot_schedule.SnapshotSchedule`) and
its background writer (:class:`agents.snapshot_writer.SnapshotWriter`), without a trainer."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agents.snapshot_schedule import SnapshotSchedule
from agents.snapshot_writer import SnapshotCut, SnapshotWriter
from agents.state import ModelHolder
from models.config import ModelConfig
from models.incremental import IncrementalModel
from models.signing import Keyring
from models.snapshot import sign_manifest
from models.synthetic import generate_ratings
from models.wire import ModelUpdate
from storage import open_store
from tests.unit.agents.fakes import FakeSink

OFFSETS = {"ratings:0": 10, "ratings:1": 4}


def schedule(**kw: object) -> SnapshotSchedule:
    """The marks of a snapshot of v3 covering OFFSETS, written at t=100."""
    return SnapshotSchedule(version=3, offsets=dict(OFFSETS), last_at=100.0, **kw)  # type: ignore[arg-type]


def test_nothing_unsaved_is_never_due() -> None:
    marks = schedule(batches=50, urgent_version=9)
    assert not marks.unsaved(3, dict(OFFSETS))
    assert not marks.due(3, dict(OFFSETS), now=1e9, every_batches=1, every_seconds=0.0)


def test_a_new_version_or_moved_offsets_are_unsaved_progress() -> None:
    marks = schedule()
    assert marks.unsaved(4, dict(OFFSETS))
    assert marks.unsaved(3, {**OFFSETS, "ratings:1": 5})  # only offsets moved (dead letters)
    assert marks.unsaved(3, {**OFFSETS, "ratings:2": 1})


def test_due_after_every_batches_or_every_seconds_not_before() -> None:
    marks = schedule(batches=4)
    assert not marks.due(4, OFFSETS, now=159.9, every_batches=5, every_seconds=60)
    marks.trained()
    assert marks.due(4, OFFSETS, now=100.0, every_batches=5, every_seconds=60)
    assert schedule().due(4, OFFSETS, now=160.0, every_batches=5, every_seconds=60)


def test_an_urgent_version_is_due_at_once_until_a_snapshot_reaches_it() -> None:
    marks = schedule()
    marks.urge(5)
    marks.urge(4)  # never lowered
    assert marks.urgent_version == 5
    assert marks.due(4, OFFSETS, now=100.0, every_batches=1000, every_seconds=600)
    marks.saved(5, OFFSETS, covered=0, now=101.0)
    assert not marks.due(6, OFFSETS, now=101.0, every_batches=1000, every_seconds=600)


def test_batches_trained_while_a_snapshot_was_written_count_towards_the_next() -> None:
    marks = schedule()
    for _ in range(5):
        marks.trained()
    covered = marks.batches  # the cut
    marks.trained()
    marks.trained()  # trained during the write
    marks.saved(4, {"ratings:0": 12}, covered=covered, now=130.0)
    assert (marks.version, marks.offsets, marks.batches, marks.last_at) == (
        4,
        {"ratings:0": 12},
        2,
        130.0,
    )
    assert marks.due(5, {"ratings:0": 13}, now=130.0, every_batches=2, every_seconds=600)


def test_a_failed_write_is_retried_after_the_interval_not_at_once() -> None:
    marks = schedule()
    assert marks.due(4, OFFSETS, now=200.0, every_batches=1000, every_seconds=60)
    marks.failed(200.0)
    assert not marks.due(4, OFFSETS, now=259.0, every_batches=1000, every_seconds=60)
    assert marks.due(4, OFFSETS, now=260.0, every_batches=1000, every_seconds=60)


def test_scorers_requests_are_answered_at_most_once_per_interval() -> None:
    marks = schedule()
    assert marks.answered_at == -math.inf
    assert marks.may_answer(now=0.0, every=5.0)
    assert not marks.may_answer(now=4.9, every=5.0)
    assert marks.answered_at == 0.0  # a refused request does not push the next one out
    assert marks.may_answer(now=5.0, every=5.0)


times = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)
counts = st.integers(min_value=0, max_value=1 << 62)
offsets = st.dictionaries(st.text(max_size=12), st.integers(min_value=0, max_value=1 << 62))


@given(
    version=st.integers(min_value=-1, max_value=1 << 62),
    offsets=offsets,
    now=times,
    every_batches=counts,
    every_seconds=st.floats(min_value=0, max_value=1e12, allow_nan=False),
    batches=counts,
    urgent=st.integers(min_value=-1, max_value=1 << 62),
)
def test_right_after_a_snapshot_of_the_state_nothing_is_due(
    version: int,
    offsets: dict[str, int],
    now: float,
    every_batches: int,
    every_seconds: float,
    batches: int,
    urgent: int,
) -> None:
    marks = SnapshotSchedule(0, {}, -1e13, batches=batches, urgent_version=urgent)
    marks.saved(version, offsets, covered=batches, now=now)
    assert marks.batches == 0
    assert not marks.due(version, dict(offsets), now, every_batches, every_seconds)


@given(
    last=times,
    wait=st.floats(min_value=0, max_value=1e12, allow_nan=False),
    later=st.floats(min_value=0, max_value=1e12, allow_nan=False),
    every_batches=st.integers(min_value=1, max_value=1 << 62),
    every_seconds=st.floats(min_value=0, max_value=1e12, allow_nan=False),
)
def test_with_unsaved_progress_a_due_snapshot_stays_due_and_the_interval_makes_one_due(
    last: float, wait: float, later: float, every_batches: int, every_seconds: float
) -> None:
    marks = SnapshotSchedule(3, dict(OFFSETS), last)
    if marks.due(4, OFFSETS, last + wait, every_batches, every_seconds):
        assert marks.due(4, OFFSETS, last + wait + later, every_batches, every_seconds)
    if (last + every_seconds) - last >= every_seconds:  # no float rounding in the way
        assert marks.due(4, OFFSETS, last + every_seconds, every_batches, every_seconds)


# --- the writer, with a fake trainer -----------------------------------------------------
@dataclass
class FakeSource:
    """A trainer reduced to what the writer asks of it."""

    model: IncrementalModel
    keys: Keyring = field(default_factory=Keyring.dev)
    due: bool = True
    exists: list[int] = field(default_factory=list)

    def snapshot_due(self) -> bool:
        return self.due

    async def cut_snapshot(self) -> SnapshotCut:
        payload, manifest = self.model.to_bytes()
        info = {"n_users": self.model.n_users, "n_items": self.model.n_items}
        return SnapshotCut(payload, sign_manifest(manifest, self.keys), info, {}, 2, self.keys)

    async def snapshot_exists(self, version: int) -> None:
        self.exists.append(version)
        self.model.version = version + 1


def trained_model() -> IncrementalModel:
    model = IncrementalModel(ModelConfig(no_components=4, epochs_per_batch=1, seed=1))
    model.train_batch(generate_ratings(10, 8, 40, 1, seed=1))
    model.offsets["ratings:0"] = 40
    return model


async def test_the_writer_puts_promotes_announces_and_hands_its_offsets_to_one_commit(
    tmp_path: Path,
) -> None:
    model, updates, holder = trained_model(), FakeSink(), ModelHolder()
    marks = SnapshotSchedule(-1, {}, 0.0, batches=3)
    async with open_store(f"file://{tmp_path}") as store:
        writer = SnapshotWriter(FakeSource(model), store, updates, holder, marks)
        writer.start()
        assert writer.task is not None and await writer.task
        assert await store.current() == model.version
        (sent,) = updates.sent
        update = ModelUpdate.parse(sent["value"])
        update.check(Keyring.dev())  # signed with the cut's keys
        assert update.version == model.version
    assert (marks.version, marks.offsets, marks.batches) == (model.version, {"ratings:0": 40}, 1)
    assert holder.info["snapshot"]["version"] == model.version
    assert writer.take_uncommitted() == {"ratings:0": 40}
    assert writer.take_uncommitted() is None  # committed once


async def test_a_version_already_in_the_store_moves_the_model_past_it_and_commits_nothing(
    tmp_path: Path,
) -> None:
    model, updates = trained_model(), FakeSink()
    source = FakeSource(model)
    marks = SnapshotSchedule(-1, {}, 0.0)
    async with open_store(f"file://{tmp_path}") as store:
        payload, manifest = model.to_bytes()
        await store.put(model.version, payload, sign_manifest(manifest, Keyring.dev()))
        writer = SnapshotWriter(source, store, updates, ModelHolder(), marks)
        taken = model.version
        assert not await writer.write()
        assert source.exists == [taken] and model.version == taken + 1
        assert marks.last_at > 0 and marks.version == -1  # retried after the interval
        assert updates.sent == [] and writer.take_uncommitted() is None
        assert await writer.write()  # the next version is written
    assert marks.version == taken + 1


async def test_a_write_asked_for_during_a_write_follows_it_and_none_after_stop(
    tmp_path: Path,
) -> None:
    model = trained_model()
    source = FakeSource(model)
    async with open_store(f"file://{tmp_path}") as store:
        writer = SnapshotWriter(
            source, store, FakeSink(), ModelHolder(), SnapshotSchedule(-1, {}, 0.0)
        )
        writer.start()
        first = writer.task
        writer.soon()  # one is being written: the next follows it
        assert writer.task is first and first is not None
        await first
        await asyncio.sleep(0)
        assert writer.task is not first
        await writer.settle()
        writer.stopping = True
        model.version += 1
        writer.soon()  # no write in progress: at once, stopping or not
        second = writer.task
        assert second is not None
        writer.soon()
        await writer.settle()
        await asyncio.sleep(0)
        assert writer.task is second  # stopping: nothing chained after the write
        source.due = False
        model.version += 1
        writer.start()
        assert writer.task is second  # not due: nothing started
