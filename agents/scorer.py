"""The scorer agent: answer each recommendation request from the current view, lock-free.

Scorers scale out as one consumer group: requests are keyed (and so partitioned) by user,
like ratings, so the ``seen-items`` rows a scorer needs are in its own table partitions.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from agents import metrics
from agents.codec import Undecodable, decode_request, encode
from agents.ingest import send_dead_letter
from agents.state import ModelHolder
from models.events import RecRequest

Catalog = Mapping[str, Mapping[str, Any]]
"""Item id -> catalog entry (the Faust ``catalog`` GlobalTable: the items topic's messages)."""

NO_CATALOG: Catalog = MappingProxyType({})


def title_of(catalog: Catalog, item: str) -> str | None:
    """The item's title if the catalog knows it."""
    entry = catalog.get(item)
    title = entry.get("title") if isinstance(entry, Mapping) else None
    return title if isinstance(title, str) else None


def reply_for(
    request: RecRequest, holder: ModelHolder, seen: list[str], catalog: Catalog = NO_CATALOG
) -> dict[str, Any]:
    """The response message for ``request`` from whatever view ``holder`` serves now.

    Items keep the contract (``item``, ``score``) and carry a ``title`` when the catalog
    knows one.
    """
    view = holder.view  # one read: the view cannot change under us
    exclude = seen if request.exclude_seen else ()
    if view is None:
        items: list[dict[str, Any]] = []
        version, source = None, "none"
    else:
        rec = view.recommend(request.user, request.k, exclude=exclude)
        items = []
        for s in rec.items:
            entry: dict[str, Any] = {"item": s.item, "score": round(float(s.score), 6)}
            if (title := title_of(catalog, s.item)) is not None:
                entry["title"] = title
            items.append(entry)
        version, source = rec.version, rec.source
    return {
        "request_id": request.request_id,
        "user": request.user,
        "items": items,
        "model_version": version,
        "source": source,
    }


@dataclass
class Scorer:
    """Dependencies of the scorer agent (Faust objects are passed in by ``app/``)."""

    holder: ModelHolder
    seen: Mapping[str, list[str]]  # the Faust ``seen-items`` table
    default_reply: Any  # faust.TopicT for rec-responses
    dlq: Any  # faust.TopicT for rec-requests-dlq
    reply_topic: Callable[[str], Any]  # name -> faust.TopicT (cached by the app)
    topic_exists: Callable[[str], Awaitable[bool]]
    forbidden_replies: frozenset[str]
    max_bytes: int
    catalog: Catalog = field(default_factory=dict)
    _replies: dict[str, Any] = field(default_factory=dict)

    async def run(self, stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            metrics.EVENTS_IN.labels(message.topic).inc()
            try:
                request = decode_request(message.value, max_bytes=self.max_bytes)
                if message.key != request.user.encode():
                    raise Undecodable("invalid", "requests must be keyed by their user id")
                target = await self._target(request.reply_to)
            except Undecodable as exc:
                await send_dead_letter(self.dlq, message, exc)
                continue
            reply = reply_for(
                request, self.holder, list(self.seen.get(request.user) or ()), self.catalog
            )
            received = message.timestamp or time.time()
            reply["latency_ms"] = round(max(0.0, time.time() - received) * 1000, 3)
            await target.send(key=request.user.encode(), value=encode(reply))
            metrics.REPLIES.labels(reply["source"]).inc()
            metrics.REQUEST_SECONDS.observe(reply["latency_ms"] / 1000)

    async def _target(self, reply_to: str | None) -> Any:
        if reply_to is None:
            return self.default_reply
        if reply_to in self.forbidden_replies or reply_to.startswith("__"):
            raise Undecodable("reply_to", f"reply_to {reply_to!r} is one of streamrec's own topics")
        if not await self.topic_exists(reply_to):
            raise Undecodable("reply_to", f"reply_to topic {reply_to!r} does not exist")
        return self.reply_topic(reply_to)
