"""streamrec's topics: names, partitions and configs in one place, created explicitly.

Faust would auto-declare topics, but a table's source topic and its changelog must agree on
partition counts, and ``model-updates`` must be compacted; so every worker (and the CLI)
creates them up front with :func:`ensure_topics` and refuses to run on a mismatch.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.errors import AppError
from app.kafka import kafka_client_options
from app.settings import Settings

log = logging.getLogger(__name__)

#: Dead letters keep the original bytes, so they must accept what the broker accepted.
DLQ_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def delta_topic_max_bytes(settings: Settings) -> int:
    """What the delta topic accepts: the largest delta plus room for the record's framing."""
    return settings.delta_max_bytes + 64 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


SEEN_TABLE = "seen-items"
"""The scorers' Faust table of per-user seen items (co-partitioned with ratings by user)."""

CATALOG_TABLE = "catalog"
"""Every worker's Faust GlobalTable of item metadata, backed by the compacted items topic."""

CATALOG_PARTITIONS = 1
"""The items topic has one partition: Faust's GlobalTable recovers reliably only so."""


def faust_app_id(settings: Settings, role: str) -> str:
    """Each role is its own Faust app, hence its own consumer group."""
    return f"{settings.app_id}-{role}"


def trainer_group(settings: Settings) -> str:
    """The consumer group the trainer reads ``ratings`` in (its bulk aiokafka consumer, not
    the Faust app's group, whose members speak Faust's assignor protocol)."""
    return f"{faust_app_id(settings, 'trainer')}-ratings"


def bulk_group(settings: Settings, role: str, path: str) -> str:
    """The group a worker's bulk reader (:mod:`agents.bulk`) commits its offsets in:
    ``path`` is ``"requests"`` (the scorer) or ``"ingest"`` (the ratings it records)."""
    return f"{faust_app_id(settings, role)}-{path}"


def seen_changelog(settings: Settings, role: str) -> str:
    """The ``seen-items`` table's changelog topic, named as Faust would name it."""
    return f"{faust_app_id(settings, role)}-{SEEN_TABLE}-changelog"


def topic_specs(settings: Settings, role: str | None = None) -> list[TopicSpec]:
    """streamrec's topics, plus the table changelogs of ``role`` (Faust's naming).

    The changelog is created here rather than by Faust: two scorers starting together
    race Faust's creation against the broker's auto-creation, which makes a one-partition
    changelog that Faust then refuses (PartitionsMismatch).
    """
    p = settings.topic_partitions
    # Input topics accept oversized events so that the agents can dead-letter them with a
    # reason (the size limit is STREAMREC_MAX_MESSAGE_BYTES), instead of producers getting
    # an opaque broker error; dead letters keep the original bytes, so DLQs accept as much.
    big = {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}
    dlq = {**big, "retention.ms": str(30 * 86400_000)}
    specs = [
        TopicSpec(settings.ratings_topic, p, big),
        TopicSpec(settings.requests_topic, p, big),
        TopicSpec(settings.responses_topic, p, {"retention.ms": str(86400_000)}),
        TopicSpec(settings.model_updates_topic, 1, {"cleanup.policy": "compact"}),
        # One partition: deltas are a chain, applied in order.
        TopicSpec(
            settings.model_deltas_topic,
            1,
            {
                "retention.ms": str(int(settings.delta_retention_seconds * 1000)),
                # Deleted a segment at a time: segments of a quarter of the bound (at
                # least one delta) keep the disk used under 1.25x the bound.
                "retention.bytes": str(settings.delta_retention_bytes),
                "segment.bytes": str(
                    max(
                        delta_topic_max_bytes(settings),
                        min(settings.delta_retention_bytes // 4, 1 << 30),
                    )
                ),
                "max.message.bytes": str(delta_topic_max_bytes(settings)),
            },
        ),
        # Scorers whose delta chain broke ask the trainer for a snapshot (agents.resync).
        TopicSpec(settings.model_requests_topic, 1, {"retention.ms": str(3600_000)}),
        TopicSpec(settings.ratings_dlq_topic, p, dlq),
        TopicSpec(settings.requests_dlq_topic, p, dlq),
        TopicSpec(settings.items_topic, CATALOG_PARTITIONS, {"cleanup.policy": "compact"}),
        # Experiments (issue 20): definitions and tallies every worker reads whole (one
        # partition, compacted: a restart keeps them); impressions keyed by user like ratings.
        TopicSpec(settings.experiments_topic, 1, {"cleanup.policy": "compact"}),
        TopicSpec(settings.experiment_results_topic, 1, {"cleanup.policy": "compact"}),
        TopicSpec(settings.impressions_topic, p, {"retention.ms": str(7 * 86400_000)}),
    ]
    if role in ("scorer", "all"):
        specs.append(TopicSpec(seen_changelog(settings, role), p, {"cleanup.policy": "compact"}))
    return specs


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition counts; a topic created a moment ago may briefly show none, so wait a bit."""
    for _ in range(50):
        described = await admin.describe_topics(names)
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        if all(counts.get(name) for name in names):
            break
        await asyncio.sleep(0.1)
    return counts


class TopicMismatch(AppError, RuntimeError):
    """A topic cannot be created, or exists with other partition counts than the settings."""


async def ensure_topics(
    settings: Settings, specs: list[TopicSpec] | None = None, *, role: str | None = None
) -> list[str]:
    """Create missing topics; verify partition counts of existing ones. Returns created names."""
    specs = topic_specs(settings, role) if specs is None else specs
    admin = AIOKafkaAdminClient(**kafka_client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created = []
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        s.name,
                        num_partitions=s.partitions,
                        replication_factor=settings.topic_replication,
                        topic_configs=s.config,
                    )
                    for s in missing
                ]
            )
            for name, code, message in response.topic_errors:
                if code == TopicAlreadyExistsError.errno:  # another worker won the race
                    continue
                if code:
                    raise TopicMismatch(f"cannot create topic {name!r}: {message} (code {code})")
                created.append(name)
            if created:
                log.info("Created topics: %s", ", ".join(created))
        counts = await _partition_counts(admin, [s.name for s in specs])
        for spec in specs:
            if counts.get(spec.name, spec.partitions) != spec.partitions:
                raise TopicMismatch(
                    f"topic {spec.name!r} has {counts[spec.name]} partitions, settings say "
                    f"{spec.partitions} (STREAMREC_TOPIC_PARTITIONS)"
                )
        return created
    finally:
        await admin.close()
