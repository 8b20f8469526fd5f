"""Fault 1: the trainer is SIGKILLed at random (seeded) moments while ratings stream in, and
restarted each time. Per user and per item, the trained counts equal the input; the
scorers answer every request throughout."""

from __future__ import annotations

import random
import time

import pytest

from tests.faults.harness import Cluster, Traffic, assert_counts_exact, ratings, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]


def crash_the_trainer_repeatedly(
    cluster: Cluster, *, n: int, kills: int, rate: float, seed: int, prefix: str
) -> None:
    rng = random.Random(seed)
    events = ratings(n, users=max(50, n // 40), items=max(30, n // 80), seed=seed, prefix=prefix)
    requests = [
        {"request_id": f"{prefix}-q{j}", "user": f"{prefix}u{j % 50}", "k": 5}
        for j in range(int(n / rate * 5))  # ~5 requests a second while ratings flow
    ]
    reply_topic = cluster.reply_topic(prefix)
    for r in requests:
        r["reply_to"] = reply_topic
    before = cluster.trained()
    moments: list[float] = []
    with Traffic(
        cluster.settings,
        events=events,
        rating_rate=rate,
        requests=requests,
        request_rate=5,
        reply_topic=reply_topic,
    ) as traffic:
        for _ in range(kills):
            cluster.trainer.wait_ready(model=False)
            pause = rng.uniform(0.2, 4.0)
            time.sleep(pause)
            moments.append(round(pause, 2))
            cluster.trainer.kill()
            cluster.start_trainer()
        cluster.trainer.wait_ready(model=False)
        wait_for(lambda: traffic.done_sending, timeout=n / rate + 120, what="all traffic sent")
        traffic.check()
        model = cluster.wait_snapshot_covers(before + n, timeout=180)
        traffic.wait_answered(60)
        assert set(traffic.answered()) == {r["request_id"] for r in requests}
    # Once a scorer serves a model it never stops, whatever happens to the trainer.
    order = sorted(traffic.replies, key=lambda r: int(r["request_id"].rpartition("-q")[2]))
    sources = [r["source"] for r in order]
    first = next(i for i, s in enumerate(sources) if s != "none")
    assert "none" not in sources[first:], sources
    assert_counts_exact(model, events, prefix=prefix, before=before)
    print(f"killed the trainer {kills} times after {moments} s; {len(requests)} requests answered")


def test_random_trainer_kills_lose_and_duplicate_nothing(cluster: Cluster) -> None:
    crash_the_trainer_repeatedly(cluster, n=8_000, kills=3, rate=800, seed=1, prefix="tk")


@pytest.mark.long
@pytest.mark.timeout(1200)
def test_random_trainer_kills_over_100k_ratings(cluster: Cluster) -> None:
    crash_the_trainer_repeatedly(cluster, n=100_000, kills=12, rate=1000, seed=2, prefix="tl")
