"""``streamrec catalog load FILE``: item titles and genres onto the compacted items topic.

Every worker keeps the topic as a Faust GlobalTable (:mod:`app.wiring.catalog`), so replies, the
popular list and the dashboard show titles. Files: MovieLens ``u.item`` (latin-1) and
``movies.csv``, or the catalog ``streamrec generate`` writes beside its ratings.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from models.catalog import CATALOG_FORMATS, CatalogError, CatalogItem

if TYPE_CHECKING:
    from app.settings import Settings


def read_catalog(path: Path, fmt: str = "auto") -> list[CatalogItem]:
    """Every entry of a catalog file; a bad line or an unreadable file is one clear line."""
    from app.commands.offline import read_text_file
    from models.catalog import iter_catalog

    return read_text_file(path, lambda f: list(iter_catalog(f, fmt)), CatalogError)


async def publish_catalog(
    settings: Settings, items: Iterable[CatalogItem], *, progress: bool = False
) -> int:
    """Produce each item keyed by its id (acks=all); returns how many were sent."""
    from aiokafka import AIOKafkaProducer

    from app.commands.service import start_client
    from app.kafka import kafka_client_options
    from app.progress import progress_bar
    from app.topics import ensure_topics
    from models.wire import encode_catalog_item

    items = list(items)
    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        **kafka_client_options(settings), acks="all", enable_idempotence=True
    )
    await start_client(producer)
    try:
        with progress_bar(total=len(items), unit="item", disable=not progress) as bar:
            for entry in items:
                key, value = encode_catalog_item(entry)
                await producer.send(settings.items_topic, key=key, value=value)
                bar.update()
            await producer.flush()
    finally:
        await producer.stop()
    return len(items)


@click.group()
def catalog() -> None:
    """Item metadata: titles and genres for replies, views and the dashboard."""


@catalog.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", *CATALOG_FORMATS]),
    default="auto",
    show_default=True,
    help="mlitem (MovieLens u.item), mlmovies (movies.csv) or csv (item,title,genres).",
)
def load(file: Path, fmt: str) -> None:
    """Publish FILE's items to the items topic (a compacted topic: the last entry wins)."""
    from app.commands.service import run_kafka
    from app.settings import get_settings

    settings = get_settings()
    items = read_catalog(file, fmt)
    sent = run_kafka(settings, publish_catalog(settings, items, progress=True))
    click.echo(f"published {sent} items to {settings.items_topic!r}")
