"""A trainer stopped with SIGTERM persists what it trained since its last snapshot."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from app.commands.service import publish_ratings
from app.settings import Settings
from app.stores import store_from_settings
from app.topics import ensure_topics
from devtools.workers import WorkerProcess, free_port, isolated_env, settings_for
from models.synthetic import generate_ratings

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]


async def newest_snapshot(settings: Settings) -> dict | None:
    async with store_from_settings(settings) as store:
        version = await store.latest()
        return None if version is None else (await store.get(version))[1]


def test_sigterm_writes_a_final_snapshot_covering_every_rating(tmp_path: Path) -> None:
    prefix = f"shutdown-{uuid.uuid4().hex[:8]}"
    env = isolated_env(
        prefix,
        Settings(),
        model_store=f"file://{tmp_path / 'models'}",
        datadir=tmp_path / "faust",
        snapshot_every_seconds=600,  # only the shutdown can write one
        snapshot_every_batches=1000,
    )
    settings = settings_for(env)
    asyncio.run(ensure_topics(settings))
    trainer = WorkerProcess("trainer", free_port(), tmp_path / "trainer.log", env).start()
    try:
        trainer.wait_ready(model=False)
        ratings = generate_ratings(100, 50, 500, 4, seed=3)
        asyncio.run(publish_ratings(settings, ratings))
        deadline = time.monotonic() + 60
        while trainer.get("/model/")[1].get("trained_events", 0) < len(ratings):
            assert time.monotonic() < deadline, trainer.log_tail()
            time.sleep(0.2)
        assert asyncio.run(newest_snapshot(settings)) is None
    finally:
        returncode = trainer.stop(timeout=60)
    assert returncode == 0, trainer.log_tail()
    manifest = asyncio.run(newest_snapshot(settings))
    assert manifest is not None, trainer.log_tail()
    assert manifest["trained_events"] == len(ratings)
    assert sum(manifest["offsets"].values()) == len(ratings)  # next offsets: all covered
