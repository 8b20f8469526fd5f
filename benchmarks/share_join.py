"""A scorer joining a group of one, and leaving it, end to end on the dev services (issue 19):
how long until each scorer serves its partitions' users from the model, and its memory.

    python -m benchmarks.share --join [--quick | --users N] [--json]

A snapshot of N users x 20k items x 64 (:func:`benchmarks.share.snapshot_bytes`, signed
with the run's key, with the ``delta_chain`` mark a share's load needs) is the current
model of an S3 store of its own; the requests topic has 4 partitions and the scorers run
with ``STREAMREC_SCORER_SHARE=true`` (every other setting the default). A probe sends one
request for a user of each partition every 0.1 s through the request path clients use
(``rec-requests`` → ``rec-responses``) and records each reply's ``source``; the scorers'
logs say when the group assigned them partitions and when their views changed. Then:

1. scorer A starts alone, until every partition's users get model replies (its cold start);
2. scorer B starts: the time from its start, and from its assignment, until every one of
   its partitions' users gets model replies (the join); A's narrowing and the gap in the
   replies for B's partitions between A's last reply and B's first model one;
3. B stops (SIGTERM): the time until A serves B's partitions' users from the model again;
4. RSS (``/proc``) of A alone, of A and B after the join, of A after the leave.

Beside them, the CPU of a share's load against every user's, from the same snapshot
(:func:`benchmarks.share.load_cases`, the figure ``benchmarks.share`` reports).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from app.kafka import kafka_client_options
from app.settings import Settings, model_keys
from app.stores import store_from_settings
from app.topics import ensure_topics
from benchmarks.common import PROJECT_ROOT, Figure, machine
from benchmarks.service import tail_consumer
from benchmarks.share import load_cases, snapshot_bytes, user_id
from devtools.workers import WorkerProcess, create_bucket, free_port, isolated_env, settings_for
from models.events import RecRequest
from models.ownership import partitions_of
from models.snapshot import sign_manifest
from models.wire import Reply, Undecodable, encode_request

PARTITIONS = 4
TARGET_SECONDS, GOAL_SECONDS = 10.0, 2.0  # issue 19: the join at 1M users
PROBE_USERS = 16  # per partition, drawn from the snapshot's users
TICK = 0.1  # seconds between rounds of the probe (one request per partition a round)
_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] \[\d+\] \[\w+\] (.*?)\s*$")
_PARTS = re.compile(r"\[([\d, ]*)\] of \d+")


def say(message: str) -> None:
    """A progress line (stderr: ``--json`` keeps stdout to the report)."""
    print(f"{time.strftime('%H:%M:%S')} join: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Answer:
    partition: int
    sent: float  # wall clock
    received: float
    source: str
    loading: bool


@dataclass
class Probe:
    """Requests for users of every partition, a round every :data:`TICK` seconds, in a
    thread of its own; every reply is recorded with its send and receive times."""

    settings: Settings
    users: dict[int, list[str]]
    answers: list[Answer] = field(default_factory=list)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def start(self) -> Probe:
        self._thread = threading.Thread(target=self._main, name="probe", daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise TimeoutError(f"the probe did not start: {self._error}")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by start() or the report's counts
            self._error = exc
            self._ready.set()

    async def _run(self) -> None:
        s = self.settings
        consumer = await tail_consumer(s, s.responses_topic)
        producer = AIOKafkaProducer(**kafka_client_options(s), linger_ms=0)
        await producer.start()
        waiting: dict[str, tuple[int, float]] = {}
        reader = asyncio.create_task(self._read(consumer, waiting))
        self._ready.set()
        try:
            n = 0
            while not self._stop.is_set():
                for partition, users in self.users.items():
                    request = RecRequest(uuid.uuid4().hex, users[n % len(users)], 10, True, None)
                    key, value = encode_request(request)
                    waiting[request.request_id] = (partition, time.time())
                    await producer.send(s.requests_topic, key=key, value=value)
                    self.sent += 1
                n += 1
                await asyncio.sleep(TICK)
        finally:
            reader.cancel()
            await producer.stop()
            await consumer.stop()

    async def _read(self, consumer: Any, waiting: dict[str, tuple[int, float]]) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for messages in batch.values():
                for message in messages:
                    try:
                        reply = Reply.parse(message.value)
                    except Undecodable:
                        continue
                    asked = waiting.pop(reply.request_id, None)
                    if asked is not None:
                        self.answers.append(
                            Answer(asked[0], asked[1], now, reply.source, reply.loading)
                        )

    def first_model(self, partitions: set[int], after: float) -> float | None:
        """When every one of ``partitions`` had had a model reply received after ``after``
        (None: not yet)."""
        firsts = []
        for p in partitions:
            got = [
                a.received
                for a in list(self.answers)
                if a.partition == p and a.received >= after and a.source == "model"
            ]
            if not got:
                return None
            firsts.append(min(got))
        return max(firsts)

    def last_reply(self, partitions: set[int], before: float) -> float | None:
        got = [a.received for a in list(self.answers) if a.partition in partitions]
        got = [t for t in got if t < before]
        return max(got) if got else None

    def since(self, partitions: set[int], after: float) -> dict[str, int]:
        """Replies for ``partitions`` received after ``after``, by source (``loading``:
        popularity replies marked as such)."""
        counts: dict[str, int] = {}
        for a in list(self.answers):
            if a.partition in partitions and a.received >= after:
                kind = "loading" if a.loading else a.source
                counts[kind] = counts.get(kind, 0) + 1
        return counts


def log_events(path: Path, after: float = 0.0) -> list[tuple[float, str]]:
    """(wall time, message) of each line of a worker's log stamped at or after ``after``."""
    events = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        match = _LOG_LINE.match(line)
        if match:
            stamp = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp >= after:
                events.append((stamp, match[2]))
    return events


def first_event(
    path: Path, prefix: str, after: float = 0.0, where: Callable[[str], bool] = lambda m: True
) -> tuple[float, str] | None:
    for stamp, message in log_events(path, after):
        if message.startswith(prefix) and where(message):
            return stamp, message
    return None


def parts_of(message: str) -> set[int]:
    """The partitions a ``... [0, 1] of 4`` log line names."""
    found = _PARTS.search(message)
    if found is None:
        return set()
    return {int(p) for p in found[1].split(",") if p.strip()}


def rss_mib(worker: WorkerProcess) -> float | None:
    """The worker's resident memory (MiB; None without ``/proc``)."""
    if worker.proc is None:
        return None
    try:
        with open(f"/proc/{worker.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _users_by_partition(users: int) -> dict[int, list[str]]:
    """:data:`PROBE_USERS` snapshot users of each partition (the producers' partitioner)."""
    ids = [user_id(n) for n in range(min(users, 200 * PROBE_USERS))]
    picked: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    for uid, p in zip(ids, partitions_of(ids, PARTITIONS).tolist(), strict=True):
        if len(picked[p]) < PROBE_USERS:
            picked[p].append(uid)
    return picked


def _publish_snapshot(settings: Settings, users: int, lineage: str, path: Path) -> int:
    """The signed snapshot as the store's current v1 (and its bytes at ``path``, for the
    CPU cases); returns the payload's size."""
    chain = {"lineage": lineage, "version": 1, "offset": 0}
    payload, manifest = snapshot_bytes(users, chain=chain)
    manifest = dict(sign_manifest(manifest, model_keys(settings)))  # type: ignore[arg-type]

    async def put() -> None:
        async with store_from_settings(settings) as store:
            await store.put(1, payload, manifest)
            await store.promote(1)

    asyncio.run(put())
    path.write_bytes(payload)
    path.with_suffix(".json").write_text(json.dumps(manifest))
    return len(payload)


def _fetch_seconds(settings: Settings) -> float:
    """One ``get`` of v1 from the store (the scorers' S3 fetch and its sha256 check), in
    this process: the part of a load that is not the scorer's CPU."""

    async def get() -> float:
        async with store_from_settings(settings) as store:
            start = time.perf_counter()
            await store.get(1)
            return time.perf_counter() - start

    return asyncio.run(get())


def _wait(what: str, done: Callable[[], Any], timeout: float, status: Callable[[], str]) -> Any:
    """Poll ``done`` until it returns something truthy, a progress line every 2 s."""
    start = time.monotonic()
    said = start
    while time.monotonic() - start < timeout:
        got = done()
        if got:
            return got
        if time.monotonic() - said >= 2.0:
            said = time.monotonic()
            say(f"waiting for {what} ({said - start:.0f} s): {status()}")
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not within {timeout:g} s ({status()})")


class Spy:
    """``py-spy record`` of one worker (raw collapsed stacks, idle threads too) while a step
    runs: where a join's or a leave's wall time goes."""

    def __init__(self, worker: WorkerProcess, out: Path | None) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        if out is None or worker.proc is None:
            return
        beside = Path(sys.executable).parent / "py-spy"  # the venv's (a dev dependency)
        spy = str(beside) if beside.exists() else "py-spy"
        self.proc = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(worker.proc.pid),
                "--rate",
                "50",
                "--idle",
                "--threads",
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(30)


def run(users: int, profile: Path | None = None) -> dict[str, Any]:
    base = Settings()
    prefix = f"bench-join-{uuid.uuid4().hex[:8]}"
    home = PROJECT_ROOT / "var" / "bench" / prefix
    asyncio.run(create_bucket(base, prefix))
    env = isolated_env(
        prefix,
        base,
        model_store=f"s3://{prefix}/m",
        datadir=home / "faust",
        topic_partitions=PARTITIONS,
        scorer_share="true",
        model_key=f"bench-join-key-{uuid.uuid4().hex}",
    )
    settings = settings_for(env)
    asyncio.run(ensure_topics(settings))
    timeout = 120 + users / 5_000  # 1M users: 320 s for any one step
    report: dict[str, Any] = {"users": users, "machine_before": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "snapshot.npz"
        say(f"writing {users:,} users x 20k items x 64 to {settings.model_store} (signed)")
        report["snapshot_mib"] = _publish_snapshot(settings, users, prefix, path) / 2**20
        gc.collect()
        say("the CPU of a share's load and of every user's (fresh processes)")
        report["cpu"] = load_cases(path)
        report["s3_get_s"] = _fetch_seconds(settings)
        gc.collect()
        say(f"one S3 get of the payload (and its sha256): {report['s3_get_s']:.1f} s")
    probe = Probe(settings, _users_by_partition(users)).start()
    a = WorkerProcess("scorer", free_port(), home / "scorer-a.log", env)
    b = WorkerProcess("scorer", free_port(), home / "scorer-b.log", env)
    everything = set(range(PARTITIONS))
    try:
        # 1. A alone: its cold start, every partition's users from the model.
        a_start = time.time()
        a.start()
        say(f"scorer A started (pid {a.proc.pid if a.proc else '?'}, log {a.log_path})")
        a_served = _wait(
            "A to serve every partition from the model",
            lambda: probe.first_model(everything, a_start),
            timeout,
            lambda: f"A RSS {rss_mib(a) or 0:.0f} MiB, replies {probe.since(everything, a_start)}",
        )
        time.sleep(2.0)  # the load's transient memory is gone
        report["a_alone"] = {"cold_start_s": a_served - a_start, "rss_mib": rss_mib(a)}
        say(f"A serves every user {a_served - a_start:.1f} s after its start")

        # 2. B joins.
        b_start = time.time()
        b.start()
        spy = Spy(b, profile and profile / "join-b.txt")
        say(f"scorer B started (pid {b.proc.pid if b.proc else '?'}, log {b.log_path})")

        def b_assigned() -> tuple[float, str] | None:
            return first_event(
                b.log_path, "Holding the users of partitions", where=lambda m: bool(parts_of(m))
            )

        def join_status() -> str:
            got = b_assigned()
            owned = parts_of(got[1]) if got else set()
            replies = probe.since(owned, got[0]) if got else {}
            return f"B owns {sorted(owned)}, B RSS {rss_mib(b) or 0:.0f} MiB, replies {replies}"

        assigned, line = _wait("B's assignment", b_assigned, timeout, join_status)
        mine = parts_of(line)
        say(f"B assigned partitions {sorted(mine)} {assigned - b_start:.1f} s after its start")
        served = _wait(
            "B to serve its partitions from the model",
            lambda: probe.first_model(mine, assigned),
            timeout,
            join_status,
        )
        spy.stop()
        say(f"B serves its partitions' users {served - b_start:.1f} s after its start")
        narrowed = _wait(
            "A to narrow its view",
            lambda: first_event(a.log_path, "Narrowed the view", after=b_start),
            timeout,
            join_status,
        )[0]
        time.sleep(3.0)  # a few more replies, and the narrowed view's memory settled
        b_loaded = first_event(b.log_path, "Serving model v")
        b_up = first_event(b.log_path, "[^Worker]: Starting")
        a_last = probe.last_reply(mine, assigned)
        report["join"] = {
            "b_partitions": sorted(mine),
            "from_start_s": served - b_start,
            "from_assignment_s": served - assigned,
            "start_to_assignment_s": assigned - b_start,
            "start_to_worker_up_s": None if b_up is None else b_up[0] - b_start,
            "assignment_to_view_loaded_s": None if b_loaded is None else b_loaded[0] - assigned,
            "gap_s": None if a_last is None else served - a_last,
            "a_narrowed_after_b_start_s": narrowed - b_start,
            "replies_since_assignment": probe.since(mine, assigned),
            "replies_after_served": probe.since(mine, served + 1e-6),
            "a_rss_mib": rss_mib(a),
            "b_rss_mib": rss_mib(b),
        }

        # 3. B leaves.
        spy = Spy(a, profile and profile / "leave-a.txt")
        left = time.time()
        b.stop()
        stopped = time.time()
        say(f"scorer B stopped ({stopped - left:.1f} s to exit)")

        def a_all() -> tuple[float, str] | None:
            return first_event(
                a.log_path,
                "Holding the users of partitions",
                after=left,
                where=lambda m: parts_of(m) == everything,
            )

        def leave_status() -> str:
            got = a_all()
            replies = probe.since(mine, got[0]) if got else {}
            return f"A owns all: {bool(got)}, A RSS {rss_mib(a) or 0:.0f} MiB, replies {replies}"

        a_assigned = _wait("A's assignment of every partition", a_all, timeout, leave_status)[0]
        back = _wait(
            "A to serve B's partitions from the model",
            lambda: probe.first_model(mine, a_assigned),
            timeout,
            leave_status,
        )
        spy.stop()
        say(f"A serves B's partitions' users {back - left:.1f} s after B's stop")
        time.sleep(3.0)
        loaded = first_event(a.log_path, "Serving partitions", after=left)
        report["leave"] = {
            "from_stop_s": back - left,
            "from_assignment_s": back - a_assigned,
            "stop_to_assignment_s": a_assigned - left,
            "b_exit_s": stopped - left,
            "share_loader_line": None if loaded is None else loaded[1],
            "replies_since_assignment": probe.since(mine, a_assigned),
            "a_rss_mib": rss_mib(a),
        }
    finally:
        probe.stop()
        for w in (b, a):
            w.stop()
    report["requests"] = {"sent": probe.sent, "answered": len(probe.answers)}
    report["machine"] = machine()
    report["logs"] = str(home)
    return report


def figures_of(r: dict[str, Any]) -> list[Figure]:
    """The join's figures, each a ratio within the run (or to the issue's 10 s target)."""
    size = f"{r['users'] // 1000}k users x 20k items"
    join, leave, alone, cpu = r["join"], r["leave"], r["a_alone"], r["cpu"]
    return [
        Figure(
            f"a scorer joining: its start -> its partitions served from the model / 10 s ({size})",
            TARGET_SECONDS,
            join["from_start_s"],
            1.0,
            "lower",
            "s",
            f"goal {GOAL_SECONDS:g} s; from its assignment {join['from_assignment_s']:.1f} s",
        ),
        Figure(
            f"a scorer joining / the first scorer's cold start (every user) ({size})",
            alone["cold_start_s"],
            join["from_start_s"],
            1.0,
            "lower",
            "s",
        ),
        Figure(
            f"a scorer leaving: its stop -> the survivor serves its users / 10 s ({size})",
            TARGET_SECONDS,
            leave["from_stop_s"],
            1.0,
            "lower",
            "s",
        ),
        Figure(
            f"scorer RSS after a join, the joiner (2 of 4 partitions) / one alone ({size})",
            alone["rss_mib"],
            join["b_rss_mib"],
            0.6,
            "lower",
            "MiB",
            f"the one narrowed to 2 of 4: {join['a_rss_mib'] or 0:.0f} MiB",
        ),
        Figure(
            f"a share's snapshot load / the full load, same snapshot ({size})",
            cpu["all"]["seconds"],
            cpu["share"]["seconds"],
            1.0,
            "lower",
            "s",
        ),
    ]


def main(users: int, as_json: bool, profile: Path | None = None) -> None:
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    report = run(users, profile)
    if as_json:
        print(json.dumps({**report, "figures": [f.to_dict() for f in figures_of(report)]}))
        return
    print(json.dumps(report, indent=2))
    for f in figures_of(report):
        ratio = f.ratio
        print(f"{f.figure}: {f.value:.2f} vs {f.baseline:.2f} {f.unit} = {ratio:.2f}  {f.note}")
