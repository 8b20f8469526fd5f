"""The bounded memory of recently applied event ids that drops redelivered events.

Kafka delivers at least once: an event seen again (in the same batch, or among the last
``limit`` applied ones) is a duplicate. The memory is part of the training state and goes
into every snapshot, so a restarted trainer drops the same redeliveries.
"""

from __future__ import annotations

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

    def drop_duplicates(self, events: Sequence[Rating]) -> tuple[list[Rating], int]:
        """The events whose id is neither remembered nor earlier in ``events``, and how
        many were dropped."""
        seen = self._set
        ids = {e.event_id for e in events}
        if len(ids) == len(events) and seen.isdisjoint(ids):
            return list(events), 0  # the usual case, checked at C speed
        batch: set[str] = set()
        fresh = []
        for event in events:
            if event.event_id in seen or event.event_id in batch:
                continue
            batch.add(event.event_id)
            fresh.append(event)
        return fresh, len(events) - len(fresh)

    def remember(self, fresh: list[Rating]) -> None:
        """Remember applied events' ids, forgetting the oldest beyond ``limit``."""
        limit = self.limit
        ids = [e.event_id for e in fresh[-limit:]]
        self._order.extend(ids)
        self._set.update(ids)
        excess = len(self._order) - limit
        if excess > 0:
            popleft = self._order.popleft
            self._set.difference_update([popleft() for _ in range(excess)])
