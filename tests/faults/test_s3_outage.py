"""Fault 4: the S3 server stops for a while (10 s by default, 30 s in the long variant) while
ratings and requests flow. Scorers keep serving, the trainer keeps training, failed
snapshots are retried, nothing is announced that was not written and verified, and once S3
is back the next snapshot covers every rating (exact per user and per item)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from devtools import SeaweedServer
from devtools.settings import DevSettings
from tests.faults.harness import (
    Cluster,
    Traffic,
    assert_counts_exact,
    free_port_block,
    ratings,
    wait_for,
)
from tests.integration.service.conftest import KafkaClient

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[tuple[Settings, SeaweedServer]]:
    """An S3 server of this test's own (the shared one must not go away under others)."""
    port = free_port_block(5, offset=10000)
    settings = DevSettings(
        dev_dir=tmp_path / "dev", s3_port=port, s3_endpoint=f"http://127.0.0.1:{port}"
    )
    server = SeaweedServer(settings)
    server.start()
    try:
        yield settings, server
    finally:
        server.stop()


#: botocore gives up after this many attempts in these runs, so that the trainer's own retry
#: of a failed snapshot is what spans the outage (with the default 5, botocore's backoff alone
#: can outlast 10 s and the trainer's retry would never run).
S3_ATTEMPTS = 2


def snapshot_failures(cluster: Cluster) -> int:
    assert cluster.trainer is not None
    return cluster.trainer.log_path.read_text().count("Snapshot failed (")


def s3_outage(tmp: Path, base: Settings, server: SeaweedServer, *, outage: float) -> None:
    with Cluster.run(tmp, scorers=1, base=base, s3_max_attempts=S3_ATTEMPTS) as cluster:
        n = int(300 * (outage + 10))
        events = ratings(n, users=200, items=100, seed=11, prefix="so")
        reply_topic = cluster.reply_topic("s3")
        requests = [
            {"request_id": f"so-{j}", "user": f"sou{j % 200}", "k": 3, "reply_to": reply_topic}
            for j in range(int(20 * (outage + 10)))
        ]
        with Traffic(
            cluster.settings,
            events=events,
            rating_rate=300,
            requests=requests,
            request_rate=20,
            reply_topic=reply_topic,
        ) as traffic:
            wait_for(lambda: cluster.info(cluster.scorers[0]).get("version"), timeout=60,
                     what="the scorer to serve a first snapshot")  # fmt: skip
            failed_before = snapshot_failures(cluster)
            server.stop()
            down_at = time.time()
            trained_at_stop = cluster.trained()
            time.sleep(outage)
            trained_in_outage = cluster.trained() - trained_at_stop
            served = cluster.info(cluster.scorers[0]).get("version")
            # Still down: what was asked meanwhile (up to 3 s ago) has been answered.
            answered_in_outage = set(traffic.answered())
            asked_in_outage = {
                r for r, at in traffic.sent_at.items() if down_at <= at < time.time() - 3
            }
            failed_in_outage = snapshot_failures(cluster) - failed_before
            restart_at = time.time()  # it may serve before start() has seen it ready
            server.start()
            up_at = time.time()
            wait_for(lambda: traffic.done_sending, timeout=120, what="all traffic sent")
            traffic.check()
            model = cluster.wait_snapshot_covers(n, timeout=120)
            traffic.wait_answered(60)
        assert trained_in_outage > 0, "the trainer must keep training while S3 is down"
        assert served, "the scorer must keep its model while S3 is down"
        assert len(asked_in_outage) >= 5 * (outage - 3), "requests must flow during the outage"
        unanswered = asked_in_outage - answered_in_outage
        assert not unanswered, f"{len(unanswered)} requests sent while S3 was down not answered"
        # The first attempt failed and so did at least one retry, both while S3 was down.
        assert failed_in_outage >= 2, f"snapshot writes retried in the outage: {failed_in_outage}"
        assert_counts_exact(model, events, prefix="so")
        # Nothing announced that is not in the store, complete and verified; nothing while
        # the store was down (1 s of grace for a write that completed as it stopped).
        messages = asyncio.run(
            KafkaClient(cluster.settings).read_all(cluster.settings.model_updates_topic)
        )
        updates = [json.loads(m.value) for m in messages]
        during = [
            (u["version"], round(m.timestamp / 1000 - down_at, 2))
            for m, u in zip(messages, updates, strict=True)
            if down_at + 1 < m.timestamp / 1000 < restart_at
        ]
        assert not during, f"announced (version, s after the stop) while S3 was down: {during}"
        after = [m for m in messages if m.timestamp / 1000 > restart_at]
        assert after, "snapshots resume once S3 is back"

        async def verify() -> None:
            async with cluster.store() as store:
                kept = {info.version for info in await store.list() if info.complete}
                assert updates[-1]["version"] in kept, "the newest announcement is stored"
                for update in updates:
                    if update["version"] not in kept:
                        # Retention (STREAMREC_CHECKPOINT_KEEP_BASES) prunes old bases and
                        # their chains: an announced version may be gone, but only one older
                        # than everything kept.
                        assert update["version"] < min(kept), (update["version"], sorted(kept))
                        continue
                    _, manifest = await store.get(update["version"])
                    assert manifest["sha256"] == update["sha256"]

        asyncio.run(verify())
        print(
            f"S3 down {restart_at - down_at:.1f}s (ready again {up_at - down_at:.1f}s after "
            f"the stop): trained {trained_in_outage} events meanwhile, "
            f"{len(asked_in_outage)} requests asked and answered meanwhile, {failed_in_outage} "
            f"snapshot attempts failed in the outage (botocore attempts {S3_ATTEMPTS}, then the "
            f"trainer retried), {len(updates)} announcements verified"
        )


def test_s3_outage_loses_nothing(tmp_path: Path, own_s3: tuple[Settings, SeaweedServer]) -> None:
    s3_outage(tmp_path, *own_s3, outage=10)


@pytest.mark.long
def test_s3_outage_of_30_seconds(tmp_path: Path, own_s3: tuple[Settings, SeaweedServer]) -> None:
    s3_outage(tmp_path, *own_s3, outage=30)
