"""Faults 2 and 7: a scorer SIGKILLed half-way through a stream of 5,000 requests, and a
scorer paused (SIGSTOP) past the session timeout, then resumed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from app.topics import bulk_group, seen_changelog
from models.seen import encode_row, item_hashes
from tests.faults.harness import Cluster, Traffic, ratings, wait_for
from tests.integration.service.conftest import KafkaClient

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]


def two_scorers(cluster: Cluster) -> None:
    """Earlier tests may have killed one; faults start from two scorers sharing the work."""
    cluster.scorers = [s for s in cluster.scorers if s.running()]
    while len(cluster.scorers) < 2:
        cluster.add_scorer()
    cluster.wait_settled()


def requests_for(prefix: str, n: int, reply_to: str, users: int = 200) -> list[dict[str, Any]]:
    return [
        {
            "request_id": f"{prefix}-{j}",
            "user": f"{prefix}u{j % users}",
            "k": 3,
            "reply_to": reply_to,
        }
        for j in range(n)
    ]


def check_replies(traffic: Traffic, requests: list[dict[str, Any]]) -> Counter[str]:
    """Every reply answers a request that was sent, for that request's user."""
    users = {r["request_id"]: r["user"] for r in requests}
    for reply in traffic.replies:
        assert users.get(reply["request_id"]) == reply["user"], reply
    return traffic.answered()


def partition_of(request: dict[str, Any], partitions: int) -> int:
    """The requests partition a client's keyed send puts ``request`` in (Kafka's murmur2)."""
    every = list(range(partitions))
    return DefaultPartitioner()(request["user"].encode(), every, every)


@pytest.mark.parametrize(("total", "seconds"), [(5000, 8.0)])
def test_killed_scorer_under_load_leaves_every_request_answered(
    cluster: Cluster, total: int, seconds: float
) -> None:
    """Requests flow at ``total / seconds`` per second (paced, so however fast the scorers
    are, the kill lands mid-stream) and one of two scorers is SIGKILLed half-way through.

    Asserted: at the kill a real share of the requests had no reply yet and the victim had
    requests it had not committed; afterwards every request is answered, for its user; and a
    request is answered twice only if the victim could have answered it before dying without
    committing it: its partition was the victim's, it was sent before the kill, and there are
    at most as many such duplicates as records the victim's group had left uncommitted on
    its partitions at the kill.
    """
    two_scorers(cluster)
    s = cluster.settings
    reply_topic = cluster.reply_topic("kill")
    requests = requests_for("sk", total, reply_topic)
    victim = cluster.scorers[-1]
    victims = set(cluster.owned(victim, s.requests_topic))
    with Traffic(s, requests=requests, request_rate=total / seconds, reply_topic=reply_topic) as t:
        wait_for(lambda: t.sent_requests >= total // 2, timeout=60, what="half the requests sent",
                 every=0.02)  # fmt: skip
        sent_at_kill, answered_at_kill = t.sent_requests, len(t.answered())
        killed_at = time.time()
        victim.kill()  # SIGKILL, requests still arriving on its partitions
        # The scorers' bulk request reader commits in this group (app/wiring/scorer.py).
        group = bulk_group(s, "scorer", "requests")
        uncommitted = cluster.uncommitted(group, s.requests_topic, sorted(victims))
        cluster.scorers.remove(victim)
        wait_for(lambda: t.done_sending, timeout=60, what="every request sent")
        t.wait_answered(s.session_timeout + 90)
        time.sleep(2)  # late duplicates, if any, arrive now
        answered = check_replies(t, requests)
        sent_at = dict(t.sent_at)
    assert set(answered) == {r["request_id"] for r in requests}
    unanswered_at_kill = total - answered_at_kill
    duplicated = {rid: n - 1 for rid, n in answered.items() if n > 1}
    by_id = {r["request_id"]: r for r in requests}
    print(
        f"{total} requests over {seconds:g}s; at the kill {sent_at_kill} sent, "
        f"{answered_at_kill} answered ({unanswered_at_kill} without a reply, "
        f"{sent_at_kill - answered_at_kill} of them sent), {uncommitted} uncommitted on the "
        f"victim's partitions {sorted(victims)}; {sum(duplicated.values())} answered twice"
    )
    assert unanswered_at_kill >= 0.2 * total, "the kill must land while requests are in flight"
    assert uncommitted > 0, "the victim must die with requests it had not acknowledged"
    # A duplicate is a request the victim consumed (maybe answered) and never committed,
    # read again by the survivor; 1 s of grace: a send's time is taken at its ack.
    foreign = {
        rid
        for rid in duplicated
        if partition_of(by_id[rid], s.topic_partitions) not in victims
        or sent_at[rid] > killed_at + 1
    }
    assert not foreign, f"answered twice, but not the victim's in-flight work: {sorted(foreign)}"
    assert sum(duplicated.values()) <= uncommitted


@dataclass
class PausedRun:
    expected: dict[str, list[str]]  # each user's distinct items, most recent last
    observed: dict[int, dict[str, list[str]]]  # scorer web port -> user -> seen, oldest first
    changelog: dict[str, bytes]  # user -> the seen-items changelog's last row
    survivor_owned: list[int]  # the most request partitions the other scorer held in the pause
    partitions: int
    slow_log: str
    slow_running: bool


def expected_seen(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each user's distinct rated items, most recently rated last (what a row holds)."""
    expected: dict[str, list[str]] = {}
    for event in events:
        items = expected.setdefault(event["user"], [])
        if event["item"] in items:
            items.remove(event["item"])
        items.append(event["item"])
    return expected


def rows_of(seen: dict[str, list[str]]) -> dict[str, bytes]:
    return {user: encode_row(item_hashes(items)) for user, items in seen.items()}


def last_rows(settings: Any, users: set[str]) -> dict[str, bytes]:
    """The last record of each of ``users`` in the scorers' ``seen-items`` changelog: what
    a worker recovering the table ends up with."""
    topic = seen_changelog(settings, "scorer")
    records = asyncio.run(KafkaClient(settings).read_all(topic))
    rows: dict[str, bytes] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        user = record.key.decode()
        if user in users:
            rows[user] = record.value
    return rows


@pytest.fixture(scope="module")
def paused_run(cluster: Cluster) -> PausedRun:
    """Ratings and requests flow while one scorer is SIGSTOPped past the session timeout."""
    two_scorers(cluster)
    slow, survivor = cluster.scorers[-1], cluster.scorers[0]
    topic = cluster.settings.requests_topic
    events = ratings(1500, users=30, items=40, seed=7, prefix="sp")
    reply_topic = cluster.reply_topic("pause")
    requests = requests_for("sp", 100, reply_topic, users=30)
    pause = cluster.settings.session_timeout + 6
    most: list[int] = []
    with Traffic(
        cluster.settings,
        events=events,
        rating_rate=1500 / (pause + 4),
        requests=requests,
        request_rate=100 / (pause + 4),
        reply_topic=reply_topic,
    ) as traffic:
        time.sleep(1)
        cluster.pause(slow)  # SIGSTOP: no heartbeats; the group evicts it after the timeout
        resume_at = time.monotonic() + pause
        while time.monotonic() < resume_at:  # watch the survivor take the slow one's share
            with contextlib.suppress(OSError, KeyError, TypeError):
                most = max(most, cluster.owned(survivor, topic), key=len)
            time.sleep(0.5)
        cluster.resume(slow)
        wait_for(lambda: traffic.done_sending, timeout=60, what="all traffic sent")
        cluster.wait_settled(timeout=120)  # it rejoined: both scorers own partitions again
        traffic.wait_answered(60)
        check_replies(traffic, requests)

    expected = expected_seen(events)
    want_rows = rows_of(expected)

    def read() -> tuple[dict[int, dict[str, list[str]]], dict[str, bytes]]:
        views = {  # the view lists newest first
            scorer.web_port: {u: scorer.get(f"/users/{u}/")[1]["seen"][::-1] for u in expected}
            for scorer in cluster.scorers
        }
        return views, last_rows(cluster.settings, set(expected))

    observed, changelog = read()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # ingest may still catch up
        if all(o == expected for o in observed.values()) and changelog == want_rows:
            break
        time.sleep(2)
        observed, changelog = read()
    log = slow.log_path.read_text(errors="replace")
    partitions = cluster.settings.topic_partitions
    return PausedRun(expected, observed, changelog, most, partitions, log, slow.running())


def test_paused_scorer_is_evicted_and_rejoins_with_exact_rows(paused_run: PausedRun) -> None:
    """The pause really evicted the scorer (the other took every request partition; the
    resumed one's lease saw the stall), and afterwards every user's row is exactly the
    items rated, most recent last: in both scorers' views and as the changelog's last
    record (a stale row written by the resumed scorer would be that last record)."""
    assert paused_run.slow_running
    assert len(paused_run.survivor_owned) == paused_run.partitions, (
        f"the paused scorer was never evicted: the other owned {paused_run.survivor_owned}"
    )
    assert "The process stood still for" in paused_run.slow_log, "its lease saw no stall"
    for port, table in paused_run.observed.items():
        wrong = {u: seen for u, seen in table.items() if seen != paused_run.expected[u]}
        assert not wrong, f"scorer :{port}: rows differ from the ratings sent: {wrong}"
    want = rows_of(paused_run.expected)
    stale = sorted(u for u in want if paused_run.changelog.get(u) != want[u])
    assert not stale, f"the changelog's last row is not the ratings sent for {stale}"


def test_paused_scorer_loses_no_seen_items(paused_run: PausedRun) -> None:
    lost = {}
    for port, table in paused_run.observed.items():
        for user, items in paused_run.expected.items():
            missing = set(items) - set(table[user])
            if missing:
                lost[f"{user}@{port}"] = len(missing)
    print(f"seen items lost after the pause: {sum(lost.values())} in {len(lost)} rows")
    assert not lost, lost
