"""An experiment's published tally (the compacted results topic): per variant
impressions, hits and coverage, the guardrail's p-value and verdict, and the offsets the
counts cover; signed with the model key like the definitions. :class:`ResultBook` keeps
the newest of each experiment and a bounded history (the dashboard's curves)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents import experiment_metrics as em
from models.events import InvalidEvent
from models.experiment import Experiment, check_name
from models.interleaving import TEAMS, Team
from models.online_metric import Counts, wilson_interval
from models.signing import SIGNATURE_FIELD, Keyring, SignatureError, check_fields, sign_fields
from models.wire import Undecodable, decode_object, encode_json

RESULTS_PURPOSE = "experiment-results"


@dataclass
class Result:
    """What the results topic holds for one experiment: its tally and the verdict."""

    experiment: str
    start: float
    counts: dict[Team, Counts]
    coverage: dict[Team, float]
    p_value: float
    decision: str
    reason: str
    at: float
    positions: dict[str, int] = field(default_factory=dict)
    """``"topic:partition"`` -> the next offset these counts do not include."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "start": self.start,
            "variants": {
                team: {
                    "impressions": c.impressions,
                    "hits": c.hits,
                    "coverage": self.coverage.get(team, 0.0),
                }
                for team, c in self.counts.items()
            },
            "p_value": self.p_value,
            "decision": self.decision,
            "reason": self.reason,
            "at": self.at,
            "positions": self.positions,
        }

    def encode(self, keys: Keyring) -> tuple[bytes, bytes]:
        body = self.to_dict()
        body[SIGNATURE_FIELD] = sign_fields(body, keys, purpose=RESULTS_PURPOSE)
        return self.experiment.encode(), encode_json(body)

    @classmethod
    def parse(cls, key: bytes | None, value: bytes | None, keys: Keyring) -> Result:
        """A signed results record, or :class:`Undecodable` / ``SignatureError``."""
        obj = decode_object(value, max_bytes=64 * 1024)
        check_fields(obj, keys, purpose=RESULTS_PURPOSE)
        try:
            name = check_name(obj["experiment"], "experiment")
            if key != name.encode():
                raise InvalidEvent("results must be keyed by the experiment's name")
            variants = obj["variants"]
            counts = {t: Counts(variants[t]["impressions"], variants[t]["hits"]) for t in TEAMS}
            coverage = {t: float(variants[t]["coverage"]) for t in TEAMS}
            positions = {str(k): int(v) for k, v in dict(obj["positions"]).items()}
            return cls(
                name,
                float(obj["start"]),
                counts,
                coverage,
                float(obj["p_value"]),
                str(obj["decision"]),
                str(obj["reason"]),
                float(obj["at"]),
                positions,
            )
        except InvalidEvent as exc:
            raise Undecodable("invalid", f"not experiment results: {exc.reason}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise Undecodable("invalid", f"not experiment results: {exc}") from None


@dataclass
class ResultBook:
    """The newest result of each experiment, and its last ``points`` results."""

    keys: Keyring
    points: int = 720
    newest: dict[str, Result] = field(default_factory=dict)
    history: dict[str, deque[Result]] = field(default_factory=dict)
    refused: int = 0

    def apply(self, key: bytes | None, value: bytes | None) -> Result | None:
        try:
            result = Result.parse(key, value, self.keys)
        except (Undecodable, SignatureError):
            self.refused += 1
            return None
        self.add(result)
        return result

    def add(self, result: Result) -> None:
        last = self.newest.get(result.experiment)
        if last is not None and last.start != result.start:
            self.history.pop(result.experiment, None)  # a new experiment of that name
        self.newest[result.experiment] = result
        self.history.setdefault(result.experiment, deque(maxlen=self.points)).append(result)

    def curve(self, name: str, start: float) -> list[dict[str, Any]]:
        """Per result of the experiment started at ``start``: each variant's hit-rate and
        its 95% Wilson interval."""
        points = []
        for result in self.history.get(name, ()):
            if result.start != start:
                continue
            point: dict[str, Any] = {"t": result.at}
            for team, counts in result.counts.items():
                low, high = wilson_interval(counts)
                point[team] = [counts.rate, low, high]
            points.append(point)
        return points


def summary(experiment: Experiment, result: Result | None) -> dict[str, Any]:
    """An experiment's definition with its tally, when ``result`` is of this experiment:
    per variant impressions, hits, hit-rate and 95% interval, coverage; the guardrail's
    p-value, decision and whether it is significant (the CLI and ``/experiments/``)."""
    body = experiment.to_dict()
    if result is None or result.start != experiment.start:
        return body
    variants = {}
    for team, counts in result.counts.items():
        low, high = wilson_interval(counts)
        variants[team] = {
            "impressions": counts.impressions,
            "hits": counts.hits,
            "hit_rate": counts.rate,
            "interval": [low, high],
            "coverage": result.coverage.get(team, 0.0),
        }
    body.update(
        variants=variants,
        p_value=result.p_value,
        decision=result.decision,
        significant=result.decision != "continue",
        verdict=result.reason,
        as_of=result.at,
    )
    return body


def export(result: Result) -> None:
    """``result`` as the Prometheus gauges of :mod:`agents.experiment_metrics`."""
    name = result.experiment
    for team, counts in result.counts.items():
        em.IMPRESSIONS.labels(name, team).set(counts.impressions)
        em.HITS.labels(name, team).set(counts.hits)
        low, high = wilson_interval(counts)
        for bound, value in (("rate", counts.rate), ("low", low), ("high", high)):
            em.HIT_RATE.labels(name, team, bound).set(value)
    em.P_VALUE.labels(name).set(result.p_value)


async def open_consumer(kafka: Mapping[str, Any]) -> AIOKafkaConsumer:
    """A started consumer of no group (every worker reads every record); one that
    cannot connect is closed again before the error goes up."""
    consumer = AIOKafkaConsumer(
        **kafka, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def results_until_end(consumer: AIOKafkaConsumer, topic: str, keys: Keyring) -> list[Result]:
    """Every signed result on ``topic`` (one partition) up to its end now, in order;
    ``consumer`` is left assigned to it."""
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    end = (await consumer.end_offsets([tp]))[tp]
    out = []
    while await consumer.position(tp) < end:
        for records in (await consumer.getmany(tp, timeout_ms=1000)).values():
            for record in records:
                try:
                    out.append(Result.parse(record.key, record.value, keys))
                except (Undecodable, SignatureError):
                    continue
    return out


async def read_results(kafka: Mapping[str, Any], topic: str, keys: Keyring) -> dict[str, Result]:
    """The newest signed results of each experiment on the results topic (the CLI)."""
    consumer = await open_consumer(kafka)
    try:
        return {r.experiment: r for r in await results_until_end(consumer, topic, keys)}
    finally:
        await consumer.stop()
