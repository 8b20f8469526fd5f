"""streamrec's topics: names, partitions and configs in one place, created explicitly.

Faust would auto-declare topics, but a table's source topic and its changelog must agree on
partition counts, and ``model-updates`` must be compacted; so every worker (and the CLI)
creates them up front with :func:`ensure_topics` and refuses to run on a mismatch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from app.settings import Settings

log = logging.getLogger(__name__)

#: Dead letters keep the original bytes, so they must accept what the broker accepted.
DLQ_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    p = settings.topic_partitions
    # Input topics accept oversized events so that the agents can dead-letter them with a
    # reason (the size limit is STREAMREC_MAX_MESSAGE_BYTES), instead of producers getting
    # an opaque broker error; dead letters keep the original bytes, so DLQs accept as much.
    big = {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}
    dlq = {**big, "retention.ms": str(30 * 86400_000)}
    return [
        TopicSpec(settings.ratings_topic, p, big),
        TopicSpec(settings.requests_topic, p, big),
        TopicSpec(settings.responses_topic, p, {"retention.ms": str(86400_000)}),
        TopicSpec(settings.model_updates_topic, 1, {"cleanup.policy": "compact"}),
        TopicSpec(settings.ratings_dlq_topic, p, dlq),
        TopicSpec(settings.requests_dlq_topic, p, dlq),
    ]


class TopicMismatch(RuntimeError):
    """A topic cannot be created, or exists with other partition counts than the settings."""


async def ensure_topics(settings: Settings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create missing topics; verify partition counts of existing ones. Returns created names."""
    specs = topic_specs(settings) if specs is None else specs
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
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
        described = await admin.describe_topics([s.name for s in specs])
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        for spec in specs:
            if counts.get(spec.name, spec.partitions) != spec.partitions:
                raise TopicMismatch(
                    f"topic {spec.name!r} has {counts[spec.name]} partitions, settings say "
                    f"{spec.partitions} (STREAMREC_TOPIC_PARTITIONS)"
                )
        return created
    finally:
        await admin.close()
