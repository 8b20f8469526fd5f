"""End to end: ratings published with plain aiokafka reach the model, the scorers answer,
bad input is dead-lettered, web views route, and killed workers lose nothing.

The tests share one deployment (see conftest) and run in file order: each builds on the
model state the previous ones left.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from typing import Any

import pytest

from app.commands.service import request_recommendation
from app.web import PAGE_MAX
from models.wire import DLQ_KIND, DLQ_OFFSET, DLQ_REASON, DLQ_TOPIC
from tests.integration.service.conftest import (
    Deployment,
    KafkaClient,
    scorer_group_settled,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]

CLUSTERS = 4
ITEMS_PER_CLUSTER = 25
USERS = 120


def item(cluster: int, j: int) -> str:
    return f"c{cluster}-i{j}"


def cluster_of(item_id: str) -> int:
    return int(item_id.split("-")[0][1:])


def rating(user: str, item_id: str, stars: float, ts: float) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "user": user, "item": item_id, "rating": stars, "ts": ts}


def clustered_ratings(seed: int = 7) -> list[dict[str, Any]]:
    """Each user loves (5 stars) a dozen items of one cluster and dislikes a few others."""
    rng = random.Random(seed)
    out = []
    for n in range(USERS):
        user, home = f"u{n}", n % CLUSTERS
        for j in rng.sample(range(ITEMS_PER_CLUSTER), 12):
            out.append(rating(user, item(home, j), 5.0, 1000.0 + len(out)))
        for _ in range(3):
            other = (home + rng.randrange(1, CLUSTERS)) % CLUSTERS
            out.append(
                rating(user, item(other, rng.randrange(ITEMS_PER_CLUSTER)), 1.0, 1000.0 + len(out))
            )
    return out


def model_info(worker: Any) -> dict[str, Any]:
    status, body = worker.get("/model/")
    return body if status == 200 else {}


def trained(deployment: Deployment) -> int:
    return model_info(deployment.trainer).get("trained_events", 0)


def recommend(deployment: Deployment, user: str, k: int = 10, **kw: Any) -> dict[str, Any]:
    return asyncio.run(
        request_recommendation(deployment.settings, user, k, wait=20.0, **kw)
    ).to_dict()


def snapshot_version(deployment: Deployment) -> int:
    return (model_info(deployment.trainer).get("snapshot") or {}).get("version", -1)


def scorers_serve(deployment: Deployment, version: int) -> bool:
    return all(model_info(s).get("version", -1) >= version for s in deployment.scorers)


def metric(worker: Any, name: str) -> dict[str, float]:
    """The samples of one Prometheus metric of ``worker``, by label set."""
    _, text = worker.get("/metrics")
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith(name))
    return {labels.removeprefix(name): float(value) for labels, value in samples}


def publish(kafka: KafkaClient, deployment: Deployment, events: list[dict[str, Any]]) -> None:
    asyncio.run(kafka.produce_json(deployment.topic("ratings"), events, "user"))


def test_ratings_reach_the_model_and_scorers(deployment: Deployment, kafka: KafkaClient) -> None:
    events = clustered_ratings()
    publish(kafka, deployment, events)
    wait_for(lambda: trained(deployment) == len(events), timeout=60, what="all ratings trained")
    version = wait_for(
        lambda: snapshot_version(deployment) > 0 and snapshot_version(deployment),
        timeout=30,
        what="a snapshot",
    )
    wait_for(lambda: scorers_serve(deployment, version), timeout=30, what="scorers to load it")
    for scorer in deployment.scorers:
        assert scorer.get("/health/")[0] == 200
    reply = recommend(deployment, "u1")
    assert reply["source"] == "model"
    assert len(reply["items"]) == 10
    # u1 loves cluster 1: the model should have learned it.
    assert sum(cluster_of(e["item"]) == 1 for e in reply["items"]) >= 6, reply


def test_new_taste_changes_recommendations_within_seconds(
    deployment: Deployment, kafka: KafkaClient
) -> None:
    user = "shifter"
    publish(kafka, deployment, [rating(user, item(0, j), 5.0, 5000 + j) for j in range(12)])
    wait_for(
        lambda: recommend(deployment, user)["source"] == "model",
        timeout=30,
        what="the new user to be served by the model",
    )
    before = recommend(deployment, user)
    in_two = sum(cluster_of(e["item"]) == 2 for e in before["items"])
    publish(kafka, deployment, [rating(user, item(2, j), 5.0, 6000 + j) for j in range(12)])

    def shifted() -> dict[str, Any] | None:
        reply = recommend(deployment, user)
        now = sum(cluster_of(e["item"]) == 2 for e in reply["items"])
        return reply if now >= max(3, in_two + 3) else None

    after = wait_for(shifted, timeout=30, what="recommendations to move towards cluster 2")
    assert after["model_version"] > before["model_version"]
    seen = {item(0, j) for j in range(12)} | {item(2, j) for j in range(12)}
    assert not seen & {e["item"] for e in after["items"]}, "seen items must be excluded"


def test_brand_new_user_and_item_need_no_restart(
    deployment: Deployment, kafka: KafkaClient
) -> None:
    cold = recommend(deployment, "nobody-yet")
    assert cold["source"] == "popularity" and len(cold["items"]) == 10
    fans = [f"fan{n}" for n in range(8)]
    events = [rating(f, "brand-new-movie", 5.0, 7000 + i) for i, f in enumerate(fans)]
    events += [rating(f, item(3, j), 5.0, 7100 + j) for f in fans for j in range(5)]
    publish(kafka, deployment, events)

    def knows_new_item() -> dict[str, Any] | None:
        reply = recommend(deployment, "fan0", k=200, exclude_seen=False)
        return reply if "brand-new-movie" in {e["item"] for e in reply["items"]} else None

    reply = wait_for(knows_new_item, timeout=30, what="the new item to be scored")
    assert reply["source"] == "model"


def test_two_scorers_give_exactly_one_reply_each(
    deployment: Deployment, kafka: KafkaClient
) -> None:
    reply_to = f"{deployment.topic('responses')}-client"
    from app.topics import TopicSpec, ensure_topics

    asyncio.run(ensure_topics(deployment.settings, [TopicSpec(reply_to, 4)]))
    requests = [
        {"request_id": f"r{n}", "user": f"u{n % USERS}", "k": 5, "reply_to": reply_to}
        for n in range(300)
    ]
    asyncio.run(kafka.produce_json(deployment.topic("requests"), requests, "user"))
    replies = asyncio.run(kafka.read_all(reply_to, until=300, wait=30))
    ids = [json.loads(m.value)["request_id"] for m in replies]
    assert sorted(ids) == sorted(r["request_id"] for r in requests)  # each exactly once
    # Both scorers took part: the request partitions are shared between them.
    for scorer in deployment.scorers:
        _, text = scorer.get("/metrics")
        answered = sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("streamrec_replies_total{")
        )
        assert answered > 0, f"scorer on port {scorer.web_port} answered nothing"


def test_bad_input_goes_to_the_dead_letter_topics(
    deployment: Deployment, kafka: KafkaClient
) -> None:
    good = rating("u5", item(1, 1), 4.0, 8000)
    bad_ratings = [
        (b"u5", b"{not json", "malformed"),
        (b"u5", json.dumps({**good, "rating": "five"}).encode(), "invalid"),
        (b"u5", json.dumps({k: v for k, v in good.items() if k != "item"}).encode(), "invalid"),
        (b"u5", json.dumps({**good, "rating": 11}).encode(), "invalid"),
        (b"u5", b"[" + b"1," * (5 * 1024 * 1024) + b"1]", "too_large"),  # ~10 MB
    ]
    asyncio.run(
        kafka.produce(
            deployment.topic("ratings"),
            [(k, v) for k, v, _ in bad_ratings],
            max_request_size=16 * 1024 * 1024,
        )
    )
    bad_requests = [
        (b"u5", b"\xff\xfe", "malformed"),
        (b"u5", json.dumps({"request_id": "x1", "user": "u5", "k": 0}).encode(), "invalid"),
        (b"u5", json.dumps({"user": "u5"}).encode(), "invalid"),
        (
            b"u5",
            json.dumps({"request_id": "x2", "user": "u5", "reply_to": "no-such-topic-zz"}).encode(),
            "reply_to",
        ),
    ]
    asyncio.run(kafka.produce(deployment.topic("requests"), [(k, v) for k, v, _ in bad_requests]))

    for topic, sent, source in (
        ("ratings_dlq", bad_ratings, "ratings"),
        ("requests_dlq", bad_requests, "requests"),
    ):
        letters = asyncio.run(kafka.read_all(deployment.topic(topic), until=len(sent), wait=30))
        assert len(letters) == len(sent)
        by_value = {m.value: dict(m.headers) for m in letters}
        for _key, value, kind in sent:
            headers = by_value[value]  # the original bytes, untouched
            assert headers[DLQ_KIND].decode() == kind
            assert headers[DLQ_REASON]
            assert headers[DLQ_TOPIC].decode() == deployment.topic(source)
            assert int(headers[DLQ_OFFSET]) >= 0
    # ... and the agents keep processing.
    assert recommend(deployment, "u5")["items"]


def test_web_views_answer_from_any_worker(deployment: Deployment) -> None:
    def users_view() -> list[dict[str, Any]] | None:
        bodies = []
        for scorer in deployment.scorers:
            status, body = scorer.get("/users/u7/")
            assert status == 200, body
            bodies.append(body)
        # Ingest is asynchronous: wait until u7's 15 ratings are in the table.
        last[:] = [b["seen"] for b in bodies]
        return bodies if all(len(b["seen"]) == 15 for b in bodies) else None

    last: list[Any] = []
    try:
        bodies = wait_for(users_view, timeout=30, what="u7's 15 seen items from both scorers")
    except pytest.fail.Exception:
        ingested = [metric(s, "streamrec_events_in_total") for s in deployment.scorers]
        pytest.fail(
            f"u7's seen items never reached 15 on both scorers; last: {last}; events in: {ingested}"
        )
    assert bodies[0]["seen"] == bodies[1]["seen"]
    assert bodies[0]["recommendation"]["items"]
    for worker in [deployment.trainer, *deployment.scorers]:
        status, popular = worker.get("/items/popular/?k=5")
        assert status == 200 and len(popular["items"]) == 5
        status, info = worker.get("/model/")
        assert status == 200 and info["version"] > 0 and "snapshot_age_seconds" in info
        status, text = worker.get("/metrics")
        assert status == 200 and "streamrec_model_version" in text


def test_no_rated_item_is_ever_recommended(deployment: Deployment, kafka: KafkaClient) -> None:
    """A user rates 1,000 distinct items: none of them comes back with exclude_seen."""
    user = "binge"
    rated = [f"b-i{n}" for n in range(1000)]
    unrated = [f"b-i{n}" for n in range(1000, 1040)]
    events = [rating(user, i, 5.0 if n % 3 else 2.0, 20_000 + n) for n, i in enumerate(rated)]
    # Fans make the items known to the model and popular, rated and unrated alike.
    for m in range(4):
        fan_items = rated[m::97] + unrated
        events += [rating(f"bfan{m}", i, 5.0, 30_000 + n) for n, i in enumerate(fan_items)]
    before = trained(deployment)
    publish(kafka, deployment, events)
    wait_for(lambda: trained(deployment) >= before + len(events), timeout=90, what="training them")
    version = model_info(deployment.trainer)["version"]
    wait_for(lambda: scorers_serve(deployment, version), timeout=60, what="scorers to catch up")
    wait_for(
        lambda: any(
            s.get(f"/users/{user}/")[1].get("seen_total") == 1000 for s in deployment.scorers
        ),
        timeout=30,
        what="the 1,000 ratings in the seen-items table",
    )
    # /health/ counts what each scorer's ingest recorded (its own partitions only).
    counts = [s.get("/health/")[1]["seen_ratings"] for s in deployment.scorers]
    assert sum(counts) >= len(events) and max(counts) >= len(rated), counts
    everything = recommend(deployment, user, k=1000, exclude_seen=False)
    assert everything["source"] == "model"
    assert len({e["item"] for e in everything["items"]} & set(rated)) > 500  # could fail
    for k in (10, 200, 1000):
        reply = recommend(deployment, user, k=k)
        got = {e["item"] for e in reply["items"]}
        assert reply["source"] == "model" and got, reply
        assert not got & set(rated), sorted(got & set(rated))[:10]


def test_command_line_clients(deployment: Deployment, tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    def streamrec(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env={**os.environ, **deployment.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    csv = tmp_path / "more.csv"
    csv.write_text("user,item,rating,timestamp\ncli-user,c2-i1,5,9500\ncli-user,c2-i2,5,9501\n")
    before = trained(deployment)
    published = streamrec("publish", str(csv))
    assert published.returncode == 0 and "published 2 ratings" in published.stdout
    wait_for(lambda: trained(deployment) >= before + 2, timeout=30, what="the CLI's ratings")

    reply = streamrec("recommend", "u3", "-k", "4", "--json")
    assert reply.returncode == 0, reply.stderr
    body = json.loads(reply.stdout)
    assert body["user"] == "u3" and len(body["items"]) == 4 and body["source"] == "model"

    down = streamrec("recommend", "u3", STREAMREC_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert down.returncode == 1 and down.stderr.count("\n") == 1
    assert "Kafka is not reachable at 127.0.0.1:1" in down.stderr
    bad = streamrec("worker", STREAMREC_TOPIC_PARTITIONS="0")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "STREAMREC_TOPIC_PARTITIONS" in bad.stderr


def test_killed_scorer_leaves_the_other_answering(deployment: Deployment) -> None:
    watched = ["u7", "binge", *(f"u{n}" for n in range(0, 40, 3))]

    def row(scorer: Any, user: str) -> tuple[int, list[str]]:
        body = scorer.get(f"/users/{user}/?limit={PAGE_MAX}")[1]  # newest first, paged
        return body["seen_total"], body["seen"]

    rows = {u: row(deployment.scorers[0], u) for u in watched}
    victim = deployment.scorers.pop()
    victim.kill()  # SIGKILL: its partitions move to the survivor after the session timeout
    users = [f"u{n}" for n in range(0, 40, 3)]
    replies = [recommend(deployment, u, k=3) for u in users]  # the first ones wait for it
    bad = [r for r in replies if r["source"] != "model" or len(r["items"]) != 3]
    assert not bad, bad
    # The survivor recovered the victim's seen-items partitions from the changelog: the
    # same rows, for the users of both scorers.
    (survivor,) = deployment.scorers
    wait_for(lambda: scorer_group_settled(deployment), timeout=60, what="the survivor to own all")
    after = {u: row(survivor, u) for u in watched}
    assert after == rows
    assert after["binge"][0] == 1000 and len(after["binge"][1]) == PAGE_MAX
    assert after["u7"][0] == 15 and len(after["u7"][1]) == 15


def test_trainer_sigkill_loses_nothing_and_trains_nothing_twice(
    deployment: Deployment, kafka: KafkaClient
) -> None:
    before = trained(deployment)
    rng = random.Random(11)
    events = [
        rating(
            f"k{rng.randrange(300)}",
            item(rng.randrange(CLUSTERS), rng.randrange(ITEMS_PER_CLUSTER)),
            float(rng.choice([1, 3, 4, 5])),
            9000 + n,
        )
        for n in range(4000)
    ]
    duplicate = events[10]
    publish(kafka, deployment, events[:2000])
    wait_for(lambda: trained(deployment) >= before + 500, timeout=60, what="training under way")
    deployment.trainer.kill()  # SIGKILL: no final snapshot, no commit
    publish(kafka, deployment, [*events[2000:], duplicate])
    trainer = deployment.restart_trainer()
    trainer.wait_ready(model=True)
    wait_for(
        lambda: trained(deployment) >= before + len(events),
        timeout=90,
        what="the restarted trainer to catch up",
    )
    # Give it a moment to (wrongly) train anything twice, then count.
    version = wait_for(
        lambda: snapshot_version(deployment) > 0 and snapshot_version(deployment),
        timeout=30,
        what="a snapshot",
    )
    assert trained(deployment) == before + len(events)
    wait_for(
        lambda: scorers_serve(deployment, version),
        timeout=30,
        what="the scorer to pick up the restarted trainer's snapshot",
    )


def test_rollback_reaches_the_scorers_at_once(deployment: Deployment) -> None:
    import os
    import subprocess
    import sys

    latest = snapshot_version(deployment)
    wait_for(lambda: scorers_serve(deployment, latest), timeout=30, what="scorers to catch up")
    listed = subprocess.run(
        [sys.executable, "-m", "app.cli", "models", "list", "--json"],
        env={**os.environ, **deployment.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # The first snapshot the trainer wrote (versions count batches; snapshots are rarer).
    target = min(s["version"] for s in json.loads(listed.stdout)["snapshots"] if s["complete"])
    assert latest > target
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "models", "rollback", "--to", str(target)],
        env={**os.environ, **deployment.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"current: {target} (was ") and "announced" in run.stdout
    wait_for(
        lambda: all(model_info(s).get("version") == target for s in deployment.scorers),
        timeout=30,
        what=f"scorers to serve v{target}",
    )


def test_every_role_keeps_the_catalog_and_serves_the_dashboard(deployment: Deployment) -> None:
    from app.commands.catalog import publish_catalog
    from models.catalog import CatalogItem

    entries = [
        CatalogItem(item(c, j), f"Cluster {c} film {j}", (f"genre-{c}",))
        for c in range(CLUSTERS)
        for j in range(ITEMS_PER_CLUSTER)
    ]
    asyncio.run(publish_catalog(deployment.settings, entries))
    workers = [deployment.trainer, *deployment.scorers]

    def titled() -> bool:
        return all(
            w.get(f"/items/{item(3, 7)}/")[1].get("title") == "Cluster 3 film 7" for w in workers
        )

    wait_for(titled, timeout=30, what="every worker's catalog table to hold the new titles")
    reply = recommend(deployment, "u1", k=5)
    catalogued = {e.item: e.title for e in entries}
    assert any(e["item"] in catalogued for e in reply["items"]), reply
    for entry in reply["items"]:
        assert entry.get("title") == catalogued.get(entry["item"]), reply  # none if unknown
    for worker in workers:
        status, page = worker.get("/")
        assert status == 200 and "/static/dashboard.js" in page
        status, popular = worker.get("/items/popular/?limit=3")
        assert status == 200 and all("title" in e for e in popular["items"] if "-i" in e["item"])
    status, body = deployment.trainer.get("/users/u1/")  # a trainer holds no seen items
    assert status == 200 and body["seen"] is None and body["recommendation"]["items"]
