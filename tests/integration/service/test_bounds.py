"""Hostile input against a real deployment (issue 17, bounds): a flood of new user ids past
STREAMREC_MAX_USERS, a k=1000 reply too large for Kafka, reply_to naming internal or other
applications' topics, and the delta topic's retention.bytes on the broker.

The tests share one deployment (a trainer and two scorers) and run in file order.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from agents.kafka import committed_offsets, partitions_of
from app.commands.catalog import publish_catalog
from app.kafka import kafka_client_options
from app.topics import TopicSpec, bulk_group, ensure_topics, faust_app_id
from models.catalog import CatalogItem
from models.wire import DLQ_KIND, DLQ_REASON
from tests.integration.service.conftest import (
    E2E_SETTINGS,
    Deployment,
    KafkaClient,
    new_deployment,
    newest_manifest,
    wait_for,
)
from tests.integration.service.test_service import model_info, rating, recommend, trained

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]

MAX_USERS = 60
KNOWN = 40  # users rated before the flood


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    run = uuid.uuid4().hex[:10]
    yield from new_deployment(
        f"bounds-{run[:6]}",
        tmp_path_factory.mktemp(f"bounds-{run}"),
        **E2E_SETTINGS,
        max_users=MAX_USERS,
        delta_retention_bytes=64 * 1024 * 1024,
    )


@pytest.fixture(scope="module")
def kafka(deployment: Deployment) -> KafkaClient:
    return KafkaClient(deployment.settings)


def publish(kafka: KafkaClient, deployment: Deployment, events: list[dict[str, Any]]) -> None:
    asyncio.run(kafka.produce_json(deployment.topic("ratings"), events, "user"))


def letters(kafka: KafkaClient, deployment: Deployment, dlq: str, kind: str, n: int) -> list[Any]:
    """The dead letters of ``kind`` on ``dlq``, once at least ``n`` of them arrived."""

    def arrived() -> list[Any] | None:
        found = [
            m
            for m in asyncio.run(kafka.read_all(deployment.topic(dlq), wait=5))
            if dict(m.headers).get(DLQ_KIND) == kind.encode()
        ]
        return found if len(found) >= n else None

    return wait_for(arrived, timeout=60, what=f"{n} dead letters of kind {kind}")


def trainer_state(deployment: Deployment) -> str:
    """What a wait on the trainer saw last: its trained count, health, last batch and log."""
    trainer = deployment.trainer
    try:
        status, body = trainer.get("/model/")
        info = body if isinstance(body, dict) else {}
        seen = f"/model/ {status} trained_events={info.get('trained_events')!r} "
        seen += f"last_batch={info.get('last_batch')!r}; /health/ {trainer.get('/health/')}"
    except OSError as exc:
        seen = f"no answer ({exc})"
    return f"{seen}; alive={trainer.running()}; log tail:\n{trainer.log_tail(15)}"


def test_a_flood_of_new_users_past_the_bound_is_dead_lettered_and_known_users_train(
    deployment: Deployment, kafka: KafkaClient
) -> None:
    items = [f"bound-i{j}" for j in range(30)]
    events = [
        rating(f"known-{n}", items[(n + j) % 30], 5.0, 1000.0 + n * 10 + j)
        for n in range(KNOWN)
        for j in range(5)
    ]
    publish(kafka, deployment, events)
    wait_for(lambda: trained(deployment) == len(events), timeout=60, what="the known users")

    flood = [rating(f"fake-{uuid.uuid4().hex}", items[n % 30], 5.0, 5000.0 + n) for n in range(400)]
    publish(kafka, deployment, flood)
    admitted = MAX_USERS - KNOWN
    wait_for(
        lambda: trained(deployment) == len(events) + admitted,
        timeout=60,
        what="the flood's first users to be trained",
    )
    refused = letters(kafka, deployment, "ratings_dlq", "capacity", len(flood) - admitted)
    assert len(refused) == len(flood) - admitted
    assert all(b"STREAMREC_MAX_USERS" in dict(m.headers)[DLQ_REASON] for m in refused)
    flood_values = {json.dumps(e).encode() for e in flood}
    assert {m.value for m in refused} <= flood_values  # the original bytes

    again = [rating(f"known-{n}", items[(n + 7) % 30], 4.0, 9000.0 + n) for n in range(KNOWN)]
    publish(kafka, deployment, again)
    total = len(events) + admitted + len(again)
    wait_for(lambda: trained(deployment) == total, timeout=60, what="known users to train on")
    info = model_info(deployment.trainer)
    assert info["n_users"] == MAX_USERS
    assert deployment.trainer.get("/health/")[0] == 200  # alive, and not restarted
    assert deployment.trainer.running()

    # SIGKILLed after a snapshot of all that and restarted under a second flood: it resumes
    # there and refuses the same way, exactly once. (Killed before any snapshot, it would
    # replay the partitions in another interleaving and admit other users: a second, also
    # valid, model. The whole run above can take less than the snapshot interval.)
    wait_for(
        lambda: (
            (asyncio.run(newest_manifest(deployment.settings)) or {}).get("trained_events") == total
        ),
        timeout=60,
        what="a snapshot of every trained rating before the kill",
    )
    deployment.trainer.kill()
    flood2 = [
        rating(f"fake2-{uuid.uuid4().hex}", items[n % 30], 5.0, 9500.0 + n) for n in range(200)
    ]
    more = [rating(f"known-{n}", items[(n + 11) % 30], 5.0, 9800.0 + n) for n in range(KNOWN)]
    publish(kafka, deployment, flood2 + more)
    trainer = deployment.restart_trainer()
    trainer.wait_ready(timeout=120)
    wait_for(
        lambda: trained(deployment) == total + len(more),
        timeout=90,
        what=lambda: f"the restart: {trainer_state(deployment)}, {total + len(more)} expected",
    )
    refused = letters(kafka, deployment, "ratings_dlq", "capacity", len(flood) - admitted + 200)
    assert len(refused) == len(flood) - admitted + 200  # none twice, none missed
    time.sleep(3)  # no crash loop: still up
    assert trainer.running() and trainer.get("/health/")[0] == 200
    assert model_info(trainer)["n_users"] == MAX_USERS


def test_a_reply_too_large_for_kafka_dead_letters_its_request_and_the_reader_goes_on(
    deployment: Deployment, kafka: KafkaClient
) -> None:
    # 1,000 items with 256-character ids (3-byte characters), titled with 500 more: a k=1000
    # reply is ~2.3 MB, over Kafka's 1 MiB default (and the producer's).
    long_items = [("€" * 250) + f"{j:06d}" for j in range(1000)]
    events = [
        rating(f"known-{n % 20}", long_items[j], 5.0, 20_000.0 + j * 3 + n)
        for j in range(1000)
        for n in (j % 20, (j + 7) % 20)
    ]
    before = trained(deployment)
    publish(kafka, deployment, events)
    wait_for(
        lambda: trained(deployment) == before + len(events),
        timeout=90,
        what=lambda: f"long items: {trainer_state(deployment)}, {before + len(events)} expected",
    )
    entries = [CatalogItem(i, "ü" * 500, ()) for i in long_items]
    asyncio.run(publish_catalog(deployment.settings, entries))
    wait_for(
        lambda: all(
            s.get("/items/popular/?limit=1")[1].get("total", 0) >= 1000 for s in deployment.scorers
        ),
        timeout=60,
        what="the scorers to hold the long items",
    )
    wait_for(
        lambda: all(
            s.get(f"/items/{quote(long_items[999], safe='')}/")[1].get("title") == "ü" * 500
            for s in deployment.scorers
        ),
        timeout=60,
        what="the scorers' catalogs to hold the long titles",
    )
    request_id = f"big-{uuid.uuid4().hex}"
    big = {"request_id": request_id, "user": "known-3", "k": 1000, "exclude_seen": False}
    asyncio.run(kafka.produce_json(deployment.topic("requests"), [big], "user"))
    (letter,) = [
        m
        for m in letters(kafka, deployment, "requests_dlq", "too_large", 1)
        if request_id.encode() in m.value
    ]
    reason = dict(letter.headers)[DLQ_REASON].decode()
    size = int(reason.split("reply is ")[1].split(" bytes")[0])
    assert size > 1024 * 1024 and "STREAMREC_MAX_REPLY_BYTES" in reason, reason
    # The next requests are answered, and the reader commits past all of them.
    for n in range(4):
        assert recommend(deployment, f"known-{n}", k=5)["items"]
    settings = deployment.settings
    options = kafka_client_options(settings)

    async def lag() -> int:
        parts = [
            TopicPartition(settings.requests_topic, p)
            for p in await partitions_of(options, settings.requests_topic)
        ]
        group = bulk_group(settings, "scorer", "requests")
        committed = await committed_offsets(options, group, parts)
        consumer = AIOKafkaConsumer(**options, group_id=None)
        await consumer.start()
        try:
            ends = await consumer.end_offsets(parts)
        finally:
            await consumer.stop()
        return sum(end - committed.get(tp, 0) for tp, end in ends.items())

    wait_for(lambda: asyncio.run(lag()) == 0, timeout=30, what="the requests to be committed")


async def _ends(options: dict[str, Any], topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(**options, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in await partitions_of(options, topic)]
        return {tp.partition: o for tp, o in (await consumer.end_offsets(parts)).items()}
    finally:
        await consumer.stop()


async def _records_since(options: dict[str, Any], topic: str, starts: dict[int, int]) -> list[Any]:
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in starts]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            consumer.seek(tp, starts[tp.partition])
        out: list[Any] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            behind = [tp for tp in parts if await consumer.position(tp) < ends[tp]]
            if not behind:
                break
            for records in (await consumer.getmany(*behind, timeout_ms=500)).values():
                out += records
        return out
    finally:
        await consumer.stop()


def test_reply_to_internal_or_another_apps_topic_is_dead_lettered_and_nothing_written(
    deployment: Deployment, kafka: KafkaClient
) -> None:
    settings = deployment.settings
    options = kafka_client_options(settings)
    other_app = f"billing-{uuid.uuid4().hex[:8]}"
    leader = f"{faust_app_id(settings, 'scorer')}-__assignor-__leader"
    asyncio.run(ensure_topics(settings, [TopicSpec(other_app, 2)]))
    if not asyncio.run(partitions_of(options, leader)):  # Faust makes it when it leads
        asyncio.run(ensure_topics(settings, [TopicSpec(leader, 1)]))
    targets = ["__consumer_offsets", other_app, leader]
    before = {t: asyncio.run(_ends(options, t)) for t in targets}
    run = uuid.uuid4().hex
    requests = [
        {"request_id": f"{run}-{n}", "user": f"known-{n}", "k": 5, "reply_to": t}
        for n, t in enumerate(targets)
    ]
    asyncio.run(kafka.produce_json(deployment.topic("requests"), requests, "user"))
    refused = [
        m
        for m in letters(kafka, deployment, "requests_dlq", "reply_to", 3)
        if run.encode() in m.value
    ]
    assert len(refused) == 3
    reasons = {json.loads(m.value)["reply_to"]: dict(m.headers)[DLQ_REASON] for m in refused}
    assert b"internal" in reasons["__consumer_offsets"] and b"internal" in reasons[leader]
    assert b"allowed prefix" in reasons[other_app]
    assert recommend(deployment, "known-1", k=5)["items"]  # answered after them
    for topic in (other_app, leader):
        assert asyncio.run(_ends(options, topic)) == before[topic], topic
    # __consumer_offsets moves with every commit: no record of it carries a request of ours.
    since = asyncio.run(_records_since(options, "__consumer_offsets", before[targets[0]]))
    assert not [r for r in since if r.value and run.encode() in r.value]


def test_the_delta_topic_is_bounded_in_bytes_on_the_broker(deployment: Deployment) -> None:
    settings = deployment.settings

    async def described() -> dict[str, str]:
        admin = AIOKafkaAdminClient(**kafka_client_options(settings))
        await admin.start()
        try:
            (response,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, settings.model_deltas_topic)]
            )
        finally:
            await admin.close()
        (resource,) = response.resources
        return {entry[0]: entry[1] for entry in resource[4]}

    configs = asyncio.run(described())
    assert configs["retention.bytes"] == str(64 * 1024 * 1024)
    segment = int(configs["segment.bytes"])  # deleted a segment at a time
    assert segment == 16 * 1024 * 1024 and segment >= int(configs["max.message.bytes"])


def test_many_random_reply_to_names_do_not_stall_a_scorer(
    deployment: Deployment, kafka: KafkaClient
) -> None:
    """1,000 requests naming random (missing) topics under the allowed prefix, with a lone
    request after every 200 of them: one topic list read per second at most, so the lone
    requests are answered at once (their latency: from their send to the reply)."""
    settings = deployment.settings
    prefix = f"{settings.responses_topic}-"  # allowed (devtools.workers.isolated_env)
    assert prefix in settings.reply_prefixes
    idle = [recommend(deployment, f"known-{n}", k=5)["latency_ms"] for n in range(5)]
    run = uuid.uuid4().hex[:8]

    def request(n: int, **body: Any) -> tuple[bytes, bytes]:
        user = f"known-{n % KNOWN}"
        value = {"request_id": f"{run}-{n}", "user": user, "k": 5, **body}
        return user.encode(), json.dumps(value).encode()

    flood = []
    for n in range(1000):
        flood.append(request(n, reply_to=f"{prefix}{uuid.uuid4().hex}"))
        if n % 200 == 199:
            flood.append(request(10_000 + n))  # a lone request, answered on rec-responses
    started = time.monotonic()
    asyncio.run(kafka.produce_bulk(deployment.topic("requests"), flood))
    refused = [
        m
        for m in letters(kafka, deployment, "requests_dlq", "reply_to", 1000)
        if json.loads(m.value)["request_id"].startswith(run)
    ]
    seconds = time.monotonic() - started
    assert len(refused) == 1000
    assert all(b"does not exist" in dict(m.headers)[DLQ_REASON] for m in refused)

    def lone_replies() -> list[float] | None:
        found = asyncio.run(kafka.read_all(settings.responses_topic))
        replies = [json.loads(m.value) for m in found]
        mine = [r["latency_ms"] for r in replies if r["request_id"].startswith(f"{run}-1")]
        return mine if len(mine) == 5 else None

    during = wait_for(lone_replies, timeout=30, what="the lone requests' replies")
    print(  # the measured figures (pytest -s)
        f"random reply_to flood: 1000 dead-lettered in {seconds:.1f} s; lone-request "
        f"latency idle {sorted(idle)} ms, during {sorted(during)} ms"
    )
    assert max(during) < 1000, (idle, during)  # no stall (main: one admin connection a name)
