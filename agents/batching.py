"""Batches of what a stream has already buffered: no fixed window, no wait for a lone event.

An agent that handles events in bulk (one table write per user, one matmul per batch) takes
from its stream every event that is already waiting, up to ``max_batch``, and handles them
together. When nothing else is buffered the batch is handed over at once, so a lone
request pays nothing for batching; under load the batches grow by themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TypeVar

E = TypeVar("E")


async def buffered_batches(
    events: AsyncIterable[E], idle: Callable[[], bool], max_batch: int
) -> AsyncIterator[list[E]]:
    """Lists of ``events``: each ends when ``idle()`` says nothing more is buffered, or at
    ``max_batch`` events (which bounds the time one batch holds the event loop)."""
    batch: list[E] = []
    async for event in events:
        batch.append(event)
        if len(batch) >= max_batch or idle():
            yield batch
            batch = []
    if batch:
        yield batch
