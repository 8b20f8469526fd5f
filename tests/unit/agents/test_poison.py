"""Poison pills: one record no rule foresaw must never crash or stall its reader.

The records of issue 17 (a 5,000-digit integer id, a lone surrogate in an id or a catalog
title) go to the dead-letter queue (trainer, scorer) or are skipped and counted (ingest,
catalog) with a kind and a reason; an unexpected exception on one record (the last-resort
catch of each reader loop) does the same, as ``malformed`` naming the exception. A reader
that keeps failing on anything is reported (:mod:`agents.health`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pytest

import agents.decoded_batch as decoded_batch_module
import agents.follower as follower_module
import agents.ingest as ingest_module
import agents.scorer as scorer_module
from agents import metrics
from agents.follower import ModelFollower
from agents.health import ReaderHealth
from agents.ingest import Ingest
from agents.scorer import Scorer
from agents.state import ModelHolder
from models.delta import ModelDelta
from models.wire import (
    DLQ_KIND,
    DLQ_REASON,
    ModelUpdate,
    Reply,
    Undecodable,
    decode_rating,
    open_delta,
)
from storage import open_store
from tests.unit.agents.fakes import FakeMessage, FakeSeenTable, FakeSink
from tests.unit.agents.test_follower import DELTAS, KEYS, UPDATES
from tests.unit.agents.test_follower import FakeConsumer as FollowerConsumer
from tests.unit.agents.test_follower import Trainer as FollowedTrainer
from tests.unit.agents.test_trainer import FakeConsumer, FakeDLQ, start, stop, until
from tests.unit.models.conftest import tiny_view  # noqa: F401  (fixture)


def rating(n: int, **fields: Any) -> bytes:
    body = {"event_id": f"e{n}", "user": f"u{n % 3}", "item": f"i{n % 4}", "rating": 4, "ts": n}
    return json.dumps({**body, **fields}).encode()


# The poison records (key, value): every one refused as ``invalid``.
POISON = [
    (b"u0", b'{"event_id":"p1","user":' + b"7" * 5000 + b',"item":"i","rating":4,"ts":1}'),
    (b"u0", b'{"event_id":"p2","user":"\\ud800","item":"i","rating":4,"ts":1}'),
    (b"u0", b'{"event_id":"\\udfff","user":"u0","item":"i","rating":4,"ts":1}'),
    (b"u0", b'{"event_id":"p4","user":"u0","item":"\xed\xa0\x80","rating":4,"ts":1}'),
    (b"u0", b'{"event_id":"p5","user":"u0","item":"i","rating":4,"ts":' + b"9" * 4400 + b"}"),
]


def poisoned_stream() -> list[tuple[bytes, bytes]]:
    """Valid ratings with the poison in between (user u0: one partition)."""
    good = [(f"u{n % 3}".encode(), rating(n)) for n in range(30)]
    return good[:10] + POISON + good[10:]


# --- the trainer ---------------------------------------------------------------------------
async def consume_all(store: Any, consumer: FakeConsumer, dlq: FakeDLQ) -> tuple[Any, Any]:
    """A trainer started on ``consumer``, once it has consumed every record (and lives)."""
    trainer, task = await start(store, consumer, dlq, max_bytes=65536)
    await until(lambda: sum(trainer.model.offsets.values()) == consumer.end() or task.done())
    assert not task.done(), task.exception()
    return trainer, task


async def test_the_trainer_dead_letters_each_poison_record_once_and_trains_the_rest() -> None:
    consumer, dlq = FakeConsumer(), FakeDLQ()
    for key, value in poisoned_stream():
        consumer.produce(key, value)
    with tempfile.TemporaryDirectory() as tmp:
        async with open_store(f"file://{tmp}") as store:
            trainer, task = await consume_all(store, consumer, dlq)
            await stop(trainer, task)  # a snapshot of everything
            assert trainer.model.trained_events == 30
            assert sorted(d.value for d in dlq.letters) == sorted(v for _, v in POISON)
            assert {d.kind for d in dlq.letters} == {"invalid"}
            reasons = " | ".join(d.reason for d in dlq.letters)
            assert "more than 256 digits" in reasons or "number out of range" in reasons
            assert "lone surrogate" in reasons
            for letter in dlq.letters:  # its headers encode (the reason quotes the input)
                assert letter.headers[DLQ_KIND] == b"invalid"

            # A restart from the snapshot reads past them: nothing to retry, nothing again.
            consumer.produce(*POISON[0])
            consumer.produce(b"u1", rating(100))
            trainer, task = await consume_all(store, consumer, dlq)
            await stop(trainer, task, snapshot=False)
    assert trainer.model.trained_events == 31
    assert len(dlq.letters) == len(POISON) + 1
    assert len({(d.partition, d.offset) for d in dlq.letters}) == len(dlq.letters)


async def test_an_unexpected_exception_on_one_rating_dead_letters_it_as_malformed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last resort: a decoder bug on one record is that record's dead letter."""

    def flaky(key: bytes | None, value: bytes | None, **kw: Any) -> Any:
        if value is not None and b'"boom"' in value:
            raise RuntimeError("a bug no rule foresaw")
        return decode_rating(key, value, **kw)

    monkeypatch.setattr(decoded_batch_module, "decode_rating", flaky)
    consumer, dlq = FakeConsumer(), FakeDLQ()
    for n in range(10):
        consumer.produce(b"u1", rating(n, user="u1", item="boom" if n == 4 else "i"))
    with tempfile.TemporaryDirectory() as tmp:
        async with open_store(f"file://{tmp}") as store:
            trainer, task = await consume_all(store, consumer, dlq)
            await stop(trainer, task, snapshot=False)
    assert trainer.model.trained_events == 9
    [letter] = dlq.letters
    assert letter.kind == "malformed" and "RuntimeError" in letter.reason
    assert letter.offset == 4


# --- the ingest (skips: the trainer dead-letters) ---------------------------------------
def skipped(topic: str, kind: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "streamrec_skipped_messages_total", {"topic": topic, "kind": kind}
        )
        or 0.0
    )


async def test_the_ingest_skips_and_counts_poison_and_records_every_valid_rating() -> None:
    messages = [
        FakeMessage("ratings-poison", 0, n, key, value)
        for n, (key, value) in enumerate(poisoned_stream())
    ]
    table = FakeSeenTable()
    agent = Ingest(seen=table, max_bytes=65536, seen_limit=100)
    before = skipped("ratings-poison", "invalid")
    await agent.handle(messages)  # nothing escapes: the reader would retry it for ever
    assert agent.recorded == 30
    assert set(table.rows) == {"u0", "u1", "u2"}
    assert skipped("ratings-poison", "invalid") - before == len(POISON)


async def test_an_unexpected_exception_on_one_rating_is_skipped_by_the_ingest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def flaky(key: bytes | None, value: bytes | None, **kw: Any) -> Any:
        if b'"e3"' in (value or b""):
            raise LookupError("a bug no rule foresaw")
        return decode_rating(key, value, **kw)

    monkeypatch.setattr(ingest_module, "decode_rating", flaky)
    messages = [FakeMessage("ratings-flaky", 0, n, b"u1", rating(n, user="u1")) for n in range(6)]
    agent = Ingest(seen=FakeSeenTable(), max_bytes=65536, seen_limit=100)
    before = skipped("ratings-flaky", "malformed")
    await agent.handle(messages)
    assert agent.recorded == 5
    assert skipped("ratings-flaky", "malformed") - before == 1


# --- the scorer ----------------------------------------------------------------------------
def scorer_of(
    view: Any, catalog: dict[str, Any] | None = None
) -> tuple[Scorer, FakeSink, FakeSink]:
    holder = ModelHolder()
    holder.publish(view)
    replies, dlq = FakeSink(), FakeSink()

    async def exists(name: str) -> bool:
        return False

    scorer = Scorer(
        holder=holder,
        seen=FakeSeenTable(),
        default_reply=replies,
        dlq=dlq,
        reply_topic=lambda name: replies,
        topic_exists=exists,
        forbidden_replies=frozenset(),
        max_bytes=65536,
        max_batch=10,
        catalog=catalog or {},
    )
    return scorer, replies, dlq


def request(rid: str, user: bytes | str = "u1", raw_user: bytes | None = None) -> FakeMessage:
    user_json = raw_user if raw_user is not None else json.dumps(user).encode()
    value = b'{"request_id":"' + rid.encode() + b'","user":' + user_json + b',"k":4}'
    key = user.encode() if isinstance(user, str) else user
    return FakeMessage("rec-requests", 0, int(rid[1:]), key, value, timestamp=-1)


async def test_the_scorer_dead_letters_poison_requests_and_answers_the_rest(tiny_view) -> None:  # noqa: F811
    scorer, replies, dlq = scorer_of(tiny_view)
    messages = [
        request("r0"),
        request("r1", b"u1", raw_user=b"7" * 5000),
        request("r2", b"u1", raw_user=b'"\\ud800"'),
        request("r3", b"\xed\xa0\x80", raw_user=b'"\xed\xa0\x80"'),
        request("r4"),
    ]
    await scorer.handle(messages)
    await scorer.delivered()
    assert sorted(Reply.parse(s["value"]).request_id for s in replies.sent) == ["r0", "r4"]
    assert [s["headers"][DLQ_KIND] for s in dlq.sent] == [b"invalid"] * 3


async def test_a_catalog_title_that_cannot_be_encoded_dead_letters_its_requests_only(
    tiny_view,  # noqa: F811
) -> None:
    """A title with a lone surrogate (the catalog refuses them since issue 17; an older
    worker's table may hold one) fails the replies that contain the item: each such request
    is dead-lettered, the other replies go out, and the reader goes on."""
    scorer, replies, dlq = scorer_of(tiny_view, {"a": {"title": "bad \udc80 title"}})
    messages = [request("r0", "u1"), request("r1", "u2")]
    await scorer.handle(messages)  # every reply of 4 items holds "a": all dead-lettered
    assert not replies.sent
    assert [s["headers"][DLQ_KIND] for s in dlq.sent] == [b"invalid", b"invalid"]
    assert b"cannot be encoded" in dlq.sent[0]["headers"][DLQ_REASON]
    scorer.catalog = {"a": {"title": "Heat"}}
    await scorer.handle([request("r2", "u1")])
    assert [Reply.parse(s["value"]).request_id for s in replies.sent] == ["r2"]


async def test_an_unexpected_exception_on_one_request_dead_letters_it_as_malformed(
    tiny_view,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = scorer_module.decode_request

    def flaky(key: bytes | None, value: bytes | None, **kw: Any) -> Any:
        if b'"r1"' in (value or b""):
            raise KeyError("a bug no rule foresaw")
        return real(key, value, **kw)

    monkeypatch.setattr(scorer_module, "decode_request", flaky)
    scorer, replies, dlq = scorer_of(tiny_view)
    await scorer.handle([request("r0"), request("r1"), request("r2")])
    assert sorted(Reply.parse(s["value"]).request_id for s in replies.sent) == ["r0", "r2"]
    [letter] = dlq.sent
    assert letter["headers"][DLQ_KIND] == b"malformed"
    assert b"KeyError" in letter["headers"][DLQ_REASON]


# --- readers that keep failing ------------------------------------------------------------
def test_a_reader_that_keeps_failing_is_reported_once_per_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = ReaderHealth(failing_after=2)
    with caplog.at_level(logging.INFO, logger="agents.health"):
        health.failed("ingest", ConnectionError("broker gone"))
        assert health.problems() == {}  # one failure: riding out a broker restart
        for _ in range(5):
            health.failed("ingest", ValueError("Exceeds the limit (4300 digits)"))
        assert "ValueError: Exceeds the limit" in health.problems()["ingest"]
        failing = metrics.REGISTRY.get_sample_value(
            "streamrec_reader_failing", {"reader": "ingest"}
        )
        assert failing == 1
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2  # one line per exception type, not one per retry
        health.ok("ingest")
        assert health.problems() == {}
        assert (
            metrics.REGISTRY.get_sample_value("streamrec_reader_failing", {"reader": "ingest"}) == 0
        )
        assert "works again" in caplog.records[-1].getMessage()


# --- the model follower ---------------------------------------------------------------------
async def test_an_unexpected_exception_on_one_delta_is_refused_like_a_corrupt_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The follower's last resort: a delta whose decoding raises anything is refused (never
    served, a resync from the store), and the follower goes on."""
    async with open_store(f"file://{tmp_path}") as snapshots:
        follower = ModelFollower(ModelHolder(), snapshots, {}, UPDATES, deltas_topic=DELTAS)
        follower._consumer = FollowerConsumer()  # type: ignore[assignment]
        trainer = FollowedTrainer()
        await follower.on_delta(trainer.batch(0))
        await trainer.snapshot(snapshots)
        poison = trainer.batch(1)
        inner = open_delta(poison.value, KEYS)  # signed by the trainer: trusted, then decoded
        real = ModelDelta.decode

        def flaky(raw: bytes) -> ModelDelta:
            if raw == inner:
                raise OverflowError("a bug no rule foresaw")
            return real(raw)

        monkeypatch.setattr(follower_module.ModelDelta, "decode", staticmethod(flaky))
        assert await follower.on_delta(poison)  # refused: resynced from the snapshot
        assert follower.holder.view.version == 1
        assert poison.offset in follower._bad
        assert not await follower.on_delta(trainer.batch(2))  # and it goes on
    with pytest.raises(Undecodable):  # an announcement's int() of Infinity: refused, too
        ModelUpdate.parse(b'{"version": 1, "trained_events": 1e400}')


async def test_a_request_whose_scoring_raises_is_dead_lettered_and_the_batch_answered(
    tiny_view,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scoring is per batch: one request that makes it raise is found by scoring each
    alone, and only that one is dead-lettered."""
    real = scorer_module.replies_for

    def flaky(requests: Any, *args: Any, **kw: Any) -> Any:
        if any(r.user == "u2" for r in requests):
            raise IndexError("a bug no rule foresaw")
        return real(requests, *args, **kw)

    monkeypatch.setattr(scorer_module, "replies_for", flaky)
    scorer, replies, dlq = scorer_of(tiny_view)
    await scorer.handle([request("r0", "u1"), request("r1", "u2"), request("r2", "u3")])
    assert sorted(Reply.parse(s["value"]).request_id for s in replies.sent) == ["r0", "r2"]
    [letter] = dlq.sent
    assert letter["headers"][DLQ_KIND] == b"malformed"
    assert b"IndexError" in letter["headers"][DLQ_REASON]
