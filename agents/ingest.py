"""The ingest agent: record each user's rated items in the ``seen-items`` table, in bulk.

Runs in every scorer, on the ``ratings`` partitions whose ``seen-items`` table partitions
(and request partitions) the worker owns, read in bulk (:class:`agents.bulk.PartitionedReader`).
Each slice of messages is decoded together, in a worker thread, and written as **one row
per user** (the user's new items merged into the row, :func:`models.seen.remember`); the
changelog gets each changed row once per commit interval, to the partition the user's
ratings came from, before the offsets covering it are committed: a restarted worker
recovers the same rows.

Invalid ratings are skipped here, by the trainer's rules (a ``ts`` too far past its record's
timestamp too): the trainer, which sees every rating whatever roles run, dead-letters each of
them exactly once (agents/trainer.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents import metrics
from agents.health import record_error
from agents.ports import Message, SeenTable, Sink, dead_letter, reference_time
from models.events import MAX_FUTURE_SKEW_SECONDS
from models.seen import remember
from models.wire import Undecodable, decode_rating, decode_ratings

log = logging.getLogger(__name__)


async def send_dead_letter(dlq: Sink, message: Message, exc: Undecodable) -> Any:
    """Send ``message`` (original key and bytes) to ``dlq`` with the reason in its headers;
    returns the delivery (if ``dlq`` gives one), not awaited: the caller awaits it before
    it acks the original (one at a time, 1,000 dead letters took ~2 s)."""
    letter = dead_letter(message, exc)
    delivery = await dlq.send(key=letter.key, value=letter.value, headers=letter.headers)
    metrics.DEAD_LETTERS.labels(message.topic, exc.kind).inc()
    return delivery


def rated_by_user(
    messages: Sequence[Message], max_bytes: int, max_skew: float = MAX_FUTURE_SKEW_SECONDS
) -> tuple[dict[str, tuple[int, list[str]]], list[tuple[Message, Undecodable]]]:
    """A batch decoded: per user, (the partition of its ratings, the items in rating order);
    and the messages that are not valid ratings, with why (the trainer's rules, the
    event-time rule included: :func:`agents.ports.reference_time`)."""
    by_user: dict[str, tuple[int, list[str]]] = {}
    wall = time.time()
    ratings, indices, refused = decode_ratings(
        [m.key for m in messages],
        [m.value for m in messages],
        [reference_time(m, wall) for m in messages],
        max_bytes=max_bytes,
        max_skew=max_skew,
        decode=decode_rating,
    )
    for n, user, item in zip(indices, ratings.users, ratings.items, strict=True):
        entry = by_user.get(user)
        if entry is None:
            by_user[user] = (messages[n].partition, [item])
        else:
            entry[1].append(item)
    bad = [
        (messages[n], exc if isinstance(exc, Undecodable) else record_error("ingest", exc))
        for n, exc in refused
    ]  # the last resort: a record that raised anything else is skipped, not the reader
    return by_user, bad


@dataclass
class Ingest:
    """Dependencies of the ingest agent (Faust objects are passed in by ``app/``)."""

    seen: SeenTable
    max_bytes: int
    seen_limit: int
    max_future_skew: float = MAX_FUTURE_SKEW_SECONDS  # the trainer's, for the same verdicts
    max_users: int | None = None
    """The model's bound (STREAMREC_MAX_USERS): a table already holding that many users
    records no new one (a flood of fake ids would otherwise grow every scorer for ever; the
    trainer refuses such users the same way). Known users' rows still grow."""
    recorded: int = 0  # valid ratings recorded so far (the SEEN_RATINGS counter, cheap to read)
    full: int = 0  # ratings of new users not recorded because the table was full

    async def handle(self, messages: Sequence[Message]) -> None:
        """Record one slice of ``ratings`` messages: decoded and merged in a worker thread
        (the event loop keeps answering requests meanwhile). Invalid ones are skipped: the
        trainer dead-letters them."""
        if not messages:
            return
        await asyncio.to_thread(self.record, messages)

    def record(self, messages: Sequence[Message]) -> list[tuple[Message, Undecodable]]:
        """Decode ``messages`` and write one row per user; returns the invalid ones."""
        metrics.EVENTS_IN.labels(messages[0].topic).inc(len(messages))
        metrics.AGENT_BATCH.labels("ingest").observe(len(messages))
        by_user, bad = rated_by_user(messages, self.max_bytes, self.max_future_skew)
        seen, limit, bound = self.seen, self.seen_limit, self.max_users
        full = 0
        for user, (partition, items) in by_user.items():
            row = seen.get(user)
            if row is None and bound is not None and len(seen) >= bound:
                full += len(items)
                continue
            seen.put(user, remember(row, items, limit), partition)
        if full:
            if not self.full:
                log.warning(
                    "seen-items holds %d users (STREAMREC_MAX_USERS): new users' ratings are "
                    "not recorded (counted in streamrec_skipped_messages_total{kind=capacity})",
                    bound,
                )
            self.full += full
            metrics.SKIPPED_MESSAGES.labels(messages[0].topic, "capacity").inc(full)
        recorded = len(messages) - len(bad) - full
        metrics.SEEN_RATINGS.inc(recorded)
        for message, exc in bad:  # skipped here, dead-lettered by the trainer
            metrics.SKIPPED_MESSAGES.labels(message.topic, exc.kind).inc()
        self.recorded += recorded
        return bad
