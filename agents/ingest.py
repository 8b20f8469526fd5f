"""The ingest agent: validate each rating, dead-letter the bad ones, keep per-user seen items.

Runs in the scorer group, so the ``seen-items`` table is co-partitioned (by user) with the
recommendation requests the same worker answers.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from agents import metrics
from agents.ports import Message, Sink
from models.wire import DeadLetter, Undecodable, decode_rating


def remember(seen: list[str], item: str, limit: int) -> list[str]:
    """The user's seen items with ``item`` moved to the most recent end, at most ``limit``."""
    kept = [i for i in seen if i != item]
    kept.append(item)
    return kept[-limit:]


async def send_dead_letter(dlq: Sink, message: Message, exc: Undecodable) -> None:
    """Send ``message`` (original key and bytes) to ``dlq`` with the reason in its headers."""
    letter = DeadLetter.of(
        exc,
        key=message.key,
        value=message.value,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
    )
    await dlq.send(key=letter.key, value=letter.value, headers=letter.headers)
    metrics.DEAD_LETTERS.labels(message.topic, exc.kind).inc()


@dataclass
class Ingest:
    """Dependencies of the ingest agent (Faust objects are passed in by ``app/``)."""

    seen: MutableMapping[str, list[str]]  # the Faust ``seen-items`` table
    dlq: Sink  # ratings-dlq
    max_bytes: int
    seen_limit: int

    async def run(self, stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            metrics.EVENTS_IN.labels(message.topic).inc()
            try:
                rating = decode_rating(message.key, message.value, max_bytes=self.max_bytes)
            except Undecodable as exc:
                await send_dead_letter(self.dlq, message, exc)
                continue
            self.seen[rating.user] = remember(
                self.seen.get(rating.user) or [], rating.item, self.seen_limit
            )
