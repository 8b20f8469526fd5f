"""What a worker currently serves: one immutable scoring view, swapped by reference.

Scoring reads ``holder.view`` without locks: a swap is a single attribute assignment, and
a :class:`models.scoring.ScoringView` is never mutated after it is published.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Unpack

from agents.status import ModelStatus
from models.scoring import ScoringView
from models.seen import ItemHashIndex


@dataclass
class ModelHolder:
    """The served model view plus the facts the ``/model/`` web view reports."""

    view: ScoringView | None = None
    info: ModelStatus = field(default_factory=lambda: ModelStatus())
    loaded_at: float | None = None
    _index: ItemHashIndex | None = field(default=None, repr=False)
    _index_view: ScoringView | None = field(default=None, repr=False)

    def publish(self, view: ScoringView, **info: Unpack[ModelStatus]) -> None:
        self.view = view
        self.info = {**self.info, **info, "version": view.version}
        self.loaded_at = time.time()

    def refuse(self, version: int, reason: str) -> None:
        """Record a snapshot that was refused (corrupt, unreadable); ``/model/`` shows it."""
        self.info = {
            **self.info,
            "last_refused": {"version": version, "reason": reason[:500], "at": time.time()},
        }

    def item_index(self, view: ScoringView) -> ItemHashIndex:
        """Item hash → row of ``view`` (for excluding seen items); built once per view,
        only the new items hashed when ``view`` extends the previous one's catalogue."""
        index = self._index
        if index is None or self._index_view is not view:
            ids = view.item_ids()
            index = self._index = ItemHashIndex(ids) if index is None else index.extended(ids)
            self._index_view = view
        return index

    @property
    def ready(self) -> bool:
        return self.view is not None
