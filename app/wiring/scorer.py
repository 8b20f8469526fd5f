"""The scorer role's wiring: the ``seen-items`` table, the ingest and the scorer fed by bulk
readers of the partitions Faust's group assigns, the rebalance hooks, and the model follower."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from typing import Any

import faust

from agents.ann_index import AnnIndex
from agents.bulk import PartitionedReader
from agents.follower import ModelFollower
from agents.ingest import Ingest
from agents.kafka import KnownTopics
from agents.lease import Lease
from agents.resync import SnapshotAsker
from agents.scorer import Scorer
from app.faust_adapters import (
    BulkTopic,
    FaustSeenTable,
    ImmediateSink,
    OwnProducer,
    faust_group_positions,
    never_fetch_through_faust,
)
from app.kafka import kafka_client_options
from app.runtime import Runtime, worker_model_keys
from app.stores import store_from_settings
from app.topics import SEEN_TABLE, bulk_group, delta_topic_max_bytes, seen_changelog, topic_specs
from models.ownership import Share

log = logging.getLogger(__name__)


def add_scorer(app: faust.App, runtime: Runtime) -> None:
    """The scorer's parts; a scorer of its own role follows the trainer's model updates (in
    the ``all`` role it shares the trainer's own view)."""
    s = runtime.settings
    # Keys are raw utf-8 user ids, exactly as producers key ratings and requests: then the
    # router (app.table_route) hashes a user to the partition whose rows this worker holds.
    # (Faust's default JSON key would hash '"u1"', another partition: /users/ would 404.)
    spec = next(
        t for t in topic_specs(s, runtime.role) if t.name == seen_changelog(s, runtime.role)
    )
    changelog = app.topic(
        spec.name,
        key_type=str,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=spec.partitions,
        config=spec.config,
    )
    # Rows are models.seen bytes; no default (a default would write an empty row, and a
    # changelog record, on every read of an unknown user).
    table = app.Table(
        SEEN_TABLE,
        key_type=str,
        value_type=bytes,  # raw bytes, as the changelog topic says
        partitions=s.topic_partitions,
        changelog_topic=changelog,
    )
    lease = Lease(s.session_timeout)
    seen = FaustSeenTable(table, lease=lease)
    runtime.seen = seen
    requests = runtime.topics[s.requests_topic]
    requests_dlq = runtime.topics[s.requests_dlq_topic]
    replies = OwnProducer(kafka_client_options(s))
    reply_topics: dict[str, BulkTopic] = {}

    def reply_topic(name: str) -> BulkTopic:
        if name not in reply_topics:
            reply_topics[name] = BulkTopic(name, replies)
        return reply_topics[name]

    known_topics = KnownTopics(kafka_client_options(s))  # one admin client per process
    never_fetch_through_faust(app.consumer, s.requests_topic)
    ingest = Ingest(
        seen=seen,
        max_bytes=s.max_message_bytes,
        seen_limit=s.seen_items_max,
        max_future_skew=s.max_future_skew_seconds,
        max_users=s.max_users,
    )
    runtime.ingest = ingest
    scorer = Scorer(
        holder=runtime.holder,
        seen=seen,
        default_reply=reply_topic(s.responses_topic),
        dlq=ImmediateSink(requests_dlq),
        reply_topic=reply_topic,
        topic_exists=known_topics.exists,
        # Every topic streamrec owns, except the default reply topic itself.
        forbidden_replies=frozenset(t.name for t in topic_specs(s, runtime.role))
        - {s.responses_topic},
        max_bytes=s.max_message_bytes,
        responses_topic=s.responses_topic,
        reply_prefixes=s.reply_prefixes,
        max_reply_bytes=s.max_reply_bytes,
        max_batch=s.request_batch_max,
        catalog=runtime.catalog_rows,
        experiments=runtime.experiments.serving if runtime.experiments else None,
        ann=AnnIndex(s.ann_min_items) if s.ann_min_items else None,
        loading_wait=s.share_loading_wait_seconds,
    )
    # issue 19: the follower (started below) holds only the owned partitions' users
    followers: list[ModelFollower] = []
    owned: list[Share] = [Share(s.topic_partitions, frozenset())]

    # Ratings and requests are read in bulk, outside Faust's streams (agents/bulk.py), from
    # the partitions Faust assigned this worker for requests and the table: the same
    # numbers, co-partitioned. Requests first: the ingest yields to them between slices.
    readers = [
        PartitionedReader(
            kafka_client_options(s),
            s.requests_topic,
            group_id=bulk_group(s, runtime.role, "requests"),
            handle=scorer.handle,
            flush=scorer.delivered,  # replies delivered before their requests are committed
            max_records=s.request_batch_max,
            slice_records=s.request_batch_max,
            start_from=functools.partial(faust_group_positions, s, runtime.role),
            health=runtime.health,
            name="requests",
        ),
        PartitionedReader(
            kafka_client_options(s),
            s.ratings_topic,
            group_id=bulk_group(s, runtime.role, "ingest"),
            handle=ingest.handle,
            flush=seen.flush,
            max_records=s.ingest_batch_max,  # a slice a fetch: aiokafka unpacks it on the loop
            slice_records=s.ingest_batch_max,
            make_way=scorer.make_way,
            health=runtime.health,
            name="ingest",
        ),
    ]
    seen.make_way = scorer.make_way

    @app.task
    async def read_requests() -> None:
        await replies.start()
        try:
            await readers[0].run()
        finally:
            scorer.scoring.close()
            if scorer.ann is not None:
                scorer.ann.close()
            await known_topics.close()
            await replies.stop()

    @app.task
    async def read_ratings() -> None:
        # The ingest thread would hold the GIL for up to 5 ms (the default switch interval)
        # at a time, and a request needs the loop several times on its way through: each
        # of those steps may wait one interval for the GIL (docs/benchmarks.md, session 4).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0002))
        changelog = OwnProducer(kafka_client_options(s))  # not the replies': a flush of
        seen.producer = await changelog.start()  # many rows must not delay a reply
        lease.start()
        try:
            await readers[1].run()
        finally:
            lease.stop()
            await changelog.stop()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # no *args: none are sent
    async def own_partitions(sender: Any, **kwargs: Any) -> None:  # after table recovery
        mine = {tp.partition for tp in app.consumer.assignment() if tp.topic == s.requests_topic}
        owned[0] = Share(s.topic_partitions, frozenset(mine))
        for follower in followers:
            follower.set_share(owned[0])
        lease.renew()
        for reader in readers:
            reader.own(mine)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # revoked by position
    async def release_partitions(sender: Any, revoked: Any, **kwargs: Any) -> None:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(reader.release() for reader in readers)),
                timeout=s.session_timeout,
            )
        except TimeoutError:
            log.error("Bulk readers did not release their partitions in %gs", s.session_timeout)

    # Faust's group assigns the request partitions to the workers through this agent's
    # subscription; its consumer never hands their records on (never_fetch_through_faust).
    @app.agent(requests, name="scorer")
    async def scorer_agent(stream: Any) -> None:
        warned = False
        async for _ in stream:  # the request reader (its own group) answers these too
            if not warned:
                log.warning("Requests reached Faust's stream; they are not answered there")
                warned = True

    if runtime.role == "scorer":

        @app.task
        async def follow_model_updates() -> None:
            keys = worker_model_keys(s)
            async with store_from_settings(s) as store:
                follower = ModelFollower(
                    runtime.holder,
                    store,
                    kafka_client_options(s),
                    s.model_updates_topic,
                    deltas_topic=s.model_deltas_topic,
                    max_delta_bytes=delta_topic_max_bytes(s),
                    health=runtime.health,
                    asker=SnapshotAsker(
                        ImmediateSink(runtime.topics[s.model_requests_topic]), keys=keys
                    ),
                    keys=keys,
                )
                if s.scorer_share:
                    follower.first_share_wait = s.session_timeout
                    follower.set_share(owned[0])
                    followers.append(follower)
                await follower.run()
