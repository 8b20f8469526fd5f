"""Faults 2 and 7: a scorer SIGKILLed with thousands of requests in flight, and a scorer
paused (SIGSTOP) past the session timeout, then resumed."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.faults.harness import Cluster, Traffic, ratings, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]


def two_scorers(cluster: Cluster) -> None:
    """Earlier tests may have killed one; faults start from two scorers sharing the work."""
    cluster.scorers = [s for s in cluster.scorers if s.running()]
    while len(cluster.scorers) < 2:
        cluster.add_scorer()
    cluster.wait_settled()


def requests_for(prefix: str, n: int, reply_to: str, users: int = 200) -> list[dict[str, Any]]:
    return [
        {"request_id": f"{prefix}-{j}", "user": f"{prefix}u{j % users}", "k": 3, "reply_to": reply_to}
        for j in range(n)
    ]


def check_replies(traffic: Traffic, requests: list[dict[str, Any]]) -> Counter[str]:
    """Every reply answers a request that was sent, for that request's user."""
    users = {r["request_id"]: r["user"] for r in requests}
    for reply in traffic.replies:
        assert users.get(reply["request_id"]) == reply["user"], reply
    return traffic.answered()


@pytest.mark.parametrize("in_flight", [5000])
def test_killed_scorer_under_load_leaves_every_request_answered(
    cluster: Cluster, in_flight: int
) -> None:
    two_scorers(cluster)
    reply_topic = cluster.reply_topic("kill")
    requests = requests_for("sk", in_flight, reply_topic)
    victim = cluster.scorers[-1]
    with Traffic(cluster.settings, requests=requests, reply_topic=reply_topic) as traffic:
        wait_for(lambda: traffic.done_sending, timeout=60, what="the requests to be sent")
        answered_at_kill = len(traffic.answered())
        victim.kill()  # SIGKILL, with most requests still in flight
        cluster.scorers.remove(victim)
        wait_for(
            lambda: not traffic.unanswered(),
            timeout=cluster.settings.session_timeout + 90,
            what="a reply to every request after the rebalance",
        )
        time.sleep(2)  # late duplicates, if any, arrive now
        answered = check_replies(traffic, requests)
    assert set(answered) == {r["request_id"] for r in requests}
    duplicates = sum(n - 1 for n in answered.values())
    print(
        f"{in_flight} requests, {answered_at_kill} answered when the scorer was killed, "
        f"{duplicates} answered twice (same request_id)"
    )


def test_paused_scorer_rejoins_without_duplicating_or_losing_seen_items(
    cluster: Cluster,
) -> None:
    two_scorers(cluster)
    slow = cluster.scorers[-1]
    events = ratings(3000, users=60, items=40, seed=7, prefix="sp")
    reply_topic = cluster.reply_topic("pause")
    requests = requests_for("sp", 200, reply_topic, users=60)
    pause = cluster.settings.session_timeout + 6
    with Traffic(
        cluster.settings,
        events=events,
        rating_rate=3000 / (pause + 4),
        requests=requests,
        request_rate=200 / (pause + 4),
        reply_topic=reply_topic,
    ) as traffic:
        time.sleep(1)
        cluster.pause(slow)  # SIGSTOP: no heartbeats; the group evicts it after the timeout
        time.sleep(pause)
        cluster.resume(slow)
        wait_for(lambda: traffic.done_sending, timeout=60, what="all traffic sent")
        cluster.wait_settled(timeout=120)  # it rejoined: both scorers own partitions again
        wait_for(lambda: not traffic.unanswered(), timeout=60, what="replies to every request")
        check_replies(traffic, requests)
    assert slow.running()

    seen: dict[str, list[str]] = {}
    for event in events:  # the table keeps each user's distinct items, most recent last
        items = seen.setdefault(event["user"], [])
        if event["item"] in items:
            items.remove(event["item"])
        items.append(event["item"])

    wrong: list[str] = []

    def tables_agree() -> bool:
        wrong.clear()
        for user, items in seen.items():
            for scorer in cluster.scorers:
                status, body = scorer.get(f"/users/{user}/")
                if status != 200 or body["seen"] != items:
                    wrong.append(f"{user}@{scorer.web_port}: {body}")
        return not wrong

    try:
        wait_for(tables_agree, timeout=60, what="every user's seen items on both scorers")
    except pytest.fail.Exception:
        pytest.fail(f"{len(wrong)} users' seen items differ: {wrong[:5]}")
