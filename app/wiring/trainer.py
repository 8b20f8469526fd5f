"""The trainer role's wiring: the trainer as a service of the Faust app, reading ``ratings``
in bulk with a consumer of its own, and the timer that takes its snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import faust
import mode
from aiokafka import AIOKafkaConsumer
from threadpoolctl import threadpool_limits

from agents.deltas import DeltaPublisher
from agents.kafka import DeadLetterQueue, dead_letter_marks
from agents.resync import serve_snapshot_requests
from agents.trainer import Trainer, TrainerRebalance, restore_model
from app.faust_adapters import ImmediateSink, OwnProducer
from app.kafka import kafka_client_options
from app.runtime import Runtime, worker_model_keys
from app.settings import model_config_of, model_keys
from app.stores import store_from_settings
from app.topics import DLQ_MAX_MESSAGE_BYTES, trainer_group
from models.bounds import Capacity

log = logging.getLogger(__name__)


def add_trainer(app: faust.App, runtime: Runtime, updates: Any) -> None:
    """The trainer and its snapshot timer; snapshots are announced on ``updates``. A trainer
    of its own role publishes deltas for the scorers to follow; in the ``all`` role the
    scorer shares the trainer's own view."""
    s = runtime.settings
    deltas = None
    if runtime.role == "trainer":
        deltas = DeltaPublisher(
            ImmediateSink(runtime.topics[s.model_deltas_topic]),
            s.delta_max_bytes,
            keys=model_keys(s),  # said in the log when the trainer starts
        )
    app.service(trainer_service(runtime, updates, deltas))

    @app.timer(interval=max(0.5, min(5.0, s.snapshot_every_seconds / 4)), name="snapshot-timer")
    async def snapshot_timer() -> None:
        if runtime.trainer is not None:
            await runtime.trainer.tick()


def single_threaded_blas() -> None:
    """One BLAS thread for the whole process (what ``OPENBLAS_NUM_THREADS=1`` does for
    the scorers). The trainer's only BLAS products are small (the prequential test step's
    64 users x the items), which threads do not speed up; and after each call OpenBLAS's
    idle threads spin for a while, taking a core from the fit thread, the decode and the
    broker on a small machine: the trainer in process ran 2-2.5x slower with 2 BLAS
    threads on 2 cores (docs/benchmarks.md, "One BLAS thread in the trainer")."""
    threadpool_limits(limits=1, user_api="blas")


def trainer_service(
    runtime: Runtime, updates: Any, deltas: DeltaPublisher | None
) -> type[mode.Service]:
    """The trainer as a service of the Faust app, reading ``ratings`` in bulk.

    Faust's per-event stream delivers a few thousand events/s (docs/benchmarks.md); the
    trainer needs whole batches, so it drains its own aiokafka consumer (group
    :func:`app.topics.trainer_group`) with ``getmany`` and sends dead letters with its own
    idempotent producer. Faust still runs the web views, the snapshot timer, and the
    model-updates topic the snapshots are announced on.
    """
    s = runtime.settings
    options = kafka_client_options(s)

    class TrainerService(mode.Service):
        _stack: contextlib.AsyncExitStack
        _task: asyncio.Task[None] | None = None
        _requests: asyncio.Task[None] | None = None  # scorers asking for a snapshot

        async def on_start(self) -> None:
            single_threaded_blas()
            self._stack = contextlib.AsyncExitStack()
            store = await self._stack.enter_async_context(store_from_settings(s))
            keys = worker_model_keys(s)
            model = await restore_model(store, model_config_of(s), runtime.holder, keys)
            marks = await dead_letter_marks(options, s.ratings_dlq_topic, s.ratings_topic)
            own = OwnProducer(options)
            producer = await own.start()
            self._stack.push_async_callback(own.stop)
            consumer = AIOKafkaConsumer(
                **options,
                group_id=trainer_group(s),
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=DLQ_MAX_MESSAGE_BYTES + 1024 * 1024,
                session_timeout_ms=int(s.session_timeout * 1000),
                heartbeat_interval_ms=int(max(1.0, s.session_timeout / 10) * 1000),
            )
            trainer = Trainer(
                model=model,
                holder=runtime.holder,
                store=store,
                updates=updates,
                dead_letters=DeadLetterQueue(producer, s.ratings_dlq_topic),
                capacity=Capacity(s.max_users, s.max_items),
                dead_lettered=marks,
                max_bytes=s.max_message_bytes,
                snapshot_every_batches=s.snapshot_every_batches,
                snapshot_every_seconds=s.snapshot_every_seconds,
                checkpoint_segments=s.checkpoint_segments,
                checkpoint_chain_fraction=s.checkpoint_chain_fraction,
                checkpoint_keep_bases=s.checkpoint_keep_bases,
                deltas=deltas,
                consumer=consumer,
                max_future_skew=s.max_future_skew_seconds,
                keys=keys,
            )
            await consumer.start()
            self._stack.push_async_callback(consumer.stop)
            consumer.subscribe([s.ratings_topic], listener=TrainerRebalance(trainer))
            if marks:
                log.info("Ratings already dead-lettered, by partition: up to offsets %s", marks)
            runtime.trainer = trainer

        async def on_started(self) -> None:
            assert runtime.trainer is not None
            self._task = asyncio.create_task(self._run(runtime.trainer))
            if deltas is not None:  # scorers follow deltas: they may ask for a snapshot
                self._requests = asyncio.create_task(
                    serve_snapshot_requests(
                        options,
                        s.model_requests_topic,
                        runtime.trainer.snapshot_requested,
                        keys=runtime.trainer.keys,
                        health=runtime.health,
                    )
                )

        async def _run(self, trainer: Trainer) -> None:
            try:
                await trainer.run(batch_max=s.batch_max, poll_seconds=s.batch_seconds)
            except Exception as exc:
                log.exception("The trainer failed: %r", exc)
                runtime.health.failed("trainer", exc)
                await self.crash(exc)

        async def on_stop(self) -> None:
            trainer, runtime.trainer = runtime.trainer, None
            if self._requests is not None:
                self._requests.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._requests
            try:
                if trainer is not None:
                    trainer.stop()
                    if self._task is not None:
                        await self._task
                    # On a clean shutdown, persist what was trained since the last snapshot.
                    await trainer.snapshot_now("shutdown")
            finally:
                await self._stack.aclose()

    return TrainerService
