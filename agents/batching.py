"""Batches of what a stream has already buffered: no fixed window, no wait for a lone event.

An agent that handles events in bulk (one matmul per batch) takes from its stream every
event that is already waiting, up to ``max_batch``, and handles them together. When nothing
else is buffered the batch is handed over at once, so a lone request pays nothing for
batching; under load the batches grow by themselves.

A batch is never held while the stream cannot deliver: the events are moved from the stream
by a feeder task into a local queue, and a batch ends as soon as that queue is empty after
giving the feeder a turn. (Holding a partial batch until the next event would deadlock a
rebalance: Faust suspends its streams, then waits until every delivered event is acked.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TypeVar

E = TypeVar("E")

_END = object()


async def buffered_batches(
    events: AsyncIterable[E], idle: Callable[[], bool], max_batch: int, turns: int = 3
) -> AsyncIterator[list[E]]:
    """Lists of ``events``: each ends when ``idle()`` says nothing more is buffered, when
    the feeder brought nothing in ``turns`` loop turns, or at ``max_batch`` events (which
    bounds the time one batch holds the event loop)."""
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def feed() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        finally:
            queue.put_nowait(_END)

    feeder = asyncio.create_task(feed())
    try:
        ended = False
        while not ended:
            first = await queue.get()
            if first is _END:
                break
            batch: list[E] = [first]  # type: ignore[list-item]
            quiet = 0
            while len(batch) < max_batch and quiet < turns:
                if queue.empty():
                    if idle():
                        break
                    quiet += 1
                    await asyncio.sleep(0)  # the feeder moves what the stream has
                    continue
                item = queue.get_nowait()
                if item is _END:
                    ended = True
                    break
                batch.append(item)  # type: ignore[arg-type]
                quiet = 0
            yield batch
        if feeder.done() and feeder.exception() is not None:
            raise feeder.exception()  # type: ignore[misc]
    finally:
        feeder.cancel()
