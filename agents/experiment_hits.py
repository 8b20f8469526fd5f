"""The online metric of each experiment: impressions matched with ratings into hits per
variant, judged by the guardrail, published as signed tallies.

:class:`HitCounter` holds one :class:`models.online_metric.Tally` per experiment, fed by
the impressions the scorers write and the ratings, through one
:class:`models.impressions.HitMatcher`; :meth:`HitCounter.judge` asks the guardrail about every
running experiment and returns the ones to stop: the mSPRT on the two hit-rates
(:mod:`models.sequential`) for ``ab``, the paired sign test on per-list wins
(:mod:`models.paired`) for ``interleave``.
:class:`HitReader` runs it on one worker (the trainer role: every partition, no group),
publishes each experiment's tally to the compacted results topic with the offsets it
covers, and restarts from them (the impressions of the last window are read again, to
match ratings, but not counted twice). A rating is matched ``rating_grace`` seconds after
it is read, so the impressions shown before it (scorers send them a moment after the reply)
are in.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.experiment_registry import ExperimentRegistry, encode_signed
from agents.experiment_results import Result, export, open_consumer, results_until_end
from agents.health import ReaderHealth
from agents.kafka import partitions_of, retry_forever
from agents.ports import reference_time
from models.events import MAX_FUTURE_SKEW_SECONDS, Rating
from models.experiment import Experiment
from models.impressions import HitMatcher, Impressions
from models.interleaving import TEAMS, Team
from models.online_metric import Counts, Tally
from models.paired import ListOutcomes, PairedTest, Wins
from models.sequential import SequentialTest, Verdict
from models.signing import Keyring
from models.wire import Undecodable, decode_rating

log = logging.getLogger(__name__)

RATING_GRACE = 1.0
"""The service's ``rating_grace``: seconds a rating waits, once read, before it is matched.
Scorers send a reply's impressions up to ``agents.experiment_serving.IMPRESSIONS_LINGER``
(0.25 s) after the reply; a user who rated at once would otherwise find nothing shown."""


@dataclass
class HitCounter:
    """Tallies of every experiment from impressions and ratings (no I/O, no clock)."""

    registry: ExperimentRegistry
    matcher: HitMatcher
    test: SequentialTest
    tallies: dict[str, Tally] = field(default_factory=dict)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    base: dict[str, Result] = field(default_factory=dict)
    """Counts restored from the results topic (added to the tallies)."""
    refused: int = 0
    paired: PairedTest | None = None
    """The ``interleave`` experiments' test (default: the sequential test's alpha)."""
    lists: dict[str, ListOutcomes] = field(default_factory=dict)
    """Each ``interleave`` experiment's lists (their wins count from this process's start)."""
    latest: float = 0.0
    """The latest event time seen (a list's window closes by it)."""

    def _tally(self, name: str) -> Tally | None:
        experiment = self.registry.get(name)
        if experiment is None:
            return None
        restored = self.base.get(name)
        if restored is not None and restored.start != experiment.start:
            del self.base[name]  # a new experiment of that name: its old counts do not apply
            self.tallies.pop(name, None)
            self.verdicts.pop(name, None)
            self.lists.pop(name, None)
        tally = self.tallies.get(name)
        if tally is None:
            tally = self.tallies[name] = Tally()
        return tally

    def show(self, impressions: Impressions, count: bool = True) -> None:
        """An impressions message; with ``count`` False it only arms the matcher (read
        again after a restart: already counted)."""
        experiment = self.registry.get(impressions.experiment)
        if experiment is None or impressions.ts < experiment.start:
            return
        self.latest = max(self.latest, impressions.ts)
        new = self.matcher.show(impressions)
        if count:
            tally = self._tally(impressions.experiment)
            if tally is not None:
                tally.show(new)
                if experiment.method == "interleave":
                    self._lists(experiment.name).show(impressions.user, impressions.ts, new)

    def _lists(self, name: str) -> ListOutcomes:
        lists = self.lists.get(name)
        if lists is None:
            lists = self.lists[name] = ListOutcomes(self.matcher.window)
        return lists

    def idle(self) -> bool:
        """Whether no rating can change anything now: no experiment runs, no impression is
        pending, no interleaved list is open (the reader then skips decoding ratings)."""
        return (
            not self.registry.running()
            and not len(self.matcher)
            and not any(len(lists) for lists in self.lists.values())
        )

    def rate(self, rating: Rating) -> None:
        self.latest = max(self.latest, rating.ts)
        hit = self.matcher.match(rating)
        if hit is not None:
            tally = self._tally(hit.experiment)
            if tally is not None:
                tally.hit(hit.team)
                if hit.experiment in self.lists:
                    self.lists[hit.experiment].hit(hit.user, hit.item, hit.team)

    def wins(self, name: str) -> Wins:
        """The interleaved lists of ``name`` won by each team, up to the latest event time
        less the hit window (a list is judged once its window has passed)."""
        lists = self.lists.get(name)
        return lists.close(self.latest) if lists is not None else Wins()

    def counts(self, name: str) -> dict[Team, Counts]:
        tally = self.tallies.get(name)
        restored = self.base.get(name)
        out: dict[Team, Counts] = {}
        for team in TEAMS:
            now = tally.counts(team) if tally is not None else Counts()
            old = restored.counts[team] if restored is not None else Counts()
            out[team] = Counts(now.impressions + old.impressions, now.hits + old.hits)
        return out

    def judge(self) -> list[tuple[Experiment, Verdict]]:
        """Look at every running experiment once; the ones the guardrail stops."""
        stops = []
        running = self.registry.running()
        for name in set(self.lists) - {e.name for e in running}:
            del self.lists[name]  # a stopped experiment's open lists are no longer judged
        for experiment in running:
            previous = self.verdicts.get(experiment.name)
            if experiment.method == "interleave":
                paired = self.paired or PairedTest(alpha=self.test.alpha)
                verdict = paired.verdict(self.wins(experiment.name), previous)
            else:
                counts = self.counts(experiment.name)
                verdict = self.test.verdict(counts["control"], counts["candidate"], previous)
            self.verdicts[experiment.name] = verdict
            if verdict.stop:
                stops.append((experiment, verdict))
        return stops

    def result(
        self, experiment: Experiment, catalog_size: int, now: float, positions: dict[str, int]
    ) -> Result:
        counts = self.counts(experiment.name)
        tally = self.tallies.get(experiment.name) or Tally()
        restored = self.base.get(experiment.name)
        coverage: dict[Team, float] = {}
        for team, summary in tally.summary(catalog_size).items():
            before = restored.coverage[team] if restored is not None else 0.0
            coverage[team] = max(before, summary.coverage)
        verdict = self.verdicts.get(experiment.name)
        return Result(
            experiment.name,
            experiment.start,
            counts,
            coverage,
            verdict.p_value if verdict else 1.0,
            verdict.decision if verdict else "continue",
            verdict.reason if verdict else "no look yet",
            now,
            positions,
        )


Send = Callable[[str, bytes, bytes], Awaitable[Any]]
"""``send(topic, key, value)``: delivered when awaited."""


@dataclass
class HitReader:
    """Runs a :class:`HitCounter` on every partition of impressions and ratings; publishes
    tallies every ``publish_seconds`` and stops what the guardrail stops."""

    counter: HitCounter
    kafka: Mapping[str, Any]
    impressions_topic: str
    ratings_topic: str
    results_topic: str
    experiments_topic: str
    keys: Keyring
    send: Send
    catalog_size: Callable[[], int]
    publish_seconds: float = 5.0
    health: ReaderHealth | None = None
    results: dict[str, Result] = field(default_factory=dict)
    """The newest result of each experiment (the web view)."""
    rating_grace: float = 0.0
    """Seconds a rating read waits before it is matched (0: at once)."""
    _counted_from: dict[TopicPartition, int] = field(default_factory=dict)
    _held: deque[tuple[float, TopicPartition, int, Rating]] = field(default_factory=deque)
    """Ratings read and not yet matched: when read, where from, and the rating."""

    async def run(self, retry_seconds: float = 5.0) -> None:
        await retry_forever("experiment-hits", self.follow, retry_seconds, health=self.health)

    async def follow(self) -> None:
        self._held.clear()  # read again from the positions published (they stop before them)
        consumer = await open_consumer(self.kafka)
        try:
            await self._restore(consumer)
            impressions = [
                TopicPartition(self.impressions_topic, p)
                for p in await partitions_of(self.kafka, self.impressions_topic)
            ]
            ratings = [
                TopicPartition(self.ratings_topic, p)
                for p in await partitions_of(self.kafka, self.ratings_topic)
            ]
            consumer.assign(impressions + ratings)
            await self._seek(consumer, impressions, ratings)
            last = time.monotonic()
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                self._handle(batch)
                if time.monotonic() - last >= self.publish_seconds:
                    last = time.monotonic()
                    await self.publish(await self._positions(consumer, impressions + ratings))
        finally:
            await consumer.stop()

    def _handle(
        self, batch: Mapping[TopicPartition, Sequence[Any]], wall: float | None = None
    ) -> None:
        """Impressions first, then ratings: a rating is matched after what was shown.

        Both are judged by the trainer's event-time rule (:func:`models.events.
        check_event_time` against the record's :func:`agents.ports.reference_time`): the
        counter's clock is the latest event time it saw, and one record stamped far ahead
        (anyone can write these topics) would otherwise close every open list at once.
        With a ``rating_grace``, ratings are held that long after they are read (also
        through empty batches: the reader calls this after every fetch). ``wall``: the
        time read (default now)."""
        wall = time.time() if wall is None else wall
        for tp, records in batch.items():
            if tp.topic != self.impressions_topic:
                continue
            counted_from = self._counted_from.get(tp, 0)
            for record in records:
                try:
                    shown = Impressions.parse(record.key, record.value)
                except Undecodable:
                    self.counter.refused += 1
                    continue
                if shown.ts > reference_time(record, wall) + MAX_FUTURE_SKEW_SECONDS:
                    self.counter.refused += 1
                    continue
                self.counter.show(shown, count=record.offset >= counted_from)
        idle = not self._held and self.counter.idle()  # every rating would be a no-op
        for tp, records in batch.items():
            if idle or tp.topic != self.ratings_topic:
                continue
            for record in records:
                try:
                    rating = decode_rating(
                        record.key,
                        record.value,
                        max_bytes=64 * 1024,
                        reference=reference_time(record, wall),
                    )
                except Undecodable:
                    continue  # the trainer dead-letters it
                if self.rating_grace > 0:
                    self._held.append((wall, tp, record.offset, rating))
                else:
                    self.counter.rate(rating)
        held = self._held
        while held and held[0][0] + self.rating_grace <= wall:
            self.counter.rate(held.popleft()[3])

    async def _restore(self, consumer: AIOKafkaConsumer) -> None:
        """The tallies and positions last published (a restart goes on from them)."""
        for result in await results_until_end(consumer, self.results_topic, self.keys):
            self.counter.base[result.experiment] = result
            self.results[result.experiment] = result
            for where, offset in result.positions.items():
                topic, _, partition = where.rpartition(":")
                key = TopicPartition(topic, int(partition))
                self._counted_from[key] = max(self._counted_from.get(key, 0), offset)

    async def _seek(
        self,
        consumer: AIOKafkaConsumer,
        impressions: list[TopicPartition],
        ratings: list[TopicPartition],
    ) -> None:
        """Ratings from where the tallies end (else the earliest running start);
        impressions from a window before that, to match ratings again."""
        starts = [e.start for e in self.counter.registry.running()]
        earliest = min(starts) if starts else time.time()
        window = self.counter.matcher.window
        for tps, since in ((ratings, earliest), (impressions, earliest - window)):
            found = await consumer.offsets_for_times(
                {tp: int(max(0.0, since) * 1000) for tp in tps}
            )
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                stamp = found.get(tp)
                offset = stamp.offset if stamp is not None else ends[tp]
                if tp.topic == self.ratings_topic and tp in self._counted_from:
                    offset = self._counted_from[tp]
                elif tp in self._counted_from:  # impressions: a window before, not counted
                    offset = min(offset, self._counted_from[tp])
                consumer.seek(tp, offset)

    async def _positions(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> dict[str, int]:
        """Where the counted records end: a partition's position, or its first rating
        still held (a restart reads it again)."""
        positions = {tp: await consumer.position(tp) for tp in partitions}
        return {f"{tp.topic}:{tp.partition}": n for tp, n in self.counted(positions).items()}

    def counted(self, positions: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """``positions`` (the consumer's) less the ratings still held."""
        out = dict(positions)
        for _, tp, offset, _ in self._held:
            if tp in out:
                out[tp] = min(out[tp], offset)
        return out

    async def publish(self, positions: dict[str, int]) -> None:
        """Judge, stop what the guardrail stops, and publish every running tally."""
        for experiment, verdict in self.counter.judge():
            stopped = experiment.with_status("guardrail-stopped", verdict.reason[:500])
            await self.send(self.experiments_topic, *encode_signed(stopped, self.keys))
            self.counter.registry.apply(*encode_signed(stopped, self.keys))
            log.warning("Guardrail stopped experiment %s: %s", experiment.name, verdict.reason)
        now = time.time()
        size = self.catalog_size()
        for experiment in self.counter.registry.all():
            result = self.counter.result(experiment, size, now, positions)
            last = self.results.get(experiment.name)
            if not experiment.running and last is not None and last.counts == result.counts:
                continue  # a stopped experiment's final tally is published once
            self.results[experiment.name] = result
            export(result)
            await self.send(self.results_topic, *result.encode(self.keys))
