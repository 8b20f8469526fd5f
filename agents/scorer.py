"""The scorer agent: answer recommendation requests from the current view, in batches.

Scorers scale out as one consumer group: requests are keyed (and so partitioned) by user,
like ratings, so the ``seen-items`` rows a scorer needs are in its own table partitions.

Requests come in bulk (app/ reads ``rec-requests`` with :class:`agents.bulk.PartitionedReader`,
as the ingest reads ratings, because Faust's per-event stream delivered about a thousand
requests/s): :meth:`Scorer.handle` takes whatever one fetch brought, at most ``max_batch`` at
a time (a lone request is answered at once, there is no waiting window), scores each batch
together (:meth:`models.scoring.ScoringView.recommend_batch`; a large one in a worker
thread, :mod:`agents.score_thread`), excludes each user's seen items by hash in numpy, and
sends the replies without awaiting each delivery (a send returns once the reply is queued
in the producer); :meth:`Scorer.delivered` waits for them, and the reader commits past the
requests only after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from agents import metrics
from agents.ann_index import AnnIndex
from agents.health import record_error
from agents.ingest import send_dead_letter
from agents.ports import BatchSink, Message, SeenTable, Sink, received_at
from agents.score_thread import ScoreThread
from agents.state import ModelHolder
from models.bounds import reply_size_refusal, reply_to_refusal
from models.events import RecRequest
from models.scoring import Recommendation, ScoringView
from models.seen import decode_row
from models.wire import Reply, ReplyItem, Undecodable, decode_request

Catalog = Mapping[str, Mapping[str, Any]]
"""Item id -> catalog entry (the Faust ``catalog`` GlobalTable: the items topic's messages)."""

NO_CATALOG: Catalog = MappingProxyType({})


def title_of(catalog: Catalog, item: str) -> str | None:
    """The item's title if the catalog knows it."""
    entry = catalog.get(item)
    if entry is None:
        return None
    title = entry.get("title") if type(entry) is dict or isinstance(entry, Mapping) else None
    return title if type(title) is str else None


_NO_ROWS = np.zeros(0, dtype=np.int64)


def replies_for(
    requests: Sequence[RecRequest],
    holder: ModelHolder,
    seen: Sequence[np.ndarray],
    received: Sequence[float] | None = None,
    *,
    catalog: Catalog = NO_CATALOG,
    ann: AnnIndex | None = None,
) -> list[Reply]:
    """The replies to ``requests`` from whatever view ``holder`` serves now: the one place a
    reply is built. ``seen[i]`` holds the item hashes of ``requests[i]``'s user
    (:mod:`models.seen`); ``received[i]``, if given, the request's unix time (→ latency).
    Items carry a ``title`` when the catalog knows one. ``ann``: searched when already made
    right for the view (this runs on the loop)."""
    batch = scoring_batch(requests, holder, seen, ann)
    recs = None if batch is None else batch.score(prepare=False)
    replies = built_replies(requests, recs, received, catalog=catalog)
    if holder.loading:  # e.g. /users/{id}/ while the user's partition loads (issue 19)
        return [loading_marked(holder, r) or r for r in replies]
    return replies


@dataclass(frozen=True)
class ScoringBatch:
    """What one batch of requests is scored with: the view (read once: it cannot change
    under the batch) and each request's user, k, excluded rows and history rows."""

    view: ScoringView
    users: list[str]
    ks: list[int]
    exclude_rows: list[np.ndarray]
    history_rows: list[np.ndarray]
    ann: AnnIndex | None = None  # large catalogs: the approximate index (agents.ann_index)

    def score(self, prepare: bool = True) -> list[Recommendation]:
        """The batch's recommendations (pure numpy on immutable arrays: any thread).
        ``prepare``: the index may be made right for the view here (see
        :meth:`agents.ann_index.AnnIndex.search`; False on the loop)."""
        search = None if self.ann is None else self.ann.search(self.view, prepare=prepare)
        return self.view.recommend_batch(
            self.users, self.ks, self.exclude_rows, self.history_rows, search
        )


def scoring_batch(
    requests: Sequence[RecRequest],
    holder: ModelHolder,
    seen: Sequence[np.ndarray],
    ann: AnnIndex | None = None,
) -> ScoringBatch | None:
    """The batch to score for ``requests`` (None while no view is served); on the loop,
    because the holder's item index is cached per view."""
    view = holder.view  # one read: the view cannot change under us
    if view is None:
        return None
    index = holder.item_index(view)
    seen_rows = [index.rows(hashes) for hashes in seen]  # also what the view blends with
    rows = [
        found if r.exclude_seen else _NO_ROWS for r, found in zip(requests, seen_rows, strict=True)
    ]
    users, ks = [r.user for r in requests], [r.k for r in requests]
    return ScoringBatch(view, users, ks, rows, seen_rows, ann)


def built_replies(
    requests: Sequence[RecRequest],
    recs: Sequence[Recommendation] | None,
    received: Sequence[float] | None = None,
    *,
    catalog: Catalog = NO_CATALOG,
) -> list[Reply]:
    """One reply per request from its recommendation (``recs`` None: no view served)."""
    done = time.time()
    replies = []
    for n, request in enumerate(requests):
        latency = None if received is None else max(0.0, done - received[n]) * 1000
        if recs is None:
            replies.append(Reply(request.request_id, request.user, [], None, "none", latency))
            continue
        rec = recs[n]
        if catalog:  # scores are floats already (ScoredItem)
            items = [ReplyItem(s.item, s.score, title_of(catalog, s.item)) for s in rec.items]
        else:  # no catalog loaded: the scored items are the reply's items
            items = rec.items
        replies.append(
            Reply(request.request_id, request.user, items, rec.version, rec.source, latency)
        )
    return replies


def reply_for(
    request: RecRequest,
    holder: ModelHolder,
    seen: np.ndarray,
    received: float | None = None,
    *,
    catalog: Catalog = NO_CATALOG,
) -> Reply:
    """The reply to one request (:func:`replies_for` of one)."""
    stamps = None if received is None else [received]
    return replies_for([request], holder, [seen], stamps, catalog=catalog)[0]


_NOT_THE_MODEL = frozenset({"popularity", "none"})


def loading_marked(holder: ModelHolder, reply: Reply | None) -> Reply | None:
    """``reply`` marked ``loading`` if it is a popularity reply (or, on a scorer that holds
    no view yet, e.g. one joining a group, an empty ``none`` one) for a user whose partition
    is still loading (issue 19): the model may know the user, this scorer not yet."""
    if reply is None or reply.source not in _NOT_THE_MODEL or not holder.is_loading(reply.user):
        return reply
    return dataclasses.replace(reply, loading=True)


class ExperimentHook(Protocol):
    """:func:`replies_for` with the running experiments in: users in one get their
    variant's reply (:class:`agents.experiment_serving.ExperimentServing`)."""

    def active(self) -> bool:
        """An experiment is running (else :meth:`replies` is :func:`replies_for`)."""
        ...

    def replies(
        self,
        requests: Sequence[RecRequest],
        holder: ModelHolder,
        seen: Sequence[np.ndarray],
        received: Sequence[float] | None = None,
        *,
        catalog: Catalog = ...,
    ) -> list[Reply]: ...


@dataclass
class Scorer:
    """Dependencies of the scorer agent (Faust objects are passed in by ``app/``)."""

    holder: ModelHolder
    seen: SeenTable  # the seen-items table
    default_reply: BatchSink  # rec-responses
    dlq: Sink  # rec-requests-dlq
    reply_topic: Callable[[str], BatchSink]  # name -> topic (cached by the app)
    topic_exists: Callable[[str], Awaitable[bool]]
    forbidden_replies: frozenset[str]  # streamrec's own topics (never a reply_to)
    max_bytes: int
    responses_topic: str = "rec-responses"  # default_reply's name (reply_to may name it)
    reply_prefixes: tuple[str, ...] = ()  # STREAMREC_REPLY_TOPIC_PREFIXES
    max_reply_bytes: int = 512 * 1024  # a larger reply dead-letters its request
    max_batch: int = 500
    catalog: Catalog = field(default_factory=dict)
    max_undelivered: int = 5000  # replies on their way before handle waits for them
    experiments: ExperimentHook | None = None  # agents.experiment_serving (issue 20)
    scoring: ScoreThread = field(default_factory=ScoreThread)  # large batches off the loop
    ann: AnnIndex | None = None  # large catalogs: STREAMREC_ANN_MIN_ITEMS
    loading_wait: float = 5.0
    """How long a batch with users of a partition still loading (issue 19) waits for it;
    after that they are answered from popularity with ``"loading": true``."""
    _answering: bool = field(default=False, init=False, repr=False)
    _last_request: float = field(default=float("-inf"), init=False, repr=False)
    _undelivered: list[asyncio.Future[Any]] = field(default_factory=list, init=False, repr=False)

    async def handle(self, messages: Sequence[Message]) -> None:
        """Answer what one fetch of ``rec-requests`` brought, ``max_batch`` at a time;
        returns once the replies and dead letters are queued in the producer;
        :meth:`delivered` waits for their delivery."""
        self._answering = True
        try:
            for start in range(0, len(messages), self.max_batch):
                await self.answer(messages[start : start + self.max_batch])
            if len(self._undelivered) > self.max_undelivered:
                await self.delivered()
        finally:
            self._answering = False
            self._last_request = time.monotonic()

    async def delivered(self) -> None:
        """Wait until every reply sent so far is delivered: the request reader's ``flush``,
        awaited before it commits the requests' offsets."""
        try:
            if self._undelivered:  # every one so far, also those another caller awaits
                await asyncio.gather(*self._undelivered)
        finally:  # a failed delivery fails this wait once, then the reader re-reads
            self._undelivered = [d for d in self._undelivered if not d.done()]

    async def make_way(self, recent: float = 0.1, pause: float = 0.001, most: float = 0.05) -> None:
        """Give requests the event loop: bulk work (ingest) awaits this between slices.

        Returns at once when no request came lately; otherwise waits while requests are
        being answered, and then a moment more, so that a request still on its way (the
        next fetch of the request reader) gets through before the next slice. Never longer
        than ``most``: the ingest must go on (a rebalance waits for it to release its
        partitions)."""
        await asyncio.sleep(0)
        if time.monotonic() - self._last_request > recent and not self._answering:
            return
        deadline = time.monotonic() + most
        while self._answering and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(pause)
        await asyncio.sleep(pause)

    async def answer(self, messages: Sequence[Message]) -> None:
        """Answer one batch of ``rec-requests`` messages (invalid ones are dead-lettered)."""
        if not messages:
            return
        metrics.EVENTS_IN.labels(messages[0].topic).inc(len(messages))
        metrics.AGENT_BATCH.labels("scorer").observe(len(messages))
        requests: list[RecRequest] = []
        sources_of: list[Message] = []  # the message of each request
        targets: list[BatchSink] = []
        received: list[float] = []
        for message in messages:
            try:
                request = decode_request(message.key, message.value, max_bytes=self.max_bytes)
                target = (
                    self.default_reply
                    if request.reply_to is None  # most requests: no coroutine to await
                    else await self._target(request.reply_to)
                )
            except Undecodable as exc:
                self._queue(await send_dead_letter(self.dlq, message, exc))
                continue
            except Exception as exc:  # last resort: this request is dead, not the reader
                self._queue(await send_dead_letter(self.dlq, message, record_error("scorer", exc)))
                continue
            requests.append(request)
            sources_of.append(message)
            targets.append(target)
            received.append(received_at(message))
        if not requests:
            return
        holder = self.holder
        if holder.loading and any(holder.is_loading(r.user) for r in requests):
            await holder.until_loaded(self.loading_wait)
        seen = [decode_row(self.seen.get(r.user)) for r in requests]
        try:
            replies: Sequence[Reply | None] = await self._replies(requests, seen, received)
        except Exception:  # one request broke the batch: each alone, the culprit dead-lettered
            replies = [
                await self._reply_alone(*args)
                for args in zip(requests, seen, received, sources_of, strict=True)
            ]
        if holder.loading:
            replies = [loading_marked(holder, reply) for reply in replies]
        sources: Counter[str] = Counter()
        by_target: dict[int, tuple[BatchSink, list[tuple[bytes | None, bytes | None]]]] = {}
        for reply, target, message in zip(replies, targets, sources_of, strict=True):
            if reply is None:  # dead-lettered: its scoring raised
                continue
            try:
                encoded = reply.encode()
            except Exception as exc:  # e.g. a title that is not UTF-8 (the catalog refuses
                # them; this is the last resort): the request is dead-lettered, not retried
                why = f"the reply cannot be encoded: {type(exc).__name__}: {exc}"
                self._queue(await send_dead_letter(self.dlq, message, Undecodable("invalid", why)))
                continue
            too_large = reply_size_refusal(len(encoded[1]), self.max_reply_bytes)
            if too_large is not None:  # not sent (Kafka would refuse it and stall the reader)
                letter = Undecodable("too_large", too_large)
                self._queue(await send_dead_letter(self.dlq, message, letter))
                continue
            entry = by_target.get(id(target))
            if entry is None:
                entry = by_target[id(target)] = (target, [])
            entry[1].append(encoded)
            sources[reply.source] += 1
            metrics.REQUEST_SECONDS.observe((reply.latency_ms or 0.0) / 1000)
        deliveries = []
        for target, batch in by_target.values():  # queued, not delivered
            deliveries += await target.send_many(batch)
        # Delivered before their requests are committed (the reader awaits ``delivered``
        # first): a crash then answers again rather than never. Not awaited here, so the
        # next fetch is scored while these are on their way.
        pending = [asyncio.ensure_future(d) for d in deliveries if inspect.isawaitable(d)]
        self._undelivered += pending
        for source, n in sources.items():
            metrics.REPLIES.labels(source).inc(n)

    async def _replies(
        self, requests: list[RecRequest], seen: list[np.ndarray], received: list[float]
    ) -> list[Reply]:
        """:func:`replies_for`, the scoring in :attr:`scoring`'s thread when the batch is
        large (the loop meanwhile serves the other readers, the follower, the web). While an
        experiment runs, its hook scores each variant's batch on the loop (it writes the
        impressions as it goes)."""
        if self.experiments is not None and self.experiments.active():
            return self._score(requests, self.holder, seen, received, catalog=self.catalog)
        view = self.holder.view
        # a new view's first batch also copies its item matrix (once per view)
        cells = 0 if view is None else len(requests) * view.n_items + view.product_cells
        if view is None or not self.scoring.offloads(cells):
            return replies_for(
                requests, self.holder, seen, received, catalog=self.catalog, ann=self.ann
            )
        batch = scoring_batch(requests, self.holder, seen, self.ann)
        recs = None if batch is None else await self.scoring.run(cells, batch.score)
        return built_replies(requests, recs, received, catalog=self.catalog)

    async def _reply_alone(
        self, request: RecRequest, seen: np.ndarray, received: float, message: Message
    ) -> Reply | None:
        """The reply to one request, or None once it is dead-lettered for raising."""
        try:
            return self._score([request], self.holder, [seen], [received], catalog=self.catalog)[0]
        except Exception as exc:
            self._queue(await send_dead_letter(self.dlq, message, record_error("scorer", exc)))
            return None

    @property
    def _score(self) -> Callable[..., list[Reply]]:
        """:func:`replies_for`, or the experiments' (users in one get their variant's)."""
        return replies_for if self.experiments is None else self.experiments.replies

    def _queue(self, delivery: Any) -> None:
        """A dead letter's delivery: awaited by :meth:`delivered`, with the replies."""
        if inspect.isawaitable(delivery):
            self._undelivered.append(asyncio.ensure_future(delivery))

    async def _target(self, reply_to: str | None) -> BatchSink:
        if reply_to is None:
            return self.default_reply
        refused = reply_to_refusal(
            reply_to,
            responses_topic=self.responses_topic,
            prefixes=self.reply_prefixes,
            own_topics=self.forbidden_replies,
        )
        if refused is not None:
            raise Undecodable("reply_to", refused)
        if reply_to == self.responses_topic:
            return self.default_reply
        if not await self.topic_exists(reply_to):
            raise Undecodable("reply_to", f"reply_to topic {reply_to!r} does not exist")
        return self.reply_topic(reply_to)
