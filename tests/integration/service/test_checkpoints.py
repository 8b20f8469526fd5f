"""Incremental checkpoints in a real trainer (Kafka, S3, a worker subprocess): segments are
written, a SIGKILLed trainer restores base + segments and trains every rating exactly once,
and retention prunes the versions older than the kept bases."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from agents.checkpoints import fetch_chain
from app.settings import model_keys
from app.stores import store_from_settings
from models.segment import decode_chain
from storage.errors import SnapshotNotFound
from tests.integration.service.conftest import KafkaClient, wait_for
from tests.integration.service.test_trainer_exactly_once import (  # noqa: F401 - the fixture
    TrainerOnly,
    rating,
    trainer_only,
)

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]


async def manifests(trainer: TrainerOnly) -> dict[int, dict[str, Any]]:
    """Every complete version's manifest (retention may delete some while this reads)."""
    found = {}
    async with store_from_settings(trainer.settings) as store:
        for info in await store.list():
            with contextlib.suppress(SnapshotNotFound):
                found[info.version] = (await store.get(info.version))[1]
    return found


async def current(trainer: TrainerOnly) -> int | None:
    async with store_from_settings(trainer.settings) as store:
        return await store.current()


async def verified_head(trainer: TrainerOnly) -> dict[str, Any]:
    """The current version's state, its chain fetched and verified (signatures included)."""
    async with store_from_settings(trainer.settings) as store:
        chain = await fetch_chain(store, await store.current())
    state = decode_chain(chain, model_keys(trainer.settings))
    return {"trained_events": state.trained_events, "links": len(chain)}


@pytest.mark.long  # 20 s; the default suite's random trainer kills run on segments too
@pytest.mark.parametrize(
    "trainer_only",
    [
        {
            "snapshot_every_seconds": 1,
            "snapshot_every_batches": 2,
            "checkpoint_segments": 6,
            "checkpoint_chain_fraction": 10.0,
            "checkpoint_keep_bases": 2,
            "batch_max": 500,
        }
    ],
    indirect=True,
)
def test_segments_survive_a_sigkill_and_retention_keeps_the_chain(
    trainer_only: TrainerOnly,  # noqa: F811 - the fixture imported above
) -> None:
    client = KafkaClient(trainer_only.settings)
    rng = random.Random(5)
    total = 30_000
    messages = [rating(n, rng) for n in range(total)]
    topic = trainer_only.topic("ratings")
    trainer_only.start()
    asyncio.run(client.produce_bulk(topic, messages[: total // 2]))

    def some_segments() -> bool:
        return sum("parent" in m for m in asyncio.run(manifests(trainer_only)).values()) >= 2

    wait_for(some_segments, timeout=120, what="segments in the store")
    trainer_only.worker.kill()  # SIGKILL: the restart restores base + segments
    at_kill = asyncio.run(manifests(trainer_only))
    restored = asyncio.run(current(trainer_only))  # what the restart restores
    assert "parent" in at_kill[restored]  # a segment, to be assembled onto its base
    asyncio.run(client.produce_bulk(topic, messages[total // 2 :]))
    trainer_only.start()

    def first_after_restart() -> dict[str, Any] | None:
        newer = {v: m for v, m in asyncio.run(manifests(trainer_only)).items() if v > max(at_kill)}
        return newer[min(newer)] if newer else None

    # the restarted trainer continues the restored chain: its first checkpoint is a segment
    # of it (or, with the chain's 6 segments reached, a base compacted from it)
    first = wait_for(first_after_restart, timeout=120, what="a checkpoint after the restart")
    links, parent = 1, restored
    while (parent := at_kill[parent].get("parent")) is not None:
        links += 1
    assert first.get("parent") == restored or ("parent" not in first and links > 6)
    wait_for(lambda: trainer_only.trained() >= total, timeout=300, what="the restart to catch up")

    def covered() -> dict[str, Any] | None:
        found = asyncio.run(manifests(trainer_only))
        newest = found[max(found)] if found else None
        return newest if newest and newest["trained_events"] == total else None

    wait_for(covered, timeout=60, what="a checkpoint covering every rating")
    assert trainer_only.trained() == total  # each rating once: nothing lost, nothing twice
    head = asyncio.run(verified_head(trainer_only))
    assert head["trained_events"] <= total
    found = asyncio.run(manifests(trainer_only))
    bases = sorted(v for v, m in found.items() if "parent" not in m)
    assert len(bases) <= 3  # retention: 2 kept (+ one being written meanwhile at most)
    assert all(m["parent"] in found for m in found.values() if "parent" in m)
