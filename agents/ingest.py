"""The ingest agent: record each user's rated items in the ``seen-items`` table, in bulk.

Runs in the scorer group, so the ``seen-items`` table is co-partitioned (by user) with the
recommendation requests the same worker answers. It takes what its stream has buffered
(:func:`agents.batching.buffered_batches`, at most ``max_batch`` events), decodes the batch,
and writes **one row per user per batch** (the user's new items merged into the row,
:func:`models.seen.remember`), to the partition the user's ratings came from: the changelog
then holds the same rows a restarted worker recovers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agents import metrics
from agents.batching import buffered_batches
from agents.ports import EventStream, Message, SeenTable, Sink
from models.seen import remember
from models.wire import DeadLetter, Undecodable, decode_rating


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


def rated_by_user(
    messages: Sequence[Message], max_bytes: int
) -> tuple[dict[str, tuple[int, list[str]]], list[tuple[Message, Undecodable]]]:
    """A batch decoded: per user, (the partition of its ratings, the items in rating order);
    and the messages that are not valid ratings, with why."""
    by_user: dict[str, tuple[int, list[str]]] = {}
    bad: list[tuple[Message, Undecodable]] = []
    for message in messages:
        try:
            rating = decode_rating(message.key, message.value, max_bytes=max_bytes)
        except Undecodable as exc:
            bad.append((message, exc))
            continue
        entry = by_user.get(rating.user)
        if entry is None:
            by_user[rating.user] = (message.partition, [rating.item])
        else:
            entry[1].append(rating.item)
    return by_user, bad


@dataclass
class Ingest:
    """Dependencies of the ingest agent (Faust objects are passed in by ``app/``)."""

    seen: SeenTable
    dlq: Sink  # ratings-dlq
    max_bytes: int
    seen_limit: int
    max_batch: int = 1000

    async def run(self, stream: EventStream, idle: Callable[[], bool]) -> None:
        """Handle ``stream`` (a Faust stream) in batches; ``idle()``: nothing more buffered."""
        manual = stream.noack()
        async for events in buffered_batches(manual.events(), idle, self.max_batch):
            await self.handle([event.message for event in events])
            for event in events:  # acked once recorded: at-least-once, and rows are idempotent
                await manual.ack(event)

    async def handle(self, messages: Sequence[Message]) -> None:
        """Record one batch of ``ratings`` messages."""
        if not messages:
            return
        metrics.EVENTS_IN.labels(messages[0].topic).inc(len(messages))
        by_user, bad = rated_by_user(messages, self.max_bytes)
        for message, exc in bad:
            await send_dead_letter(self.dlq, message, exc)
        seen, limit = self.seen, self.seen_limit
        for user, (partition, items) in by_user.items():
            seen.put(user, remember(seen.get(user), items, limit), partition)
        metrics.SEEN_RATINGS.inc(len(messages) - len(bad))
