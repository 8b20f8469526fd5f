"""Scoring speed (``python -m benchmarks.scoring [--json]``): every figure is a ratio
against a raw baseline measured in the same run.

* one user: ``ScoringView.recommend(user, k=10)`` vs the raw LightFM way, ``model.predict``
  over every item followed by the same ``argpartition`` top-k;
* one user with 50 seen items excluded, same baseline (+ the same masking);
* many users: ``recommend_many`` (one matmul per chunk) vs a loop of ``recommend``;
* large catalogs (issue 19): 1,000 requests in flight (each with 50 seen items excluded) at
  20k and 200k items x 64 components, per request p50/p99: the scorer's batch path
  (``recommend_batch``, ``STREAMREC_REQUEST_BATCH_MAX`` = 500 at a time; a request's cost
  is its batch's time over its size) vs today's per-request path (``recommend`` each);
* the approximate index (issue 19, :mod:`models.ann`; ``--ann``): the same at 200k
  clustered items, through the index vs exact, and its recall@10 of exact.

Data: synthetic clustered ratings (no MovieLens needed), trained one epoch; the large
catalogs are random embeddings (training 200k items would dominate the run).
"""

from __future__ import annotations

import json
import statistics
import time

import click
import numpy as np
import scipy.sparse as sp

from benchmarks.common import Figure, compare, machine, table
from models.config import ModelConfig
from models.incremental import IncrementalModel
from models.scoring import ScoringView
from models.synthetic import clustered_factors, generate_ratings

#: What ``figures(quick=True)`` takes on the dev machine, roughly (benchmarks.run_all).
QUICK_SECONDS = 65  # 45 before the approximate index's ~20 s


def build(users: int, items: int, ratings: int, components: int) -> IncrementalModel:
    model = IncrementalModel(ModelConfig(no_components=components, positive_threshold=0.0))
    model.train_batch(generate_ratings(users, items, ratings, n_clusters=16, seed=1), epochs=1)
    return model


def measure(model: IncrementalModel, batch: int, k: int = 10) -> list[dict]:
    view = model.view()
    lfm = model._lfm  # the raw LightFM object the model trains, for the baseline
    cap_users, cap_items = model.capacity
    n_items = view.n_items
    user_features = sp.identity(cap_users, dtype=np.float32, format="csr")[: view.n_users]
    item_features = sp.identity(cap_items, dtype=np.float32, format="csr")[:n_items]
    all_items = np.arange(n_items, dtype=np.int32)
    rng = np.random.default_rng(0)
    warm = [u for u in model.users.ids() if view.model_row(u) is not None]
    user = warm[0]
    row = view.model_row(user)
    seen = [view.item_ids()[i] for i in rng.choice(n_items, 50, replace=False)]
    seen_rows = view.item_rows(seen)

    def raw(exclude: np.ndarray | None = None) -> list[int]:
        scores = lfm.predict(
            np.full(n_items, row, dtype=np.int32),
            all_items,
            user_features=user_features,
            item_features=item_features,
        )
        if exclude is not None:
            scores[exclude] = -np.inf
        top = np.argpartition(-scores, k)[:k]
        return top[np.argsort(-scores[top])].tolist()

    # Same answer first: a speed ratio between different results would mean nothing.
    assert [view.item_ids()[i] for i in raw()] == [s.item for s in view.recommend(user, k).items]

    results = []
    for name, fast, slow in (
        ("recommend vs predict+top-k", lambda: view.recommend(user, k), raw),
        (
            "recommend, 50 excluded, vs predict+mask+top-k",
            lambda: view.recommend(user, k, exclude=seen),
            lambda: raw(seen_rows),
        ),
    ):
        t_fast, t_slow = compare(fast, slow, number=200)
        results.append(
            {
                "case": name,
                "ours_us": t_fast * 1e6,
                "baseline_us": t_slow * 1e6,
                "speedup": t_slow / t_fast,
            }
        )
    users = [warm[i % len(warm)] for i in range(batch)]
    t_many, t_loop = compare(
        lambda: view.recommend_many(users, k),
        lambda: [view.recommend(u, k) for u in users],
        number=1,
    )
    results.append(
        {
            "case": f"recommend_many({batch}) vs {batch} x recommend",
            "ours_us": t_many * 1e6,
            "baseline_us": t_loop * 1e6,
            "speedup": t_loop / t_many,
        }
    )
    return results


def random_view(users: int, items: int, components: int, seed: int = 0) -> ScoringView:
    """A view of random embeddings (every user warm): the cost of scoring does not depend
    on what was learnt."""
    rng = np.random.default_rng(seed)
    user_ids = [f"u{i}" for i in range(users)]
    item_ids = [f"i{i}" for i in range(items)]
    return ScoringView(
        version=1,
        user_ids=user_ids,
        user_index={u: i for i, u in enumerate(user_ids)},
        item_ids=item_ids,
        item_index={v: i for i, v in enumerate(item_ids)},
        user_embeddings=rng.standard_normal((users, components), dtype=np.float32) * 0.1,
        user_biases=np.zeros(users, dtype=np.float32),
        item_embeddings=rng.standard_normal((items, components), dtype=np.float32) * 0.1,
        item_biases=rng.standard_normal(items, dtype=np.float32) * 0.1,
        popularity=rng.random(items),
        user_positives=np.ones(users, dtype=np.int64),
    )


def factor_view(items: np.ndarray, queries: np.ndarray, version: int = 1) -> ScoringView:
    """A view of ``items`` (embedding, bias) and of one warm user per query row (``u<n>``,
    ``i<n>``), popularity all 1."""
    user_ids = [f"u{i}" for i in range(len(queries))]
    item_ids = [f"i{i}" for i in range(len(items))]
    return ScoringView(
        version=version,
        user_ids=user_ids,
        user_index={u: i for i, u in enumerate(user_ids)},
        item_ids=item_ids,
        item_index={v: i for i, v in enumerate(item_ids)},
        user_embeddings=np.ascontiguousarray(queries[:, :-1]),
        user_biases=np.zeros(len(queries), dtype=np.float32),
        item_embeddings=np.ascontiguousarray(items[:, :-1]),
        item_biases=np.ascontiguousarray(items[:, -1]),
        popularity=np.ones(len(items)),
        user_positives=np.ones(len(queries), dtype=np.int64),
    )


def in_flight(
    view: ScoringView, requests: int = 1000, batch: int = 500, rounds: int = 3, k: int = 10
) -> dict[str, float]:
    """``requests`` requests in flight, each excluding 50 seen items: ms per request,
    p50/p99, of the per-request path (``recommend``, each call timed) and of the batch path
    (``recommend_batch`` of ``batch`` at a time; each request costs its batch's time over
    its size), rounds interleaved; and the batch path's completion p50/p99 (all arrived at
    once). The two paths' answers are asserted equal first."""
    rng = np.random.default_rng(1)
    item_ids = view.item_ids()
    users = [f"u{i}" for i in rng.integers(0, view.n_users, requests).tolist()]
    seen_rows = [np.sort(rng.choice(view.n_items, 50, replace=False)) for _ in users]
    seen = [[item_ids[i] for i in rows.tolist()] for rows in seen_rows]
    ks = [k] * requests

    def batched() -> list:
        out = []
        for at in range(0, requests, batch):
            out += view.recommend_batch(
                users[at : at + batch], ks[at : at + batch], seen_rows[at : at + batch]
            )
        return out

    one = [view.recommend(u, k, exclude=s) for u, s in zip(users[:50], seen[:50], strict=True)]
    # the same scores up to float32 rounding (a matrix product vs matrix-vector products)
    assert np.allclose(
        [[x.score for x in r.items] for r in batched()[:50]],
        [[x.score for x in r.items] for r in one],
        rtol=1e-5,
        atol=1e-6,
    )
    before: list[float] = []
    after: list[float] = []
    done: list[float] = []
    for _ in range(rounds):
        for u, s in zip(users, seen, strict=True):
            start = time.perf_counter()
            view.recommend(u, k, exclude=s)
            before.append(time.perf_counter() - start)
        start = time.perf_counter()
        for at in range(0, requests, batch):
            t0 = time.perf_counter()
            view.recommend_batch(
                users[at : at + batch], ks[at : at + batch], seen_rows[at : at + batch]
            )
            t1 = time.perf_counter()
            size = min(batch, requests - at)
            after += [(t1 - t0) / size] * size
            done += [t1 - start] * size
    return {**_ms("before", before), **_ms("after", after), **_ms("done", done)}


def _ms(name: str, seconds: list[float]) -> dict[str, float]:
    """``{name}_p50_ms`` and ``{name}_p99_ms`` of ``seconds``."""
    ordered = sorted(seconds)
    return {
        f"{name}_p50_ms": statistics.median(ordered) * 1000.0,
        f"{name}_p99_ms": ordered[int(0.99 * (len(ordered) - 1))] * 1000.0,
    }


def large_catalog_figures(quick: bool) -> list[Figure]:
    """Issue 19: request p50/p99 per request at 20k and 200k items, 1,000 in flight,
    batch path vs per-request path (the target: p50 <= 0.5 ms at 200k; goal 0.2 ms)."""
    out = []
    for items in (20_000, 200_000):
        r = in_flight(random_view(10_000, items, 64), rounds=1 if quick else 3)
        note = (
            f"batch path {r['after_p50_ms']:.3f} ms p50, {r['after_p99_ms']:.3f} ms p99 per "
            f"request; per-request path {r['before_p50_ms']:.3f} / {r['before_p99_ms']:.3f} "
            f"ms; 1,000 arriving at once all answered by {r['done_p99_ms']:.0f} ms"
        )
        for stat in ("p50", "p99"):
            out.append(
                Figure(
                    f"scoring: request {stat} per request, 1,000 in flight, {items:,} items x 64,"
                    " batch path vs per-request recommend",
                    baseline=round(r[f"before_{stat}_ms"], 4),
                    value=round(r[f"after_{stat}_ms"], 4),
                    goal=1.0,
                    better="lower",
                    unit="ms",
                    note=note,
                )
            )
    return out


def ann_in_flight(
    items: int = 200_000,
    users: int = 10_000,
    requests: int = 1000,
    batch: int = 500,
    rounds: int = 3,
    k: int = 10,
    changed: int = 2000,
) -> dict[str, float]:
    """Issue 19's approximate index (:mod:`models.ann`) on clustered 64-dim factors
    (:func:`models.synthetic.clustered_factors`): ``requests`` in flight, 50 seen items
    excluded each, ``recommend_batch`` ``batch`` at a time exactly and through the index,
    rounds interleaved, ms per request p50/p99; recall@10 of exact; the index's build
    seconds; and the same through the index after ``changed`` items changed (scored
    exactly beside every query until the rebuild)."""
    from models.ann import FreshIndex, ItemIndex

    factors, queries = clustered_factors(items, users, seed=11)
    view = factor_view(factors, queries)
    rng = np.random.default_rng(1)
    names = [f"u{i}" for i in rng.integers(0, users, requests).tolist()]
    seen = [np.sort(rng.choice(items, 50, replace=False)) for _ in names]
    ks = [k] * requests
    start = time.perf_counter()
    index = ItemIndex(view.product_items(), view.sample_queries(256))
    build = time.perf_counter() - start
    fresh = FreshIndex.of(index, view.product_items())
    later = factors.copy()
    later[rng.choice(items, changed, replace=False), -1] += 0.05  # a delta's item biases
    view_later = factor_view(later, queries, version=2)
    view_later.product_items()  # made once per view for exact scoring as well
    start = time.perf_counter()
    fresh_later = FreshIndex.of(index, view_later.product_items())
    made_right = time.perf_counter() - start

    def timed(on: ScoringView, search: FreshIndex | None, into: list[float]) -> list:
        out = []
        for at in range(0, requests, batch):
            t0 = time.perf_counter()
            out += on.recommend_batch(
                names[at : at + batch], ks[at : at + batch], seen[at : at + batch], search=search
            )
            into += [(time.perf_counter() - t0) / min(batch, requests - at)] * min(
                batch, requests - at
            )
        return out

    exact: list[float] = []
    near: list[float] = []
    stale: list[float] = []
    hits = total = 0
    for _ in range(rounds):
        want = timed(view, None, exact)
        got = timed(view, fresh, near)
        timed(view_later, fresh_later, stale)
        for a, b in zip(want, got, strict=True):
            hits += len({s.item for s in a.items} & {s.item for s in b.items})
            total += len(a.items)
    ms = 1000.0
    return {
        **_ms("exact", exact),
        **_ms("ann", near),
        **_ms("stale", stale),
        "recall": hits / total,
        "build_s": build,
        "probes": index.probes,
        "stale_rows": len(fresh_later.stale),
        "made_right_ms": made_right * ms,
    }


def ann_figures(quick: bool) -> list[Figure]:
    """Issue 19: request p50/p99 at 200k items, 1,000 in flight, through the approximate
    index vs exact (the same run's batch path); recall@10 of exact (goal >= 0.98)."""
    r = ann_in_flight(rounds=1 if quick else 3)
    note = (
        f"exact {r['exact_p50_ms']:.3f} / {r['exact_p99_ms']:.3f} ms, index "
        f"{r['ann_p50_ms']:.3f} / {r['ann_p99_ms']:.3f} ms, with {r['stale_rows']:,} changed "
        f"items {r['stale_p50_ms']:.3f} / {r['stale_p99_ms']:.3f} ms (p50 / p99 per request); "
        f"recall@10 {r['recall']:.4f}; built in {r['build_s']:.1f} s ({r['probes']} lists "
        f"probed), made right for a view in {r['made_right_ms']:.0f} ms"
    )
    out = [
        Figure(
            f"scoring: request {stat} per request, 1,000 in flight, 200,000 clustered items x "
            "64, approximate index vs exact",
            baseline=round(r[f"exact_{stat}_ms"], 4),
            value=round(r[f"ann_{stat}_ms"], 4),
            goal=0.25,  # the 0.5 ms over exact's 1.9 ms here
            better="lower",
            unit="ms",
            note=note,
        )
        for stat in ("p50", "p99")
    ]
    out.append(
        Figure(
            "scoring: recall@10 of exact, 200,000 clustered items x 64, approximate index",
            baseline=1.0,
            value=round(r["recall"], 4),
            goal=0.98,
            note=note,
        )
    )
    return out


def figures(quick: bool) -> list[Figure]:
    """Calls/s of ours vs the raw baseline (speed-up >= 1: never slower than LightFM), and
    the large-catalog request costs."""
    out = large_catalog_figures(quick) + ann_figures(quick)
    for items in (2000,) if quick else (2000, 20000):
        model = build(5000, items, min(200_000, 5000 * items // 4), 32)
        for r in measure(model, 200 if quick else 1000):
            out.append(
                Figure(
                    f"scoring: {r['case']}, {items:,} items",
                    baseline=round(1e6 / r["baseline_us"], 1),
                    value=round(1e6 / r["ours_us"], 1),
                    goal=1.0,
                    unit="calls/s",
                )
            )
    return out


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--users", default=5000, show_default=True)
@click.option(
    "--items", "n_items", multiple=True, type=int, default=(2000, 20000), show_default=True
)
@click.option("--components", default=32, show_default=True)
@click.option("--batch", default=1000, show_default=True, help="Users per recommend_many call.")
@click.option(
    "--ann",
    "ann_only",
    is_flag=True,
    help="Only the approximate index at 200k items: 1,000 requests in flight vs exact.",
)
@click.option(
    "--in-flight",
    "in_flight_only",
    is_flag=True,
    help="Only the large-catalog figures: 1,000 requests in flight at 20k and 200k items.",
)
def main(
    as_json: bool,
    users: int,
    n_items: tuple[int, ...],
    components: int,
    batch: int,
    in_flight_only: bool,
    ann_only: bool,
) -> None:
    """ScoringView speed against raw LightFM / per-user baselines."""
    if in_flight_only or ann_only:
        found = ann_figures(quick=False) if ann_only else large_catalog_figures(quick=False)
        if as_json:
            click.echo(json.dumps([f.to_dict() for f in found]))
            return
        rows = [(f.figure, f.baseline, f.value, f.ratio, f.note) for f in found]
        click.echo(table(["figure", "per-request ms", "batch ms", "ratio", "note"], rows))
        click.echo(machine())
        return
    report = {"users": users, "components": components, "machine": machine(), "runs": []}
    for items in n_items:
        model = build(users, items, min(200_000, users * items // 4), components)
        report["runs"].append({"items": items, "results": measure(model, batch)})
    if as_json:
        click.echo(json.dumps(report))
        return
    rows = [
        [
            r["case"],
            run["items"],
            f"{r['ours_us']:.1f}",
            f"{r['baseline_us']:.1f}",
            f"{r['speedup']:.1f}x",
        ]
        for run in report["runs"]
        for r in run["results"]
    ]
    click.echo(
        f"{users} users, {components} components, k=10, best of 7 interleaved rounds; "
        f"{report['machine']}\n"
    )
    click.echo(table(["case", "items", "ours µs", "baseline µs", "speedup"], rows))


if __name__ == "__main__":
    main()
