"""Experiments on replayed traffic (issue 20): the held-out future of ml-100k's temporal split
replayed as the users' behaviour through the experiment layer of ``models/``
(``python -m benchmarks.experiments [--quick] [--json]``).

Split: each user's 10 latest ratings are the future (``split_latest_per_user``, as in
:mod:`benchmarks.quality_service`); the rest, the past, trains each variant's model as
``streamrec train`` bootstraps one (one batch of ``consolidate_epochs`` epochs), and each
variant's offline P@10 on the future's positives is measured with
:func:`models.evaluation.evaluate`. The future is then replayed in time order: every rating
is a request of its user at its time; each running experiment assigns the user
(:func:`models.experiment.assign`: the ``ab`` hash, or ``interleave`` with team-draft seeded
by the request), the reply is an impression (:class:`models.impressions.Impressions`) that a
:class:`models.impressions.HitMatcher` keeps for ``window`` seconds, and then the user rates:
a rating >= 4 of a shown item is a hit for the variant that placed it. The models keep
training on the replayed ratings in micro-batches (one per ``batch_seconds`` of the ratings'
own time, as a trainer keeping pace would), and after each micro-batch the guardrail
looks at each experiment: an ``ab`` one's :class:`models.online_metric.Tally` with the
mSPRT on the two hit-rates (:class:`models.sequential.SequentialTest`), an ``interleave``
one's per-list wins with the paired sign test (:class:`models.paired.PairedTest`, the
service's rule, :class:`agents.experiment_hits.HitCounter`); a ``candidate_worse`` verdict
stops the experiment (status ``guardrail-stopped``: it assigns no one after that).

Four experiments run on the same replay, so their models are the same: for each method
(``ab``, ``interleave``) one between two configurations whose offline P@10 differ, and one
whose candidate is popularity only (the control model's cold-start ranking). This is an
in-process replay through the ``models/`` API, not through Kafka, and the future is fixed:
what a user rates does not depend on what they were shown (the replay's usual assumption).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import click
import numpy as np

from benchmarks.common import Figure, data_dir, machine, require, table
from models.config import ModelConfig
from models.datasets import iter_ratings
from models.evaluation import _windows, evaluate, positives_by_user, split_latest_per_user
from models.events import Rating
from models.experiment import METHODS, Experiment, Variant, assign, request_seed
from models.impressions import HitMatcher, Impressions
from models.incremental import IncrementalModel
from models.interleaving import Team, team_draft
from models.online_metric import Tally
from models.paired import ListOutcomes, PairedTest
from models.scoring import ScoringView
from models.sequential import SequentialTest, Verdict

QUICK_SECONDS = 35  # --quick: 27 s of CPU (99 s wall at load 9)

K = 10
HOLDOUT = 10
POSITIVE = 4.0
#: The rating that made a hit may come at most this long after the list that showed it.
WINDOW_SECONDS = 24 * 3600.0
#: A micro-batch per this much of the ratings' own time (benchmarks.quality_service's).
BATCH_SECONDS = 600.0
POPULARITY = "popularity"
#: The two configurations compared (names are the variants' ``model``): the service's
#: defaults against the same model trained with BPR and without the item-kNN blend.
CONFIGS: dict[str, ModelConfig] = {
    "bpr-noblend": ModelConfig(loss="bpr", blend_neighbours=0),
    "defaults": ModelConfig(),
}
CONTROL, CANDIDATE = "bpr-noblend", "defaults"


# --- the replay -------------------------------------------------------------------------
@dataclass
class Run:
    """One experiment's state during the replay, and what it came to."""

    experiment: Experiment
    matcher: HitMatcher
    tally: Tally = field(default_factory=Tally)
    verdict: Verdict | None = None
    requests: int = 0
    looks: int = 0
    decided_at: int | None = None
    """Impressions (both variants) when the verdict first became significant."""
    decided_requests: int | None = None
    decided: Verdict | None = None
    """The verdict at that look (a significant one stays, see SequentialTest)."""
    shown: list[Impressions] | None = None
    """Every list served, when the replay records them (tests check the counts with it)."""
    lists: ListOutcomes | None = None
    """An ``interleave`` experiment's lists and their wins (the paired test's trials)."""

    @property
    def impressions(self) -> int:
        return sum(self.tally.impressions.values())

    def summary(self) -> dict[str, Any]:
        exp = self.experiment
        counts = {t: self.tally.counts(t) for t in ("control", "candidate")}
        final = self.verdict
        said = self.decided or final
        return {
            "experiment": exp.name,
            "method": exp.method,
            "control": exp.control.model,
            "candidate": exp.candidate.model,
            "status": exp.status,
            "requests": self.requests,
            "impressions": self.impressions,
            **{f"{t} impressions": c.impressions for t, c in counts.items()},
            **{f"{t} hits": c.hits for t, c in counts.items()},
            **{f"{t} hit-rate": c.rate for t, c in counts.items()},
            "verdict": self.decided.decision if self.decided else "not significant",
            "impressions to verdict": self.decided_at,
            "requests to verdict": self.decided_requests,
            "p-value": final.p_value if final else 1.0,
            "reason": said.reason if said else "",
            "looks": self.looks,
            "dropped": self.matcher.dropped,
            **(
                {
                    "lists won by control": self.lists.wins.control,
                    "lists won by candidate": self.lists.wins.candidate,
                    "tied lists": self.lists.wins.ties,
                }
                if self.lists is not None
                else {}
            ),
        }


Ranker = Callable[[Variant, str, set[str]], list[str]]


def rankers(
    models: Mapping[str, IncrementalModel], popularity_of: str, k: int = K
) -> Callable[[], Ranker]:
    """A factory of rankers over the models' current views: a variant's ``model`` names a
    model of ``models`` (its top ``k``, seen items excluded and blended with, as the scorer
    does), or :data:`POPULARITY` (``popularity_of``'s cold-start ranking, seen excluded)."""

    def make() -> Ranker:
        views: dict[str, ScoringView] = {name: m.view() for name, m in models.items()}
        cache: dict[tuple[Any, str, int], list[str]] = {}

        def rank(variant: Variant, user: str, seen: set[str]) -> list[str]:
            key = (variant.model, user, len(seen))
            if key not in cache:
                if variant.model == POPULARITY:
                    items = views[popularity_of].popular(k, seen)
                else:
                    view = views[str(variant.model)]
                    items = view.recommend(user, k, seen, seen).items
                cache[key] = [s.item for s in items]
            return cache[key]

        return rank

    return make


def batches(events: Sequence[Rating], seconds: float) -> list[Sequence[Rating]]:
    """``events`` (time order) cut where their time enters a new window of ``seconds``."""
    cuts = sorted({0, len(events)} | _windows(seconds, events))
    return [events[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def replay(
    future: Sequence[Rating],
    models: Mapping[str, IncrementalModel],
    experiments: Iterable[Experiment],
    seen: Mapping[str, Iterable[str]],
    *,
    popularity_of: str,
    test: SequentialTest | None = None,
    paired: PairedTest | None = None,
    window: float = WINDOW_SECONDS,
    positive: float = POSITIVE,
    batch_seconds: float = BATCH_SECONDS,
    k: int = K,
    record: bool = False,
) -> list[Run]:
    """Replay ``future`` (sorted by time here) through ``experiments``: each rating is a
    request of its user just before the rating, answered per experiment, then matched as
    the user's behaviour; after each micro-batch the ``models`` train on it and the
    guardrail looks. ``seen``: each user's items before the future (excluded from replies).
    ``record``: keep every list served in :attr:`Run.shown`.
    """
    test = test or SequentialTest()
    paired = paired or PairedTest(alpha=test.alpha)
    runs = [
        Run(
            e,
            HitMatcher(window, positive),
            shown=[] if record else None,
            lists=ListOutcomes(window) if e.method == "interleave" else None,
        )
        for e in experiments
    ]
    history: dict[str, set[str]] = defaultdict(set)
    for user, items in seen.items():
        history[user].update(items)
    ordered = sorted(future, key=lambda e: e.ts)
    make = rankers(models, popularity_of, k)
    for batch in batches(ordered, batch_seconds):
        rank = make()
        for event in batch:
            user = event.user
            for run in runs:
                exp = run.experiment
                arm = assign(exp, user)
                if arm is None:
                    continue
                placed: list[tuple[str, Team]]
                if arm == "interleaved":
                    placed = list(
                        team_draft(
                            rank(exp.control, user, history[user]),
                            rank(exp.candidate, user, history[user]),
                            k,
                            request_seed(exp.name, event.event_id),
                        )
                    )
                else:
                    variant = exp.control if arm == "control" else exp.candidate
                    placed = [(item, arm) for item in rank(variant, user, history[user])]
                run.requests += 1
                served = Impressions.of(exp.name, user, event.ts, placed)
                new = run.matcher.show(served)
                run.tally.show(new)
                if run.lists is not None:
                    run.lists.show(user, event.ts, new)
                if run.shown is not None:
                    run.shown.append(served)
            for run in runs:
                hit = run.matcher.match(event)
                if hit is not None:
                    run.tally.hit(hit.team)
                    if run.lists is not None:
                        run.lists.hit(hit.user, hit.item, hit.team)
            history[user].add(event.item)
        for model in models.values():
            model.train_batch(batch)
        for run in runs:
            look(run, test, paired, now=batch[-1].ts)
    return runs


def look(run: Run, test: SequentialTest, paired: PairedTest, now: float) -> None:
    """The guardrail's look at one running experiment after a micro-batch that ended at
    ``now`` (an interleaved list is judged once its hit window has passed by then)."""
    if not run.experiment.running:
        return
    tally = run.tally
    if run.lists is not None:
        run.verdict = paired.verdict(run.lists.close(now), run.verdict)
    else:
        run.verdict = test.verdict(tally.counts("control"), tally.counts("candidate"), run.verdict)
    run.looks += 1
    if run.verdict.significant and run.decided is None:
        run.decided, run.decided_at, run.decided_requests = (
            run.verdict,
            run.impressions,
            run.requests,
        )
    if run.verdict.stop:
        run.experiment = run.experiment.with_status("guardrail-stopped", run.verdict.reason[:500])


# --- a lone request's latency with an experiment running ----------------------------------
@dataclass
class _Record:
    """An in-memory record and topic: what the scorer reads and writes here."""

    topic: str = "rec-requests"
    partition: int = 0
    offset: int = 0
    key: bytes | None = None
    value: bytes | None = None
    timestamp: int | None = -1
    sent: int = 0

    async def send(self, **_: Any) -> None:
        self.sent += 1

    async def send_many(self, messages: Sequence[tuple[bytes | None, bytes | None]]) -> list[Any]:
        self.sent += len(messages)
        return []


def _same(sink: _Record, name: str) -> _Record:
    return sink


class _NoSeen:
    def get(self, user: str) -> bytes | None:
        return None

    def put(self, user: str, row: bytes, partition: int) -> None:
        pass

    async def flush(self) -> None:
        pass


def lone_request_latency(
    users: int = 2000,
    items: int = 20_000,
    components: int = 32,
    requests: int = 300,
    rounds: int = 3,
) -> dict[str, float]:
    """The median seconds of one request handled alone by :class:`agents.scorer.Scorer`
    (in-process, in-memory topics) with no experiment running, and with an ``ab`` and an
    ``interleave`` experiment (share 1, the candidate a stored view of the same size) on
    the same scorer; the three settings take turns request by request."""
    import asyncio

    from agents.experiment_registry import ExperimentRegistry, encode_signed
    from agents.experiment_serving import ExperimentServing
    from agents.scorer import Scorer
    from agents.state import ModelHolder
    from benchmarks.scoring import random_view
    from models.signing import Keyring

    keys = Keyring(b"benchmark-experiments-latency-key")
    control = random_view(users, items, components, seed=0)
    candidate = random_view(users, items, components, seed=1)
    holder = ModelHolder()
    holder.publish(control)
    settings: dict[str, tuple[Scorer, ExperimentRegistry]] = {}
    for method in ("none", *METHODS):
        registry = ExperimentRegistry(keys)
        if method != "none":
            exp = Experiment(method, Variant(), Variant(model=99), method, 1.0, 1.0)  # type: ignore[arg-type]
            registry.apply(*encode_signed(exp, keys))
        serving = ExperimentServing(registry, holder, impressions=_Record())
        serving.frozen[99] = candidate
        sink = _Record()
        scorer = Scorer(
            holder=holder,
            seen=_NoSeen(),
            default_reply=sink,
            dlq=sink,
            reply_topic=functools.partial(_same, sink),
            topic_exists=lambda name: asyncio.sleep(0, False),
            forbidden_replies=frozenset(),
            max_bytes=65536,
            experiments=serving,
        )
        settings[method] = (scorer, registry)
    times: dict[str, list[float]] = {m: [] for m in settings}

    async def measure() -> None:
        for n in range(requests * rounds):
            user = f"u{n % users}"
            value = json.dumps({"request_id": f"r{n}", "user": user, "k": K}).encode()
            for method, (scorer, _) in settings.items():
                message = _Record(offset=n, key=user.encode(), value=value)
                started = time.perf_counter()
                await scorer.handle([message])
                times[method].append(time.perf_counter() - started)
                await asyncio.sleep(0)  # what the reply left to the loop (a service's next fetch)
        await asyncio.sleep(0.01)  # the impressions' sends

    asyncio.run(measure())
    return {m: float(np.median(t[requests // 10 :])) for m, t in times.items()}


# --- ml-100k ----------------------------------------------------------------------------
def load() -> list[Rating]:
    path = require(data_dir() / "ml-100k" / "u.data")
    with path.open(encoding="latin-1") as f:
        return list(iter_ratings(f, "ml100k", source="u.data"))


def experiments_for(start: float, replicas: int = 1) -> list[Experiment]:
    """Per method, the two configurations and popularity only, ``replicas`` times: each
    replica's name differs, so its ``ab`` arms and interleaving coins are drawn anew."""
    out = []
    for method in METHODS:
        for candidate in (CANDIDATE, POPULARITY):
            for n in range(replicas):
                out.append(
                    Experiment(
                        name=f"{method}-{candidate}" + (f"-{n}" if n else ""),
                        control=Variant(model=CONTROL if candidate != POPULARITY else CANDIDATE),
                        candidate=Variant(model=candidate),
                        method=method,  # type: ignore[arg-type]
                        share=1.0,
                        start=start,
                    )
                )
    return out


def summarise(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, candidate) over its replicas: the verdicts, the median (and
    range) of the impressions each took (an undecided replica counts as never), the stops."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["method"], str(r["candidate"]))].append(r)
    rows = []
    for (method, candidate), group in groups.items():
        taken = sorted(
            math.inf if r["impressions to verdict"] is None else r["impressions to verdict"]
            for r in group
        )
        median = float(np.median(taken)) if taken else math.inf
        asked = sorted(
            math.inf if r.get("requests to verdict") is None else r["requests to verdict"]
            for r in group
        )
        median_requests = float(np.median(asked)) if asked else math.inf
        verdicts = Counter(r["verdict"] for r in group)
        rows.append(
            {
                "method": method,
                "candidate": candidate,
                "control": group[0]["control"],
                "replicas": len(group),
                "verdicts": dict(verdicts),
                "verdict": verdicts.most_common(1)[0][0],
                "median impressions to verdict": None if math.isinf(median) else median,
                "median requests to verdict": (
                    None if math.isinf(median_requests) else median_requests
                ),
                "fewest": None if math.isinf(taken[0]) else taken[0],
                "most": None if math.isinf(taken[-1]) else taken[-1],
                "stopped": sum(r["status"] == "guardrail-stopped" for r in group),
                "candidate hit-rate": float(np.mean([r["candidate hit-rate"] for r in group])),
                "control hit-rate": float(np.mean([r["control hit-rate"] for r in group])),
                "impressions": float(np.median([r["impressions"] for r in group])),
            }
        )
    return rows


def run(quick: bool = False, seed: int = 42, replicas: int | None = None) -> dict[str, Any]:
    """The whole benchmark: ``quick`` trains the past for 5 epochs instead of the bootstrap's
    20 and runs 3 replicas of each experiment instead of 10 (the replay is the same)."""
    started = time.perf_counter()
    replicas = replicas or (3 if quick else 10)
    ratings = load()
    past, future = split_latest_per_user(ratings, HOLDOUT)
    past.sort(key=lambda r: r.ts)
    future.sort(key=lambda r: r.ts)
    truth = positives_by_user(future, POSITIVE)
    seen = positives_by_user(past)
    models: dict[str, IncrementalModel] = {}
    offline: dict[str, float] = {}
    for name, config in CONFIGS.items():
        config = ModelConfig(**{**config.to_dict(), "seed": seed})
        model = models[name] = IncrementalModel(config)
        model.train_batch(past, epochs=5 if quick else config.consolidate_epochs)
        offline[name] = evaluate(model.view(), truth, train=seen).precision
    offline[POPULARITY] = evaluate(
        models[CANDIDATE].view(), truth, train=seen, popularity=True
    ).precision
    trained = time.perf_counter() - started
    runs = replay(
        future, models, experiments_for(future[0].ts, replicas), seen, popularity_of=CANDIDATE
    )
    details = [r.summary() for r in runs]
    return {
        "dataset": "ml-100k",
        "past": len(past),
        "future": len(future),
        "future positives": sum(len(v) for v in truth.values()),
        "window_seconds": WINDOW_SECONDS,
        "batch_seconds": BATCH_SECONDS,
        "quick": quick,
        "seed": seed,
        "replicas": replicas,
        "offline P@10": offline,
        "summary": summarise(details),
        "runs": details,
        "train_seconds": round(trained, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
    }


def latency_figures(quick: bool) -> list[Figure]:
    """A lone request's median latency through the scorer with an experiment running, as a
    ratio to no experiment on the same scorer and view (issue 20: at most 1.2)."""
    medians = lone_request_latency(requests=100 if quick else 300)
    return [
        Figure(
            f"experiments {method}: a lone request's latency through the scorer with the "
            "experiment running / none (20,000 items, 32 components, in-process)",
            baseline=medians["none"] * 1000,
            value=medians[method] * 1000,
            goal=1.2,
            better="lower",
            unit="ms",
            note="interleave scores both views: twice the product"
            if method == "interleave"
            else "",
        )
        for method in METHODS
    ]


def figures(quick: bool) -> list[Figure]:
    out: list[Figure] = []
    report = run(quick)
    by = {(r["method"], r["candidate"]): r for r in report["summary"]}
    offline = report["offline P@10"]
    for method in METHODS:
        pair = by[(method, CANDIDATE)]
        out.append(
            Figure(
                f"experiments {method}: online hit-rate, {CANDIDATE} / {CONTROL} "
                f"(offline P@10 ratio {offline[CANDIDATE] / offline[CONTROL]:.2f})",
                baseline=pair["control hit-rate"],
                value=pair["candidate hit-rate"],
                goal=1.0,
                note=f"verdicts of {pair['replicas']} replicas: {pair['verdicts']}",
            )
        )
    ab, inter = by[("ab", CANDIDATE)], by[("interleave", CANDIDATE)]
    out.append(
        Figure(
            "experiments: impressions to a significant verdict (median of replicas), "
            "interleave / ab",
            baseline=ab["median impressions to verdict"],
            value=inter["median impressions to verdict"],
            goal=1.0,
            better="lower",
            unit="impressions",
            note=f"ab {ab['verdicts']}, interleave {inter['verdicts']}",
        )
    )
    for method in METHODS:
        bad = by[(method, POPULARITY)]
        out.append(
            Figure(
                f"experiments {method}: popularity-only candidate stopped by the guardrail, "
                "impressions to the stop / impressions of the whole replay",
                baseline=by[(method, CANDIDATE)]["impressions"],
                value=bad["median impressions to verdict"] if bad["stopped"] else None,
                goal=1.0,
                better="lower",
                unit="impressions",
                note=f"stopped in {bad['stopped']} of {bad['replicas']} replicas",
            )
        )
    return out + latency_figures(quick)


def _count(value: float | None) -> str:
    return "never" if value is None else f"{value:,.0f}"


@click.command()
@click.option("--quick", is_flag=True, help="5 epochs on the past and 3 replicas (10 and 20).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--seed", default=42, show_default=True, help="The models' seed.")
@click.option("--replicas", type=int, help="Experiments per method and candidate.")
def main(quick: bool, as_json: bool, seed: int, replicas: int | None) -> None:
    """Experiments on replayed ml-100k traffic: per method, the verdict, the impressions it
    took, and the guardrail's stop of a popularity-only candidate."""
    report = run(quick, seed, replicas)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"ml-100k: past {report['past']} ratings, future {report['future']} "
        f"({report['future positives']} positives >= {POSITIVE:g}) replayed in time order; "
        f"hit window {WINDOW_SECONDS / 3600:g} h, micro-batches every {BATCH_SECONDS:g} s, "
        f"{report['replicas']} replicas (experiment names) per row\n"
    )
    click.echo(
        "offline P@10 (past -> future positives, seen excluded): "
        + ", ".join(f"{n} {p:.4f}" for n, p in report["offline P@10"].items())
        + "\n"
    )
    rows = [
        [
            r["method"],
            f"{r['candidate']} vs {r['control']}",
            ", ".join(f"{v} {n}" for v, n in r["verdicts"].items()),
            _count(r["median impressions to verdict"]),
            f"{_count(r['fewest'])}-{_count(r['most'])}",
            f"{r['stopped']} of {r['replicas']}",
            f"{r['candidate hit-rate']:.4f} / {r['control hit-rate']:.4f}",
        ]
        for r in report["summary"]
    ]
    click.echo(
        table(
            [
                "method",
                "candidate vs control",
                "verdicts",
                "impressions to verdict (median)",
                "range",
                "guardrail stops",
                "hit-rate cand / ctrl",
            ],
            rows,
        )
    )
    click.echo(f"\ntrained the past in {report['train_seconds']} s; total {report['seconds']} s")


if __name__ == "__main__":
    main()
