"""A scorer holding its share (issue 19): the follower keeps only the owned partitions'
users, narrows on a revocation, loads a new partition's users from the checkpoint and the
deltas since beside the served view, and the scorer marks replies of loading partitions.
Kafka is a list of records (tests/unit/agents/test_follower.py's fakes); the store is real."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.follower import ModelFollower
from agents.scorer import loading_marked, reply_for
from agents.share_loader import ShareLoader
from agents.state import ModelHolder
from models.events import RecRequest
from models.ownership import Share, partition_of
from models.scoring import ScoringView
from models.wire import Reply
from storage import SnapshotStore
from tests.unit.agents import test_follower, test_scorer
from tests.unit.agents.test_follower import DELTAS, Record, Trainer
from tests.unit.models.conftest import tiny_view as test_scorer_view

FIRST, BOTH, SECOND = Share.of(2, {0}), Share.of(2, {0, 1}), Share.of(2, {1})


def holds_share_of(view: ScoringView | None, trainer: Trainer, share: Share) -> bool:
    """``view`` is the trainer's model with only ``share``'s users."""
    full = trainer.model.full_view()
    if view is None or view.version != full.version or view.share != share:
        return False
    held = [u for u in full.user_ids() if share.holds(u)]
    if view.user_ids() != held or view.item_ids() != full.item_ids():
        return False
    rows = [full.user_ids().index(u) for u in held]
    ours, theirs = view.scoring_arrays(), full.scoring_arrays()
    return all(
        np.array_equal(theirs[n][rows] if n.startswith("user") else theirs[n], ours[n])
        for n in theirs
    )


class ListConsumer:
    """The delta topic from an offset, as a consumer of the loader's."""

    def __init__(self, records: list[Record], offset: int) -> None:
        self.records, self.position = records, offset

    async def getmany(self, timeout_ms: int = 0) -> dict[Any, list[Record]]:
        batch, self.position = self.records[self.position :], len(self.records)
        return {TopicPartition(DELTAS, 0): batch} if batch else {}

    async def stop(self) -> None:
        pass


store, follower = test_follower.store, test_follower.follower  # the same fixtures


@pytest.fixture
def topic(monkeypatch: pytest.MonkeyPatch) -> list[Record]:
    records: list[Record] = []

    async def _open(self: ShareLoader, offset: int) -> ListConsumer:
        return ListConsumer(records, offset)

    monkeypatch.setattr(ShareLoader, "_open", _open)
    return records


async def test_a_share_follows_the_deltas_with_only_its_users(follower: ModelFollower) -> None:
    follower.set_share(FIRST)
    trainer = Trainer()
    for seed in range(4):
        await follower.on_delta(trainer.batch(seed))
    assert holds_share_of(follower.holder.view, trainer, FIRST)
    assert follower.holder.view.model_users == trainer.model.n_users


async def test_revoked_users_are_dropped_and_new_ones_loaded_beside_the_served_view(
    follower: ModelFollower, store: SnapshotStore, topic: list[Record]
) -> None:
    trainer = Trainer()
    trainer.records = topic
    follower.set_share(BOTH)
    await follower.on_delta(trainer.batch(0))
    await follower.on_delta(trainer.batch(1))
    assert holds_share_of(follower.holder.view, trainer, BOTH)
    # Partition 0 revoked: the view narrows at once, nothing is loading.
    follower.set_share(SECOND)
    await follower.settle_share()
    assert holds_share_of(follower.holder.view, trainer, SECOND)
    assert not follower.holder.loading
    # A checkpoint, deltas after it, then partition 0 comes back.
    await trainer.snapshot(store)
    for seed in (2, 3):
        await follower.on_delta(trainer.batch(seed))
    follower.set_share(BOTH)
    holder = follower.holder
    assert holder.loading == {0}
    user0 = next(u for u in trainer.model.full_view().user_ids() if FIRST.holds(u))
    assert holder.is_loading(user0) and not holder.is_loading(next(iter(second_users(trainer))))
    served = holder.view
    await follower.settle_share()  # starts the loader in the background
    assert follower._share_task is not None and holder.view is served
    await follower._share_task  # the checkpoint and deltas 2, 3 replayed
    await follower.on_delta(trainer.batch(4))  # the served view moves on meanwhile
    await follower.settle_share()  # the rest replayed, then swapped in
    assert holds_share_of(holder.view, trainer, BOTH)
    assert not holder.loading and await holder.until_loaded(0.0)
    assert follower._share_task is None
    await follower.on_delta(trainer.batch(5))  # and the deltas go on
    assert holds_share_of(holder.view, trainer, BOTH)


def second_users(trainer: Trainer) -> list[str]:
    return [u for u in trainer.model.full_view().user_ids() if SECOND.holds(u)]


async def test_a_load_serves_only_the_share(follower: ModelFollower, store: SnapshotStore) -> None:
    trainer = Trainer()
    trainer.batch(0)
    trainer.batch(1)
    update = await trainer.snapshot(store)
    follower.set_share(SECOND)
    await follower.on_update(update)
    assert holds_share_of(follower.holder.view, trainer, SECOND)
    assert not follower.holder.loading


def test_popularity_replies_of_a_loading_partition_say_so() -> None:
    holder = ModelHolder()
    holder.set_loading(4, frozenset({1}))
    users = [f"u{i}" for i in range(40)]
    loading = next(u for u in users if Share.of(4, {1}).holds(u))
    other = next(u for u in users if not Share.of(4, {1}).holds(u))
    cold = Reply("r1", loading, [], 3, "popularity")
    marked = loading_marked(holder, cold)
    assert marked is not None and marked.loading
    assert Reply.parse(marked.encode()[1]).loading  # on the wire, read back
    assert not Reply.parse(cold.encode()[1]).loading
    assert b"loading" not in cold.encode()[1]  # absent unless true: old readers unchanged
    assert loading_marked(holder, Reply("r2", other, [], 3, "popularity")).loading is False
    assert loading_marked(holder, Reply("r3", loading, [], 3, "model")).loading is False
    # A scorer that holds no view yet (one joining a group) says so on its empty replies.
    empty = loading_marked(holder, Reply("r4", loading, [], None, "none"))
    assert empty is not None and empty.loading and Reply.parse(empty.encode()[1]).loading
    holder.set_loading(4, frozenset())
    assert loading_marked(holder, cold) is cold


setup, tiny_view = test_scorer.setup, test_scorer_view  # the scorer's fakes and tiny view


async def test_requests_of_a_loading_partition_wait_then_get_popularity_saying_so(setup):
    scorer, _, replies, _, _ = setup
    holder = scorer.holder
    carol = partition_of("carol", 2)  # a cold user: popularity whatever is loaded
    holder.set_loading(2, frozenset({carol}))
    scorer.loading_wait = 0.2
    started = time.monotonic()
    await scorer.handle([test_scorer.request_message("carol", "r1", 0)])
    assert time.monotonic() - started >= 0.2  # it waited for the load
    (got,) = test_scorer.replies_of(replies)
    assert got.source == "popularity" and got.loading
    # The load ends while a request waits: it is answered then, not marked.
    scorer.loading_wait = 30.0
    waiting = asyncio.create_task(scorer.handle([test_scorer.request_message("carol", "r2", 1)]))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    holder.set_loading(2, frozenset())
    await asyncio.wait_for(waiting, 5)
    last = test_scorer.replies_of(replies)[-1]
    assert last.request_id == "r2" and last.source == "popularity" and not last.loading


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False),
        st.text(),
        st.lists(st.booleans()),
    )
)
def test_a_replys_loading_is_true_only_when_it_says_true(value) -> None:
    body = json.loads(Reply("r", "u", [], 1, "popularity").encode()[1])
    got = Reply.parse(json.dumps({**body, "loading": value}).encode())
    assert got.loading is (value is True)
    assert Reply.parse(got.encode()[1]) == got  # encode after decode


def test_a_web_reply_of_a_loading_partition_says_so_too(tiny_view) -> None:
    holder = ModelHolder()
    holder.publish(tiny_view)
    holder.set_loading(2, frozenset({partition_of("carol", 2)}))
    request = RecRequest("r1", "carol", 3)
    assert reply_for(request, holder, np.zeros(0, dtype=np.uint64)).loading
    holder.set_loading(2, frozenset())
    assert not reply_for(request, holder, np.zeros(0, dtype=np.uint64)).loading


async def test_the_first_load_waits_a_moment_for_owned_partitions(follower: ModelFollower) -> None:
    follower.set_share(Share.of(2, ()))  # before the group assigned anything
    follower.first_share_wait = 30.0
    waiting = asyncio.create_task(follower._await_first_share())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    follower.set_share(FIRST)
    await asyncio.wait_for(waiting, 5)  # released by the assignment, not the bound
    lonely = ModelFollower(ModelHolder(), follower.store, {}, "u", deltas_topic=DELTAS)
    lonely.set_share(Share.of(2, ()))
    lonely.first_share_wait = 0.05
    await asyncio.wait_for(lonely._await_first_share(), 5)  # no partitions: the bound
