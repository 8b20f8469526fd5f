"""Seen items at the default bound: ingest keeps ``seen_items_max`` items per user, and the
scorer excludes every one of them, against a view that knows them all (no Kafka)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.ingest import Ingest
from agents.scorer import Scorer
from agents.state import ModelHolder
from app.settings import Settings
from models.events import MAX_K
from models.scoring import ScoringView
from models.seen import decode_row, item_hashes
from models.wire import Reply
from tests.unit.agents.fakes import FakeMessage, FakeSeenTable, FakeSink

UNSEEN = MAX_K  # a reply of MAX_K items has room for every unseen item, and no more


@pytest.fixture
def bound(monkeypatch: pytest.MonkeyPatch) -> int:
    """``seen_items_max`` as a deployment without the variable gets it."""
    monkeypatch.delenv("STREAMREC_SEEN_ITEMS_MAX", raising=False)
    return Settings().seen_items_max


def rated(user: str, items: list[str], batch: int) -> list[list[FakeMessage]]:
    """``user`` rating ``items`` in order, as ``ratings`` messages in slices of ``batch``."""
    messages = [
        FakeMessage(
            "ratings",
            0,
            n,
            user.encode(),
            json.dumps(
                {"event_id": f"e{n}", "user": user, "item": item, "rating": 4, "ts": n}
            ).encode(),
        )
        for n, item in enumerate(items)
    ]
    return [messages[i : i + batch] for i in range(0, len(messages), batch)]


async def ingest_all(bound: int, user: str, items: list[str]) -> FakeSeenTable:
    """What the ingest agent stores for ``user`` at the service's settings."""
    settings = Settings()
    table = FakeSeenTable()
    agent = Ingest(seen=table, max_bytes=settings.max_message_bytes, seen_limit=bound)
    for messages in rated(user, items, settings.ingest_batch_max):
        await agent.handle(messages)
    return table


def test_the_default_bound_is_the_issues_10_000() -> None:
    assert Settings.model_fields["seen_items_max"].default == 10_000


async def test_ingest_keeps_exactly_the_default_bound_newest_first_out(bound: int) -> None:
    items = [f"m{n}" for n in range(bound + 25)]
    table = await ingest_all(bound, "alice", items)
    row = decode_row(table.get("alice"))
    assert len(row) == bound  # 8 bytes per item
    assert row.tolist() == item_hashes(items[25:]).tolist()  # the oldest 25 dropped
    assert len(table.get("alice")) - 8 * bound < 64  # compact: a small header, no JSON


def ranked_view(user: str, items: list[str]) -> ScoringView:
    """One user for whom ``items`` score in decreasing order (item 0 highest)."""
    n = len(items)
    scores = np.arange(n, 0, -1, dtype=np.float32)
    return ScoringView(
        version=1,
        user_ids=[user],
        user_index={user: 0},
        item_ids=list(items),
        item_index={item: i for i, item in enumerate(items)},
        user_embeddings=np.array([[1.0, 0.0]], dtype=np.float32),
        user_biases=np.zeros(1, dtype=np.float32),
        item_embeddings=np.stack([scores, np.zeros(n, dtype=np.float32)], axis=1),
        item_biases=np.zeros(n, dtype=np.float32),
        popularity=np.ones(n),
        user_positives=np.array([n], dtype=np.int64),
    )


async def test_every_one_of_the_default_bound_of_seen_items_is_excluded(bound: int) -> None:
    # bound + UNSEEN items the model knows; the user rated the bound top-scoring ones.
    seen = [f"seen{n}" for n in range(bound)]
    unseen = [f"new{n}" for n in range(UNSEEN)]
    holder = ModelHolder()
    holder.publish(ranked_view("alice", seen + unseen))
    table = await ingest_all(bound, "alice", seen)
    replies = FakeSink()
    scorer = Scorer(
        holder=holder,
        seen=table,
        default_reply=replies,
        dlq=FakeSink(),
        reply_topic=lambda name: FakeSink(),
        topic_exists=_no_topic,
        forbidden_replies=frozenset(),
        max_bytes=1 << 20,
        max_batch=10,
    )
    body = {"request_id": "r", "user": "alice", "k": MAX_K, "exclude_seen": True}
    await scorer.handle([FakeMessage("rec-requests", 0, 0, b"alice", json.dumps(body).encode())])
    (sent,) = replies.sent
    reply = Reply.parse(sent["value"])
    assert reply.source == "model"
    got = [i.item for i in reply.items]
    # Any seen item left in would outrank every unseen one and be in the reply.
    assert not set(got) & set(seen)
    assert got == unseen


async def _no_topic(name: str) -> bool:
    return False
