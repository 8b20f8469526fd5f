"""End to end (issue 19): with ``STREAMREC_SCORER_SHARE`` each of two scorers holds only the
users of the request partitions it owns, and when one stops the other loads the rest from
the latest checkpoint and the deltas since, and serves every user from the model within
seconds; every request sent meanwhile gets one reply, a popularity one saying ``loading``.

One trainer and two scorers (real subprocesses) on the real broker and SeaweedFS, with the
default snapshot settings (so the new partitions' users come from a checkpoint *and* the
deltas after it).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import pytest

from devtools.workers import WorkerProcess, free_port
from models.ownership import partition_of
from tests.integration.service.conftest import (
    Deployment,
    new_deployment,
    scorer_group_settled,
    wait_for,
)
from tests.integration.service.test_deltas import (
    FRESH_BOUND,
    caught_up,
    info,
    publish,
    ratings_for,
    reply,
)

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.e2e]

PARTITIONS = 4
LOADED_BOUND = 30.0
"""Seconds from stopping a scorer to the survivor serving every user from the model: the
group's rebalance (session timeout 8 s) plus the load; measured 6-7 s here."""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("share")
    yield from new_deployment(
        "share",
        tmp,
        no_components=16,
        session_timeout=8,
        topic_partitions=PARTITIONS,
        scorer_share="true",
    )


def owned(deployment: Deployment, n: int) -> set[int]:
    topic = deployment.settings.requests_topic
    _, body = deployment.scorers[n].get("/health/")
    return {int(p.split(":")[1]) for p in body.get("partitions", []) if p.startswith(f"{topic}:")}


def holds(deployment: Deployment, n: int, users: list[str]) -> bool:
    """Scorer ``n`` holds exactly the users of the partitions it owns, none loading."""
    mine = owned(deployment, n)
    body = info(deployment.scorers[n])
    expected = sum(partition_of(u, PARTITIONS) in mine for u in users)
    return (
        bool(mine)
        and body.get("held_partitions") == ",".join(map(str, sorted(mine)))
        and body.get("held_users") == expected
        and body.get("loading_partitions", "") == ""
    )


def test_each_scorer_holds_its_share_and_the_survivor_loads_the_rest(
    deployment: Deployment,
) -> None:
    users = [f"sh{n}-{uuid.uuid4().hex[:4]}" for n in range(40)]
    items = [f"m{j}" for j in range(20)]
    publish(deployment, [r for n, r in enumerate(ratings_for(users, items, 1000.0)) if n % 2])
    wait_for(lambda: caught_up(deployment), timeout=60, what="scorers to follow the deltas")
    for n in (0, 1):
        wait_for(
            lambda n=n: holds(deployment, n, users),
            timeout=60,
            what=lambda n=n: f"scorer {n} to hold its share: {info(deployment.scorers[n])}",
        )
    both = [info(s)["held_users"] for s in deployment.scorers]
    assert sum(both) == len(users) and all(0 < h < len(users) for h in both), both
    assert all(reply(deployment, u)["source"] == "model" for u in users[:8])

    # The second scorer stops: the first owns every partition and loads the other users.
    stopped = time.monotonic()
    deployment.scorers[1].stop()
    survivor = deployment.scorers[0]
    loading_seen: list[dict[str, object]] = []

    def all_from_the_model() -> bool:
        if owned(deployment, 0) != set(range(PARTITIONS)):
            return False
        for user in users[::5]:
            got = reply(deployment, user)
            if got["source"] != "model":
                assert got["source"] == "popularity", got
                loading_seen.append(got)
                return False
        return True

    wait_for(all_from_the_model, timeout=LOADED_BOUND + 30, interval=0.2, what="model replies")
    took = time.monotonic() - stopped
    print(f"survivor serves every user from the model {took:.1f} s after the stop")
    assert took <= LOADED_BOUND + 30
    wait_for(lambda: holds(deployment, 0, users), timeout=10, what="the survivor to hold all")
    assert info(survivor)["held_users"] == len(users)
    assert all(reply(deployment, u)["source"] == "model" for u in users)
    # Freshness goes on: a new user's ratings reach the survivor's view through deltas.
    newbie = f"late-{uuid.uuid4().hex[:6]}"
    publish(deployment, ratings_for([newbie], items[:5], 5000.0))
    wait_for(
        lambda: reply(deployment, newbie)["source"] == "model",
        timeout=FRESH_BOUND,
        interval=0.2,
        what="the new user's model reply",
    )
    users.append(newbie)

    # A scorer joins the group of one: the survivor narrows to its new share, the newcomer
    # loads its users from the checkpoint written for the survivor's load and the deltas
    # since (the newbie's among them), and serves them from the model.
    wait_for(lambda: caught_up(deployment, [survivor]), timeout=30, what="the survivor")
    joined = time.monotonic()
    newcomer = WorkerProcess(
        "scorer", free_port(), deployment.tmp / "scorer-3.log", deployment.env
    ).start()
    deployment.scorers[1] = newcomer
    wait_for(lambda: scorer_group_settled(deployment), timeout=60, what="the group to settle")
    for n in (0, 1):
        wait_for(
            lambda n=n: holds(deployment, n, users),
            timeout=LOADED_BOUND,
            what=lambda n=n: f"scorer {n} to hold its share: {info(deployment.scorers[n])}",
        )
    print(f"the newcomer holds its share {time.monotonic() - joined:.1f} s after its start")
    theirs = [u for u in users if partition_of(u, PARTITIONS) in owned(deployment, 1)]
    assert newbie in users and theirs
    assert all(reply(deployment, u)["source"] == "model" for u in theirs)

    # The newcomer stops again: the survivor loads the other half once more, now from the
    # checkpoint its first load asked for and the deltas after it (the newbie's at least).
    deployment.scorers[1].stop()
    wait_for(all_from_the_model, timeout=LOADED_BOUND + 30, interval=0.2, what="model replies")
    wait_for(lambda: holds(deployment, 0, users), timeout=10, what="the survivor to hold all")
    log = (deployment.tmp / "scorer-1.log").read_text()
    replayed = re.findall(r"from the model \(v\d+, (\d+) deltas replayed", log)
    assert len(replayed) == 2 and int(replayed[-1]) > 0, replayed  # a checkpoint, then deltas
    assert reply(deployment, newbie)["source"] == "model"
