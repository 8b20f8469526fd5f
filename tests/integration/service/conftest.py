"""A real streamrec deployment for the end-to-end tests: one trainer and two scorers as
subprocesses, on the real Kafka broker and the real S3 server, with topics, consumer groups
and an S3 prefix unique to this test module (so reruns and other tests never collide)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.kafka import send_bulk
from app.kafka import kafka_client_options
from app.settings import Settings
from app.stores import store_from_settings
from app.topics import ensure_topics
from devtools.workers import (  # create_bucket: imported from here by other suites too
    WorkerProcess,
    create_bucket,
    free_port,
    isolated_env,
    settings_for,
)


@dataclass
class Deployment:
    settings: Settings
    env: dict[str, str]
    trainer: WorkerProcess
    scorers: list[WorkerProcess]
    tmp: Path

    def topic(self, name: str) -> str:
        return getattr(self.settings, f"{name}_topic")

    def restart_trainer(self) -> WorkerProcess:
        self.trainer = WorkerProcess(
            "trainer", self.trainer.web_port, self.tmp / "trainer-2.log", self.env
        ).start()
        return self.trainer


E2E_SETTINGS: dict[str, Any] = dict(
    topic_partitions=4,
    batch_seconds=0.3,
    batch_max=500,
    snapshot_every_seconds=1,
    snapshot_every_batches=4,
    epochs_per_batch=10,
    no_components=16,
    session_timeout=8,
    log_level="info",
)
"""Fast batches and frequent snapshots: the shared deployment of test_service.py."""


async def newest_manifest(settings: Settings) -> dict[str, Any] | None:
    """The manifest of the newest snapshot in the deployment's store (None before any)."""
    async with store_from_settings(settings) as store:
        version = await store.latest()
        return None if version is None else (await store.get(version))[1]


def new_deployment(prefix: str, tmp: Path, **overrides: Any) -> Iterator[Deployment]:
    """A trainer and two scorers with topics, groups and an S3 prefix of their own
    (``overrides`` are settings); yields once the scorers share the request partitions."""
    base = Settings()
    bucket = f"{prefix}-{uuid.uuid4().hex[:8]}"
    asyncio.run(create_bucket(base, bucket))
    env = isolated_env(
        bucket, base, model_store=f"s3://{bucket}/{prefix}", datadir=tmp / "faust", **overrides
    )
    settings = settings_for(env)
    asyncio.run(ensure_topics(settings))
    trainer = WorkerProcess("trainer", free_port(), tmp / "trainer.log", env).start()
    scorers = [
        WorkerProcess("scorer", free_port(), tmp / f"scorer-{i}.log", env).start() for i in (1, 2)
    ]
    deployment = Deployment(settings, env, trainer, scorers, tmp)
    try:
        for worker in [trainer, *scorers]:
            worker.wait_ready(model=False)
        wait_for(
            lambda: scorer_group_settled(deployment),
            timeout=60,
            what="the scorers to share the request partitions",
        )
        yield deployment
    finally:
        for worker in [deployment.trainer, *deployment.scorers]:
            worker.stop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    run = uuid.uuid4().hex[:10]
    yield from new_deployment("e2e", tmp_path_factory.mktemp(f"e2e-{run}"), **E2E_SETTINGS)


def scorer_group_settled(deployment: Deployment) -> bool:
    """True once every live scorer owns some request partitions and together they own all."""
    topic = deployment.settings.requests_topic
    owned: list[str] = []
    for scorer in deployment.scorers:
        _, body = scorer.get("/health/")
        if body.get("rebalancing", True):  # table recovery still running
            return False
        mine = [p for p in body.get("partitions", []) if p.startswith(f"{topic}:")]
        if not mine:
            return False
        owned += mine
    return sorted(owned) == sorted(
        f"{topic}:{p}" for p in range(deployment.settings.topic_partitions)
    )


class KafkaClient:
    """Plain aiokafka, as any producer or consumer of streamrec's topics would use it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def produce(
        self, topic: str, messages: list[tuple[bytes | None, bytes | None]], **kwargs: Any
    ) -> None:
        producer = AIOKafkaProducer(**kafka_client_options(self.settings), acks="all", **kwargs)
        await producer.start()
        try:
            for key, value in messages:
                await producer.send(topic, key=key, value=value)
            await producer.flush()
        finally:
            await producer.stop()

    async def produce_bulk(
        self, topic: str, messages: list[tuple[bytes | None, bytes | None]]
    ) -> None:
        """Many messages at once, as whole record batches (keyed partitioning as ``send``)."""
        producer = AIOKafkaProducer(
            **kafka_client_options(self.settings), acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            await send_bulk(producer, topic, messages)
        finally:
            await producer.stop()

    async def produce_json(self, topic: str, items: list[dict[str, Any]], key_field: str) -> None:
        await self.produce(
            topic, [(str(m[key_field]).encode(), json.dumps(m).encode()) for m in items]
        )

    async def read_all(
        self, topic: str, *, until: int | None = None, wait: float = 20.0
    ) -> list[Any]:
        """Every message of ``topic`` from the beginning; waits until ``until`` have arrived."""
        consumer = AIOKafkaConsumer(
            **kafka_client_options(self.settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=32 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + wait
            parts: set[int] = set()
            while not parts and time.monotonic() < deadline:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
                await asyncio.sleep(0.1)
            consumer.assign([TopicPartition(topic, p) for p in parts])
            out: list[Any] = []
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=300)
                for messages in batch.values():
                    out.extend(messages)
                if until is not None and len(out) >= until:
                    break
                if until is None and not batch:
                    break
            return out
        finally:
            await consumer.stop()


@pytest.fixture(scope="module")
def kafka(deployment: Deployment) -> KafkaClient:
    return KafkaClient(deployment.settings)


def wait_for(
    predicate: Any, *, timeout: float, interval: float = 0.25, what: str | Any = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` otherwise
    (a callable ``what`` is asked at the end, to describe the state that timed out)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    what = what() if callable(what) else what
    pytest.fail(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
