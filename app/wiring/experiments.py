"""Experiments on every worker: the registry following the experiments topic; on scorers
the serving hook and its impressions; on the trainer (one per deployment) the hit counter
and its guardrail."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import faust

from agents.experiment_hits import RATING_GRACE, HitCounter, HitReader
from agents.experiment_registry import ExperimentReader, ExperimentRegistry
from agents.experiment_results import ResultBook
from agents.experiment_serving import IMPRESSIONS_LINGER, ExperimentServing
from agents.follower import ModelFollower
from agents.health import ReaderHealth
from agents.state import ModelHolder
from app.faust_adapters import BulkTopic, OwnProducer
from app.kafka import kafka_client_options
from app.runtime import Runtime, worker_model_keys
from app.stores import store_from_settings, store_from_url
from app.topics import delta_topic_max_bytes
from models.impressions import HitMatcher
from models.scoring import ScoringView
from models.sequential import SequentialTest
from models.snapshot import load_scoring_view


@dataclass
class Experiments:
    """One worker's experiment parts (the web views read them)."""

    registry: ExperimentRegistry
    reader: ExperimentReader
    results: ResultBook
    serving: ExperimentServing | None = None
    hits: HitReader | None = None


def add_experiments(app: faust.App, runtime: Runtime) -> Experiments:
    s = runtime.settings
    keys = worker_model_keys(s)
    registry = ExperimentRegistry(keys)
    book = ResultBook(keys)
    reader = ExperimentReader(
        registry,
        kafka_client_options(s),
        s.experiments_topic,
        results=book,
        results_topic=s.experiment_results_topic,
        health=runtime.health,
    )
    parts = Experiments(registry, reader, book)
    runtime.experiments = parts

    @app.task
    async def follow_experiments() -> None:
        await reader.run()

    if runtime.role in ("scorer", "all"):
        producer = OwnProducer(kafka_client_options(s))

        async def load_version(version: int) -> ScoringView:
            async with store_from_settings(s) as store:
                payload, manifest = await store.get(version)
            view, _ = await asyncio.to_thread(load_scoring_view, payload, manifest, keys)
            return view

        parts.serving = ExperimentServing(
            registry,
            runtime.holder,
            impressions=BulkTopic(s.impressions_topic, producer),
            impressions_linger=IMPRESSIONS_LINGER,
            load_version=load_version,
            lineages={name: ModelHolder() for name in s.experiment_lineages},
        )
        serving = parts.serving
        for name, source in s.experiment_lineages.items():
            follow_lineage(app, runtime, serving.lineages[name], source)

        @app.task
        async def serve_experiments() -> None:
            await producer.start()
            try:
                await serving.maintain()
            finally:
                await producer.stop()

    if runtime.role in ("trainer", "all") and s.experiment_counter:
        results = OwnProducer(kafka_client_options(s))

        async def send(topic: str, key: bytes, value: bytes) -> None:
            await results.started().send_and_wait(topic, key=key, value=value)

        def catalog_size() -> int:
            view = runtime.holder.view
            return 0 if view is None else len(view.item_ids())

        parts.hits = HitReader(
            HitCounter(
                registry,
                HitMatcher(s.experiment_hit_window_seconds, s.positive_threshold),
                SequentialTest(s.experiment_alpha, s.experiment_tau, s.experiment_min_impressions),
            ),
            kafka_client_options(s),
            impressions_topic=s.impressions_topic,
            ratings_topic=s.ratings_topic,
            results_topic=s.experiment_results_topic,
            experiments_topic=s.experiments_topic,
            keys=keys,
            send=send,
            catalog_size=catalog_size,
            publish_seconds=s.experiment_publish_seconds,
            health=runtime.health,
            rating_grace=RATING_GRACE,
        )
        hits = parts.hits

        @app.task
        async def count_hits() -> None:
            await results.start()
            try:
                await reader.ready.wait()  # the experiments first: their starts seek
                await hits.run()
            finally:
                await results.stop()

    return parts


def follow_lineage(app: faust.App, runtime: Runtime, holder: ModelHolder, source: Any) -> None:
    """A candidate trainer lineage followed into ``holder`` like the served model: its
    snapshots from its store and announcements, its deltas, verified with the same keys."""
    s = runtime.settings

    @app.task
    async def follow() -> None:
        async with store_from_url(source.store, s) as store:
            follower = ModelFollower(
                holder,
                store,
                kafka_client_options(s),
                source.updates_topic,
                deltas_topic=source.deltas_topic,
                max_delta_bytes=delta_topic_max_bytes(s),
                health=ReaderHealth(),  # its own: a lineage down does not degrade /health/
                keys=worker_model_keys(s),
                served=False,
            )
            await follower.run()
