"""The item catalog on every worker: a Faust GlobalTable whose changelog *is* the compacted
items topic."""

from __future__ import annotations

import faust

from app.faust_adapters import CatalogKeys, CatalogTable, CatalogValues
from app.runtime import Runtime
from app.topics import CATALOG_PARTITIONS, CATALOG_TABLE, TopicSpec


def add_catalog(app: faust.App, runtime: Runtime, spec: TopicSpec) -> None:
    """The item catalog: a GlobalTable whose changelog *is* the compacted items topic.

    ``streamrec catalog load`` produces to that topic; every worker reads all of it (one
    partition, as Faust recommends for global tables) and keeps following it.
    """
    items = app.topic(
        spec.name,
        key_type=str,
        key_serializer=CatalogKeys(),
        value_serializer=CatalogValues(runtime.settings.max_message_bytes, spec.name),
        partitions=spec.partitions,
        config=spec.config,
    )
    runtime.catalog = app.tables.add(
        CatalogTable(
            app,
            name=CATALOG_TABLE,
            key_type=str,
            partitions=CATALOG_PARTITIONS,
            changelog_topic=items,
            beacon=app.tables.beacon,
            is_global=True,
            # Apply changes as they come, and recover with a buffer of one (Faust's advice
            # for global tables shared by several workers).
            standby_buffer_size=1,
            recovery_buffer_size=1,
            # Nobody in the group writes the table (the CLI produces to the topic), so every
            # worker must keep reading every partition, actives included (faust issue 283).
            synchronize_all_active_partitions=True,
        )
    )
