"""Offline metrics (precision/recall/NDCG/hit-rate@k, AUC) and prequential evaluation.

Conventions (the same as LightFM's ``lightfm.evaluation`` unless said otherwise):

* metrics are averaged over users with at least one test positive;
* precision@k divides by k; recall@k by the user's number of test positives;
* NDCG@k uses binary relevance, ideal DCG over min(k, positives) hits;
* ``exclude_train=True`` removes each user's training items from the ranking (and from
  AUC's negatives), as LightFM does when given ``train_interactions``; the result says
  which was used;
* users the model cannot score (unknown, or no trained positives) are ranked by popularity,
  exactly as in serving; test items the model has never seen count as misses and as
  ranked below every known item in AUC.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.events import Rating
from models.incremental import IncrementalModel
from models.scoring import Recommendation, ScoringView, top_k_rows

_CHUNK_CELLS = 1 << 22


@dataclass(frozen=True)
class Metrics:
    k: int
    exclude_train: bool
    users: int  # users evaluated (with >= 1 test positive)
    popularity_users: int  # of which ranked by popularity (cold start)
    precision: float
    recall: float
    ndcg: float
    hit_rate: float
    auc: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def positives_by_user(ratings: Iterable[Rating], threshold: float = 0.0) -> dict[str, set[str]]:
    """user -> items they rated >= threshold (0 keeps every rating)."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in ratings:
        if r.rating >= threshold:
            out[r.user].add(r.item)
    return dict(out)


def split_latest_per_user(
    ratings: Sequence[Rating], holdout: int
) -> tuple[list[Rating], list[Rating]]:
    """(train, test): each user's ``holdout`` latest ratings (by ts, then input order) are
    test — like MovieLens' ua/ub splits, but by time. Users with <= ``holdout`` ratings stay
    wholly in train (they would have nothing to learn from)."""
    by_user: dict[str, list[int]] = defaultdict(list)
    for position, r in enumerate(ratings):
        by_user[r.user].append(position)
    held: set[int] = set()
    if holdout > 0:
        for positions in by_user.values():
            if len(positions) > holdout:
                positions.sort(key=lambda p: ratings[p].ts)  # stable: input order breaks ties
                held.update(positions[-holdout:])
    train = [r for p, r in enumerate(ratings) if p not in held]
    return train, [r for p, r in enumerate(ratings) if p in held]


def split_random(
    ratings: Sequence[Rating], fraction: float, seed: int = 0
) -> tuple[list[Rating], list[Rating]]:
    """(train, test) with a seeded random ``fraction`` of the ratings as test."""
    if not 0 <= fraction < 1:
        raise ValueError("the test fraction must be in [0, 1)")
    is_test = np.random.default_rng(seed).random(len(ratings)) < fraction
    train = [r for r, t in zip(ratings, is_test, strict=True) if not t]
    return train, [r for r, t in zip(ratings, is_test, strict=True) if t]


def evaluate(
    view: ScoringView,
    test: Mapping[str, Collection[str]],
    *,
    train: Mapping[str, Collection[str]] | None = None,
    k: int = 10,
    exclude_train: bool = True,
    popularity: bool = False,
) -> Metrics:
    """Rank every known item for each test user and score the top ``k`` against ``test``.

    ``train``: each user's training items, excluded when ``exclude_train``, and the
    history the view blends with (as the scorer blends with the user's seen items).
    ``popularity=True`` ranks every user by popularity (the baseline).
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    users = [u for u, items in test.items() if items]
    rows = [None if popularity else view.model_row(u) for u in users]
    n_items = view.n_items
    sums = np.zeros(5)  # precision, recall, ndcg, hit, auc
    chunk = max(1, _CHUNK_CELLS // max(1, n_items))
    pop = view.popularity_scores()
    for start in range(0, len(users), chunk):
        part = range(start, min(start + chunk, len(users)))
        scores = np.empty((len(part), n_items), dtype=np.float64)
        warm = [(j, rows[i]) for j, i in enumerate(part) if rows[i] is not None]
        scores[:] = pop
        if warm:
            positions, model_rows = zip(*warm, strict=True)
            scores[list(positions)] = view.score_rows(np.asarray(model_rows, dtype=np.int64))
            if train is not None:
                for j in positions:
                    view.blend(scores[j], view.item_rows(train.get(users[part[j]], ())))
        positives = []
        for j, i in enumerate(part):
            user_test = test[users[i]]
            wanted = view.item_rows(user_test)
            positives.append((wanted, len(user_test)))
            if exclude_train and train is not None and users[i] in train:
                drop = view.item_rows(set(train[users[i]]) - set(user_test))
                scores[j, drop] = -np.inf
        sums[4] += sum(
            _auc(scores[j], wanted, total) for j, (wanted, total) in enumerate(positives)
        )
        for j, (idx, _) in enumerate(top_k_rows(scores, k)):
            wanted, total = positives[j]
            sums[:4] += _at_k(np.flatnonzero(np.isin(idx, wanted)), total, k)
    n = max(1, len(users))
    return Metrics(
        k=k,
        exclude_train=exclude_train,
        users=len(users),
        popularity_users=sum(r is None for r in rows),
        precision=float(sums[0] / n),
        recall=float(sums[1] / n),
        ndcg=float(sums[2] / n),
        hit_rate=float(sums[3] / n),
        auc=float(sums[4] / n),
    )


def _at_k(hit_ranks: np.ndarray, total: int, k: int) -> np.ndarray:
    """(precision, recall, NDCG, hit) @k of one ranked list: ``hit_ranks`` are the 0-based
    ranks of its hits, ``total`` the user's number of test positives."""
    hits = len(hit_ranks)
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(k, total)))
    ndcg = float(np.sum(1.0 / np.log2(hit_ranks + 2))) / ideal
    return np.array([hits / k, hits / total, ndcg, float(hits > 0)])


def ranking_metrics(
    recommended: Mapping[str, Sequence[str]],
    test: Mapping[str, Collection[str]],
    k: int = 10,
) -> dict[str, float]:
    """P@k, R@k, NDCG@k and HR@k of ranked item lists (e.g. the service's replies),
    averaged over the users with a test positive, as :func:`evaluate` counts them; a user
    with no list counts as all misses. Only the first ``k`` items of a list count."""
    if k < 1:
        raise ValueError("k must be >= 1")
    users = [u for u, items in test.items() if items]
    sums = np.zeros(4)
    for user in users:
        wanted = test[user]
        ranked = list(recommended.get(user, ()))[:k]
        hit_ranks = np.array([r for r, item in enumerate(ranked) if item in wanted], dtype=int)
        sums += _at_k(hit_ranks, len(wanted), k)
    n = max(1, len(users))
    names = ("precision", "recall", "ndcg", "hit_rate")
    return {
        "users": len(users),
        **{name: float(v / n) for name, v in zip(names, sums, strict=True)},
    }


def _auc(scores: np.ndarray, wanted: np.ndarray, total: int) -> float:
    """P(a test positive outscores a negative); ties count half; unknown positives lose."""
    is_pos = np.zeros(len(scores), dtype=bool)
    is_pos[wanted] = True
    negatives = np.sort(scores[~is_pos & np.isfinite(scores)])
    if len(negatives) == 0:
        return 1.0
    pos = scores[wanted]
    below = np.searchsorted(negatives, pos, side="left")
    ties = np.searchsorted(negatives, pos, side="right") - below
    return float(np.sum(below + 0.5 * ties) / len(negatives)) / total


@dataclass(frozen=True)
class PrequentialResult:
    """Test-then-train hit-rate@k. A trial is one positive event, a hit if its item was in
    the user's top k (seen items excluded) just before its batch was trained. ``curve``
    rows, one per batch: (events replayed so far, trials, hits, trials the model scored,
    hits among those) — the rest were cold-start users served by popularity."""

    k: int
    frozen_after: int | None
    curve: list[tuple[int, int, int, int, int]]

    @property
    def trials(self) -> int:
        return sum(row[1] for row in self.curve)

    @property
    def hits(self) -> int:
        return sum(row[2] for row in self.curve)

    @property
    def hit_rate(self) -> float:
        return self.hit_rate_between(0)

    def hit_rate_between(
        self, start: int, stop: int | None = None, *, model_only: bool = False
    ) -> float:
        """Hit-rate over the batches that end in (start, stop] events; ``model_only``:
        only the trials of users the model scored (not popularity)."""
        rows = [r for r in self.curve if start < r[0] and (stop is None or r[0] <= stop)]
        trials = sum(r[3] if model_only else r[1] for r in rows)
        hits = sum(r[4] if model_only else r[2] for r in rows)
        return hits / trials if trials else 0.0

    def model_share(self, start: int = 0, stop: int | None = None) -> float:
        """Fraction of the trials in (start, stop] that the model (not popularity) scored."""
        rows = [r for r in self.curve if start < r[0] and (stop is None or r[0] <= stop)]
        trials = sum(r[1] for r in rows)
        return sum(r[3] for r in rows) / trials if trials else 0.0


def positive_hits(
    view: ScoringView,
    batch: Sequence[Rating],
    *,
    threshold: float,
    k: int = 10,
    seen: Mapping[str, Collection[str]] | None = None,
    popularity: bool = False,
) -> list[tuple[bool, bool]]:
    """The test half of test-then-train: for each positive event of ``batch`` (rating >=
    ``threshold``), whether its item is in the user's top ``k`` under ``view`` (``seen``
    items excluded when given), and whether the model (not the popularity fallback) scored
    it. The offline :func:`prequential` evaluator and the streaming trainer both count with
    this, so their hit-rates mean the same thing."""
    trials = [e for e in batch if e.rating >= threshold]
    users = sorted({e.user for e in trials})
    excluded = {u: seen.get(u, ()) for u in users} if seen is not None else {}
    if popularity:
        recs = [
            Recommendation(u, view.popular(k, excluded.get(u, ())), view.version, "popularity")
            for u in users
        ]
    else:
        lists = [excluded[u] for u in users] if excluded else None
        recs = view.recommend_many(users, k, lists, histories=lists)
    top = {r.user: ({s.item for s in r.items}, r.source == "model") for r in recs}
    return [(e.item in top[e.user][0], top[e.user][1]) for e in trials]


def prequential(
    events: Sequence[Rating],
    model: IncrementalModel,
    *,
    batch_size: int = 1000,
    window_seconds: float | None = None,
    k: int = 10,
    freeze_after: int | None = None,
    exclude_seen: bool = True,
    popularity: bool = False,
) -> PrequentialResult:
    """Replay ``events`` in time order in micro-batches: score each batch's positives with
    the current model, then train on the batch. ``freeze_after=N`` stops training after
    the first N events (the frozen baseline); scoring and seen-item tracking go on.
    ``popularity=True`` recommends the current popularity ranking to everyone (baseline).

    Batches hold at most ``batch_size`` events. ``window_seconds``: a batch also ends where
    the events' time (``ts``) enters the next window of that many seconds, so the model
    learns at most one window late, as a trainer keeping pace with the stream would,
    instead of ``batch_size`` events late, as one fed a replay at full speed."""
    options = _Replay(batch_size, window_seconds, k, freeze_after, exclude_seen, popularity)
    live, _ = _replay(events, model, options, compare=False)
    return PrequentialResult(k=k, frozen_after=freeze_after, curve=live)


def prequential_vs_frozen(
    events: Sequence[Rating],
    model: IncrementalModel,
    *,
    freeze_after: int,
    batch_size: int = 1000,
    window_seconds: float | None = None,
    k: int = 10,
    exclude_seen: bool = True,
) -> tuple[PrequentialResult, PrequentialResult]:
    """``(incremental, frozen)``: :func:`prequential` without and with ``freeze_after``, in
    one replay. The frozen model is the scoring view taken once the first ``freeze_after``
    events are trained: everything the model holds stays as it was then (embeddings,
    biases, ids, popularity, blending neighbours), since a view never changes as training
    goes on. Both are asked with the same seen items, which are the user's input, not model
    state: they grow with every event for both, as the scorer's seen-items table would for
    a deployment whose trainer stopped."""
    options = _Replay(batch_size, window_seconds, k, freeze_after, exclude_seen, False)
    live, frozen = _replay(events, model, options, compare=True)
    return (
        PrequentialResult(k=k, frozen_after=None, curve=live),
        PrequentialResult(k=k, frozen_after=freeze_after, curve=frozen),
    )


Curve = list[tuple[int, int, int, int, int]]


@dataclass(frozen=True)
class _Replay:
    batch_size: int
    window_seconds: float | None
    k: int
    freeze_after: int | None
    exclude_seen: bool
    popularity: bool


def _replay(
    events: Sequence[Rating], model: IncrementalModel, options: _Replay, *, compare: bool
) -> tuple[Curve, Curve]:
    """The test-then-train loop. ``compare``: train on after ``freeze_after`` and also score
    every later batch with the view frozen there (the second curve; otherwise empty)."""
    batch_size, window_seconds, freeze_after = (
        options.batch_size,
        options.window_seconds,
        options.freeze_after,
    )
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if window_seconds is not None and not window_seconds > 0:
        raise ValueError("window_seconds must be > 0")
    ordered = sorted(events, key=lambda e: e.ts)
    threshold = model.config.positive_threshold
    bounds = sorted(
        {*range(0, len(ordered), batch_size), len(ordered)}
        | _cut(freeze_after, ordered)
        | _windows(window_seconds, ordered)
    )
    seen: dict[str, set[str]] = defaultdict(set)
    live: Curve = []
    frozen_curve: Curve = []
    view = model.view()
    frozen: ScoringView | None = None
    hit_options = {
        "threshold": threshold,
        "k": options.k,
        "seen": seen if options.exclude_seen else None,
        "popularity": options.popularity,
    }
    for start, stop in itertools.pairwise(bounds):
        batch = ordered[start:stop]
        if view.version != model.version:
            view = model.view()
        if compare and frozen is None and freeze_after is not None and start >= freeze_after:
            frozen = view
        live.append(_curve_row(view, batch, stop, **hit_options))
        if compare:
            frozen_curve.append(
                live[-1] if frozen is None else _curve_row(frozen, batch, stop, **hit_options)
            )
        for e in batch:
            seen[e.user].add(e.item)
        if compare or freeze_after is None or stop <= freeze_after:
            model.train_batch(batch)
    return live, frozen_curve


def _curve_row(
    view: ScoringView, batch: Sequence[Rating], stop: int, **options: Any
) -> tuple[int, int, int, int, int]:
    """One curve row (see :class:`PrequentialResult`): ``batch``'s positives under ``view``."""
    marks = positive_hits(view, batch, **options)
    return (
        stop,
        len(marks),
        sum(hit for hit, _ in marks),
        sum(by_model for _, by_model in marks),
        sum(hit and by_model for hit, by_model in marks),
    )


def _cut(freeze_after: int | None, ordered: Sequence[Rating]) -> set[int]:
    if freeze_after is None or not 0 < freeze_after < len(ordered):
        return set()
    return {freeze_after}


def _windows(window_seconds: float | None, ordered: Sequence[Rating]) -> set[int]:
    """Positions where the time-ordered events enter a new window of ``window_seconds``."""
    if window_seconds is None or not ordered:
        return set()
    windows = np.floor(np.array([e.ts for e in ordered], dtype=np.float64) / window_seconds)
    return set((np.flatnonzero(np.diff(windows)) + 1).tolist())
