"""A scorer's cost per delta follows the delta (issue 19): a small delta on a large catalog
applies on the event loop (no thread hand-off), and the CPU it costs is measured as CPU
(``streamrec_delta_apply_cpu_seconds``), the worker thread's included when it goes off."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from agents import follower as follower_module
from agents import metrics
from agents.follower import ModelFollower
from models.blocks import BLOCK_ROWS
from models.config import ModelConfig
from models.events import Rating
from models.incremental import IncrementalModel
from tests.unit.agents.test_follower import Trainer, follower, same, store  # noqa: F401

ITEMS = 256 * BLOCK_ROWS  # 8,192 items x 64 components: a 2 MiB item matrix


def _sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


def _batch(trainer: Trainer, tag: str, ratings: list[Rating]) -> Any:
    trainer.model.train_batch(ratings)
    trainer.model.view()
    assert trainer.model.last_delta is not None
    return trainer.record(trainer.model.last_delta.encode())


async def test_a_small_delta_on_a_large_catalog_applies_on_the_loop(
    follower: ModelFollower,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trainer = Trainer(IncrementalModel(ModelConfig(no_components=64)))
    whole = [Rating(f"e{j}", f"u{j % 300}", f"i{j}", 5.0, 1e9) for j in range(ITEMS)]
    assert not await follower.on_delta(_batch(trainer, "e", whole))  # large: may go off
    hops: list[Any] = []
    to_thread = asyncio.to_thread

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn)
        return await to_thread(fn, *args, **kwargs)

    monkeypatch.setattr(follower_module.asyncio, "to_thread", counted)
    applied = _sample("streamrec_delta_apply_cpu_seconds_count")
    for d in range(3):  # one new user with 5 ratings each: the freshness benchmark's delta
        small = [Rating(f"n{d}-{j}", f"new{d}", f"i{j * 997}", 5.0, 2e9) for j in range(5)]
        assert not await follower.on_delta(_batch(trainer, f"n{d}", small))
    assert hops == []  # no thread hand-off for 5 rows, whatever the catalog's size
    assert same(follower.holder.view, trainer.model)
    assert _sample("streamrec_delta_apply_cpu_seconds_count") == applied + 3


async def test_the_cpu_of_an_off_loop_apply_counts_the_worker_not_other_tasks() -> None:
    clock = follower_module._CpuClock()

    def burn(seconds: float) -> str:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        return "done"

    async def other_task() -> None:  # runs on the loop while the apply waits for its thread
        await asyncio.sleep(0)
        burn(0.1)

    other = asyncio.create_task(other_task())
    assert await clock.off_loop(burn, 0.05) == "done"
    await other
    spent = clock.seconds()
    assert 0.05 <= spent < 0.1  # the worker's 0.05 s, not the other task's 0.1 s
