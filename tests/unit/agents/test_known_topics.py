"""agents.kafka.KnownTopics with a fake admin client: one client per object, one topic
list read per interval for every unknown name together."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import agents.kafka
from agents.kafka import KnownTopics


class FakeAdmin:
    made: list[FakeAdmin] = []
    topics: set[str] = set()

    def __init__(self, **options: Any) -> None:
        self.started = self.closed = False
        self.lists = 0
        FakeAdmin.made.append(self)

    async def start(self) -> None:
        self.started = True

    async def list_topics(self) -> list[str]:
        self.lists += 1
        await asyncio.sleep(0.001)
        return sorted(FakeAdmin.topics)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch) -> type[FakeAdmin]:
    FakeAdmin.made, FakeAdmin.topics = [], {"client-a"}
    monkeypatch.setattr(agents.kafka, "AIOKafkaAdminClient", FakeAdmin)
    return FakeAdmin


async def test_random_names_cost_one_list_per_interval_on_one_client(admin) -> None:
    known = KnownTopics({}, refresh_seconds=0.2)
    assert await known.exists("client-a")
    names = [f"client-random-{n}" for n in range(1000)]
    found = await asyncio.gather(*(known.exists(name) for name in names))
    assert not any(found)
    assert len(admin.made) == 1 and admin.made[0].lists == 1  # not one per name
    assert await known.exists("client-a")  # known names never wait for a list
    admin.topics.add("client-b")
    assert not await known.exists("client-b")  # within the interval: refused at once
    await asyncio.sleep(0.25)
    assert await known.exists("client-b") and admin.made[0].lists == 2
    assert len(admin.made) == 1
    await known.close()
    assert admin.made[0].closed
    await known.close()  # twice is fine
