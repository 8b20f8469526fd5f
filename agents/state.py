"""What a worker currently serves: one immutable scoring view, swapped by reference.

Scoring reads ``holder.view`` without locks: a swap is a single attribute assignment, and
a :class:`models.scoring.ScoringView` is never mutated after it is published.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from models.scoring import ScoringView


@dataclass
class ModelHolder:
    """The served model view plus the facts the ``/model/`` web view reports."""

    view: ScoringView | None = None
    info: dict[str, Any] = field(default_factory=dict)
    loaded_at: float | None = None

    def publish(self, view: ScoringView, **info: Any) -> None:
        self.view = view
        self.info = {**self.info, **info, "version": view.version}
        self.loaded_at = time.time()

    def refuse(self, version: int, reason: str) -> None:
        """Record a snapshot that was refused (corrupt, unreadable); ``/model/`` shows it."""
        self.info = {
            **self.info,
            "last_refused": {"version": version, "reason": reason[:500], "at": time.time()},
        }

    @property
    def ready(self) -> bool:
        return self.view is not None
