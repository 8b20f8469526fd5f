"""agents.kafka.KnownTopics on the real broker: a reply topic created a moment ago is known
at once; unknown names are asked about at most once per interval, all of them together,
on one admin client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from agents.kafka import KnownTopics
from app.settings import Settings
from app.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.kafka


async def test_a_topic_created_after_the_list_was_read_is_known_once_the_interval_passed(
    settings: Settings,
    kafka_options: dict[str, Any],
    unique_name: Callable[[str], str],
) -> None:
    known = KnownTopics(kafka_options, refresh_seconds=0.5)
    try:
        first, later = unique_name("known"), unique_name("known-later")
        await ensure_topics(settings, [TopicSpec(first, 1)])
        assert await known.exists(first) and known.reads == 1
        assert not await known.exists(later) and known.reads == 1  # not created; in interval
        random = [unique_name("never") for _ in range(200)]
        assert not any(await asyncio.gather(*(known.exists(n) for n in random)))
        assert known.reads == 1  # a flood of names: no list read each
        await ensure_topics(settings, [TopicSpec(later, 1)])
        await asyncio.sleep(0.5)
        assert await known.exists(later) and known.reads == 2
        assert await known.exists(first) and known.reads == 2  # remembered: no list read
    finally:
        await known.close()
