"""The compose stack for real: local images, podman-compose up, the host talks to it, down.

``streamrec dev images`` builds the images (cached), ``podman-compose -f docker-compose.yml
-f docker-compose.local.yml up -d`` starts Kafka, S3, the bucket, generate, catalog,
bootstrap, one trainer, two scorers and the publisher; the tests then use the published
ports only (Kafka's host listener 9094, trainer 6066, scorers 6067/6068), as a user would.

Not part of the normal run (marker ``containers``, deselected by default): the stack
publishes 9094, which the dev broker's SASL_SSL listener takes while the suite runs, so
.ci/run runs these after the suite with the dev services down (docs/deploy.md). Needs
podman, podman-compose and root (debootstrap); skips saying so where podman is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from app.settings import PROJECT_ROOT, Settings
from devtools.images import podman_env
from devtools.process import DevServiceError, port_free
from devtools.stack import Stack as ComposeStack

pytestmark = [pytest.mark.containers, pytest.mark.timeout(2400)]

PROJECT = "streamrec"  # the compose file's `name:`
# The compose file's host ports: its defaults, or the HOST_PORT_* variables it reads.
PORT_VARS = {
    "kafka": ("HOST_PORT_KAFKA", 9094),
    "minio": ("HOST_PORT_S3", 9000),
    "minio-console": ("HOST_PORT_S3_CONSOLE", 9001),
    "trainer": ("HOST_PORT_TRAINER", 6066),
    "scorer-1": ("HOST_PORT_SCORER_1", 6067),
    "scorer-2": ("HOST_PORT_SCORER_2", 6068),
}
HOST_PORTS = {svc: int(os.environ.get(var) or port) for svc, (var, port) in PORT_VARS.items()}
WORKERS = ("trainer", "scorer-1", "scorer-2")
KAFKA = f"127.0.0.1:{HOST_PORTS['kafka']}"
STREAMREC = str(Path(sys.executable).parent / "streamrec")
T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 2.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


#: The web token the stack's workers hold: docker-compose.yml's default unless the shell
#: sets one (the views with user data or lineage need it; /health/ and / do not).
WEB_TOKEN = os.environ.get("STREAMREC_WEB_TOKEN") or "streamrec-dev-web-token"


def get(
    port: int, path: str, timeout: float = 5.0, token: str | None = WEB_TOKEN
) -> tuple[int, Any]:
    """(status, JSON body or text) of a GET on 127.0.0.1:port; (0, None) if nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with opener.open(request, timeout=timeout) as answer:
            status, body, kind = answer.status, answer.read(), answer.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        status, body, kind = exc.code, exc.read(), exc.headers.get_content_type()
    except OSError:
        return 0, None
    return status, json.loads(body) if kind == "application/json" else body.decode()


def container(service: str) -> str:
    return f"{PROJECT}_{service}_1"  # podman-compose's naming


class Stack(ComposeStack):
    """The running stack (devtools.stack), plus what the tests ask podman."""

    def __init__(self) -> None:
        super().__init__(echo=print)
        self.measured: dict[str, Any] = {}

    def run(self, *argv: str) -> str:
        done = self.podman(*argv)
        if done.returncode != 0:
            pytest.fail(f"`podman {' '.join(argv)}` exited {done.returncode}: {done.stderr[-300:]}")
        return done.stdout

    def state(self, service: str) -> dict[str, Any]:
        return json.loads(self.run("inspect", "--format", "{{json .State}}", container(service)))

    def healthy(self, service: str) -> bool:
        """The image's HEALTHCHECK, run now (podman 4.3 runs it on a timer only under systemd)."""
        return self.podman("healthcheck", "run", container(service)).returncode == 0

    def memory(self) -> dict[str, str]:
        out = self.run("stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}")
        return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def host_settings() -> Settings:
    return Settings(kafka_bootstrap=KAFKA)


def recommend(user: str, wait: float = 30.0):
    from app.commands.service import request_recommendation

    settings = host_settings()
    return asyncio.run(request_recommendation(settings, user, 5, wait=wait))


def end_offsets(topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from agents.kafka import partitions_of
    from app.kafka import kafka_client_options

    options = kafka_client_options(host_settings())

    async def ask() -> dict[int, int]:
        parts = [TopicPartition(topic, p) for p in await partitions_of(options, topic)]
        consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            ends = await consumer.end_offsets(parts)
        finally:
            await consumer.stop()
        return {tp.partition: offset for tp, offset in ends.items()}

    return asyncio.run(ask())


def generated_ratings() -> int:
    command = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"][
        "generate"
    ]["command"]
    return int(command[command.index("--ratings") + 1])


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (as root: apt-get install podman; .ci/run does)")
    busy = {svc: p for svc, p in HOST_PORTS.items() if not port_free(p)}
    if busy:
        pytest.fail(
            f"host ports the compose stack publishes are in use: {busy}; stop what holds them "
            "(9094 is a dev broker's SASL_SSL listener: `streamrec dev down`) or move them "
            f"with {', '.join(var for var, _ in PORT_VARS.values())}"
        )
    try:
        s = Stack()
        s.down()  # a stack an interrupted run left behind
    except DevServiceError as exc:
        pytest.skip(str(exc))
    began = time.monotonic()
    images = subprocess.run(
        [STREAMREC, "dev", "images"], cwd=PROJECT_ROOT, env=podman_env(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if images.returncode != 0:
        pytest.fail(f"streamrec dev images failed: {images.stderr.strip().splitlines()[-1:]}")
    s.measured["images_seconds"] = round(time.monotonic() - began, 1)
    s.measured["images"] = images.stdout.strip().splitlines()
    began = time.monotonic()
    try:
        try:
            s.measured["compose_up_seconds"] = round(s.up(timeout=900), 1)
        except DevServiceError as exc:
            pytest.fail(str(exc))
        for worker in WORKERS:
            wait_for(
                lambda w=worker: get(HOST_PORTS[w], "/health/")[0] == 200,
                timeout=600, what=f"{worker}'s /health/ on {HOST_PORTS[worker]}",
            )  # fmt: skip
        s.measured["stack_start_seconds"] = round(time.monotonic() - began, 1)
        yield s
    finally:
        with contextlib.suppress(DevServiceError):
            s.down()
        print(f"\ncompose stack measurements: {json.dumps(s.measured, indent=1)}")


def test_workers_answer_on_the_published_ports(stack: Stack) -> None:
    for worker in WORKERS:
        port = HOST_PORTS[worker]
        status, health = get(port, "/health/")
        assert status == 200 and health["status"] == "ok", health
        assert health["role"] == ("trainer" if worker == "trainer" else "scorer")
        status, model = get(port, "/model/")
        assert status == 200 and model["version"] is not None, model
        assert get(port, "/model/", token=None)[0] == 401  # the deployment sets a token
        status, page = get(port, "/")
        assert status == 200 and "<html" in page.lower()
        assert stack.healthy(worker), f"{worker}: the image's HEALTHCHECK fails"
    for job in ("create-bucket", "generate", "catalog", "bootstrap"):
        state = stack.state(job)
        assert state["Status"] == "exited" and state["ExitCode"] == 0, (job, state)
    stack.measured["memory"] = stack.memory()


def test_ratings_in_recommendations_out_over_kafka(stack: Stack, tmp_path: Path) -> None:
    """Ratings published from the host train; a reply over Kafka names titles and leaves out
    what the user rated."""
    _, popular = get(HOST_PORTS["scorer-1"], "/items/popular/?k=6")
    items = [entry["item"] for entry in popular["items"]]
    assert all(entry.get("title") for entry in popular["items"]), popular
    user = f"containers-{int(time.time())}"
    publish_new_ratings(tmp_path, [user], items[:3])

    def knows_user():
        reply = recommend(user)
        return reply if reply.source != "popular" and reply.items else None

    reply = wait_for(knows_user, timeout=180, what=f"a personal reply for {user}", every=3)
    assert all(entry.title for entry in reply.items), reply
    assert not set(items[:3]) & {entry.item for entry in reply.items}, "rated items came back"


def test_one_scorer_killed_the_other_answers_every_request(stack: Stack) -> None:
    # SIGKILL at once, and stopped: `podman kill` alone would let `restart: unless-stopped`
    # bring it back within seconds (it does; then the two share the partitions again)
    stack.run("stop", "-t", "0", container("scorer-1"))
    began = time.monotonic()
    answered = [recommend(f"u{n}", wait=60) for n in range(20)]
    assert all(reply.items for reply in answered), [r.source for r in answered]
    stack.measured["first_20_replies_after_scorer_kill_seconds"] = round(
        time.monotonic() - began, 1
    )
    wait_for(
        lambda: sum(
            p.startswith("rec-requests:")
            for p in get(HOST_PORTS["scorer-2"], "/health/")[1]["partitions"]
        ) == 4,
        timeout=120, what="scorer-2 owning every partition",
    )  # fmt: skip
    stack.run("start", container("scorer-1"))
    wait_for(lambda: get(HOST_PORTS["scorer-1"], "/health/")[0] == 200, 300, "scorer-1 back")


def publish_new_ratings(tmp_path: Path, users: list[str], items: list[str]) -> int:
    """Publish, from the host over Kafka, every user rating every item; returns how many."""
    # events are named "<file name>:<line>": a file called ratings.csv would repeat the ids
    # of the generated /data/ratings.csv, and the trainer would drop them as duplicates
    ratings = tmp_path / f"containers-{uuid.uuid4().hex}.csv"
    now = int(time.time())
    rows = [f"{user},{item},5,{now}\n" for user in users for item in items]
    ratings.write_text("user,item,rating,timestamp\n" + "".join(rows))
    subprocess.run(
        [STREAMREC, "publish", str(ratings)], check=True, timeout=120,
        env={**os.environ, "STREAMREC_KAFKA_BOOTSTRAP": KAFKA}, capture_output=True,
    )  # fmt: skip
    return len(rows)


def trainer_at(offsets: dict[str, int], trained: int | None = None) -> Callable[[], Any]:
    """A check: the trainer's /model/ has consumed exactly ``offsets`` (and ``trained``)."""

    def check() -> dict[str, Any] | None:
        status, info = get(HOST_PORTS["trainer"], "/model/")
        if status != 200:
            return None
        if trained is not None and info["trained_events"] > trained:
            pytest.fail(f"the trainer trained {info['trained_events']} events, sent {trained}")
        done = info["offsets"] == offsets and trained in (None, info["trained_events"])
        return info if done else None

    return check


def ratings_end() -> dict[str, int]:
    return {f"ratings:{p}": offset for p, offset in end_offsets("ratings").items()}


def test_trainer_restart_resumes_at_its_snapshot(stack: Stack, tmp_path: Path) -> None:
    """Restarted, the trainer loads its last snapshot and goes on from that snapshot's Kafka
    offsets: nothing trained twice, nothing skipped. Then new ratings train exactly once."""
    wait_for(lambda: stack.state("publisher")["Status"] == "exited", 900, "the publisher")
    assert stack.state("publisher")["ExitCode"] == 0
    ends = ratings_end()
    before = wait_for(trainer_at(ends), 300, "the trainer to consume every rating")
    stack.run("restart", "-t", "30", container("trainer"))
    wait_for(lambda: get(HOST_PORTS["trainer"], "/health/")[0] == 200, 300, "trainer back")
    after = wait_for(trainer_at(ends, before["trained_events"]), 60, "the trainer's resume")
    # SIGTERM: the trainer wrote a snapshot on its way down and started from it, at the
    # topic's end: no batch since, so nothing was read again (a replay shows duplicates)
    assert after.get("last_batch", {}).get("duplicates", 0) == 0, after
    _, popular = get(HOST_PORTS["scorer-2"], "/items/popular/?k=3")
    users = [f"restart-{int(time.time())}-{n}" for n in range(10)]
    sent = publish_new_ratings(tmp_path, users, [e["item"] for e in popular["items"]])
    want = before["trained_events"] + sent
    wait_for(trainer_at(ratings_end(), want), 300, f"the trainer at {want} events")
    stack.measured["trained_events_at_end"] = want


def test_down_leaves_nothing_behind(stack: Stack) -> None:
    stack.measured["memory_at_end"] = stack.memory()
    stack.down()
    assert stack.leftovers() == []
