"""The scorer agent: answer each recommendation request from the current view, lock-free.

Scorers scale out as one consumer group: requests are keyed (and so partitioned) by user,
like ratings, so the ``seen-items`` rows a scorer needs are in its own table partitions.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents import metrics
from agents.ingest import send_dead_letter
from agents.ports import Sink
from agents.state import ModelHolder
from models.events import RecRequest
from models.wire import Reply, ReplyItem, Undecodable, decode_request


def reply_for(
    request: RecRequest, holder: ModelHolder, seen: list[str], latency_ms: float | None = None
) -> Reply:
    """The reply to ``request`` from whatever view ``holder`` serves now."""
    view = holder.view  # one read: the view cannot change under us
    if view is None:
        return Reply(request.request_id, request.user, [], None, "none", latency_ms)
    exclude = seen if request.exclude_seen else ()
    rec = view.recommend(request.user, request.k, exclude=exclude, history=seen)
    items = [ReplyItem(s.item, float(s.score)) for s in rec.items]
    return Reply(request.request_id, request.user, items, rec.version, rec.source, latency_ms)


@dataclass
class Scorer:
    """Dependencies of the scorer agent (Faust objects are passed in by ``app/``)."""

    holder: ModelHolder
    seen: Mapping[str, list[str]]  # the Faust ``seen-items`` table
    default_reply: Sink  # rec-responses
    dlq: Sink  # rec-requests-dlq
    reply_topic: Callable[[str], Sink]  # name -> topic (cached by the app)
    topic_exists: Callable[[str], Awaitable[bool]]
    forbidden_replies: frozenset[str]
    max_bytes: int
    _replies: dict[str, Any] = field(default_factory=dict)

    async def run(self, stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            metrics.EVENTS_IN.labels(message.topic).inc()
            try:
                request = decode_request(message.key, message.value, max_bytes=self.max_bytes)
                target = await self._target(request.reply_to)
            except Undecodable as exc:
                await send_dead_letter(self.dlq, message, exc)
                continue
            received = message.timestamp or time.time()
            latency_ms = max(0.0, time.time() - received) * 1000
            seen = list(self.seen.get(request.user) or ())
            reply = reply_for(request, self.holder, seen, latency_ms)
            key, value = reply.encode()
            await target.send(key=key, value=value)
            metrics.REPLIES.labels(reply.source).inc()
            metrics.REQUEST_SECONDS.observe(latency_ms / 1000)

    async def _target(self, reply_to: str | None) -> Sink:
        if reply_to is None:
            return self.default_reply
        if reply_to in self.forbidden_replies or reply_to.startswith("__"):
            raise Undecodable("reply_to", f"reply_to {reply_to!r} is one of streamrec's own topics")
        if not await self.topic_exists(reply_to):
            raise Undecodable("reply_to", f"reply_to topic {reply_to!r} does not exist")
        return self.reply_topic(reply_to)
