"""One fetched batch of ``ratings``, decoded and validated: what to train, what to
dead-letter (with its kind and reason), and which offsets it spans.

Decoding runs in a worker thread while the previous batch trains (:mod:`agents.trainer`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from agents import metrics
from agents.health import record_error
from agents.ports import Message, dead_letter, reference_time
from models.bounds import Capacity, over_capacity
from models.events import MAX_FUTURE_SKEW_SECONDS, Rating
from models.incremental import IncrementalModel
from models.wire import DeadLetter, Undecodable, decode_rating


def offset_key(topic: str, partition: int) -> str:
    """The key of a partition's offset in a model's (and a snapshot's) ``offsets``."""
    return f"{topic}:{partition}"


@dataclass
class DecodedBatch:
    """One fetched batch, decoded and validated (in a worker thread, while the previous
    batch trains): what to train, what to dead-letter, and which offsets it spans."""

    ratings: list[Rating]
    positions: list[tuple[int, int]]  # (partition, offset) of each rating
    dead_letters: list[DeadLetter]
    first_offsets: dict[str, int]  # "topic:partition" -> lowest offset in the batch
    next_offsets: dict[str, int]  # "topic:partition" -> next offset after the batch
    events: int  # messages in the batch
    topic: str | None = None
    messages: Sequence[Message] = ()  # as fetched (the original bytes of dead letters)

    @classmethod
    def of(
        cls,
        messages: Sequence[Message],
        max_bytes: int,
        max_skew: float = MAX_FUTURE_SKEW_SECONDS,
    ) -> DecodedBatch:
        """Decode ``messages``; a rating stamped more than ``max_skew`` seconds past its
        record's timestamp (:func:`agents.ports.reference_time`) is a ``ts_in_future`` dead
        letter."""
        wall = time.time()
        ratings: list[Rating] = []
        positions: list[tuple[int, int]] = []
        letters: list[DeadLetter] = []
        spans: dict[tuple[str, int], list[int]] = {}  # (topic, partition) -> [lowest, highest]
        append, position = ratings.append, positions.append
        for m in messages:
            offset = m.offset
            span = spans.get((m.topic, m.partition))
            if span is None:
                spans[(m.topic, m.partition)] = [offset, offset]
            elif offset < span[0]:
                span[0] = offset
            elif offset > span[1]:
                span[1] = offset
            try:
                append(
                    decode_rating(
                        m.key,
                        m.value,
                        max_bytes=max_bytes,
                        reference=reference_time(m, wall),
                        max_skew=max_skew,
                    )
                )
            except Undecodable as exc:
                letters.append(dead_letter(m, exc))
                continue
            except Exception as exc:  # last resort: this record is dead, not the trainer
                letters.append(dead_letter(m, record_error("trainer", exc)))
                continue
            position((m.partition, offset))
        first = {offset_key(*tp): low for tp, (low, _) in spans.items()}
        next_ = {offset_key(*tp): high + 1 for tp, (_, high) in spans.items()}
        topic = messages[0].topic if messages else None
        return cls(ratings, positions, letters, first, next_, len(messages), topic, messages)

    def within(self, model: IncrementalModel, capacity: Capacity) -> DecodedBatch:
        """This batch without the ratings that would grow ``model`` past ``capacity``
        (:func:`models.bounds.over_capacity`): they become dead letters of kind
        ``capacity``, in offset order with the others."""
        refused = over_capacity(
            self.ratings, model.users, model.items, model.n_users, model.n_items, capacity
        )
        if not refused:
            return self
        by_position = {(m.partition, m.offset): m for m in self.messages}
        letters = list(self.dead_letters)
        for n, reason in refused:
            message = by_position[self.positions[n]]
            letters.append(dead_letter(message, Undecodable("capacity", reason)))
        letters.sort(key=lambda d: (d.partition, d.offset))
        out = {n for n, _ in refused}
        keep = [n for n in range(len(self.ratings)) if n not in out]
        return replace(
            self,
            ratings=[self.ratings[n] for n in keep],
            positions=[self.positions[n] for n in keep],
            dead_letters=letters,
        )

    def after(self, covered: Mapping[str, int], dead_lettered: Mapping[int, int]) -> DecodedBatch:
        """This batch without what ``covered`` (the model's offsets) already trained and
        without dead letters already sent (``dead_lettered``: partition -> highest offset)."""
        topic = self.topic or ""
        stale = any(first < covered.get(key, 0) for key, first in self.first_offsets.items())
        letters = [
            d
            for d in self.dead_letters
            if d.offset > dead_lettered.get(d.partition, -1)
            and d.offset >= covered.get(offset_key(d.topic, d.partition), 0)
        ]
        if not stale:
            if len(letters) != len(self.dead_letters):
                metrics.SKIPPED_EVENTS.labels("already_dead_lettered").inc(
                    len(self.dead_letters) - len(letters)
                )
                return replace(self, dead_letters=letters)
            return self
        keep = [
            i
            for i, (p, offset) in enumerate(self.positions)
            if offset >= covered.get(offset_key(topic, p), 0)
        ]
        skipped = self.events - len(keep) - len(letters)
        metrics.SKIPPED_EVENTS.labels("already_trained").inc(skipped)
        return replace(
            self,
            ratings=[self.ratings[i] for i in keep],
            positions=[self.positions[i] for i in keep],
            dead_letters=letters,
            events=len(keep) + len(letters),
        )
