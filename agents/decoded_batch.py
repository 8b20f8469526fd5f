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
from models.events import MAX_FUTURE_SKEW_SECONDS
from models.incremental import IncrementalModel
from models.rating_columns import RatingColumns
from models.wire import DeadLetter, Undecodable, decode_rating, decode_ratings


def _undecodable(exc: Exception) -> Undecodable:
    """Why a record was refused: its :class:`Undecodable`, or (last resort, a bug) the
    unexpected exception decoding it raised: this record is dead, not the trainer."""
    return exc if isinstance(exc, Undecodable) else record_error("trainer", exc)


def offset_key(topic: str, partition: int) -> str:
    """The key of a partition's offset in a model's (and a snapshot's) ``offsets``."""
    return f"{topic}:{partition}"


@dataclass
class DecodedBatch:
    """One fetched batch, decoded and validated (in a worker thread, while the previous
    batch trains): what to train (as columns), what to dead-letter, and which offsets it
    spans."""

    ratings: RatingColumns
    indices: list[int]  # of each rating's message in ``messages``
    dead_letters: list[DeadLetter]
    first_offsets: dict[str, int]  # "topic:partition" -> lowest offset in the batch
    next_offsets: dict[str, int]  # "topic:partition" -> next offset after the batch
    events: int  # messages in the batch
    topic: str | None = None
    messages: Sequence[Message] = ()  # as fetched (the original bytes of dead letters)

    @property
    def positions(self) -> list[tuple[int, int]]:
        """(partition, offset) of each rating."""
        messages = self.messages
        return [(messages[i].partition, messages[i].offset) for i in self.indices]

    @classmethod
    def of(
        cls,
        messages: Sequence[Message],
        max_bytes: int,
        max_skew: float = MAX_FUTURE_SKEW_SECONDS,
    ) -> DecodedBatch:
        """Decode ``messages`` (:func:`models.wire.decode_ratings`); a rating stamped more
        than ``max_skew`` seconds past its record's timestamp
        (:func:`agents.ports.reference_time`) is a ``ts_in_future`` dead letter."""
        wall = time.time()
        spans: dict[tuple[str, int], list[int]] = {}  # (topic, partition) -> [lowest, highest]
        keys: list[bytes | None] = []
        values: list[bytes | None] = []
        references: list[float] = []
        key, value, reference = keys.append, values.append, references.append
        for m in messages:
            offset = m.offset
            span = spans.get((m.topic, m.partition))
            if span is None:
                spans[(m.topic, m.partition)] = [offset, offset]
            elif offset < span[0]:
                span[0] = offset
            elif offset > span[1]:
                span[1] = offset
            key(m.key)
            value(m.value)
            reference(reference_time(m, wall))
        ratings, indices, refused = decode_ratings(
            keys, values, references, max_bytes=max_bytes, max_skew=max_skew, decode=decode_rating
        )
        letters = [dead_letter(messages[n], _undecodable(exc)) for n, exc in refused]
        first = {offset_key(*tp): low for tp, (low, _) in spans.items()}
        next_ = {offset_key(*tp): high + 1 for tp, (_, high) in spans.items()}
        topic = messages[0].topic if messages else None
        return cls(ratings, indices, letters, first, next_, len(messages), topic, messages)

    def within(self, model: IncrementalModel, capacity: Capacity) -> DecodedBatch:
        """This batch without the ratings that would grow ``model`` past ``capacity``
        (:func:`models.bounds.over_capacity`): they become dead letters of kind
        ``capacity``, in offset order with the others."""
        refused = over_capacity(
            self.ratings, model.users, model.items, model.n_users, model.n_items, capacity
        )
        if not refused:
            return self
        letters = list(self.dead_letters)
        for n, reason in refused:
            message = self.messages[self.indices[n]]
            letters.append(dead_letter(message, Undecodable("capacity", reason)))
        letters.sort(key=lambda d: (d.partition, d.offset))
        out = {n for n, _ in refused}
        keep = [n for n in range(len(self.ratings)) if n not in out]
        return replace(
            self,
            ratings=self.ratings.take(keep),
            indices=[self.indices[n] for n in keep],
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
            ratings=self.ratings.take(keep),
            indices=[self.indices[i] for i in keep],
            dead_letters=letters,
            events=len(keep) + len(letters),
        )
