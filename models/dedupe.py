"""The bounded memory of recently applied event ids that drops redelivered events.

Kafka delivers at least once: an event seen again (in the same batch, or among the last
``limit`` applied ones) is a duplicate. The memory is part of the training state and goes
into every snapshot, so a restarted trainer drops the same redeliveries.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence

from models.events import Rating


class RecentEventIds:
    """The ids of the last ``limit`` applied events, oldest first."""

    def __init__(self, limit: int, ids: Iterable[str] = ()) -> None:
        self.limit = limit
        self._order: deque[str] = deque(ids)
        self._set = set(self._order)

    def ids(self) -> list[str]:
        """The remembered ids, oldest first (for a snapshot)."""
        return list(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def newest(self, n: int) -> list[str]:
        """The newest ``n`` remembered ids (all if fewer), oldest first, in O(n) (a
        checkpoint segment's tail)."""
        return list(itertools.islice(reversed(self._order), max(0, n)))[::-1]

    def drop_duplicates(self, events: Sequence[Rating]) -> tuple[list[Rating], int]:
        """The events whose id is neither remembered nor earlier in ``events``, and how
        many were dropped."""
        keep, dropped = self.fresh_indices([e.event_id for e in events])
        return (list(events) if keep is None else [events[n] for n in keep]), dropped

    def fresh_indices(self, ids: Sequence[str]) -> tuple[list[int] | None, int]:
        """:meth:`drop_duplicates` of a batch's event ids: the indices of the fresh ones
        (``None``: all of them, the usual case) and how many were dropped."""
        seen = self._set
        unique = set(ids)
        if len(unique) == len(ids) and seen.isdisjoint(unique):
            return None, 0  # the usual case, checked at C speed
        batch: set[str] = set()
        keep = []
        for n, event_id in enumerate(ids):
            if event_id in seen or event_id in batch:
                continue
            batch.add(event_id)
            keep.append(n)
        return keep, len(ids) - len(keep)

    def remember(self, fresh: list[Rating]) -> None:
        """Remember applied events' ids, forgetting the oldest beyond ``limit``."""
        self.remember_ids([e.event_id for e in fresh[-self.limit :]])

    def remember_ids(self, fresh: Sequence[str]) -> None:
        """Remember applied events' ids (in order), forgetting the oldest beyond ``limit``."""
        limit = self.limit
        ids = list(fresh[-limit:])
        self._order.extend(ids)
        self._set.update(ids)
        excess = len(self._order) - limit
        if excess > 0:
            popleft = self._order.popleft
            self._set.difference_update([popleft() for _ in range(excess)])
