"""Scoring off the event loop: a batch of requests worth more than a moment of scoring runs
in the scorer's own worker thread (numpy's products and partitions release the GIL), one
batch at a time in the order they come, while the loop fetches, decodes and sends."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

INLINE_CELLS = 1 << 20
"""Below this many scores (requests x items, ~1 ms of scoring) a batch is scored on the
loop: the hop to the thread and back costs more than it would block."""


@dataclass
class ScoreThread:
    """One worker thread that scores batches in the order they are submitted."""

    inline_cells: int = INLINE_CELLS
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    def offloads(self, cells: int) -> bool:
        """Whether a batch computing ``cells`` scores goes to the thread."""
        return cells >= self.inline_cells

    async def run(self, cells: int, score: Callable[..., T], *args: object) -> T:
        """``score(*args)``, in the thread when it computes ``cells`` scores or more (the
        caller awaits it; the loop goes on meanwhile), else at once on the loop."""
        if not self.offloads(cells):
            return score(*args)
        if self._pool is None:  # made on first use: most scorers' batches stay inline
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="streamrec-scoring")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(score, *args))

    def close(self) -> None:
        """Let the thread end once its batch is done (a new one is made if used again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
