"""The Faust app factory: the app's options, and which parts (app/wiring/) and web views a
role gets.

Roles are separate consumer groups, because a consumer group splits partitions between its
members and the trainer must see every rating:

* ``trainer`` (exactly one worker): the trainer, which reads ``ratings`` in bulk with a
  consumer of its own (group ``<app_id>-trainer-ratings``, :mod:`app.wiring.trainer`);
* ``scorer`` (group ``<app_id>-scorer``, N workers): the ingest and scorer agents, the
  ``seen-items`` table, and a model follower per worker;
* ``all`` (group ``<app_id>-all``, one worker): everything in one process, for development.
"""

from __future__ import annotations

import faust

from app import web
from app.faust_adapters import raw_topic
from app.kafka import faust_broker_options
from app.runtime import Runtime
from app.settings import ROLES, Role, Settings
from app.topics import DLQ_MAX_MESSAGE_BYTES, faust_app_id, topic_specs
from app.wiring.catalog import add_catalog
from app.wiring.experiments import add_experiments
from app.wiring.scorer import add_scorer
from app.wiring.series import add_series
from app.wiring.trainer import add_trainer


def create_app(settings: Settings, role: Role | None = None) -> faust.App:
    role = role or settings.role
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    datadir = settings.datadir / f"{role}-{settings.web_port}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        faust_app_id(settings, role),
        **faust_broker_options(settings),
        datadir=str(datadir),
        store="memory://",
        # Keys are the raw utf-8 user ids producers use, so the table router hashes a user
        # to the same partition as the ratings and requests keyed by that user.
        key_serializer="raw",
        value_serializer="json",
        autodiscover=False,
        web_enabled=True,
        web_host=settings.web_host,
        web_bind=settings.web_bind,
        web_port=settings.web_port,
        # /table/ would expose whole table rows without paging; streamrec's own views page.
        web_tables_enabled=False,
        canonical_url=f"http://{settings.web_host}:{settings.web_port}",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        producer_max_request_size=DLQ_MAX_MESSAGE_BYTES + 1024 * 1024,
        consumer_max_fetch_size=DLQ_MAX_MESSAGE_BYTES + 1024 * 1024,
        producer_acks=-1,
        # aiokafka keeps one open batch per partition and one request in flight per broker:
        # bigger batches carry a flush of changelog rows in a few requests, not hundreds.
        producer_max_batch_size=1024 * 1024,
        # A scorer's Faust consumer hands on at most this many fetched records at once, so a
        # request never queues behind a whole fetch of another topic (ratings, in the `all`
        # role); the scorer's ingest reads ratings itself, the trainer its own way.
        broker_max_poll_records=settings.max_poll_records if role != "trainer" else None,
        # The trainer holds its events unacked until a snapshot covers them, so a stop that
        # waits for empty streams would wait for ever; scorers drain before a rebalance.
        stream_wait_empty=(role == "scorer"),
        # No standbys: the memory store drops standby rows after every recovery anyway, and
        # with standbys Faust's router can send /users/{id}/ to a standby (empty) worker.
        table_standby_replicas=0,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=max(1.0, settings.session_timeout / 10),
        logging_config=None,
    )
    runtime = Runtime(settings=settings, role=role)
    runtime.attach(app)  # the web views read it from the app
    specs = {spec.name: spec for spec in topic_specs(settings)}
    runtime.topics = {name: raw_topic(app, name, spec) for name, spec in specs.items()}
    add_catalog(app, runtime, specs[settings.items_topic])
    add_series(app, runtime)
    add_experiments(app, runtime)
    if role in ("trainer", "all"):
        add_trainer(app, runtime, runtime.topics[settings.model_updates_topic])
    if role in ("scorer", "all"):
        add_scorer(app, runtime)
    web.register(app)
    return app
