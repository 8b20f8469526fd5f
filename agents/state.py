"""What a worker currently serves: one immutable scoring view, swapped by reference.

Scoring reads ``holder.view`` without locks: a swap is a single attribute assignment, and
a :class:`models.scoring.ScoringView` is never mutated after it is published.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Unpack

from agents.status import ModelStatus
from models.ownership import partition_of
from models.scoring import ScoringView
from models.seen import ItemHashIndex


@dataclass
class ModelHolder:
    """The served model view plus the facts the ``/model/`` web view reports."""

    view: ScoringView | None = None
    info: ModelStatus = field(default_factory=lambda: ModelStatus())
    loaded_at: float | None = None
    loading: frozenset[int] = frozenset()
    """Partitions this worker owns whose users the view does not hold yet (issue 19)."""
    n_partitions: int = 1
    _index: ItemHashIndex | None = field(default=None, repr=False)
    _index_view: ScoringView | None = field(default=None, repr=False)
    _loaded: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def publish(self, view: ScoringView, **info: Unpack[ModelStatus]) -> None:
        self.view = view
        self.info = {**self.info, **info, "version": view.version}
        if view.share is not None:  # a share's view (issue 19): what it holds
            self.info["held_partitions"] = ",".join(map(str, sorted(view.share.owned)))
            self.info["held_users"] = view.n_users
        self.loaded_at = time.time()

    def set_loading(self, n_partitions: int, partitions: frozenset[int]) -> None:
        """The partitions whose users are still loading (none: every owned user is held)."""
        self.n_partitions, self.loading = n_partitions, partitions
        self.info = {**self.info, "loading_partitions": ",".join(map(str, sorted(partitions)))}
        if partitions:
            self._loaded.clear()
        else:
            self._loaded.set()

    def is_loading(self, user: str) -> bool:
        """``user``'s partition is owned but its users are not held yet."""
        loading = self.loading
        return bool(loading) and partition_of(user, self.n_partitions) in loading

    async def until_loaded(self, within: float) -> bool:
        """Wait (at most ``within`` s) until no partition is loading; True if none is."""
        if not self.loading:
            return True
        try:
            await asyncio.wait_for(self._loaded.wait(), within)
        except TimeoutError:
            return False
        return True

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
