"""Poison pills through the real broker (issue 17): one ``--role all`` worker (trainer,
ingest, scorer and catalog in one process) sees a 5,000-digit integer id, lone surrogates
in ids (escaped, and as raw bytes) and in a catalog title, mixed with valid messages.

It keeps training every valid rating, dead-letters each poison rating once (also after a
SIGKILL and a restart that reads them again), dead-letters poison requests, answers the
valid ones (titles included, except the refused one), its ingest skips and counts the
poison, and ``/health/`` stays 200: nothing crashes, nothing stalls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.commands.service import request_recommendation
from app.settings import Settings
from app.topics import ensure_topics
from devtools.workers import WorkerProcess, free_port, isolated_s3_env, settings_for
from models.wire import DLQ_KIND, DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON
from tests.integration.service.conftest import KafkaClient, wait_for
from tests.integration.service.test_trainer_exactly_once import metric

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]

VALID = 120
POISON_RATINGS = [
    b'{"event_id":"p1","user":' + b"7" * 5000 + b',"item":"i1","rating":4,"ts":1}',
    b'{"event_id":"p2","user":"\\ud800","item":"i1","rating":4,"ts":1}',
    b'{"event_id":"\\udfff","user":"u1","item":"i1","rating":4,"ts":1}',
    b'{"event_id":"p4","user":"u1","item":"\xed\xa0\x80","rating":4,"ts":1}',
    b'{"event_id":"p5","user":"u1","item":"i1","rating":4,"ts":' + b"9" * 4400 + b"}",
]
POISON_REQUESTS = [
    b'{"request_id":"q1","user":' + b"7" * 5000 + b"}",
    b'{"request_id":"q2","user":"\\ud800"}',
    b'{"request_id":"\\udc00","user":"u1"}',
]


def rating(n: int) -> tuple[bytes, bytes]:
    user = f"u{n % 7}"
    body = {"event_id": f"ev-{n}", "user": user, "item": f"i{n % 11}", "rating": 5, "ts": n}
    return user.encode(), json.dumps(body).encode()


def catalog_entry(item: str, title: bytes) -> tuple[bytes, bytes]:
    return item.encode(), b'{"item":"' + item.encode() + b'","title":"' + title + b'"}'


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[WorkerProcess, Settings, dict[str, str]]]:
    env = isolated_s3_env(
        "e2e-poison",
        Settings(),
        tmp_path / "faust",
        topic_partitions=2,
        no_components=8,
        epochs_per_batch=1,
        session_timeout=8,
        snapshot_every_seconds=1,
        snapshot_every_batches=1,
        dedupe_memory=1,  # replays after the restart would be trained again: visible
    )
    settings = settings_for(env)
    asyncio.run(ensure_topics(settings))
    process = WorkerProcess("all", free_port(), tmp_path / "all-1.log", env).start()
    try:
        yield process, settings, env
    finally:
        process.stop()


def trained(process: WorkerProcess) -> int:
    status, body = process.get("/model/")
    return body.get("trained_events", 0) if status == 200 else 0


def test_poison_records_are_dead_lettered_once_and_every_valid_one_is_trained(
    worker: tuple[WorkerProcess, Settings, dict[str, str]], tmp_path: Path
) -> None:
    process, settings, env = worker
    client = KafkaClient(settings)
    asyncio.run(
        client.produce(
            settings.items_topic,
            [
                catalog_entry("i1", b"Heat (1995)"),
                catalog_entry("i2", b"Bad \\udc80 title"),  # refused: i2 has no title
                catalog_entry("i3", b"Raw \xed\xa0\x80 bytes"),  # refused too
                *(catalog_entry(f"i{n}", f"Film {n}".encode()) for n in range(4, 11)),
            ],
        )
    )
    good = [rating(n) for n in range(VALID)]
    poison = [(b"u1", value) for value in POISON_RATINGS]
    asyncio.run(client.produce(settings.ratings_topic, good[:60] + poison + good[60:]))
    process.wait_ready(model=True)
    wait_for(lambda: trained(process) == VALID, timeout=90, what="every valid rating trained")

    # The ratings DLQ: each poison rating once, invalid, with its reason.
    letters = asyncio.run(
        client.read_all(settings.ratings_dlq_topic, until=len(POISON_RATINGS), wait=30)
    )
    assert sorted(m.value for m in letters) == sorted(POISON_RATINGS)
    for m in letters:
        headers = dict(m.headers)
        assert headers[DLQ_KIND] == b"invalid", headers
        assert b"lone surrogate" in headers[DLQ_REASON] or b"digits" in headers[DLQ_REASON]

    # Requests: poison ones dead-lettered, valid ones answered, titles where valid.
    asyncio.run(client.produce(settings.requests_topic, [(b"u1", v) for v in POISON_REQUESTS]))
    reply = asyncio.run(request_recommendation(settings, "u1", 10, exclude_seen=False, wait=30))
    titles = {i.item: i.title for i in reply.items}
    assert titles.get("i1") == "Heat (1995)" and titles.get("i4") == "Film 4"
    assert titles.get("i2") is None and titles.get("i3") is None  # refused entries: no title
    dead = asyncio.run(
        client.read_all(settings.requests_dlq_topic, until=len(POISON_REQUESTS), wait=30)
    )
    assert sorted(m.value for m in dead) == sorted(POISON_REQUESTS)
    assert {dict(m.headers)[DLQ_KIND] for m in dead} == {b"invalid"}

    # The ingest skipped and counted the poison; every reader works: /health/ says so.
    status, health = process.get("/health/")
    assert status == 200 and health["status"] == "ok", health
    assert health["seen_ratings"] == VALID
    _, page = process.get("/metrics")
    skipped = metric(
        page,
        f'streamrec_skipped_messages_total{{kind="invalid",topic="{settings.ratings_topic}"}}',
    )
    assert skipped == len(POISON_RATINGS)
    assert metric(page, 'streamrec_trainer_skipped_total{reason="duplicate"}') == 0

    # SIGKILL and restart: the trainer reads the poison again (from its snapshot's offsets
    # or before), trains nothing twice and dead-letters nothing twice.
    process.kill()
    asyncio.run(client.produce(settings.ratings_topic, [poison[0], rating(VALID)]))
    process = WorkerProcess("all", process.web_port, tmp_path / "all-2.log", env).start()
    worker_restarted = process
    try:
        process.wait_ready(model=True)
        wait_for(lambda: trained(process) == VALID + 1, timeout=90, what="the restart to train")
        letters = asyncio.run(
            client.read_all(settings.ratings_dlq_topic, until=len(POISON_RATINGS) + 1, wait=30)
        )
        sources = [
            (int(dict(m.headers)[DLQ_PARTITION]), int(dict(m.headers)[DLQ_OFFSET])) for m in letters
        ]
        assert len(sources) == len(set(sources)) == len(POISON_RATINGS) + 1
        assert process.get("/health/")[0] == 200
        _, page = process.get("/metrics")
        assert metric(page, 'streamrec_trainer_skipped_total{reason="duplicate"}') == 0
        assert trained(process) == VALID + 1
    finally:
        worker_restarted.stop()
