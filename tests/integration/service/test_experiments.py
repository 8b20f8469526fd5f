"""End to end: experiments on live traffic (issue 20) on the real broker and S3.

A trainer and two scorers with a model key of their own. ``streamrec experiment start``
starts an ``ab`` experiment whose candidate is a stored snapshot version (frozen): replies
carry the experiment and the arm models/experiment.py assigns, candidate replies come from
that version, and the trainer's hit counter turns impressions plus the users' ratings into
per-variant tallies; control users rate what they were shown, candidate users do not, and
the guardrail stops the candidate by itself, saying why (``experiment status``). Then an
``interleave`` experiment with a serving-parameter candidate (another blend weight): every
reply is interleaved, each item with its team; it survives a restart of every worker; a
forged record changes nothing; ``experiment stop`` stops it. A record whose candidate no
scorer can load is answered from control, and the reply says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agents.experiment_registry import encode_signed
from app.commands.service import publish_ratings, request_recommendation
from app.settings import Settings
from app.stores import store_from_settings
from models.events import Rating
from models.experiment import Experiment, Variant, assign
from models.signing import Keyring
from models.wire import Reply
from tests.integration.service.conftest import (
    Deployment,
    KafkaClient,
    create_bucket,
    new_deployment,
    wait_for,
)
from tests.integration.service.test_deltas import background

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]

KEY = f"integration-model-key-{uuid.uuid4().hex}"
ATTACKER = Keyring(b"the attacker's own key, not the deployment's")
USERS = [f"x{n}" for n in range(60)]


LINEAGE_RUN = f"lin-{uuid.uuid4().hex[:10]}"
LINEAGE = {
    "store": f"s3://{LINEAGE_RUN}/b",
    "updates_topic": f"{LINEAGE_RUN}-model-updates",
    "deltas_topic": f"{LINEAGE_RUN}-model-deltas",
}
"""The candidate lineage "lineage-b": a second trainer's store and topics, which the
scorers follow (STREAMREC_EXPERIMENT_LINEAGES)."""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("experiments")
    asyncio.run(create_bucket(Settings(), LINEAGE_RUN))
    yield from new_deployment(
        "exp",
        tmp,
        experiment_lineages=json.dumps({"lineage-b": LINEAGE}),
        no_components=16,
        session_timeout=8,
        snapshot_every_batches=3,
        snapshot_every_seconds=2,
        model_key=KEY,
        experiment_publish_seconds=1,
        experiment_min_impressions=30,
        experiment_tau=0.2,
    )


def cli(deployment: Deployment, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "experiment", *argv],
        env={**os.environ, **deployment.env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def status(deployment: Deployment, name: str) -> dict[str, Any]:
    done = cli(deployment, "status", name, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["experiments"][0]


def ask(deployment: Deployment, users: list[str], k: int = 5) -> dict[str, Reply]:
    async def all_of() -> list[Reply]:
        return list(
            await asyncio.gather(
                *(request_recommendation(deployment.settings, u, k, wait=30) for u in users)
            )
        )

    return {r.user: r for r in asyncio.run(all_of())}


async def snapshots(deployment: Deployment) -> list[int]:
    async with store_from_settings(deployment.settings) as store:
        return sorted(i.version for i in await store.list() if i.complete)


def served(worker: Any, name: str) -> dict[str, Any]:
    _, body = worker.get(f"/experiments/?name={name}")
    return body["experiments"][0] if isinstance(body, dict) and body.get("experiments") else {}


def candidate_ready(deployment: Deployment, name: str, timeout: float) -> None:
    wait_for(
        lambda: all(
            served(s, name).get("serving", {}).get("candidate") == "ready"
            for s in deployment.scorers
        ),
        timeout=timeout,
        what=f"both scorers to serve {name}'s candidate",
    )


def test_an_ab_experiment_on_a_stored_version_is_served_counted_and_stopped_by_the_guardrail(
    deployment: Deployment,
) -> None:
    background(deployment, 40, 1000.0)
    items = [f"m{j}" for j in range(30)]
    asyncio.run(
        publish_ratings(
            deployment.settings,
            [Rating(uuid.uuid4().hex, u, items[n % 30], 5.0, 1000.0) for n, u in enumerate(USERS)],
        )
    )
    wait_for(lambda: asyncio.run(snapshots(deployment)), timeout=60, what="a first snapshot")
    frozen = asyncio.run(snapshots(deployment))[0]

    bad = cli(deployment, "start", "frozen", "--candidate", "999999")
    assert bad.returncode == 1 and bad.stderr.startswith("Error: "), bad.stderr
    started = cli(deployment, "start", "frozen", "--candidate", str(frozen), "--share", "1")
    assert started.returncode == 0, started.stderr
    again = cli(deployment, "start", "frozen", "--candidate", str(frozen))
    assert again.returncode == 1 and "already running" in again.stderr
    candidate_ready(deployment, "frozen", 60)
    experiment = Experiment(
        **{  # the record as the topic holds it: who is in which arm
            **{k: v for k, v in status(deployment, "frozen").items() if k in ("name", "method")},
            "control": Variant(),
            "candidate": Variant(model=frozen),
            "share": 1.0,
            "start": status(deployment, "frozen")["start"],
        }
    )
    replies = ask(deployment, USERS)
    arms = {u: assign(experiment, u) for u in USERS}
    assert set(arms.values()) == {"control", "candidate"}
    for user, reply in replies.items():
        assert (reply.experiment, reply.variant, reply.note) == ("frozen", arms[user], None)
        if arms[user] == "candidate":
            assert reply.model_version == frozen
    # control users rate everything they were shown; candidate users rate none of it
    now = time.time() + 1
    hits = [
        Rating(uuid.uuid4().hex, user, item.item, 5.0, now)
        for user, reply in replies.items()
        if arms[user] == "control"
        for item in reply.items
    ]
    asyncio.run(publish_ratings(deployment.settings, hits))

    def stopped() -> dict[str, Any] | None:
        doc = status(deployment, "frozen")
        return doc if doc["status"] == "guardrail-stopped" else None

    doc = wait_for(stopped, timeout=90, what="the guardrail to stop the candidate")
    assert "significantly worse" in doc["reason"], doc
    wait_for(
        lambda: status(deployment, "frozen").get("variants", {}).get("control", {}).get("hits"),
        timeout=30,
        what="the final tally",
    )
    doc = status(deployment, "frozen")
    control, candidate = doc["variants"]["control"], doc["variants"]["candidate"]
    assert control["hits"] == len(hits) and candidate["hits"] == 0, doc
    assert control["impressions"] >= len(hits) and candidate["impressions"] > 0
    low, high = control["interval"]
    assert low <= control["hit_rate"] <= high
    _, text = deployment.trainer.get("/metrics")
    assert 'streamrec_experiment_hits{experiment="frozen",variant="control"}' in text
    # stopped: nobody is in it any more
    wait_for(
        lambda: all(
            served(s, "frozen").get("status") == "guardrail-stopped" for s in deployment.scorers
        ),
        timeout=30,
        what="the scorers to see the stop",
    )
    assert all(r.experiment is None for r in ask(deployment, USERS[:10]).values())


def test_an_interleaved_serving_parameter_experiment_survives_restarts_and_stops(
    deployment: Deployment,
) -> None:
    started = cli(
        deployment,
        "start",
        "blend",
        "--blend-weight",
        "0",
        "--method",
        "interleave",
        "--share",
        "1",
    )
    assert started.returncode == 0, started.stderr
    wait_for(
        lambda: all(served(s, "blend").get("status") == "running" for s in deployment.scorers),
        timeout=30,
        what="the scorers to see the experiment",
    )
    for reply in ask(deployment, USERS[:20], k=6).values():
        assert reply.experiment == "blend" and reply.variant == "interleaved"
        assert reply.teams is not None and len(reply.teams) == len(reply.items) > 0
        assert set(reply.teams) <= {"control", "candidate"}
    # anyone who can write the topic: an unsigned stop and one signed with another key
    record = Experiment("blend", Variant(), Variant(blend_weight=0.0), "interleave", 1.0, 1.0)
    forged = record.with_status("stopped", "forged")
    kafka = KafkaClient(deployment.settings)
    asyncio.run(
        kafka.produce(
            deployment.settings.experiments_topic,
            [forged.encode(), encode_signed(forged, ATTACKER), (b"blend", None)],
        )
    )
    # every worker restarts: the experiment is still there, and served
    for worker in [deployment.trainer, *deployment.scorers]:
        worker.stop()
    deployment.restart_trainer()
    from devtools.workers import WorkerProcess

    deployment.scorers = [
        WorkerProcess(
            "scorer", s.web_port, s.log_path.with_suffix(".2.log"), deployment.env
        ).start()
        for s in deployment.scorers
    ]
    for worker in [deployment.trainer, *deployment.scorers]:
        worker.wait_ready()
    wait_for(
        lambda: all(served(s, "blend").get("status") == "running" for s in deployment.scorers),
        timeout=60,
        what="the restarted scorers to read the experiment back",
    )
    body = deployment.scorers[0].get("/experiments/")[1]
    assert body["refused"].get("unsigned", 0) >= 1 and body["refused"].get("unknown_key", 0) >= 1
    assert all(r.variant == "interleaved" for r in ask(deployment, USERS[:5]).values())
    assert status(deployment, "frozen")["status"] == "guardrail-stopped"  # kept too

    stopped = cli(deployment, "stop", "blend")
    assert stopped.returncode == 0, stopped.stderr
    assert status(deployment, "blend")["status"] == "stopped"
    assert cli(deployment, "stop", "blend").returncode == 1  # already stopped


def test_a_candidate_no_scorer_can_load_is_answered_from_control_and_says_so(
    deployment: Deployment,
) -> None:
    missing = Experiment("ghost", Variant(), Variant(model=987654321), "ab", 1.0, time.time())
    kafka = KafkaClient(deployment.settings)
    asyncio.run(
        kafka.produce(
            deployment.settings.experiments_topic, [encode_signed(missing, Keyring(KEY.encode()))]
        )
    )
    wait_for(
        lambda: all(served(s, "ghost").get("status") == "running" for s in deployment.scorers),
        timeout=30,
        what="the scorers to see the experiment",
    )
    replies = ask(deployment, USERS)
    candidates = [u for u in USERS if assign(missing, u) == "candidate"]
    assert candidates
    for user in candidates:
        reply = replies[user]
        assert reply.experiment == "ghost" and reply.variant == "control"
        assert reply.note is not None and "v987654321" in reply.note, reply
    assert cli(deployment, "stop", "ghost").returncode == 0


def test_a_second_trainer_lineage_is_a_candidate_kept_fresh_beside_control(
    deployment: Deployment,
) -> None:
    """A second trainer with other settings (fewer components) on the same ratings, in
    its own consumer group, with its own snapshots and deltas; the scorers follow it."""
    from devtools.workers import WorkerProcess, free_port

    env = {
        **deployment.env,
        "STREAMREC_APP_ID": LINEAGE_RUN,
        "STREAMREC_MODEL_STORE": LINEAGE["store"],
        "STREAMREC_MODEL_UPDATES_TOPIC": LINEAGE["updates_topic"],
        "STREAMREC_MODEL_DELTAS_TOPIC": LINEAGE["deltas_topic"],
        "STREAMREC_MODEL_REQUESTS_TOPIC": f"{LINEAGE_RUN}-model-requests",
        "STREAMREC_RATINGS_DLQ_TOPIC": f"{LINEAGE_RUN}-ratings-dlq",
        "STREAMREC_EXPERIMENT_COUNTER": "false",
        "STREAMREC_NO_COMPONENTS": "8",
    }
    second = WorkerProcess(
        "trainer", free_port(), deployment.tmp / "lineage-trainer.log", env
    ).start()
    try:
        second.wait_ready()
        started = cli(
            deployment,
            "start",
            "lineage",
            "--config",
            str(lineage_file(deployment)),
            "--share",
            "1",
        )
        assert started.returncode == 0, started.stderr
        candidate_ready(deployment, "lineage", 90)
        record = status(deployment, "lineage")
        experiment = Experiment(
            "lineage", Variant(), Variant(model="lineage-b"), "ab", 1.0, record["start"]
        )
        before = ask(deployment, USERS)
        candidates = [u for u in USERS if assign(experiment, u) == "candidate"]
        assert candidates
        for user in candidates:
            reply = before[user]
            assert (reply.variant, reply.note) == ("candidate", None), reply
            assert reply.model_version is not None
            assert reply.model_version <= second.get("/model/")[1]["version"]  # the lineage's
        # the lineage keeps training on the same stream: its version moves on, and the
        # scorers serve the newer one
        served_before = max(before[u].model_version or 0 for u in candidates)
        background(deployment, 20, 5000.0)
        wait_for(
            lambda: (
                max((r.model_version or 0) for u, r in ask(deployment, candidates[:5]).items())
                > served_before
            ),
            timeout=60,
            what="the candidate lineage's newer versions to be served",
        )
        assert cli(deployment, "stop", "lineage").returncode == 0
    finally:
        second.stop()


def lineage_file(deployment: Deployment) -> Any:
    path = deployment.tmp / "lineage.json"
    path.write_text(json.dumps({"model": "lineage-b"}))
    return path
