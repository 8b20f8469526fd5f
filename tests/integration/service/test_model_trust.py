"""End to end: scorers trust only model messages the trainer signed (issue 17, part 3).

A trainer and two scorers (real subprocesses, real broker and SeaweedFS) with a model key
of their own. Anyone who can write to Kafka then writes, with a plain producer, straight to
the topics: a delta on the live lineage (read off ``/model/``) from the served version to
a huge one, unsigned and signed with another key, and a rollback announcement to the
first snapshot, unsigned and signed with another key. The scorers refuse all of them
(``streamrec_model_refused_total``, ``/model/``'s ``refused``), are not pinned, and keep
applying the trainer's real deltas: their version keeps advancing with the trainer's. A
scorer started after the forgery (the forged rollback is the newest announcement on the
compacted topic) is not fooled either. The operator's own rollback (``streamrec models
rollback``, holding the key) is signed, and followed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from app.stores import store_from_settings
from devtools.workers import WorkerProcess, free_port
from models.delta import ModelDelta
from models.signing import Keyring
from models.wire import ModelUpdate, seal_delta
from tests.integration.service.conftest import Deployment, KafkaClient, new_deployment, wait_for
from tests.integration.service.test_deltas import (
    background,
    caught_up,
    info,
    metric,
    trainer_version,
)

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]

KEY = f"integration-model-key-{uuid.uuid4().hex}"
ATTACKER = Keyring(b"the attacker's own key, not the deployment's")
HUGE = 10**12


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("trust")
    yield from new_deployment(
        "trust",
        tmp,
        no_components=16,
        session_timeout=8,
        snapshot_every_batches=3,
        snapshot_every_seconds=2,
        model_key=KEY,
    )


async def snapshots(deployment: Deployment) -> list[int]:
    async with store_from_settings(deployment.settings) as store:
        return sorted(i.version for i in await store.list() if i.complete)


def refused(worker: WorkerProcess, message: str) -> float:
    return metric(worker, "streamrec_model_refused_total", f'message="{message}"')


def quiet(deployment: Deployment) -> dict[str, Any]:
    """Wait until the scorers serve the trainer's version; the trainer's /model/ then."""
    wait_for(lambda: caught_up(deployment), timeout=60, what="scorers to follow the deltas")
    return info(deployment.trainer)


def test_forged_deltas_and_rollbacks_are_refused_and_real_deltas_go_on(
    deployment: Deployment,
) -> None:
    background(deployment, 40, 1000.0)
    wait_for(lambda: asyncio.run(snapshots(deployment)), timeout=60, what="a first snapshot")
    first = asyncio.run(snapshots(deployment))[0]
    background(deployment, 40, 2000.0)
    wait_for(lambda: trainer_version(deployment) > first, timeout=30, what="a later version")
    trainer = quiet(deployment)
    lineage, served = trainer["delta"]["lineage"], trainer["version"]
    assert first < served
    for scorer in deployment.scorers:
        assert info(scorer)["deltas"]["lineage"] == lineage  # what a forger reads off /model/
    k = deployment.settings.no_components
    forged = ModelDelta(
        lineage=lineage,
        origin=-1,
        start=0,
        base_version=served,
        version=HUGE,
        n_users=trainer["n_users"],
        n_items=trainer["n_items"],
        trained_events=trainer["trained_events"],
        user_embeddings=np.zeros((0, k), np.float32),  # no rows, the right width: main
        item_embeddings=np.zeros((0, k), np.float32),  # applied it
    ).encode()
    rollback = ModelUpdate(first, "forged", "0" * 64, 0, metrics={"reason": "rollback"})
    kafka = KafkaClient(deployment.settings)
    asyncio.run(
        kafka.produce(
            deployment.settings.model_deltas_topic,
            [(lineage.encode(), forged), (lineage.encode(), seal_delta(forged, ATTACKER))],
        )
    )
    asyncio.run(
        kafka.produce(
            deployment.settings.model_updates_topic,
            [(b"model", rollback.encode()[1]), (b"model", rollback.signed(ATTACKER).encode()[1])],
        )
    )

    def acted(scorer: WorkerProcess) -> bool:
        """Refused both, or (main's code) served the forgery: a huge version, or pinned."""
        body = info(scorer)
        if body.get("version") != served or body.get("deltas", {}).get("pinned"):
            return True
        return refused(scorer, "delta") >= 2 and refused(scorer, "update") >= 2

    wait_for(
        lambda: all(acted(s) for s in deployment.scorers),
        timeout=30,
        what="both scorers to refuse the forged delta and rollback",
    )
    for scorer in deployment.scorers:
        body = info(scorer)
        assert body["version"] == served and not body["deltas"]["pinned"], body
        counts = body["refused"]["counts"]
        assert counts["delta/unsigned"] >= 1 and counts["delta/unknown_key"] >= 1, counts
        assert counts["update/unsigned"] >= 1 and counts["update/unknown_key"] >= 1, counts
        assert body["deltas"]["resyncs"] == 0, body["deltas"]
        assert metric(scorer, "streamrec_model_refused_total", 'reason="unsigned"') >= 2
        assert "Refusing an untrusted model delta (unsigned)" in scorer.log_path.read_text()

    # A scorer started now reads the forged rollback as the newest announcement: refused.
    late = WorkerProcess(
        "scorer", free_port(), deployment.tmp / "scorer-late.log", deployment.env
    ).start()
    try:
        late.wait_ready(model=True)
        wait_for(lambda: caught_up(deployment, [late]), timeout=60, what="the late scorer")
        assert not info(late)["deltas"]["pinned"]
        updates = asyncio.run(kafka.read_all(deployment.settings.model_updates_topic))
        if updates[-1].value == rollback.signed(ATTACKER).encode()[1]:  # no snapshot since
            assert refused(late, "update") >= 1
        # The trainer's real deltas go on reaching every scorer: versions keep advancing.
        for round_ in range(3):
            before = trainer_version(deployment)
            background(deployment, 10, 3000.0 + 1000 * round_)
            wait_for(
                lambda b=before: trainer_version(deployment) > b,
                timeout=30,
                what="the trainer to train",
            )
            scorers = [*deployment.scorers, late]
            wait_for(
                lambda s=scorers: caught_up(deployment, s),
                timeout=60,
                what="every scorer to apply the real deltas",
            )
        for scorer in scorers:
            body = info(scorer)
            assert served < body["version"] < HUGE and not body["deltas"]["pinned"], body
            assert body["deltas"]["lineage"] == lineage
    finally:
        late.stop()

    # The operator's rollback (the CLI, holding the key) is signed: the scorers follow it.
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "models", "rollback", "--to", str(first)],
        env={**os.environ, **deployment.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0 and "announced" in run.stdout, run.stderr
    wait_for(
        lambda: all(
            info(s).get("version") == first and info(s)["deltas"]["pinned"]
            for s in deployment.scorers
        ),
        timeout=30,
        what=f"scorers to serve the operator's rollback to v{first}",
    )
