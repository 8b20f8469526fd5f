"""benchmarks.experiments: the replay loop's mechanics on a small synthetic dataset.

What was shown is recorded (``record=True``) and the tallies are checked against it: every
impression counted once, hits only for positive ratings of items recommended to that user
within the window, never for items the user had already rated; and the guardrail stops a
popularity-only candidate on data where it is clearly worse.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from benchmarks.experiments import POPULARITY, Run, batches, replay, summarise
from models.config import ModelConfig
from models.evaluation import positives_by_user, split_latest_per_user
from models.events import Rating
from models.experiment import Experiment, Variant
from models.incremental import IncrementalModel
from models.paired import PairedTest
from models.sequential import SequentialTest
from models.synthetic import generate_ratings

CONFIG = ModelConfig(
    no_components=8, consolidate_every=0, blend_neighbours=0, epochs_per_batch=1, seed=1
)
NEVER = PairedTest(alpha=1e-300)  # the paired test never decides either
BIG_WINDOW = 1e12  # nothing expires: each (user, item) is one impression until it is hit


@pytest.fixture(scope="module")
def data() -> tuple[list[Rating], list[Rating]]:
    ratings = generate_ratings(n_users=150, n_items=120, n_ratings=6000, n_clusters=6, seed=3)
    past, future = split_latest_per_user(ratings, 8)
    return sorted(past, key=lambda r: r.ts), sorted(future, key=lambda r: r.ts)


def trained(past: list[Rating]) -> IncrementalModel:
    model = IncrementalModel(CONFIG)
    model.train_batch(past, epochs=10)
    return model


def experiment(name: str, method: str, candidate: str, share: float = 1.0) -> Experiment:
    return Experiment(
        name=name,
        control=Variant(model="m"),
        candidate=Variant(model=candidate),
        method=method,  # type: ignore[arg-type]
        share=share,
        start=0.0,
    )


def run_both(data: tuple[list[Rating], list[Rating]], window: float) -> list[Run]:
    past, future = data
    return replay(
        future,
        {"m": trained(past)},
        [experiment("ab-pop", "ab", POPULARITY), experiment("tdi-pop", "interleave", POPULARITY)],
        positives_by_user(past),
        popularity_of="m",
        window=window,
        batch_seconds=600.0,
        record=True,
        test=SequentialTest(min_impressions=10**9),  # never stops: the counts are the test
        paired=NEVER,
    )


def test_impressions_and_hits_match_what_was_shown(data) -> None:
    _, future = data
    for run in run_both(data, BIG_WINDOW):
        assert run.shown is not None
        assert run.requests == len(run.shown) == len(future)  # share 1: every rating asks
        first: dict[tuple[str, str], tuple[float, str]] = {}
        for served in run.shown:
            assert len(served.items) == 10
            for item, team in served:
                first.setdefault((served.user, item), (served.ts, team))
        # nothing expires and a hit item is seen (never shown again): one impression each
        per_team = defaultdict(int)
        for _, team in first.values():
            per_team[team] += 1
        assert run.tally.impressions == per_team
        assert run.impressions == len(first)
        # a hit is a future rating >= 4 of an item shown to its user at or before it
        expected = defaultdict(int)
        for r in future:
            shown = first.get((r.user, r.item))
            if r.rating >= 4 and shown is not None and shown[0] <= r.ts:
                expected[shown[1]] += 1
        assert sum(expected.values()) > 0
        assert run.tally.hits == {t: expected[t] for t in ("control", "candidate")}
        if run.experiment.method == "interleave":
            assert min(run.tally.impressions.values()) > 0  # both teams place items
            # the paired test's trials: one per list with a hit, never one per hit
            assert run.lists is not None
            wins = run.lists.close()
            assert 0 < wins.decided + wins.ties <= min(run.requests, sum(expected.values()))
            assert wins.decided + wins.ties < sum(expected.values())  # some lists hit twice
        else:
            assert run.lists is None


def test_hits_only_within_the_window_and_never_on_items_rated_before(data) -> None:
    past, future = data
    window = 1.0
    before = {(r.user, r.item) for r in past}
    for run in run_both(data, window):
        assert run.shown is not None
        shown_at = defaultdict(list)
        for served in run.shown:
            assert not {(served.user, item) for item in served.items} & before
            for item in served.items:
                shown_at[(served.user, item)].append(served.ts)
        hits = 0
        for r in future:
            times = shown_at.get((r.user, r.item), [])
            if r.rating >= 4 and any(0 <= r.ts - t <= window for t in times):
                hits += 1
        # hits are a subset of these (a pending impression keeps its first time)
        assert 0 < sum(run.tally.hits.values()) <= hits
        assert sum(run.tally.hits.values()) <= run.impressions


def test_a_rating_of_an_item_seen_in_the_past_is_never_a_hit(data) -> None:
    past, _ = data
    again = [
        Rating(f"again:{n}", r.user, r.item, 5.0, 2_000_000_000.0 + n)
        for n, r in enumerate(past[-300:])
    ]
    (run,) = replay(
        again,
        {"m": trained(past)},
        [experiment("ab-pop", "ab", POPULARITY)],
        positives_by_user(past),
        popularity_of="m",
        window=BIG_WINDOW,
        test=SequentialTest(min_impressions=10**9),
    )
    assert run.impressions > 0 and sum(run.tally.hits.values()) == 0


def test_the_guardrail_stops_a_popularity_only_candidate(data) -> None:
    past, future = data
    runs = replay(
        future,
        {"m": trained(past)},
        [experiment("ab-pop", "ab", POPULARITY), experiment("tdi-pop", "interleave", POPULARITY)],
        positives_by_user(past),
        popularity_of="m",
        test=SequentialTest(min_impressions=200, tau=0.05),
        window=3600.0,  # the data span a day: a list is judged an hour after it was shown
    )
    for run in runs:
        assert run.experiment.status == "guardrail-stopped", run.summary()
        if run.experiment.method == "interleave":  # judged by the paired test on lists
            assert "interleaved lists" in (run.experiment.reason or "")
        assert run.decided is not None and run.decided.stop
        assert run.experiment.reason and "worse" in run.experiment.reason
        stopped_at = run.impressions
        assert run.decided_at == stopped_at  # nothing counted after the stop
        assert run.requests < len(future)  # the stopped experiment assigns no one


def test_a_share_leaves_the_other_users_out(data) -> None:
    past, future = data
    (run,) = replay(
        future,
        {"m": trained(past)},
        [experiment("half", "ab", POPULARITY, share=0.5)],
        positives_by_user(past),
        popularity_of="m",
        test=SequentialTest(min_impressions=10**9),
        record=True,
    )
    assert run.shown is not None
    users = {s.user for s in run.shown}
    everyone = {r.user for r in future}
    assert 0.3 * len(everyone) < len(users) < 0.7 * len(everyone)
    assert run.requests == sum(r.user in users for r in future)


def test_batches_cut_at_the_windows_of_event_time() -> None:
    events = [Rating(f"e{n}", "u", f"i{n}", 4.0, float(ts)) for n, ts in enumerate([0, 5, 10, 25])]
    assert [len(b) for b in batches(events, 10.0)] == [2, 1, 1]
    assert batches([], 10.0) == []


def test_the_summary_counts_an_undecided_replica_as_never() -> None:
    def row(n: int | None, verdict: str, status: str = "running") -> dict[str, object]:
        return {
            "method": "ab",
            "candidate": "c",
            "control": "m",
            "impressions to verdict": n,
            "verdict": verdict,
            "status": status,
            "candidate hit-rate": 0.1,
            "control hit-rate": 0.05,
            "impressions": 100,
        }

    (two_of_three,) = summarise(
        [row(300, "candidate_better"), row(None, "not significant"), row(100, "candidate_better")]
    )
    assert two_of_three["median impressions to verdict"] == 300
    assert (two_of_three["fewest"], two_of_three["most"]) == (100, None)
    assert two_of_three["verdict"] == "candidate_better" and two_of_three["stopped"] == 0
    (one_of_three,) = summarise(
        [row(None, "not significant"), row(None, "not significant"), row(50, "candidate_worse")]
    )
    assert one_of_three["median impressions to verdict"] is None


def test_figures_read_the_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import experiments

    def row(method: str, candidate: str, n: int | None, status: str) -> dict[str, object]:
        verdict = "not significant" if n is None else "candidate_better"
        return {
            "method": method,
            "candidate": candidate,
            "control": "x",
            "impressions to verdict": n,
            "verdict": verdict,
            "status": status,
            "candidate hit-rate": 0.07,
            "control hit-rate": 0.05,
            "impressions": 10_000,
        }

    runs = [
        row("ab", experiments.CANDIDATE, 5000, "running"),
        row("interleave", experiments.CANDIDATE, 4000, "running"),
        row("ab", POPULARITY, 2000, "guardrail-stopped"),
        row("interleave", POPULARITY, None, "running"),
    ]
    report = {
        "summary": summarise(runs),
        "offline P@10": {experiments.CONTROL: 0.08, experiments.CANDIDATE: 0.1},
    }
    monkeypatch.setattr(experiments, "run", lambda quick: report)
    latency = {"none": 0.010, "ab": 0.011, "interleave": 0.020}
    monkeypatch.setattr(experiments, "lone_request_latency", lambda requests: latency)
    ab_pair, tdi_pair, speed, ab_stop, tdi_stop, ab_lat, tdi_lat = experiments.figures(True)
    assert ab_lat.ratio == pytest.approx(1.1) and ab_lat.passed
    assert tdi_lat.ratio == pytest.approx(2.0) and not tdi_lat.passed
    assert "offline P@10 ratio 1.25" in tdi_pair.figure
    assert ab_pair.passed and ab_pair.ratio == pytest.approx(1.4)
    assert speed.ratio == pytest.approx(0.8) and speed.passed
    assert ab_stop.ratio == pytest.approx(0.2) and ab_stop.passed
    assert tdi_stop.value is None and "stopped in 0 of 1" in tdi_stop.note


def test_lone_request_latency_measures_each_setting() -> None:
    """Its mechanics at a tiny size (timings are the benchmark's, never asserted here)."""
    from benchmarks.experiments import lone_request_latency

    medians = lone_request_latency(users=20, items=50, components=4, requests=10, rounds=1)
    assert set(medians) == {"none", "ab", "interleave"}
    assert all(0 < v < 10 for v in medians.values())
