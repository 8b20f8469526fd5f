"""Issue 17, item 6: hostile input end to end, in the production shape.

One trainer and two scorers (``streamrec worker`` subprocesses) on the real broker and the
real S3 store (SeaweedFS). Every hostile kind is sent through Kafka, mixed with valid
traffic, in phases (one module-scoped run; each test function asserts one group of what it
observed, so a failure names what broke):

1. **mixed eras** — a bootstrap-like history stamped 1997-98, then live ratings stamped
   now; the freshness p50 of new users' first live ratings is measured meanwhile;
2. **poison** — a rating with ``ts`` in milliseconds and one with ``ts = 1e300``; a user
   that is a 5,000-digit JSON integer and one that is a lone surrogate (``"\\ud800"``); a
   catalog title with a lone surrogate for the item the valid replies contain; the same
   ``event_id`` sent again; then valid ratings (a popularity burst on one item, new users
   whose freshness is measured right after the poison);
3. **forgeries** — a delta re-encoded with a valid checksum and a huge version on the real
   lineage, and a ``rollback`` announcement of an old snapshot, neither signed with
   ``STREAMREC_MODEL_KEY``; then valid ratings the scorers must follow;
4. **requests** — valid ones (default and allow-listed ``reply_to``), a ``k=1000`` one whose
   reply exceeds ``STREAMREC_MAX_REPLY_BYTES``, and ``reply_to`` naming
   ``__consumer_offsets``, another app's topic and the app's Faust leader topic;
5. **flood** — a few thousand new user ids past ``STREAMREC_MAX_USERS``, then valid ratings.

The fixture never fails on a timeout: it records what it saw (``None`` where a wait ran
out) so that every test reports its own group, also on ``main``'s code, where most fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.kafka import kafka_client_options
from app.settings import Settings
from app.topics import TopicSpec, ensure_topics, faust_app_id
from models.delta import MAGIC as DELTA_MAGIC
from models.delta import ModelDelta
from models.wire import MODEL_UPDATE_KEY, DeadLetter, DeltaError, ModelUpdate, delta_key
from tests.faults.harness import Cluster
from tests.integration.service.conftest import KafkaClient

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]

MAX_USERS = 1000  # the flood of new users passes it
MAX_REPLY_BYTES = 8192  # a k=10 reply is ~600 bytes; a k=1000 one over 400 items ~18 KB
MODEL_KEY = "hostile-e2e-model-key-0123456789abcdef"
WEB_TOKEN = "hostile-e2e-web-token-0123456789"  # WorkerProcess.get sends it
ALLOWED_PREFIX = "hostile-replies-"
FRESH_AFTER_POISON = 2.0  # seconds: a new user's rating in their reply
FRESH_P50_TARGET = 1.0  # seconds: the Done-when target of the mixed-era replay
FORGED_VERSION = 10**12
ERA_START = 875_000_000.0  # 1997-09-23
ERA_END = 893_000_000.0  # 1998-04-19
HISTORY_USERS, ITEMS = 150, 400
HOT = "hi-7"  # rated most in the live burst; also the item whose catalog title is poisoned
FLOOD = 3000

EVENT_ID = re.compile(rb'"event_id"\s*:\s*"([^"]+)"')
REQUEST_ID = re.compile(rb'"request_id"\s*:\s*"([^"]+)"')


def rating(event_id: str, user: str, item: str, ts: float, stars: float = 4.0) -> dict[str, Any]:
    return {"event_id": event_id, "user": user, "item": item, "rating": stars, "ts": ts}


def encoded(r: dict[str, Any]) -> tuple[bytes, bytes]:
    return str(r["user"]).encode(), json.dumps(r).encode()


class Client:
    """Plain aiokafka clients on a loop of their own (a background thread): one idempotent
    producer, and one consumer reading every reply topic from its start. Replies are kept
    by ``request_id`` with the time they were read."""

    def __init__(self, settings: Settings, reply_topics: list[str]) -> None:
        self.settings = settings
        self.reply_topics = reply_topics
        self.replies: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.unparsable: list[bytes] = []
        self.valid_requests: dict[str, float] = {}  # request_id -> sent at
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Client:
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.call(self._stop(), timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        options = kafka_client_options(self.settings)
        self.producer = AIOKafkaProducer(
            **options, acks="all", enable_idempotence=True, linger_ms=2
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            **options, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await self.consumer.start()
        parts = [
            TopicPartition(t, p)
            for t in self.reply_topics
            for p in range(self.settings.topic_partitions)
        ]
        self.consumer.assign(parts)
        await self.consumer.seek_to_beginning(*parts)
        self._reader = asyncio.ensure_future(self._read())

    async def _stop(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
        await self.consumer.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=50)
            now = time.monotonic()
            for messages in batch.values():
                for m in messages:
                    try:
                        body = json.loads(m.value)
                        rid = body["request_id"]
                    except (ValueError, TypeError, KeyError):
                        self.unparsable.append(m.value)
                        continue
                    self.replies.setdefault(rid, []).append((now, body))

    async def _send(
        self, topic: str, messages: list[tuple[bytes | None, bytes | None]], **kw: Any
    ) -> None:
        futures = [await self.producer.send(topic, key=k, value=v, **kw) for k, v in messages]
        await asyncio.gather(*futures)

    def send(self, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
        for start in range(0, len(messages), 2000):
            self.call(self._send(topic, messages[start : start + 2000]))

    def ratings(self, events: list[dict[str, Any]]) -> None:
        self.send(self.settings.ratings_topic, [encoded(e) for e in events])

    def request(
        self, user: str, *, k: int = 10, reply_to: str | None = None, valid: bool = True
    ) -> str:
        """Send one request; a valid one must be answered exactly once."""
        rid = f"rq-{uuid.uuid4().hex[:12]}"
        body: dict[str, Any] = {"request_id": rid, "user": user, "k": k}
        if reply_to is not None:
            body["reply_to"] = reply_to
        self.send(self.settings.requests_topic, [(user.encode(), json.dumps(body).encode())])
        if valid:
            self.valid_requests[rid] = time.monotonic()
        return rid

    def requests(self, users: list[str], k: int = 10) -> dict[str, str]:
        """One valid request per user at once: request_id -> user."""
        bodies = {f"rq-{uuid.uuid4().hex[:12]}": u for u in users}
        self.send(
            self.settings.requests_topic,
            [
                (u.encode(), json.dumps({"request_id": rid, "user": u, "k": k}).encode())
                for rid, u in bodies.items()
            ],
        )
        now = time.monotonic()
        self.valid_requests.update((rid, now) for rid in bodies)
        return bodies

    def first_reply(self, rid: str) -> tuple[float, dict[str, Any]] | None:
        got = self.replies.get(rid)
        return got[0] if got else None

    def freshness(self, users: list[str], item: str, *, timeout: float) -> dict[str, float | None]:
        """Each new user rates ``item`` (stamped now) at once; requests for those still
        unmodelled go every 0.1 s; a user's latency is rating sent -> the first reply of
        ``source == "model"`` read (None if none within ``timeout``)."""
        self.ratings([rating(f"fr-{u}", u, item, time.time()) for u in users])
        sent = time.monotonic()
        asked: dict[str, str] = {}  # request_id -> user
        latency: dict[str, float | None] = dict.fromkeys(users)
        while time.monotonic() - sent < timeout:
            for rid, user in list(asked.items()):
                got = self.replies.get(rid)
                if got and latency[user] is None and got[0][1].get("source") == "model":
                    latency[user] = got[0][0] - sent
            pending = [u for u in users if latency[u] is None]
            if not pending:
                break
            asked.update(self.requests(pending))
            time.sleep(0.1)
        return latency


def soft_wait(predicate: Callable[[], Any], timeout: float, every: float = 0.25) -> Any:
    """Poll ``predicate`` until truthy; its last value (falsy) if ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError):
            last = None
        if last:
            return last
        time.sleep(every)
    return last


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    async def ends() -> dict[int, int]:
        consumer = AIOKafkaConsumer(**kafka_client_options(settings), group_id=None)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            got = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
            return {tp.partition: n for tp, n in got.items()}
        finally:
            await consumer.stop()

    return asyncio.run(ends())


def read_topic(settings: Settings, topic: str) -> list[Any]:
    return asyncio.run(KafkaClient(settings).read_all(topic, wait=10))


def dead_letters(settings: Settings, topic: str) -> list[DeadLetter]:
    return [DeadLetter.parse(m.key, m.value, dict(m.headers)) for m in read_topic(settings, topic)]


def ident(letter: DeadLetter, pattern: re.Pattern[bytes]) -> str | None:
    found = pattern.search(letter.value or b"")
    return found.group(1).decode(errors="replace") if found else None


def looks_like_reply(value: bytes | None) -> bool:
    return value is not None and b'"request_id"' in value and b'"items"' in value


def refusals(info: dict[str, Any]) -> list[dict[str, Any]]:
    """Refusals a worker's ``/model/`` reports: ``refused`` (the trust design: counts by
    kind, the last one and when) or ``last_refused`` (a refused snapshot, as on main), at
    the top level or under ``deltas``. Compared before and after each forgery: any change
    is a refusal reported."""
    found: list[dict[str, Any]] = []
    for where in (info, info.get("deltas") or {}):
        for name in ("refused", "last_refused"):
            value = where.get(name)
            if isinstance(value, dict):
                found.append(value)
            elif isinstance(value, list):
                found += [r for r in value if isinstance(r, dict)]
    return found


def new_refusals(info: dict[str, Any], before: list[str]) -> list[dict[str, Any]]:
    """The refusals ``info`` reports that were not in ``before`` (JSON of earlier ones)."""
    return [r for r in refusals(info) if json.dumps(r, sort_keys=True) not in before]


def refusal_keys(workers: list[Any]) -> list[str]:
    return [json.dumps(r, sort_keys=True) for w in workers for r in refusals(_model(w))]


@dataclass
class Run:
    """What the hostile run observed (None/empty where a wait ran out)."""

    cluster: Cluster
    pids: dict[str, int] = field(default_factory=dict)
    valid_sent: int = 0  # valid distinct ratings sent, flood excluded
    trained_before_flood: int | None = None
    trained_final: int = 0
    flood_trained: int | None = None
    n_users_final: int | None = None
    era_latency: dict[str, float | None] = field(default_factory=dict)
    poison_latency: dict[str, float | None] = field(default_factory=dict)
    popular_top: dict[int, list[str]] = field(default_factory=dict)
    forged_versions_seen: dict[int, set[int]] = field(default_factory=dict)
    forged_infos: dict[int, dict[str, Any]] = field(default_factory=dict)
    forged_chain: dict[int, dict[str, Any]] = field(default_factory=dict)
    rollback_infos: dict[int, dict[str, Any]] = field(default_factory=dict)
    rollback_version: int | None = None
    rollback_pinned: dict[int, bool] = field(default_factory=dict)
    followed_after_forgery: bool = False
    followed_detail: str = ""
    ratings_dlq: list[DeadLetter] = field(default_factory=list)
    requests_dlq: list[DeadLetter] = field(default_factory=list)
    valid_requests: set[str] = field(default_factory=set)
    replies: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unparsable_replies: int = 0
    hot_replies: list[dict[str, Any]] = field(default_factory=list)
    guarded: dict[str, tuple[dict[int, int], dict[int, int], list[bytes]]] = field(
        default_factory=dict
    )
    alive: dict[str, tuple[bool, int | None, int]] = field(default_factory=dict)
    poison_ids: dict[str, str] = field(default_factory=dict)  # event/request id -> kind
    flood_ids: set[str] = field(default_factory=set)
    phase_seconds: dict[str, float] = field(default_factory=dict)


def _model(worker: Any) -> dict[str, Any]:
    return Cluster.info(worker)


def _all_trained(cluster: Cluster, n: int) -> Callable[[], bool]:
    return lambda: cluster.trained() >= n


def _followed(cluster: Cluster) -> bool:
    target = _model(cluster.trainer).get("version")
    return target is not None and all(_model(s).get("version") == target for s in cluster.scorers)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    with Cluster.run(
        tmp,
        scorers=2,
        max_users=MAX_USERS,
        max_reply_bytes=MAX_REPLY_BYTES,
        model_key=MODEL_KEY,
        web_token=WEB_TOKEN,
        reply_topic_prefixes=ALLOWED_PREFIX,
    ) as cluster:
        yield _hostile_run(cluster)


def _hostile_run(cluster: Cluster) -> Run:
    s = cluster.settings
    out = Run(cluster)
    out.pids = {f"{w.role}:{w.web_port}": w.proc.pid for w in cluster.workers()}  # type: ignore[union-attr]
    tag = uuid.uuid4().hex[:6]
    allowed = f"{ALLOWED_PREFIX}{tag}"
    other = f"otherapp-orders-{tag}"
    leader = f"{faust_app_id(s, 'scorer')}-__assignor-__leader"  # the scorers' own Faust app
    asyncio.run(ensure_topics(s, [TopicSpec(allowed, s.topic_partitions), TopicSpec(other, 2)]))
    orders = [(f"o{n}".encode(), json.dumps({"order": n}).encode()) for n in range(3)]
    asyncio.run(KafkaClient(s).produce(other, orders))
    guarded_before = {t: end_offsets(s, t) for t in (other, leader)}
    began = time.monotonic()

    with Client(s, [s.responses_topic, allowed]) as client:
        # --- 1. mixed eras: 1997-98 history, then live ratings stamped now ---------------
        history = [
            rating(
                f"h-{n}",
                f"hu{n % HISTORY_USERS}",
                f"hi-{(n * 7919) % ITEMS}",
                ERA_START + n * (ERA_END - ERA_START) / 3000,
                float(1 + n % 5),
            )
            for n in range(3000)
        ]
        client.ratings(history)
        now = time.time()
        live = [
            rating(
                f"l-{n}", f"hu{(n * 13) % HISTORY_USERS}", f"hi-{(n * 31) % ITEMS}", now + n / 100
            )
            for n in range(300)
        ]
        client.ratings(live)
        out.era_latency = client.freshness(
            [f"era-{tag}-{n}" for n in range(12)], "hi-1", timeout=15
        )
        out.valid_sent = len(history) + len(live) + len(out.era_latency)
        soft_wait(_all_trained(cluster, out.valid_sent), 60)
        out.phase_seconds["mixed eras"] = time.monotonic() - began

        # --- 2. poison, mixed with valid ratings ------------------------------------------
        t = time.time()
        poison = {
            "p-ms": (b"hu1", rating("p-ms", "hu1", "hi-3", t * 1000)),
            "p-1e300": (b"hu2", rating("p-1e300", "hu2", "hi-4", 1e300)),
        }
        raw_poison = [(key, json.dumps(body).encode()) for key, body in poison.values()]
        big = "9" * 5000
        raw_poison.append(
            (
                big.encode(),
                b'{"event_id":"p-bigint","user":'
                + big.encode()
                + b',"item":"hi-5","rating":4.0,"ts":'
                + repr(t).encode()
                + b"}",
            )
        )
        raw_poison.append(
            (
                "\ud800".encode("utf-8", "surrogatepass"),
                b'{"event_id":"p-surrogate","user":"\\ud800","item":"hi-6","rating":4.0,"ts":'
                + repr(t).encode()
                + b"}",
            )
        )
        out.poison_ids.update(
            {
                "p-ms": "ts_in_future",
                "p-1e300": "ts_in_future",
                "p-bigint": "invalid",
                "p-surrogate": "invalid",
            }
        )
        client.send(s.ratings_topic, raw_poison)
        title = b'{"item":"%s","title":"Poisoned \\ud800 title","genres":["Drama"]}' % HOT.encode()
        client.send(s.items_topic, [(HOT.encode(), title)])
        # The same event_ids again (a producer's retry): trained once.
        client.send(s.ratings_topic, [encoded(e) for e in history[:10] + live[:10]])
        # Valid ratings after the poison: a popularity burst on HOT by known users.
        t = time.time()
        after = [
            rating(f"a-{n}", f"hu{n % HISTORY_USERS}", HOT if n < 80 else f"hi-{n % ITEMS}", t)
            for n in range(200)
        ]
        client.ratings(after)
        out.valid_sent += len(after)
        out.poison_latency = client.freshness(
            [f"fresh-{tag}-{n}" for n in range(6)], "hi-2", timeout=15
        )
        out.valid_sent += len(out.poison_latency)
        soft_wait(_all_trained(cluster, out.valid_sent), 45)
        soft_wait(lambda: _followed(cluster), 20)
        for scorer in cluster.scorers:
            with contextlib.suppress(OSError, KeyError, TypeError):
                _, body = scorer.get("/items/popular/?k=3", timeout=3)
                out.popular_top[scorer.web_port] = [i["item"] for i in body["items"]]
        out.phase_seconds["poison"] = time.monotonic() - began

        # --- 3. forgeries: a delta with a huge version, a rollback announcement ------------
        deltas = read_topic(s, s.model_deltas_topic)
        last = None
        for message in reversed(deltas):  # the trainer's newest delta that decodes
            raw = message.value or b""
            with contextlib.suppress(DeltaError):  # its signature envelope, if any, left off
                last = ModelDelta.decode(raw[max(0, raw.find(DELTA_MAGIC)) :])
                break
        if last is not None:
            # The real delta re-encoded with a huge version on top of it and none of its
            # rows (a well-formed delta, checksum and shapes valid; only unsigned).
            k = max(last.user_embeddings.shape[1], last.item_embeddings.shape[1])
            forged = ModelDelta(
                user_embeddings=np.zeros((0, k), dtype="<f4"),
                item_embeddings=np.zeros((0, k), dtype="<f4"),
                lineage=last.lineage,
                origin=last.origin,
                start=last.start,
                base_version=last.version,
                version=FORGED_VERSION,
                n_users=last.n_users,
                n_items=last.n_items,
                trained_events=last.trained_events,
                popularity_ts=last.popularity_ts,
            )
            before = refusal_keys(cluster.scorers)
            client.send(s.model_deltas_topic, [(delta_key(forged), forged.encode())])
            seen: dict[int, set[int]] = {sc.web_port: set() for sc in cluster.scorers}
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                for scorer in cluster.scorers:
                    info = _model(scorer)
                    if "version" in info:
                        seen[scorer.web_port].add(info["version"])
                    if new_refusals(info, before):
                        out.forged_infos[scorer.web_port] = info
                if len(out.forged_infos) == len(cluster.scorers):
                    break
                time.sleep(0.2)
            out.forged_versions_seen = seen
            out.forged_chain = {
                sc.web_port: {
                    name: value
                    for name, value in _model(sc).items()
                    if name in ("version", "deltas", "refused", "last_refused")
                }
                for sc in cluster.scorers
            }
        updates = [ModelUpdate.parse(m.value) for m in read_topic(s, s.model_updates_topic)]
        if updates:
            old = updates[0]
            out.rollback_version = old.version
            fake = ModelUpdate(
                version=old.version,
                uri=old.uri,
                sha256=old.sha256,
                trained_events=old.trained_events,
                metrics={"reason": "rollback"},
            )
            before = refusal_keys(cluster.scorers)
            client.send(s.model_updates_topic, [(MODEL_UPDATE_KEY, fake.encode()[1])])
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                for scorer in cluster.scorers:
                    info = _model(scorer)
                    if (info.get("deltas") or {}).get("pinned"):
                        out.rollback_pinned[scorer.web_port] = True
                    if new_refusals(info, before) and info.get("version") != old.version:
                        out.rollback_infos[scorer.web_port] = info
                if len(out.rollback_infos) == len(cluster.scorers):
                    break
                time.sleep(0.2)
        t = time.time()
        follow = [
            rating(f"f-{n}", f"hu{(n * 7) % HISTORY_USERS}", f"hi-{(n * 11) % ITEMS}", t)
            for n in range(100)
        ]
        client.ratings(follow)
        out.valid_sent += len(follow)
        soft_wait(_all_trained(cluster, out.valid_sent), 30)
        out.followed_after_forgery = bool(soft_wait(lambda: _followed(cluster), 20))
        out.followed_detail = (
            f"trainer v{_model(cluster.trainer).get('version')}, scorers "
            + ", ".join(f"v{_model(sc).get('version')}" for sc in cluster.scorers)
        )
        out.phase_seconds["forgeries"] = time.monotonic() - began

        # --- 4. requests ------------------------------------------------------------------
        known = [f"hu{n}" for n in range(40)]
        client.requests(known)
        client.requests([f"nobody-{tag}-{n}" for n in range(20)])  # popularity: HOT first
        for n in range(5):
            client.request(f"hu{n}", reply_to=allowed)
        hostile = {
            "too_large": client.request("hu3", k=1000, valid=False),
            "reply_to:consumer_offsets": client.request(
                "hu4", reply_to="__consumer_offsets", valid=False
            ),
            "reply_to:other": client.request("hu5", reply_to=other, valid=False),
            "reply_to:leader": client.request("hu6", reply_to=leader, valid=False),
        }
        out.poison_ids.update({rid: kind.split(":")[0] for kind, rid in hostile.items()})
        soft_wait(lambda: all(client.replies.get(r) for r in client.valid_requests), 30)
        out.phase_seconds["requests"] = time.monotonic() - began

        # --- 5. a flood of new users past STREAMREC_MAX_USERS, then valid ratings ---------
        out.trained_before_flood = cluster.trained()
        t = time.time()
        flood = [rating(f"fl-{n}", f"flood-{tag}-{n}", f"hi-{n % ITEMS}", t) for n in range(FLOOD)]
        out.flood_ids = {e["event_id"] for e in flood}
        client.ratings(flood)
        tail = [rating(f"t-{n}", f"hu{n}", f"hi-{n + 50}", t) for n in range(50)]
        client.ratings(tail)
        out.valid_sent += len(tail)

        def flood_settled() -> bool:
            capacity = sum(
                1
                for d in dead_letters(s, s.ratings_dlq_topic)
                if ident(d, EVENT_ID) in out.flood_ids
            )
            return cluster.trained() == out.valid_sent + FLOOD - capacity

        soft_wait(flood_settled, 45, every=1)
        out.phase_seconds["flood"] = time.monotonic() - began
        time.sleep(1)  # late duplicates (replies, dead letters), if any, arrive now
        out.replies = {rid: [b for _, b in got] for rid, got in client.replies.items()}
        out.unparsable_replies = len(client.unparsable)
        out.valid_requests = set(client.valid_requests)

    trainer = _model(cluster.trainer)
    out.trained_final = trainer.get("trained_events", 0)
    out.n_users_final = trainer.get("n_users")
    out.ratings_dlq = dead_letters(s, s.ratings_dlq_topic)
    out.requests_dlq = dead_letters(s, s.requests_dlq_topic)
    capacity = [d for d in out.ratings_dlq if ident(d, EVENT_ID) in out.flood_ids]
    out.flood_trained = FLOOD - len(capacity)
    out.hot_replies = [
        b
        for bodies in out.replies.values()
        for b in bodies
        if any(i.get("item") == HOT for i in b.get("items", []))
    ]
    for topic in (other, leader):
        records = [m.value for m in read_topic(s, topic)]
        out.guarded[topic] = (guarded_before[topic], end_offsets(s, topic), records)
    for worker in cluster.workers():
        name = f"{worker.role}:{worker.web_port}"
        try:
            status, _ = worker.get("/health/", timeout=3)
        except OSError:
            status = 0
        pid = worker.proc.pid if worker.proc is not None else None
        out.alive[name] = (worker.running(), pid, status)
    out.phase_seconds["total"] = time.monotonic() - began
    print(f"hostile run phases (s since start): {out.phase_seconds}")
    return out


def _p50(latency: dict[str, float | None]) -> float | None:
    values = [v for v in latency.values() if v is not None]
    return statistics.median(values) if len(values) == len(latency) else None


# --- the assertions, one group per test ------------------------------------------------
def test_every_process_alive_and_never_restarted(run: Run) -> None:
    for name, (running, pid, status) in run.alive.items():
        assert running, f"{name} exited:\n{_tail(run, name)}"
        assert pid == run.pids[name], f"{name} was restarted ({run.pids[name]} -> {pid})"
        assert status == 200, f"{name} /health/ answered {status}"


def _tail(run: Run, name: str) -> str:
    for worker in run.cluster.workers():
        if f"{worker.role}:{worker.web_port}" == name:
            return worker.log_tail(30)
    return ""


def test_every_valid_rating_trained_exactly_once(run: Run) -> None:
    """Distinct valid ratings (history, live, after the poison, after the forgeries, after
    the flood) plus the flood's accepted users; the re-sent event_ids not again."""
    assert run.flood_trained is not None
    want = run.valid_sent + run.flood_trained
    assert run.trained_final == want, (
        f"the trainer trained {run.trained_final} events; {run.valid_sent} valid ratings and "
        f"{run.flood_trained} accepted flood ratings were sent (duplicates excluded)"
    )


def test_each_poison_dead_lettered_once_with_its_kind(run: Run) -> None:
    ratings_letters = Counter(
        (ident(d, EVENT_ID), d.kind)
        for d in run.ratings_dlq
        if ident(d, EVENT_ID) not in run.flood_ids
    )
    request_letters = Counter((ident(d, REQUEST_ID), d.kind) for d in run.requests_dlq)
    got = {**ratings_letters, **request_letters}
    want = {(pid, kind): 1 for pid, kind in run.poison_ids.items()}
    missing = {k: v for k, v in want.items() if got.get(k) != v}
    extra = {k: v for k, v in got.items() if k not in want}
    assert not missing and not extra, (
        f"dead letters (id, kind) -> count: wrong or missing {missing} "
        f"(got {dict(got)}); not poison: {extra}"
    )
    assert all(d.topic == run.cluster.settings.ratings_topic for d in run.ratings_dlq)
    assert all(d.topic == run.cluster.settings.requests_topic for d in run.requests_dlq)


def test_flood_of_new_users_bounded_by_max_users(run: Run) -> None:
    capacity = [d for d in run.ratings_dlq if ident(d, EVENT_ID) in run.flood_ids]
    kinds = Counter(d.kind for d in capacity)
    assert kinds and set(kinds) == {"capacity"}, f"flood dead letters by kind: {dict(kinds)}"
    names = [ident(d, EVENT_ID) for d in capacity]
    assert len(names) == len(set(names)), "a flood rating was dead-lettered twice"
    assert run.n_users_final == MAX_USERS, (
        f"the trainer holds {run.n_users_final} users; STREAMREC_MAX_USERS={MAX_USERS} "
        f"({len(capacity)} of {FLOOD} flood ratings refused)"
    )


def test_forged_delta_and_announcement_refused_and_scorers_follow(run: Run) -> None:
    assert run.forged_chain, "no real delta on the topic to forge one from"
    assert run.rollback_version is not None, "no announcement on the topic to forge a rollback of"
    served_forged = {p: v for p, v in run.forged_versions_seen.items() if FORGED_VERSION in v}
    assert not served_forged, (
        f"scorers served the forged delta's v{FORGED_VERSION}: {served_forged}"
    )
    assert len(run.forged_infos) == 2, (
        "each scorer's /model/ must report the forged delta refused (a new `refused` or "
        f"`last_refused`); reported by {sorted(run.forged_infos)}; "
        f"/model/ after it: {run.forged_chain}"
    )
    assert not run.rollback_pinned, (
        f"the forged rollback to v{run.rollback_version} pinned scorers {run.rollback_pinned}"
    )
    assert len(run.rollback_infos) == 2, (
        f"each scorer's /model/ must report the forged rollback to v{run.rollback_version} "
        f"refused; reported by {sorted(run.rollback_infos)}"
    )
    assert run.followed_after_forgery, f"scorers stopped following: {run.followed_detail}"


def test_fresh_within_two_seconds_after_the_poison(run: Run) -> None:
    late = {u: v for u, v in run.poison_latency.items() if v is None or v > FRESH_AFTER_POISON}
    print(f"freshness after the poison (s): {run.poison_latency}")
    assert not late, f"new users' ratings not in their replies within {FRESH_AFTER_POISON}s: {late}"


def test_mixed_era_freshness_p50(run: Run) -> None:
    """New users' first live ratings, sent right behind a 1997-98 history and live ratings
    stamped now: rating sent -> a reply of ``source == "model"``. Printed against the
    Done-when target (p50 <= 1 s); asserted only within the 2 s freshness bound, since one
    sample of a dozen users on a loaded 2-core machine swings (0.5-1.8 s seen on main)."""
    p50 = _p50(run.era_latency)
    verdict = "meets" if p50 is not None and p50 <= FRESH_P50_TARGET else "misses"
    print(
        f"mixed-era replay freshness p50: {p50} s ({verdict} the {FRESH_P50_TARGET} s target); "
        f"all: {run.era_latency}"
    )
    assert p50 is not None, f"some new users never modelled: {run.era_latency}"
    assert p50 <= FRESH_AFTER_POISON


def test_popularity_follows_live_ratings(run: Run) -> None:
    assert len(run.popular_top) == 2, f"/items/popular/ answered on {sorted(run.popular_top)}"
    wrong = {port: top for port, top in run.popular_top.items() if not top or top[0] != HOT}
    assert not wrong, f"{HOT} (rated most live) is not the most popular: {wrong}"


def test_poisoned_catalog_title_does_not_break_replies(run: Run) -> None:
    assert run.hot_replies, f"no valid reply contained {HOT} (the item with the bad title)"
    for reply in run.hot_replies:
        entry = next(i for i in reply["items"] if i.get("item") == HOT)
        title = entry.get("title")
        assert title is None or (isinstance(title, str) and title.encode("utf-8")), entry
    assert run.unparsable_replies == 0


def test_every_valid_request_answered_exactly_once(run: Run) -> None:
    counts = {rid: len(run.replies.get(rid, [])) for rid in run.valid_requests}
    unanswered = sorted(r for r, n in counts.items() if n == 0)
    twice = sorted(r for r, n in counts.items() if n > 1)
    assert not unanswered and not twice, (
        f"{len(unanswered)} of {len(counts)} valid requests unanswered (e.g. {unanswered[:3]}), "
        f"{len(twice)} answered more than once"
    )
    answered_hostile = [r for r in run.replies if r in run.poison_ids]
    assert not answered_hostile, f"hostile requests answered: {answered_hostile}"


def test_nothing_written_outside_the_reply_allow_list(run: Run) -> None:
    """Another app's topic and the scorers' Faust leader topic: no reply written (end
    offsets unchanged, no record of streamrec's reply shape). ``__consumer_offsets`` is
    covered by its request's ``reply_to`` dead letter."""
    wrong = []
    for topic, (before, after, records) in run.guarded.items():
        assert before, f"{topic} does not exist: the reply_to check would prove nothing"
        replies = [v for v in records if looks_like_reply(v)]
        if replies or after != before:
            wrong.append(f"{topic}: {len(replies)} replies, end offsets {before} -> {after}")
    assert not wrong, "; ".join(wrong)
