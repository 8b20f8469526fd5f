"""A deployment of only a trainer: every valid rating trained exactly once and every invalid
one dead-lettered exactly once, across SIGKILLs (real Kafka, real S3, worker subprocesses).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from app.topics import ensure_topics
from devtools.workers import WorkerProcess, free_port, isolated_s3_env, settings_for
from models.wire import DLQ_KIND, DLQ_OFFSET, DLQ_PARTITION, DLQ_TOPIC
from tests.integration.service.conftest import KafkaClient, newest_manifest, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]


@dataclass
class TrainerOnly:
    settings: Settings
    env: dict[str, str]
    tmp: Path
    worker: WorkerProcess | None = None
    starts: int = 0

    def start(self) -> WorkerProcess:
        self.starts += 1
        port = self.worker.web_port if self.worker else free_port()
        self.worker = WorkerProcess(
            "trainer", port, self.tmp / f"trainer-{self.starts}.log", self.env
        ).start()
        self.worker.wait_ready(model=False)
        return self.worker

    def trained(self) -> int:
        assert self.worker is not None
        status, body = self.worker.get("/model/")
        return body.get("trained_events", 0) if status == 200 else 0

    def topic(self, name: str) -> str:
        return getattr(self.settings, f"{name}_topic")

    def duplicates_dropped(self) -> float:
        """Ratings this worker's model dropped as already seen (its dedupe memory's hits)."""
        assert self.worker is not None
        status, text = self.worker.get("/metrics")
        assert status == 200, text
        return metric(text, 'streamrec_trainer_skipped_total{reason="duplicate"}')


def metric(text: str, name: str) -> float:
    """The value of one sample in a Prometheus text page (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def trainer_only(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TrainerOnly]:
    overrides = getattr(request, "param", {})
    env = isolated_s3_env(
        "e2e-trainer",
        Settings(),
        tmp_path / "faust",
        topic_partitions=4,
        no_components=16,
        epochs_per_batch=1,
        session_timeout=8,
        # The model remembers one event id: its dedupe cannot hide a replayed rating, so
        # every replay after a SIGKILL would show as a rating trained twice.
        dedupe_memory=1,
        **overrides,
    )
    deployment = TrainerOnly(settings_for(env), env, tmp_path)
    asyncio.run(ensure_topics(deployment.settings))
    try:
        yield deployment
    finally:
        if deployment.worker is not None:
            deployment.worker.stop()


def rating(n: int, rng: random.Random) -> tuple[bytes, bytes]:
    user = f"k{rng.randrange(5000)}"
    body = {
        "event_id": f"ev-{n}",
        "user": user,
        "item": f"i{rng.randrange(2000)}",
        "rating": float(rng.choice([1, 3, 4, 5])),
        "ts": 1000.0 + n,
    }
    return user.encode(), json.dumps(body).encode()


BAD = [
    (b"k1", b"{not json"),
    (
        b"k1",
        json.dumps({"event_id": "x", "user": "k1", "item": "i", "rating": 9, "ts": 1}).encode(),
    ),
    (
        b"k2",
        json.dumps({"event_id": "y", "user": "k1", "item": "i", "rating": 1, "ts": 1}).encode(),
    ),
    (b"k3", None),
]


def dead_letters(client: KafkaClient, deployment: TrainerOnly, until: int) -> list[Any]:
    return asyncio.run(client.read_all(deployment.topic("ratings_dlq"), until=until, wait=60))


def assert_each_once(letters: list[Any], deployment: TrainerOnly) -> set[tuple[int, int]]:
    """Every dead letter names a distinct ratings message, on the DLQ partition of its own."""
    sources = [
        (int(dict(m.headers)[DLQ_PARTITION]), int(dict(m.headers)[DLQ_OFFSET])) for m in letters
    ]
    assert len(sources) == len(set(sources)), "a rating was dead-lettered twice"
    for m in letters:
        headers = dict(m.headers)
        assert headers[DLQ_TOPIC].decode() == deployment.topic("ratings")
        assert headers[DLQ_KIND] and m.partition == int(headers[DLQ_PARTITION])
    return set(sources)


@pytest.mark.parametrize(
    "trainer_only",
    [{"snapshot_every_seconds": 600, "snapshot_every_batches": 100_000}],
    indirect=True,
)
def test_sigkill_between_dead_letters_and_a_snapshot_sends_each_once(
    trainer_only: TrainerOnly,
) -> None:
    client = KafkaClient(trainer_only.settings)
    rng = random.Random(3)
    good = [rating(n, rng) for n in range(200)]
    messages = good[:100] + BAD + good[100:]
    trainer_only.start()
    asyncio.run(client.produce_bulk(trainer_only.topic("ratings"), messages))
    wait_for(lambda: trainer_only.trained() == 200, timeout=60, what="200 ratings trained")
    first = assert_each_once(dead_letters(client, trainer_only, len(BAD)), trainer_only)
    assert len(first) == len(BAD)
    assert asyncio.run(newest_manifest(trainer_only.settings)) is None  # nothing covers them

    trainer_only.worker.kill()  # SIGKILL: no snapshot; the restart reads every rating again
    more = [rating(n, rng) for n in range(200, 250)]
    asyncio.run(client.produce_bulk(trainer_only.topic("ratings"), [*BAD[:1], *more]))
    trainer_only.start()
    wait_for(lambda: trainer_only.trained() == 250, timeout=90, what="the restart to retrain")
    letters = dead_letters(client, trainer_only, len(BAD) + 1)
    assert len(assert_each_once(letters, trainer_only)) == len(BAD) + 1


@pytest.mark.long  # 21-30 s; the default suite keeps test_trainer_crashes' random kills
@pytest.mark.parametrize(
    "trainer_only",
    [{"snapshot_every_seconds": 2, "snapshot_every_batches": 5}],
    indirect=True,
)
def test_sigkill_mid_stream_of_200k_ratings_loses_nothing_and_repeats_nothing(
    trainer_only: TrainerOnly,
) -> None:
    client = KafkaClient(trainer_only.settings)
    rng = random.Random(11)
    total = 200_000
    messages = [rating(n, rng) for n in range(total)]
    bad_at = sorted(rng.sample(range(total), 40))
    for i in reversed(bad_at):
        messages.insert(i, BAD[i % len(BAD)])
    # A producer retry far behind its original (never in one batch with it, its event id
    # long out of the one-id dedupe memory): the one rating trained twice.
    original = next(i for i in range(total // 10, total) if messages[i] not in BAD)
    messages.insert(9 * total // 10, messages[original])
    trainer_only.start()
    asyncio.run(client.produce_bulk(trainer_only.topic("ratings"), messages[: len(messages) // 2]))
    wait_for(lambda: trainer_only.trained() >= 30_000, timeout=120, what="training under way")
    # Killed after a snapshot, so the restart resumes from its offsets (replaying what was
    # trained after it); killed before any, it would only retrain from nothing.
    wait_for(
        lambda: asyncio.run(newest_manifest(trainer_only.settings)),
        timeout=60,
        what="a snapshot before the kill",
    )
    assert trainer_only.duplicates_dropped() == 0
    trainer_only.worker.kill()  # SIGKILL: no final snapshot, no commit
    asyncio.run(client.produce_bulk(trainer_only.topic("ratings"), messages[len(messages) // 2 :]))
    trainer_only.start()
    wait_for(lambda: trainer_only.trained() > total, timeout=300, what="the restart to catch up")

    def final_snapshot() -> dict[str, Any] | None:
        manifest = asyncio.run(newest_manifest(trainer_only.settings))
        covered = manifest is not None and sum(manifest["offsets"].values()) == len(messages)
        return manifest if covered else None

    manifest = wait_for(final_snapshot, timeout=60, what="a snapshot covering every message")
    # Each valid rating once (plus the retry): no replay was trained, and none was dropped
    # by the model's dedupe (which remembers one id: replays would have been trained again).
    assert manifest["trained_events"] == total + 1
    assert trainer_only.trained() == total + 1
    assert trainer_only.duplicates_dropped() == 0
    letters = dead_letters(client, trainer_only, len(bad_at))
    assert len(assert_each_once(letters, trainer_only)) == len(bad_at)
