"""The scorer agent against a fake stream, fake sinks and a tiny view (no Kafka)."""

from __future__ import annotations

import json
from types import MappingProxyType

import numpy as np
import pytest

from agents.scorer import Scorer, reply_for, title_of
from agents.state import ModelHolder
from models.events import RecRequest
from models.seen import decode_row, remember
from models.wire import DLQ_KIND, Reply
from tests.unit.agents.fakes import FakeMessage, FakeSeenTable, FakeSink, FakeStream
from tests.unit.models.conftest import ITEMS, tiny_view  # noqa: F401  (fixture)


def request_message(user: str, rid: str, offset: int, **body) -> FakeMessage:
    value = json.dumps({"request_id": rid, "user": user, **body}).encode()
    return FakeMessage("rec-requests", 0, offset, user.encode(), value, timestamp=None)


@pytest.fixture
def setup(tiny_view):  # noqa: F811
    holder = ModelHolder()
    holder.publish(tiny_view)
    table, replies, dlq, other = FakeSeenTable(), FakeSink(), FakeSink(), FakeSink()
    scorer = Scorer(
        holder=holder,
        seen=table,
        default_reply=replies,
        dlq=dlq,
        reply_topic=lambda name: other,
        topic_exists=_exists,
        forbidden_replies=frozenset({"ratings"}),
        max_bytes=65536,
        max_batch=3,
    )
    return scorer, table, replies, dlq, other


async def _exists(name: str) -> bool:
    return name == "client-replies"


def replies_of(sink: FakeSink) -> list[Reply]:
    return [Reply.parse(s["value"]) for s in sink.sent]


async def test_a_batch_is_scored_together_one_reply_per_request(setup):
    scorer, table, replies, dlq, other = setup
    table.put("alice", remember(None, ["a"], 100), 0)
    messages = [
        request_message("alice", "r1", 0, k=2),
        request_message("bob", "r2", 1, k=1),
        request_message("nobody", "r3", 2, k=2, reply_to="client-replies"),
        request_message("alice", "r4", 3, k=4, exclude_seen=False),
        request_message("carol", "r5", 4, k=10),
    ]
    stream = FakeStream.of(messages)
    await scorer.run(stream, stream.idle)
    got = {r.request_id: r for r in replies_of(replies) + replies_of(other)}
    assert sorted(got) == ["r1", "r2", "r3", "r4", "r5"]
    assert [i.item for i in got["r1"].items] == ["b", "c"]  # a is seen: excluded
    assert [i.item for i in got["r2"].items] == ["d"]
    assert got["r3"].source == "popularity" and [r.request_id for r in replies_of(other)] == ["r3"]
    assert [i.item for i in got["r4"].items] == ["a", "b", "c", "d"]  # exclude_seen off
    assert got["r5"].source == "popularity" and len(got["r5"].items) == 4
    assert all(r.latency_ms is not None and r.model_version == 7 for r in got.values())
    assert stream.acked == messages and dlq.sent == []


async def test_batches_take_what_is_buffered_and_no_more_than_max(setup):
    scorer, _, replies, _, _ = setup
    seen_batches: list[int] = []
    answer = scorer.answer

    async def spy(messages):
        seen_batches.append(len(messages))
        await answer(messages)

    scorer.answer = spy  # type: ignore[method-assign]
    lone = [request_message("bob", "lone", 0)]
    burst = [request_message("bob", f"b{n}", n + 1) for n in range(7)]
    stream = FakeStream([lone, burst])
    await scorer.run(stream, stream.idle)
    # The lone request is answered alone, at once; the burst in slices of at most 3.
    assert seen_batches == [1, 3, 3, 1]
    assert len(replies.sent) == 8


async def test_every_seen_item_is_excluded_up_to_the_bound(setup):
    scorer, table, replies, _, _ = setup
    many = [f"x{n}" for n in range(20_000)]
    table.put("alice", remember(None, [*many, "a", "b", "c"], 10_000), 0)
    assert len(decode_row(table.get("alice"))) == 10_000
    stream = FakeStream.of([request_message("alice", "r", 0, k=10)])
    await scorer.run(stream, stream.idle)
    (reply,) = replies_of(replies)
    assert [i.item for i in reply.items] == ["d"]


async def test_bad_requests_are_dead_lettered_with_their_kind(setup):
    scorer, _, replies, dlq, _ = setup
    messages = [
        FakeMessage("rec-requests", 0, 0, b"bob", b"\xff"),
        request_message("bob", "x", 1, k=0),
        request_message("bob", "y", 2, reply_to="ratings"),
        request_message("bob", "z", 3, reply_to="no-such-topic"),
        request_message("bob", "ok", 4),
    ]
    stream = FakeStream.of(messages)
    await scorer.run(stream, stream.idle)
    kinds = [d["headers"][DLQ_KIND] for d in dlq.sent]
    assert kinds == [b"malformed", b"invalid", b"reply_to", b"reply_to"]
    assert [r.request_id for r in replies_of(replies)] == ["ok"]
    assert stream.acked == messages


def test_reply_without_a_model_is_empty_and_says_so():
    reply = reply_for(RecRequest("r", "u", 10, True, None), ModelHolder(), decode_row(None))
    assert reply.items == [] and reply.source == "none" and reply.model_version is None


def test_item_index_follows_the_served_view(tiny_view):  # noqa: F811
    holder = ModelHolder()
    holder.publish(tiny_view)
    first = holder.item_index(tiny_view)
    assert holder.item_index(tiny_view) is first and len(first) == len(ITEMS)


def test_replies_blend_with_the_seen_items_even_when_they_are_not_excluded():
    import scipy.sparse as sp

    from tests.unit.models.conftest import make_tiny_view

    holder = ModelHolder()
    neighbours = sp.csr_matrix(([1.0], ([1], [2])), shape=(3, 3), dtype=np.float32)  # b -> c
    holder.publish(make_tiny_view(neighbours=neighbours, blend_weight=1.0))
    seen = decode_row(remember(None, ["b"], 100))
    plain = reply_for(RecRequest("r", "alice", 4, False, None), holder, decode_row(None))
    assert [i.item for i in plain.items] == ["a", "b", "c", "d"]  # the model's order
    blended = reply_for(RecRequest("r", "alice", 4, False, None), holder, seen)
    assert [i.item for i in blended.items][:2] == ["c", "a"]  # c: the neighbour of seen b
    excluded = reply_for(RecRequest("r", "alice", 4, True, None), holder, seen)
    assert [i.item for i in excluded.items] == ["c", "a", "d"]


def test_titles_come_from_the_catalog_when_it_has_them(tiny_view):  # noqa: F811
    holder = ModelHolder()
    holder.publish(tiny_view)
    catalog = {"a": {"title": "A (1995)"}, "b": {"title": 7}, "c": "not a row"}
    request = RecRequest("r", "alice", 4, False, None)
    titled = reply_for(request, holder, decode_row(None), catalog=catalog)
    assert {i.item: i.title for i in titled.items} == {
        "a": "A (1995)",
        "b": None,
        "c": None,
        "d": None,
    }
    plain = reply_for(request, holder, decode_row(None))  # no catalog: no lookups, no titles
    assert [i.item for i in plain.items] == [i.item for i in titled.items]
    assert all(i.title is None for i in plain.items)
    assert title_of(MappingProxyType({"a": MappingProxyType({"title": "T"})}), "a") == "T"
