"""``streamrec catalog load FILE``: item titles and genres onto the compacted items topic.

Every worker keeps the topic as a Faust GlobalTable (``app.service``), so replies, the
popular list and the dashboard show titles. Files: MovieLens ``u.item`` (latin-1) and
``movies.csv``, or the catalog ``streamrec generate`` writes beside its ratings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import click
from aiokafka.errors import KafkaError

from models.catalog import CATALOG_FORMATS, CatalogError, CatalogItem


def read_catalog(path: Path, fmt: str = "auto") -> list[CatalogItem]:
    """Every entry of a catalog file; a bad line or an unreadable file is one clear line."""
    from app.commands.offline import read_text_file
    from models.catalog import iter_catalog

    return read_text_file(path, lambda f: list(iter_catalog(f, fmt)), CatalogError)


async def publish_catalog(settings, items: Iterable[CatalogItem], *, progress: bool = False) -> int:
    """Produce each item keyed by its id (acks=all); returns how many were sent."""
    from aiokafka import AIOKafkaProducer

    from app.commands.service import start_client
    from app.progress import progress_bar
    from app.topics import ensure_topics
    from models.catalog import catalog_message

    items = list(items)
    await ensure_topics(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await start_client(producer)
    try:
        with progress_bar(total=len(items), unit="item", disable=not progress) as bar:
            for entry in items:
                await producer.send(
                    settings.items_topic, key=entry.item.encode(), value=catalog_message(entry)
                )
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
    from app.commands.service import kafka_down, quiet_kafka_logs
    from app.settings import get_settings

    settings = get_settings()
    quiet_kafka_logs()
    items = read_catalog(file, fmt)
    try:
        sent = asyncio.run(publish_catalog(settings, items, progress=True))
    except (KafkaError, OSError) as exc:
        raise kafka_down(settings, exc) from None
    click.echo(f"published {sent} items to {settings.items_topic!r}")
