"""The scorer agent against fake messages, fake sinks and a tiny view (no Kafka)."""

from __future__ import annotations

import asyncio
import json
from types import MappingProxyType

import numpy as np
import pytest

from agents.scorer import Scorer, reply_for, title_of
from agents.state import ModelHolder
from models.events import RecRequest
from models.seen import decode_row, remember
from models.wire import DLQ_KIND, DLQ_REASON, Reply
from tests.unit.agents.fakes import FakeMessage, FakeSeenTable, FakeSink
from tests.unit.models.conftest import ITEMS, tiny_view  # noqa: F401  (fixture)


def request_message(user: str, rid: str, offset: int, **body) -> FakeMessage:
    value = json.dumps({"request_id": rid, "user": user, **body}).encode()
    return FakeMessage("rec-requests", 0, offset, user.encode(), value, timestamp=-1)


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
        reply_prefixes=("client-",),
    )
    return scorer, table, replies, dlq, other


EXISTING = {"client-replies", "__consumer_offsets", "billing-events", "ratings"}
ASKED: list[str] = []


async def _exists(name: str) -> bool:
    ASKED.append(name)
    return name in EXISTING


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
    await scorer.handle(messages)
    got = {r.request_id: r for r in replies_of(replies) + replies_of(other)}
    assert sorted(got) == ["r1", "r2", "r3", "r4", "r5"]
    assert [i.item for i in got["r1"].items] == ["b", "c"]  # a is seen: excluded
    assert [i.item for i in got["r2"].items] == ["d"]
    assert got["r3"].source == "popularity" and [r.request_id for r in replies_of(other)] == ["r3"]
    assert [i.item for i in got["r4"].items] == ["a", "b", "c", "d"]  # exclude_seen off
    assert got["r5"].source == "popularity" and len(got["r5"].items) == 4
    assert all(r.latency_ms is not None and r.model_version == 7 for r in got.values())
    assert dlq.sent == []


async def test_a_fetch_is_answered_in_batches_of_at_most_max(setup):
    scorer, _, replies, _, _ = setup
    seen_batches: list[int] = []
    answer = scorer.answer

    async def spy(messages):
        seen_batches.append(len(messages))
        await answer(messages)

    scorer.answer = spy  # type: ignore[method-assign]
    lone = [request_message("bob", "lone", 0)]
    burst = [request_message("bob", f"b{n}", n + 1) for n in range(7)]
    await scorer.handle(lone)
    await scorer.handle(burst)
    # The lone request is answered alone, at once; the burst in slices of at most 3.
    assert seen_batches == [1, 3, 3, 1]
    assert len(replies.sent) == 8


async def test_every_seen_item_is_excluded_up_to_the_bound(setup):
    scorer, table, replies, _, _ = setup
    many = [f"x{n}" for n in range(20_000)]
    table.put("alice", remember(None, [*many, "a", "b", "c"], 10_000), 0)
    assert len(decode_row(table.get("alice"))) == 10_000
    await scorer.handle([request_message("alice", "r", 0, k=10)])
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
    await scorer.handle(messages)
    kinds = [d["headers"][DLQ_KIND] for d in dlq.sent]
    assert kinds == [b"malformed", b"invalid", b"reply_to", b"reply_to"]
    assert [r.request_id for r in replies_of(replies)] == ["ok"]


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


class SlowSink(FakeSink):
    """A sink whose sends return a delivery future the test resolves (as a producer's)."""

    def __init__(self) -> None:
        super().__init__()
        self.futures: list[asyncio.Future[None]] = []

    async def send(self, *, key=None, value=None, headers=None):  # type: ignore[override]
        await super().send(key=key, value=value, headers=headers)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


async def test_replies_are_delivered_before_delivered_returns(setup):
    scorer, *_ = setup
    sink = SlowSink()
    scorer.default_reply = sink
    await scorer.handle([request_message("bob", f"r{n}", n) for n in range(5)])
    assert len(sink.sent) == 5  # queued; handle did not wait for their delivery
    waiting = asyncio.ensure_future(scorer.delivered())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the reader's commit waits for every reply
    for future in sink.futures[:-1]:
        future.set_result(None)
    await asyncio.sleep(0.01)
    assert not waiting.done()
    sink.futures[-1].set_result(None)
    await asyncio.wait_for(waiting, 1)


async def test_a_failed_delivery_fails_one_wait_then_is_forgotten(setup):
    scorer, *_ = setup
    sink = SlowSink()
    scorer.default_reply = sink
    await scorer.handle([request_message("bob", "r", 0)])
    sink.futures[0].set_exception(ConnectionError("broker gone"))
    with pytest.raises(ConnectionError):
        await scorer.delivered()  # the reader fails and re-reads from its committed offset
    await asyncio.wait_for(scorer.delivered(), 1)  # and the next attempt can commit


async def test_too_many_undelivered_replies_make_handle_wait(setup):
    scorer, *_ = setup
    sink = SlowSink()
    scorer.default_reply = sink
    scorer.max_undelivered = 3
    await scorer.handle([request_message("bob", f"r{n}", n) for n in range(3)])
    blocked = asyncio.ensure_future(scorer.handle([request_message("bob", "r3", 3)]))
    await asyncio.sleep(0.01)
    assert not blocked.done()  # bounded: it waits for the replies on their way
    for future in sink.futures:
        future.set_result(None)
    await asyncio.wait_for(blocked, 1)


async def test_reply_to_outside_the_allow_list_is_dead_lettered_unasked(setup):
    scorer, _, replies, dlq, other = setup
    ASKED.clear()
    names = [
        "__consumer_offsets",
        "billing-events",  # another application's topic: no allowed prefix
        "streamrec-scorer-__assignor-__leader",  # Faust's leader topic
        "client-x-changelog",
        "ratings",
        "rec-responses",  # the responses topic itself is fine
    ]
    messages = [request_message("bob", f"r{n}", n, reply_to=t) for n, t in enumerate(names)]
    await scorer.handle(messages)
    assert [d["headers"][DLQ_KIND] for d in dlq.sent] == [b"reply_to"] * 5
    reasons = [d["headers"][DLQ_REASON].decode() for d in dlq.sent]
    assert "internal" in reasons[0] and "allowed prefix" in reasons[1] and "internal" in reasons[2]
    assert [d["value"] for d in dlq.sent] == [m.value for m in messages[:5]]
    assert [r.request_id for r in replies_of(replies)] == ["r5"] and other.sent == []
    assert ASKED == []  # refused by the rule: no metadata request for any of them


async def test_a_reply_over_max_reply_bytes_dead_letters_its_request(setup):
    scorer, _, replies, dlq, _ = setup
    scorer.catalog = {item: {"title": "T" * 400} for item in ITEMS}
    scorer.max_reply_bytes = 1200
    await scorer.handle(
        [
            request_message("bob", "big", 0, k=4),  # 4 titles of 400 bytes: too large
            request_message("bob", "small", 1, k=1),
        ]
    )
    (letter,) = dlq.sent
    assert letter["headers"][DLQ_KIND] == b"too_large"
    reason = letter["headers"][DLQ_REASON].decode()
    assert "STREAMREC_MAX_REPLY_BYTES" in reason and "1200" in reason
    size = int(reason.split("reply is ")[1].split(" bytes")[0])
    assert size > 1600
    assert [r.request_id for r in replies_of(replies)] == ["small"]
    await scorer.delivered()  # the reader commits past both


async def test_dead_letters_are_queued_together_and_delivered_before_the_commit(setup):
    scorer, *_ = setup
    dlq = SlowSink()
    scorer.dlq = dlq
    await scorer.handle([request_message("bob", f"r{n}", n, k=0) for n in range(50)])
    assert len(dlq.sent) == 50  # all queued: handle did not wait for each delivery
    waiting = asyncio.ensure_future(scorer.delivered())
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the reader commits only after every dead letter is delivered
    for future in dlq.futures:
        future.set_result(None)
    await asyncio.wait_for(waiting, 1)
