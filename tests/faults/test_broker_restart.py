"""Fault 3: the Kafka broker stops and restarts while ratings and requests flow. Producers
with acks=all and idempotence lose nothing, the workers reconnect by themselves (same
processes, no manual action), and the trainer's counts stay exact per user and per item."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import Settings
from devtools import KafkaBroker
from devtools.settings import DevSettings
from tests.faults.harness import (
    Cluster,
    Traffic,
    assert_counts_exact,
    free_port_block,
    ratings,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[Settings, KafkaBroker]]:
    """A broker of this test's own (the shared one must not go away under other tests)."""
    port = free_port_block(2)
    settings = DevSettings(
        dev_dir=tmp_path / "dev",
        kafka_port=port,
        kafka_controller_port=port + 1,
        kafka_bootstrap=f"127.0.0.1:{port}",
    )
    broker = KafkaBroker(settings)
    broker.start()
    try:
        yield settings, broker
    finally:
        broker.stop()


def broker_restart(tmp: Path, base: Settings, broker: KafkaBroker, *, down: float) -> None:
    with Cluster.run(tmp, scorers=1, base=base) as cluster:
        seconds = down + 12
        n = int(300 * seconds)
        events = ratings(n, users=200, items=100, seed=13, prefix="br")
        reply_topic = cluster.reply_topic("broker")
        requests = [
            {"request_id": f"br-{j}", "user": f"bru{j % 200}", "k": 3, "reply_to": reply_topic}
            for j in range(int(5 * seconds))
        ]
        pids = [w.proc.pid for w in cluster.workers()]
        with Traffic(
            cluster.settings,
            events=events,
            rating_rate=300,
            requests=requests,
            request_rate=5,
            reply_topic=reply_topic,
        ) as traffic:
            time.sleep(3)
            broker.stop()
            stopped = time.monotonic()
            time.sleep(down)
            broker.start()
            restarted_in = time.monotonic() - stopped
            wait_for(lambda: traffic.done_sending, timeout=180, what="all traffic sent")
            traffic.check()
            model = cluster.wait_snapshot_covers(n, timeout=180)
            traffic.wait_answered(120)
        assert [w.proc.pid for w in cluster.workers()] == pids, "no worker was restarted"
        assert all(w.running() for w in cluster.workers())
        assert_counts_exact(model, events, prefix="br")
        for worker in cluster.workers():  # every reader works again (10 s counts as working)
            deadline = time.monotonic() + 30
            while (health := worker.get("/health/"))[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert health[0] == 200, f"{worker.role} still unhealthy: {health[1]}"
        print(
            f"broker down {restarted_in:.1f}s; {traffic.send_failures} sends failed and were "
            f"sent again ({traffic.producer_restarts} producer restarts); "
            f"{len(requests)} requests answered, "
            f"{sum(traffic.answered().values()) - len(requests)} twice"
        )


def test_broker_restart_loses_nothing(
    tmp_path: Path, own_broker: tuple[Settings, KafkaBroker]
) -> None:
    broker_restart(tmp_path, *own_broker, down=3)


@pytest.mark.long
def test_broker_down_for_30_seconds(
    tmp_path: Path, own_broker: tuple[Settings, KafkaBroker]
) -> None:
    broker_restart(tmp_path, *own_broker, down=30)
