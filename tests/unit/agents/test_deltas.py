"""The trainer's delta publisher, with a list-backed sink."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.deltas import DeltaPublisher
from models.config import ModelConfig
from models.incremental import IncrementalModel
from models.scoring import ScoringView
from models.signing import Keyring
from models.wire import ModelDelta, open_delta
from tests.unit.models.test_incremental import ratings


def opened(raw: bytes | None) -> ModelDelta:
    """The delta in a signed delta message (the trainer signs with the dev key here)."""
    return ModelDelta.decode(open_delta(raw, Keyring.dev()))


@dataclass
class Sent:
    offset: int


@dataclass
class ListSink:
    """Records sends; returns an awaitable of the record's metadata, as Faust does."""

    sent: list[tuple[bytes | None, bytes | None]] = field(default_factory=list)
    fail: bool = False
    never_delivered: bool = False  # an idempotent producer retrying for ever

    async def send(
        self,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> Any:
        if self.fail:
            raise ConnectionError("broker gone")
        self.sent.append((key, value))

        async def delivered() -> Sent:
            if self.never_delivered:
                await asyncio.Event().wait()
            return Sent(offset=len(self.sent) - 1)

        return delivered()


def trained_model() -> IncrementalModel:
    model = IncrementalModel(ModelConfig(no_components=8, initial_capacity=4))
    model.train_batch(ratings(10, 10, 50))
    model.view()
    model.train_batch(ratings(10, 10, 50, prefix="again-", ts0=100))
    return model


async def test_publishes_the_delta_that_made_the_view_and_records_the_offset() -> None:
    model, sink = trained_model(), ListSink()
    view = model.view()
    info = await DeltaPublisher(sink, max_bytes=1 << 20).publish(model, view)
    ((key, value),) = sink.sent
    delta = opened(value)
    assert key == model.lineage.encode() and delta.version == view.version == info["version"]
    assert model.delta_offset == 1 and info["offset"] == 0 and not info["snapshot_needed"]
    assert model.to_bytes()[1]["delta_chain"]["offset"] == 1  # the snapshot tells scorers


async def test_a_delta_too_large_becomes_a_marker_and_asks_for_a_snapshot() -> None:
    model, sink = trained_model(), ListSink()
    info = await DeltaPublisher(sink, max_bytes=256).publish(model, model.view())
    marker = opened(sink.sent[0][1])
    assert marker.snapshot_needed and marker.rows_touched == 0
    assert info["snapshot_needed"] and len(sink.sent[0][1]) < 2048


async def test_a_failed_send_asks_for_a_snapshot_and_does_not_raise() -> None:
    model = trained_model()
    info = await DeltaPublisher(ListSink(fail=True), max_bytes=1 << 20).publish(model, model.view())
    assert info["snapshot_needed"] and "broker gone" in info["error"]
    assert model.delta_offset is None


async def test_a_delivery_that_never_comes_times_out_and_asks_for_a_snapshot() -> None:
    """CI once saw the trainer stop training for good after a broker restart, silently,
    with a delta's delivery outstanding: a publish now gives up after ``send_timeout``."""
    model = trained_model()
    publisher = DeltaPublisher(ListSink(never_delivered=True), max_bytes=1 << 20)
    publisher.send_timeout = 0.05
    info = await asyncio.wait_for(publisher.publish(model, model.view()), 5)
    assert info is not None and info["snapshot_needed"] and "error" in info
    assert model.delta_offset is None


async def test_a_view_built_whole_publishes_nothing() -> None:
    model, sink = IncrementalModel(ModelConfig(no_components=8)), ListSink()
    model.version = 3  # only a hand-set version (a restore following the store): no delta
    assert await DeltaPublisher(sink, max_bytes=1 << 20).publish(model, model.view()) is None
    assert not sink.sent


def consolidated_model() -> tuple[IncrementalModel, ScoringView]:
    model = trained_model()
    model.view()
    assert model.consolidate()  # retrains on the window, new blending neighbours
    model.train_batch(ratings(10, 10, 20, prefix="after-", ts0=500))  # (it ends a batch)
    view = model.view()
    assert model.last_delta.replaces_neighbours and view.blends_with(model._neighbours)
    return model, view


async def test_a_consolidation_sends_its_rows_and_says_its_neighbours_follow() -> None:
    model, view = consolidated_model()
    sink = ListSink()
    info = await DeltaPublisher(sink, max_bytes=1 << 20).publish(model, view)
    assert not info["snapshot_needed"] and info["neighbours_follow"]
    delta = opened(sink.sent[0][1])
    assert delta.replaces_neighbours and not delta.snapshot_needed  # on the wire
    # the rows the retrain changed (issue 18: no longer every row, only what changed)
    assert 0 < delta.rows_touched <= delta.n_users + delta.n_items


async def test_a_consolidation_too_large_for_a_message_is_a_marker() -> None:
    model, view = consolidated_model()
    sink = ListSink()
    info = await DeltaPublisher(sink, max_bytes=256).publish(model, view)
    assert info["snapshot_needed"] and not info["neighbours_follow"]
    assert opened(sink.sent[0][1]).snapshot_needed
