"""Scoring speed (``python -m benchmarks.scoring [--json]``): every figure is a ratio
against a raw baseline measured in the same run.

* one user: ``ScoringView.recommend(user, k=10)`` vs the raw LightFM way, ``model.predict``
  over every item followed by the same ``argpartition`` top-k;
* one user with 50 seen items excluded, same baseline (+ the same masking);
* many users: ``recommend_many`` (one matmul per chunk) vs a loop of ``recommend``.

Data: synthetic clustered ratings (no MovieLens needed), trained one epoch.
"""

from __future__ import annotations

import json

import click
import numpy as np
import scipy.sparse as sp

from benchmarks.common import Figure, compare, machine, table
from models.config import ModelConfig
from models.incremental import IncrementalModel
from models.synthetic import generate_ratings

#: What ``figures(quick=True)`` takes on the dev machine, roughly (benchmarks.run_all).
QUICK_SECONDS = 15


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


def figures(quick: bool) -> list[Figure]:
    """Calls/s of ours vs the raw baseline (speed-up >= 1: never slower than LightFM)."""
    out = []
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
def main(as_json: bool, users: int, n_items: tuple[int, ...], components: int, batch: int) -> None:
    """ScoringView speed against raw LightFM / per-user baselines."""
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
