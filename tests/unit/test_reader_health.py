"""A reader run by :func:`agents.kafka.retry_forever` that failed twice (a broker restart of
a few seconds) and then works again must leave ``/health/``'s failing list: CI once saw a
worker answer 503 for good after a 3-second broker outage, because the experiment and
snapshot-request readers never reported a working round."""

from __future__ import annotations

import asyncio

import pytest

from agents.health import ReaderHealth
from agents.kafka import retry_forever


async def _run(attempts: list[str], health: ReaderHealth) -> asyncio.Task[None]:
    async def attempt() -> None:
        attempts.append("try")
        if len(attempts) <= 2:
            raise ConnectionError("broker down")
        await asyncio.Event().wait()  # connected: reads for ever

    return asyncio.create_task(
        retry_forever("reader", attempt, 0.01, health=health, healthy_seconds=0.1)
    )


async def test_a_reader_that_works_again_is_no_longer_failing() -> None:
    health = ReaderHealth()
    attempts: list[str] = []
    task = await _run(attempts, health)
    try:
        await asyncio.sleep(0.05)
        assert len(attempts) == 3
        assert "reader" in health.problems()  # two failed rounds in a row
        await asyncio.sleep(0.2)
        assert health.problems() == {}  # the third round has run a while
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_reader_that_keeps_failing_stays_failing() -> None:
    health = ReaderHealth()

    async def attempt() -> None:
        await asyncio.sleep(0.05)
        raise ConnectionError("broker down")

    task = asyncio.create_task(
        retry_forever("reader", attempt, 0.08, health=health, healthy_seconds=0.1)
    )
    try:
        await asyncio.sleep(0.6)  # each round fails before it counts as working
        assert "failed" in health.problems()["reader"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
