"""The hit counter: impressions and ratings into per-variant tallies, the guardrail's stop,
and the signed results record (no Kafka)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.experiment_hits import HitCounter, HitReader
from agents.experiment_registry import ExperimentRegistry, decode_signed, encode_signed
from agents.experiment_results import Result, ResultBook, summary
from models.events import Rating
from models.experiment import Experiment, Variant
from models.impressions import HitMatcher, Impressions
from models.online_metric import Counts
from models.paired import Wins
from models.sequential import SequentialTest
from models.signing import Keyring

KEYS = Keyring(b"k" * 32)
EXP = Experiment("g", Variant(), Variant(model=3), "ab", 1.0, 1000.0)


def counter(min_impressions: int = 50) -> HitCounter:
    registry = ExperimentRegistry(KEYS)
    registry.apply(*encode_signed(EXP, KEYS))
    return HitCounter(registry, HitMatcher(3600, 4.0), SequentialTest(0.05, 0.05, min_impressions))


def show(c: HitCounter, user: str, item: str, team: str, ts: float = 2000.0, count=True) -> None:
    c.show(Impressions.of("g", user, ts, [(item, team)]), count=count)


def rate(c: HitCounter, user: str, item: str, stars: float, ts: float = 2010.0) -> None:
    c.rate(Rating(f"e-{user}-{item}", user, item, stars, ts))


def test_positive_ratings_within_the_window_are_hits_of_the_team_that_showed_the_item():
    c = counter()
    show(c, "u1", "a", "control")
    show(c, "u2", "b", "candidate")
    show(c, "u3", "c", "candidate")
    rate(c, "u1", "a", 5)  # hit for control
    rate(c, "u2", "b", 2)  # not positive
    rate(c, "u3", "c", 5, ts=2000.0 + 7200)  # past the window
    rate(c, "u3", "a", 5)  # never shown to u3
    assert c.counts("g") == {"control": Counts(1, 1), "candidate": Counts(2, 0)}
    show(c, "u4", "x", "control", ts=10.0)  # before the experiment started: not counted
    show(c, "u5", "y", "candidate", count=False)  # read again after a restart
    rate(c, "u5", "y", 5)
    assert c.counts("g") == {"control": Counts(1, 1), "candidate": Counts(2, 1)}


def test_the_guardrail_stops_a_worse_candidate_and_publishes_it_signed():
    c = counter()
    for n in range(400):
        show(c, f"c{n}", "i", "control")
        show(c, f"k{n}", "i", "candidate")
        if n % 2 == 0:
            rate(c, f"c{n}", "i", 5)
        if n % 10 == 0:
            rate(c, f"k{n}", "i", 5)
    sent = []

    async def send(topic, key, value):
        sent.append((topic, key, value))

    reader = HitReader(
        c, {}, "impressions", "ratings", "results", "experiments", KEYS, send, lambda: 10
    )
    asyncio.run(reader.publish({"ratings:0": 7}))
    stops = [(k, v) for t, k, v in sent if t == "experiments"]
    assert len(stops) == 1
    stopped = decode_signed(*stops[0], KEYS)
    assert stopped.status == "guardrail-stopped" and "significantly worse" in stopped.reason
    assert c.registry.get("g").status == "guardrail-stopped"
    results = [(k, v) for t, k, v in sent if t == "results"]
    result = Result.parse(*results[-1], KEYS)
    assert result.counts["control"] == Counts(400, 200)
    assert result.decision == "candidate_worse" and result.positions == {"ratings:0": 7}
    doc = summary(c.registry.get("g"), result)
    assert doc["significant"] and doc["variants"]["candidate"]["hit_rate"] == 40 / 400
    sent.clear()
    asyncio.run(reader.publish({"ratings:0": 7}))  # stopped, nothing new: not again
    assert sent == []


def test_a_restart_adds_the_published_counts_and_a_new_start_drops_them():
    c = counter()
    old = Result(
        "g",
        1000.0,
        {"control": Counts(10, 2), "candidate": Counts(8, 1)},
        {"control": 0.1, "candidate": 0.2},
        1.0,
        "continue",
        "x",
        5.0,
        {},
    )
    c.base["g"] = old
    show(c, "u1", "a", "control")
    assert c.counts("g")["control"] == Counts(11, 2)
    c.registry.apply(
        *encode_signed(Experiment("g", Variant(), Variant(model=3), "ab", 1.0, 3000.0), KEYS)
    )
    show(c, "u2", "a", "control", ts=4000.0)
    assert c.counts("g")["control"] == Counts(1, 0)


def test_the_book_keeps_each_experiments_curve():
    book = ResultBook(KEYS, points=3)
    for n in range(5):
        r = Result(
            "g",
            1000.0,
            {"control": Counts(10 * n, n), "candidate": Counts(10, 1)},
            {"control": 0.0, "candidate": 0.0},
            1.0,
            "continue",
            "x",
            float(n),
            {},
        )
        book.apply(*r.encode(KEYS))
    curve = book.curve("g", 1000.0)
    assert [p["t"] for p in curve] == [2.0, 3.0, 4.0]
    rate, low, high = curve[-1]["control"]
    assert low <= rate == 0.1 <= high
    assert book.apply(b"g", b"{}") is None and book.refused == 1


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.binary(max_size=300)), st.binary(max_size=600))
def test_any_bytes_on_the_results_topic_are_refused(key, value):
    book = ResultBook(KEYS)
    assert book.apply(key, value) is None and book.newest == {}


TDI = Experiment("t", Variant(), Variant(model=3), "interleave", 1.0, 1000.0)


def interleave_counter() -> HitCounter:
    registry = ExperimentRegistry(KEYS)
    registry.apply(*encode_signed(TDI, KEYS))
    return HitCounter(registry, HitMatcher(3600, 4.0), SequentialTest(0.05, 0.05, 50))


def test_interleave_is_judged_by_the_paired_test_on_per_list_wins():
    c = interleave_counter()
    ts = 2000.0
    for n in range(200):
        user = f"u{n}"
        c.show(Impressions.of("t", user, ts, [("a", "control"), ("b", "candidate")]))
        winner = "a" if n % 4 else "b"  # control wins 3 lists in 4
        c.rate(Rating(f"e{n}", user, winner, 5, ts + 1))
        if n % 4 == 0:  # a tie: both hit
            c.rate(Rating(f"f{n}", user, "a", 5, ts + 2))
    c.rate(Rating("late", "z", "q", 1, ts + 3600))
    assert c.judge() == []  # every list's window is still open: no list judged yet
    assert c.wins("t").decided == 0
    c.rate(Rating("later", "z", "q", 1, ts + 3602))  # the windows have passed
    stops = c.judge()
    assert c.wins("t") == Wins(control=150, candidate=0, ties=50)
    assert [e.name for e, _ in stops] == ["t"]
    verdict = stops[0][1]
    assert verdict.decision == "candidate_worse" and "interleaved lists won" in verdict.reason
    assert c.verdicts["t"] is verdict


def test_interleave_many_hits_in_one_list_are_one_win():
    c = interleave_counter()
    for n in range(30):
        placed = [(f"i{k}", "candidate") for k in range(10)] + [("c", "control")]
        c.show(Impressions.of("t", f"u{n}", 2000.0, placed))
        for k in range(10):
            c.rate(Rating(f"e{n}-{k}", f"u{n}", f"i{k}", 5, 2001.0))
    c.rate(Rating("tick", "z", "q", 1, 9000.0))
    c.judge()
    assert c.counts("t")["candidate"] == Counts(300, 300)  # the per-impression tally
    assert c.wins("t") == Wins(candidate=30)  # 30 lists: 30 trials, not 300
    assert c.verdicts["t"].decision == "candidate_better"
    assert c.result(TDI, 10, 0.0, {}).reason == c.verdicts["t"].reason  # status shows it


class Record:
    """A consumed record: what the hit reader reads (timestamp in ms, as Kafka keeps it)."""

    def __init__(self, key: bytes, value: bytes, timestamp_ms: int, offset: int = 0) -> None:
        self.key, self.value, self.timestamp, self.offset = key, value, timestamp_ms, offset


def test_a_rating_or_impression_stamped_far_ahead_does_not_close_the_open_lists():
    from aiokafka import TopicPartition

    c = interleave_counter()
    reader = HitReader(
        c, {}, "impressions", "ratings", "results", "experiments", KEYS, None, lambda: 10
    )
    now = 2000.0
    shown = Impressions.of("t", "u1", now, [("a", "control"), ("b", "candidate")])
    ahead = Impressions.of("t", "u2", now + 1e9, [("a", "control")])
    forged = {"event_id": "x", "user": "z", "item": "q", "rating": 5, "ts": now + 1e9}
    batch = {
        TopicPartition("impressions", 0): [
            Record(*shown.encode(), int(now * 1000)),
            Record(*ahead.encode(), int(now * 1000), offset=1),
        ],
        TopicPartition("ratings", 0): [
            Record(b"z", json.dumps(forged).encode(), int(now * 1000)),
            Record(
                b"u1",
                json.dumps({**forged, "user": "u1", "item": "a", "ts": now + 5}).encode(),
                int(now * 1000) + 5000,
            ),
        ],
    }
    reader._handle(batch)
    assert c.latest == now + 5  # the clock moved by the honest rating only
    assert c.refused == 1  # the impression from the future
    assert c.wins("t").decided == 0  # the list is still open: its window has not passed
    assert c.counts("t")["control"].hits == 1


def test_a_rating_read_before_its_impression_is_held_for_the_grace_and_still_a_hit():
    """Scorers send impressions a moment after the reply (agents.experiment_serving's
    linger): a rating read first waits ``rating_grace``, and a restart reads it again."""
    from aiokafka import TopicPartition

    c = counter()
    reader = HitReader(
        c, {}, "impressions", "ratings", "results", "experiments", KEYS, None, lambda: 10
    )
    reader.rating_grace = 1.0
    now = 2000.0
    rating = {"event_id": "e1", "user": "u1", "item": "a", "rating": 5, "ts": now + 2}
    impressions, ratings = TopicPartition("impressions", 0), TopicPartition("ratings", 0)
    stamp = int(now * 1000)
    reader._handle({ratings: [Record(b"u1", json.dumps(rating).encode(), stamp, 7)]}, now)
    assert reader.counted({ratings: 8, impressions: 0}) == {ratings: 7, impressions: 0}
    shown = Impressions.of("g", "u1", now, [("a", "control")])
    reader._handle({impressions: [Record(*shown.encode(), stamp)]}, now + 0.5)
    assert c.counts("g")["control"] == Counts(1, 0)  # shown; the rating still held
    reader._handle({}, now + 1.0)  # an empty fetch: the grace has passed
    assert c.counts("g")["control"] == Counts(1, 1)
    assert reader.counted({ratings: 8}) == {ratings: 8}


def test_without_a_grace_a_rating_read_before_its_impression_is_no_hit():
    """What the grace is for (and the default: matched at once)."""
    from aiokafka import TopicPartition

    c = counter()
    reader = HitReader(
        c, {}, "impressions", "ratings", "results", "experiments", KEYS, None, lambda: 10
    )
    now = 2000.0
    rating = {"event_id": "e1", "user": "u1", "item": "a", "rating": 5, "ts": now + 2}
    stamp = int(now * 1000)
    reader._handle(
        {TopicPartition("ratings", 0): [Record(b"u1", json.dumps(rating).encode(), stamp)]}, now
    )
    shown = Impressions.of("g", "u1", now, [("a", "control")])
    reader._handle({TopicPartition("impressions", 0): [Record(*shown.encode(), stamp)]}, now)
    assert c.counts("g")["control"] == Counts(1, 0)


def test_ratings_are_not_decoded_while_no_experiment_runs(monkeypatch):
    """The hit reader runs in the trainer and reads every rating: with no experiment
    running, nothing pending and no list open, it decodes none of them (the trainer's
    event loop spent up to a fifth of its time there)."""
    from aiokafka import TopicPartition

    import agents.experiment_hits as hits

    decoded = []

    def counting(*args, **kwargs):
        decoded.append(1)
        return decode(*args, **kwargs)

    decode = hits.decode_rating
    monkeypatch.setattr(hits, "decode_rating", counting)
    idle = HitCounter(
        ExperimentRegistry(KEYS), HitMatcher(3600, 4.0), SequentialTest(0.05, 0.05, 50)
    )
    rating = {"event_id": "e1", "user": "u1", "item": "a", "rating": 5, "ts": 2000.0}
    batch = {TopicPartition("ratings", 0): [Record(b"u1", json.dumps(rating).encode(), 2_000_000)]}
    for c, expected in ((idle, 0), (counter(), 1)):
        decoded.clear()
        HitReader(
            c, {}, "impressions", "ratings", "results", "experiments", KEYS, None, lambda: 10
        )._handle(batch)
        assert len(decoded) == expected
