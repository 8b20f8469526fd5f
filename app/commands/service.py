"""``streamrec worker|publish|recommend``: the Faust service and its command-line clients."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from aiokafka.errors import KafkaError

from agents.kafka import send_bulk
from app.kafka import connection_errors_explained, kafka_client_options, kafka_unavailable
from app.settings import ROLES, Settings, get_settings
from models.events import RecRequest
from models.wire import ModelUpdate, Reply, Undecodable, encode_rating, encode_request

T = TypeVar("T")


def _settings(**overrides: Any) -> Settings:
    base = get_settings()
    changes = {k: v for k, v in overrides.items() if v is not None}
    return base.model_copy(update=changes) if changes else base


def run_kafka(settings: Settings, work: Coroutine[Any, Any, T]) -> T:
    """Run a Kafka client coroutine; a Kafka that cannot be used (down, a refused login, an
    untrusted certificate) is one clear line and exit 1 instead of aiokafka's log lines."""
    with connection_errors_explained() as failures:
        try:
            return asyncio.run(work)
        except TimeoutError:
            raise  # the caller's own wait (e.g. no reply), not a connection problem
        except (KafkaError, OSError) as exc:
            raise click.ClickException(kafka_unavailable(settings, exc, failures)) from None


@click.command()
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default=None,
    help="trainer (exactly one per deployment), scorer (scale out), or all (one dev process). "
    "Default: STREAMREC_ROLE.",
)
@click.option("--web-port", type=click.IntRange(1, 65535), default=None, help="Web views port.")
@click.option("--loglevel", default=None, help="Log level (default: STREAMREC_LOG_LEVEL).")
def worker(role: str | None, web_port: int | None, loglevel: str | None) -> None:
    """Run a Faust worker for one role (same app as `faust -A app.main worker`)."""
    from faust.worker import Worker

    from app.service import create_app
    from app.topics import TopicMismatch, ensure_topics

    settings = _settings(role=role, web_port=web_port)
    try:
        run_kafka(settings, ensure_topics(settings, role=settings.role))
    except TopicMismatch as exc:
        raise click.ClickException(str(exc)) from None
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = create_app(settings)
    Worker(app, loglevel=loglevel or settings.log_level).execute_from_commandline()


@click.command()
@click.argument("ratings_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Events per second (default: as fast as the broker takes them).",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Publish at most N.")
@click.option(
    "--format", "fmt", default="auto", show_default=True, help="auto, ml100k, ml1m, mlcsv or csv."
)
def publish(ratings_file: Path, rate: float | None, limit: int | None, fmt: str) -> None:
    """Publish ratings from a file (any supported format) to the ratings topic."""
    from app.commands.offline import read_ratings

    settings = _settings()
    ratings = read_ratings(ratings_file, fmt)
    if limit is not None:
        ratings = ratings[:limit]
    sent = run_kafka(settings, publish_ratings(settings, ratings, rate=rate, progress=True))
    click.echo(f"published {sent} ratings to {settings.ratings_topic!r}")


async def publish_ratings(
    settings: Settings, ratings: list[Any], *, rate: float | None = None, progress: bool = False
) -> int:
    """Produce ``ratings`` keyed by user (acks=all, idempotent); returns how many were sent."""
    from aiokafka import AIOKafkaProducer

    from app.progress import progress_bar

    producer = AIOKafkaProducer(
        **kafka_client_options(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
    )
    await start_client(producer)
    started = time.monotonic()
    try:
        if rate is None and not progress:  # as fast as the broker takes them: whole batches
            return await send_bulk(producer, settings.ratings_topic, map(encode_rating, ratings))
        with progress_bar(total=len(ratings), unit="ev", disable=not progress) as bar:
            for i, rating in enumerate(ratings, 1):
                key, value = encode_rating(rating)
                await producer.send(settings.ratings_topic, key=key, value=value)
                if rate is not None:
                    ahead = i / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if i % 500 == 0 or i == len(ratings):
                    bar.update(i - bar.n)
            await producer.flush()
    finally:
        await producer.stop()
    return len(ratings)


async def announce_model(settings: Settings, update: ModelUpdate) -> None:
    """Publish ``update`` on the model-updates topic."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all")
    await start_client(producer)
    try:
        key, value = update.encode()
        await producer.send_and_wait(settings.model_updates_topic, key=key, value=value)
    finally:
        await producer.stop()


async def start_client(client: Any) -> None:
    """Start an aiokafka client; if it cannot connect, close it again (no 'Unclosed' noise)."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise


async def request_recommendation(
    settings: Settings, user: str, k: int, *, exclude_seen: bool = True, wait: float = 10.0
) -> Reply:
    """Send one request on the requests topic and wait for its reply on the responses topic."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from agents.kafka import partitions_of

    request_id = uuid.uuid4().hex
    consumer = AIOKafkaConsumer(
        **kafka_client_options(settings), group_id=None, enable_auto_commit=False
    )
    await start_client(consumer)
    producer = AIOKafkaProducer(**kafka_client_options(settings), acks="all")
    try:
        await start_client(producer)
    except BaseException:
        await consumer.stop()
        raise
    try:
        parts = await partitions_of(kafka_client_options(settings), settings.responses_topic)
        if not parts:
            raise click.ClickException(
                f"topic {settings.responses_topic!r} does not exist: is a scorer running?"
            )
        tps = [TopicPartition(settings.responses_topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end positions before the request can be answered
            await consumer.position(tp)
        key, value = encode_request(
            RecRequest(request_id=request_id, user=user, k=k, exclude_seen=exclude_seen)
        )
        await producer.send_and_wait(settings.requests_topic, key=key, value=value)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            batch = await consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000))
            for messages in batch.values():
                for message in messages:
                    try:
                        reply = Reply.parse(message.value)
                    except Undecodable:
                        continue
                    if reply.request_id == request_id:
                        return reply
        raise TimeoutError(f"no reply for user {user!r} within {wait:g}s: is a scorer running?")
    finally:
        await producer.stop()
        await consumer.stop()


def format_reply(reply: Reply) -> str:
    """A reply as a small human-readable table."""
    head = (
        f"user {reply.user}: {len(reply.items)} items from {reply.source} "
        f"(model v{reply.model_version}, {reply.latency_ms or 0:.1f} ms)"
    )
    rows = [
        f"  {i:>3}. {entry.item:<20} {entry.score:8.3f}  {entry.title or ''}".rstrip()
        for i, entry in enumerate(reply.items, 1)
    ]
    return "\n".join([head, *rows])


@click.command()
@click.argument("user")
@click.option("-k", "k", type=click.IntRange(1, 1000), default=None, help="How many items.")
@click.option("--include-seen", is_flag=True, help="Do not exclude items the user has rated.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the reply message itself.")
def recommend(user: str, k: int | None, include_seen: bool, timeout: float, as_json: bool) -> None:
    """Ask the scorers for USER's recommendations over Kafka and print the reply."""
    settings = _settings()
    try:
        reply = run_kafka(
            settings,
            request_recommendation(
                settings,
                user,
                k or settings.default_k,
                exclude_seen=not include_seen,
                wait=timeout,
            ),
        )
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(reply.to_dict()) if as_json else format_reply(reply))


COMMANDS = [worker, publish, recommend]
