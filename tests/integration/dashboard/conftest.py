"""One real worker (role ``all``: trainer, scorer and their views in one process) on the real
Kafka broker, with a catalog loaded through the items topic and a model trained from
ratings streamed in several micro-batches; topics and groups are this module's alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.commands.catalog import publish_catalog
from app.commands.service import publish_ratings
from app.settings import Settings
from app.topics import ensure_topics
from devtools.workers import WorkerProcess, free_port, isolated_env, settings_for
from models.catalog import CatalogItem
from models.synthetic import generate_catalog, generate_ratings
from tests.integration.service.conftest import KafkaClient, wait_for

USERS, ITEMS, RATINGS, GENRES = 150, 80, 4000, 4


@dataclass
class Served:
    settings: Settings
    env: dict[str, str]
    worker: WorkerProcess
    catalog: list[CatalogItem]
    tmp: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("dashboard")
    env = isolated_env(
        f"dash-{uuid.uuid4().hex[:8]}",
        Settings(),
        model_store=f"file://{tmp / 'models'}",
        datadir=tmp / "faust",
        batch_seconds=0.3,
        batch_max=400,
        snapshot_every_seconds=1,
        dashboard_sample_seconds=0.5,
        dashboard_points=120,
        session_timeout=8,
    )
    settings = settings_for(env)
    asyncio.run(ensure_topics(settings))
    catalog = generate_catalog(ITEMS, GENRES, seed=5)
    asyncio.run(publish_catalog(settings, catalog))
    worker = WorkerProcess("all", free_port(), tmp / "worker.log", env).start()
    try:
        worker.wait_ready(model=False)
        # Publish only once the group has settled (the request partitions are Faust's; the
        # ingest and the trainer read ratings themselves, from the same assignment).
        wanted = {f"{settings.requests_topic}:{p}" for p in range(settings.topic_partitions)}
        wait_for(
            lambda: (
                (body := worker.get("/health/")[1])
                and not body["rebalancing"]
                and wanted <= set(body["partitions"])
            ),
            timeout=60,
            what=lambda: f"the worker to own every request partition ({worker.get('/health/')})",
        )
        ratings = generate_ratings(USERS, ITEMS, RATINGS, GENRES, seed=5)
        # A steady stream: the trainer fits many micro-batches, each one a hit-rate point.
        asyncio.run(publish_ratings(settings, ratings, rate=1000))
        # Three bad ratings for the dead-letter panel: two malformed, one invalid.
        bad = [(b"u1", b"{not json"), (b"u1", b"[1, 2]"), (b"u1", b'{"user": "u1"}')]
        asyncio.run(KafkaClient(settings).produce(settings.ratings_topic, bad))
        wait_for(
            lambda: worker.get("/model/")[1].get("trained_events", 0) >= RATINGS,
            timeout=90,
            what=lambda: f"every rating trained (/model/: {worker.get('/model/')})",
        )
        yield Served(settings, env, worker, catalog, tmp)
    finally:
        worker.stop()
