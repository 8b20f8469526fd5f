"""agents.kafka.KnownTopics on the real broker: a reply topic created a moment ago is known
at once; a missing one is asked about at most once per interval."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import agents.kafka
from agents.kafka import KnownTopics
from app.settings import Settings
from app.topics import TopicSpec, ensure_topics

pytestmark = pytest.mark.kafka


async def test_a_topic_created_after_the_list_was_read_is_known_at_once(
    settings: Settings,
    kafka_options: dict[str, Any],
    unique_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lists = 0
    list_topics = agents.kafka.list_topics

    async def counted(options: Any) -> set[str]:
        nonlocal lists
        lists += 1
        return await list_topics(options)

    monkeypatch.setattr(agents.kafka, "list_topics", counted)
    known = KnownTopics(kafka_options, refresh_seconds=60)
    first, later = unique_name("known"), unique_name("known-later")
    await ensure_topics(settings, [TopicSpec(first, 1)])
    assert await known.exists(first)
    assert not await known.exists(later)  # not created yet
    assert not await known.exists(later) and lists == 2  # asked about once in the interval
    await ensure_topics(settings, [TopicSpec(unique_name("other"), 1)])
    other_missing = unique_name("never")
    assert not await known.exists(other_missing) and lists == 3  # another name: asked
    await ensure_topics(settings, [TopicSpec(later, 1)])
    fresh = unique_name("fresh")
    await ensure_topics(settings, [TopicSpec(fresh, 1)])
    assert await known.exists(fresh)  # created a moment ago, never asked about: known
    assert await known.exists(first) and lists == 4  # remembered: no list read
