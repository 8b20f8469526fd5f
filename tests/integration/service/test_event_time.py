"""End to end, event time (issue 17): 1990s history then ratings stamped now, a rating in
milliseconds mid-stream, and a delta the scorers refuse.

One trainer and two scorers (real subprocesses) on the real broker and SeaweedFS, with the
default snapshot settings (a snapshot every 200 batches or 300 s), so whatever the scorers
serve came by deltas unless a snapshot was asked for:

* MovieLens-era ratings, then ratings stamped now: the scorers apply every delta (no
  resync, no wait for a snapshot) and a new user's live rating reaches a reply within 2 s
  (on main the decay factor underflowed to 0.0, every scorer refused the delta and served
  an old model until the next snapshot);
* one rating stamped in milliseconds mid-stream: dead-lettered once as ``ts_in_future``,
  and ``/items/popular/`` keeps following the live ratings;
* a delta the scorers refuse: they ask the trainer for a snapshot and serve its state
  again within seconds, not after the snapshot interval.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.kafka import partitions_of
from app.commands.service import publish_ratings
from app.kafka import kafka_client_options
from app.settings import model_keys
from models.events import Rating
from models.wire import DLQ_KIND, RecRequest, Reply, encode_request, seal_delta
from tests.integration.service.conftest import (
    Deployment,
    KafkaClient,
    new_deployment,
    wait_for,
)
from tests.integration.service.test_deltas import caught_up, info, metric

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]

MOVIELENS = 880_000_000.0  # 1997-11-20
LIVE_REPLY_BOUND = 2.0  # seconds: the bound for a live rating to reach a reply
FRESH_BOUND = 10.0  # seconds: "serving fresh again within seconds" after a refused delta


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("event-time")
    yield from new_deployment("evtime", tmp, no_components=16, session_timeout=8)


def ratings(users: list[str], items: list[str], ts: float) -> list[Rating]:
    return [
        Rating(uuid.uuid4().hex, user, item, 5.0, ts + n)
        for user in users
        for n, item in enumerate(items)
    ]


def publish(deployment: Deployment, batch: list[Rating]) -> None:
    asyncio.run(publish_ratings(deployment.settings, batch))


async def first_model_reply(deployment: Deployment, user: str, within: float) -> float:
    """Ask for ``user``'s recommendations every 50 ms (one producer and one reply consumer,
    as a client would keep them) until a reply comes from the model; returns when it came
    (monotonic), or fails after ``within`` seconds."""
    settings = deployment.settings
    options = kafka_client_options(settings)
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    producer = AIOKafkaProducer(**options, acks="all")
    await consumer.start()
    await producer.start()
    try:
        parts = await partitions_of(options, settings.responses_topic)
        tps = [TopicPartition(settings.responses_topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            key, value = encode_request(RecRequest(uuid.uuid4().hex, user, 10))
            await producer.send(settings.requests_topic, key=key, value=value)
            batch = await consumer.getmany(timeout_ms=50)
            for messages in batch.values():
                for message in messages:
                    reply = Reply.parse(message.value)
                    if reply.user == user and reply.source == "model":
                        return time.monotonic()
        pytest.fail(f"no model reply for {user} within {within:g}s")
    finally:
        await producer.stop()
        await consumer.stop()


def popular(worker: Any) -> list[str]:
    status, body = worker.get("/items/popular/?k=3")
    return [i["item"] for i in body["items"]] if status == 200 else []


def test_1990s_history_then_live_ratings_every_delta_applies_and_replies_within_2s(
    deployment: Deployment,
) -> None:
    history = ratings([f"ml{n}" for n in range(60)], [f"classic{j}" for j in range(10)], MOVIELENS)
    publish(deployment, history)
    wait_for(lambda: caught_up(deployment), timeout=60, what="scorers to follow the history")
    now = time.time()
    publish(deployment, ratings([f"live{n}" for n in range(20)], ["new-release"], now))
    wait_for(lambda: caught_up(deployment), timeout=30, what="scorers to follow live ratings")
    user = f"newcomer-{uuid.uuid4().hex[:6]}"
    published = time.monotonic()
    publish(deployment, ratings([user], ["new-release", "classic1", "classic2"], time.time()))
    answered = asyncio.run(first_model_reply(deployment, user, within=30))
    took = answered - published
    print(f"\nnew user's live rating -> model reply: {took:.2f} s")
    assert took <= LIVE_REPLY_BOUND, f"{took:.2f} s"
    trainer = info(deployment.trainer)
    assert "snapshot" not in trainer, "a snapshot was written: the deltas were not tested"
    assert not trainer["delta"]["snapshot_needed"] and "snapshot_due" not in trainer
    for scorer in deployment.scorers:
        chain = info(scorer)["deltas"]
        assert chain["resyncs"] == 0 and not chain["waiting_for_snapshot"], chain
        assert metric(scorer, "streamrec_resyncs_total") == 0
        assert metric(scorer, "streamrec_deltas_skipped_total") == 0
        assert metric(scorer, "streamrec_snapshot_requests_total") == 0
        assert popular(scorer)[0] == "new-release"


def test_a_rating_in_milliseconds_is_dead_lettered_once_and_popularity_follows(
    deployment: Deployment, kafka: KafkaClient
) -> None:
    now = time.time()
    poison = Rating(uuid.uuid4().hex, "clock-wrong", "poisoned", 5.0, now * 1000)
    live = ratings([f"fan{n}" for n in range(40)], ["hot-now"], now)
    publish(deployment, [*live[:5], poison, *live[5:]])
    wait_for(
        lambda: (
            caught_up(deployment) and all(popular(s)[0] == "hot-now" for s in deployment.scorers)
        ),
        timeout=30,
        what=lambda: f"scorers after the ms rating: {[popular(s) for s in deployment.scorers]}",
    )
    # Later live ratings still move popularity (on main every later rating weighed 0).
    publish(deployment, ratings([f"fan{n}" for n in range(60)], ["hotter"], time.time()))

    def followed() -> bool:
        return caught_up(deployment) and all(
            popular(s)[:2] == ["hotter", "hot-now"] for s in deployment.scorers
        )

    wait_for(followed, timeout=30, what=lambda: [popular(s) for s in deployment.scorers])
    letters = asyncio.run(kafka.read_all(deployment.settings.ratings_dlq_topic))
    mine = [m for m in letters if poison.event_id.encode() in (m.value or b"")]
    assert len(mine) == 1, "dead-lettered exactly once"
    headers = dict(mine[0].headers)
    assert headers[DLQ_KIND] == b"ts_in_future"
    for scorer in deployment.scorers:
        assert metric(scorer, "streamrec_resyncs_total") == 0


def test_a_refused_delta_is_followed_by_a_requested_snapshot_within_seconds(
    deployment: Deployment, kafka: KafkaClient
) -> None:
    """A delta the scorers cannot apply (here: corrupt bytes, signed with the model key as
    a trainer's own bad write would be; an unsigned one is refused as untrusted and changes
    nothing): they resync, ask the trainer for a snapshot, and serve the trainer's state
    again within seconds (the snapshot interval is 300 s; no new rating arrives meanwhile)."""
    publish(deployment, ratings(["pre"], ["hot-now"], time.time()))
    wait_for(lambda: caught_up(deployment), timeout=30, what="scorers before the bad delta")
    snapshot_before = info(deployment.trainer).get("snapshot", {}).get("version")
    started = time.monotonic()
    asyncio.run(
        kafka.produce(
            deployment.settings.model_deltas_topic,
            [(b"bad", seal_delta(b"SRDELTA1 not a delta", model_keys(deployment.settings)))],
        )
    )

    def asked() -> bool:  # refused: each resyncs (no snapshot yet: waits) and asks
        return all(
            metric(s, "streamrec_snapshot_requests_total", 'outcome="sent"') >= 1
            for s in deployment.scorers
        )

    wait_for(asked, timeout=FRESH_BOUND, interval=0.05, what="both scorers to refuse it")

    def fresh() -> bool:
        return caught_up(deployment) and not any(
            info(s)["deltas"]["waiting_for_snapshot"] for s in deployment.scorers
        )

    wait_for(fresh, timeout=FRESH_BOUND, interval=0.05, what="the scorers to serve fresh again")
    took = time.monotonic() - started
    print(f"\nrefused delta -> scorers serving the trainer's version again: {took:.2f} s")
    trainer = info(deployment.trainer)
    assert trainer["snapshot"]["version"] != snapshot_before  # asked for, and written
    assert metric(deployment.trainer, "streamrec_snapshot_requests_total", "answered") >= 1
    for scorer in deployment.scorers:
        assert "Refusing delta at offset" in scorer.log_path.read_text()
    # And live ratings flow by deltas again.
    user = f"after-{uuid.uuid4().hex[:6]}"
    published = time.monotonic()
    publish(deployment, ratings([user], ["hot-now", "hotter"], time.time()))
    answered = asyncio.run(first_model_reply(deployment, user, within=30))
    assert answered - published <= LIVE_REPLY_BOUND + 1
