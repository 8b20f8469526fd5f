"""Recommendation quality on MovieLens 100K (``python -m benchmarks.quality [--json]``).

Split: LightFM's ua protocol holds out 10 ratings per user (ua.base/ua.test). We derive it
from u.data by time: each user's 10 *latest* ratings are the test set (every ml-100k user
has >= 20 ratings), which is slightly harder than the random ua split. Two protocols:
"all" (every rating is a positive, LightFM's docs) and ">=4" (ratings of 4 and 5 are
positives, for training and for test; the service's default). Metrics at k=10, averaged
over test users, with and without excluding each user's training items.

References measured in the same run:
* ``popularity``: the service's cold-start ranking (recency-decayed counts);
* ``lightfm``: plain ``LightFM.fit`` + ``lightfm.evaluation`` on the same split and
  hyperparameters, to show the growable wrapper loses nothing;
* ``lightfm, 2x item rows``: the same with the interaction matrix shaped to a capacity
  of 2x the items — the design choice we did *not* make (negatives drawn from empty rows).

Prequential: all of u.data replayed in time order in micro-batches of 1000 (test each
batch's positives, then train on it) with the service defaults (>=4, 2 epochs per batch);
hit-rate@10 over the second half for the incremental model, the same model frozen after the
first half, and popularity.
"""

from __future__ import annotations

import json
import time

import click
import numpy as np
import scipy.sparse as sp

from benchmarks.common import Figure, data_dir, require, table
from models.config import ModelConfig
from models.datasets import iter_ratings
from models.evaluation import evaluate, positives_by_user, prequential, split_latest_per_user
from models.events import Rating
from models.incremental import IncrementalModel

#: What ``figures(quick=True)`` takes on the dev machine, roughly (benchmarks.run_all).
QUICK_SECONDS = 5  # no quick figures (see figures()); the imports take a few seconds

PROTOCOLS = {"all": 0.0, ">=4": 4.0}


def load() -> list[Rating]:
    path = require(data_dir() / "ml-100k" / "u.data")
    with path.open(encoding="utf-8") as f:
        return list(iter_ratings(f, "ml100k", source="u.data"))


def offline_rows(
    train: list[Rating], test: list[Rating], epochs: int, components: int, seed: int
) -> list[dict]:
    rows = []
    seen = positives_by_user(train)
    for protocol, threshold in PROTOCOLS.items():
        truth = positives_by_user(test, threshold)
        view = None
        for loss in ("warp", "bpr"):
            config = ModelConfig(  # LightFM's max_sampled and no blending: the wrapper vs
                loss=loss,  # plain LightFM (benchmarks.quality_service measures the defaults)
                no_components=components,
                positive_threshold=threshold,
                seed=seed,
                max_sampled=10,
                blend_neighbours=0,
            )
            model = IncrementalModel(config)
            started = time.perf_counter()
            model.train_batch(train, epochs=epochs)
            seconds = time.perf_counter() - started
            view = model.view()
            for exclude in (True, False):
                m = evaluate(view, truth, train=seen, exclude_train=exclude)
                rows.append(_row(loss, protocol, m, seconds))
        for exclude in (True, False):
            m = evaluate(view, truth, train=seen, exclude_train=exclude, popularity=True)
            rows.append(_row("popularity", protocol, m, 0.0))
    rows += lightfm_reference(train, test, epochs, components, seed)
    return rows


def _row(name: str, protocol: str, m, seconds: float) -> dict:
    return {
        "model": name,
        "protocol": protocol,
        "exclude_train": m.exclude_train,
        "precision@10": m.precision,
        "recall@10": m.recall,
        "ndcg@10": m.ndcg,
        "hit_rate@10": m.hit_rate,
        "auc": m.auc,
        "users": m.users,
        "train_seconds": round(seconds, 2),
    }


def lightfm_reference(
    train: list[Rating], test: list[Rating], epochs: int, components: int, seed: int
) -> list[dict]:
    """Plain LightFM, WARP, all ratings positive, evaluated by lightfm.evaluation."""
    from lightfm import LightFM
    from lightfm.evaluation import auc_score, precision_at_k, recall_at_k

    users = {u: i for i, u in enumerate(sorted({r.user for r in train + test}))}
    items = {x: i for i, x in enumerate(sorted({r.item for r in train + test}))}
    rows = []
    for name, n_items in (("lightfm", len(items)), ("lightfm, 2x item rows", 2 * len(items))):

        def matrix(ratings: list[Rating], n_items: int = n_items) -> sp.coo_matrix:
            return sp.coo_matrix(
                (
                    np.ones(len(ratings), dtype=np.float32),
                    ([users[r.user] for r in ratings], [items[r.item] for r in ratings]),
                ),
                shape=(len(users), n_items),
            )

        train_m, test_m = matrix(train), matrix(test)
        model = LightFM(no_components=components, loss="warp", random_state=seed)
        started = time.perf_counter()
        model.fit(train_m, epochs=epochs)
        seconds = time.perf_counter() - started
        for exclude in (True, False):
            known = {"train_interactions": train_m} if exclude else {}
            p = float(precision_at_k(model, test_m, k=10, **known).mean())
            rows.append(
                {
                    "model": name,
                    "protocol": "all",
                    "exclude_train": exclude,
                    "precision@10": p,
                    "recall@10": float(recall_at_k(model, test_m, k=10, **known).mean()),
                    "ndcg@10": None,
                    "hit_rate@10": None,
                    "auc": float(auc_score(model, test_m, **known).mean()),
                    "users": int((test_m.getnnz(axis=1) > 0).sum()),
                    "train_seconds": round(seconds, 2),
                }
            )
    return rows


def prequential_rows(
    ratings: list[Rating], batch_size: int, components: int, seed: int
) -> list[dict]:
    ordered = sorted(ratings, key=lambda r: r.ts)
    half = len(ordered) // 2
    config = ModelConfig(
        no_components=components, positive_threshold=4.0, epochs_per_batch=2, seed=seed
    )
    runs = {
        "incremental": {},
        "frozen after first half": {"freeze_after": half},
        "popularity": {"popularity": True},
    }
    rows = []
    for name, kwargs in runs.items():
        started = time.perf_counter()
        result = prequential(
            ordered, IncrementalModel(config), batch_size=batch_size, k=10, **kwargs
        )
        rows.append(
            {
                "model": name,
                "hit_rate@10_second_half": result.hit_rate_between(half),
                "hit_rate@10_first_half": result.hit_rate_between(0, half),
                "model_scored_share_second_half": result.model_share(half),
                "hit_rate@10_model_scored_second_half": result.hit_rate_between(
                    half, model_only=True
                ),
                "trials": result.trials,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    return rows


def figures(quick: bool) -> list[Figure]:
    """Quality ratios: ours vs plain LightFM, vs popularity, and incremental vs frozen.

    Full runs only: ``--quick`` gets the issue's quality figures (the same split, the
    prequential ratio and the batch baselines) from :mod:`benchmarks.quality_service`."""
    if quick:
        return []
    ratings = load()
    train, test = split_latest_per_user(ratings, 10)
    offline = offline_rows(train, test, 10, 32, 42)
    online = {r["model"]: r for r in prequential_rows(ratings, 1000, 32, 42)}

    def p10(model: str, protocol: str) -> float:
        return next(
            r["precision@10"]
            for r in offline
            if r["model"] == model and r["protocol"] == protocol and r["exclude_train"]
        )

    hr = {name: r["hit_rate@10_second_half"] for name, r in online.items()}
    return [
        Figure(
            "ml-100k P@10, WARP (all positive, train excluded) vs plain LightFM fit",
            baseline=p10("lightfm", "all"),
            value=p10("warp", "all"),
            goal=0.95,
        ),
        Figure(
            "ml-100k P@10, WARP (>=4, train excluded) vs popularity",
            baseline=p10("popularity", ">=4"),
            value=p10("warp", ">=4"),
            goal=1.2,
        ),
        Figure(
            "ml-100k prequential HR@10 (2nd half), incremental vs frozen after 1st half",
            baseline=hr["frozen after first half"],
            value=hr["incremental"],
            goal=1.0,
        ),
        Figure(
            "ml-100k prequential HR@10 (2nd half), incremental vs popularity",
            baseline=hr["popularity"],
            value=hr["incremental"],
            goal=1.0,
        ),
    ]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--components", default=32, show_default=True)
@click.option("--batch-size", default=1000, show_default=True, help="Prequential micro-batch.")
@click.option("--seed", default=42, show_default=True)
def main(as_json: bool, epochs: int, components: int, batch_size: int, seed: int) -> None:
    """MovieLens 100K quality: offline (ua-style split) and prequential."""
    started = time.perf_counter()
    ratings = load()
    train, test = split_latest_per_user(ratings, 10)
    offline = offline_rows(train, test, epochs, components, seed)
    online = prequential_rows(ratings, batch_size, components, seed)
    report = {
        "dataset": "ml-100k",
        "split": {"kind": "10 latest ratings per user", "train": len(train), "test": len(test)},
        "epochs": epochs,
        "components": components,
        "seed": seed,
        "offline": offline,
        "prequential": online,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"ml-100k, {len(train)} train / {len(test)} test (10 latest per user), "
        f"{components} components, {epochs} epochs, seed {seed}\n"
    )
    columns = ["precision@10", "recall@10", "ndcg@10", "hit_rate@10", "auc"]
    click.echo(
        table(
            [
                "model",
                "positives",
                "train items",
                "P@10",
                "R@10",
                "NDCG@10",
                "HR@10",
                "AUC",
                "fit s",
            ],
            [
                [
                    r["model"],
                    r["protocol"],
                    "excluded" if r["exclude_train"] else "included",
                    *("-" if r[c] is None else r[c] for c in columns),
                    f"{r['train_seconds']:.1f}",
                ]
                for r in offline
            ],
        )
    )
    click.echo(
        f"\nprequential, micro-batches of {batch_size}, positives >= 4, seen items excluded; "
        "model-scored: share of 2nd-half trials the model (not popularity) answered\n"
    )
    click.echo(
        table(
            [
                "model",
                "HR@10 2nd half",
                "HR@10 1st half",
                "model-scored",
                "their HR@10",
                "trials",
                "s",
            ],
            [
                [
                    r["model"],
                    r["hit_rate@10_second_half"],
                    r["hit_rate@10_first_half"],
                    f"{r['model_scored_share_second_half']:.0%}",
                    r["hit_rate@10_model_scored_second_half"],
                    r["trials"],
                    f"{r['seconds']:.1f}",
                ]
                for r in online
            ],
        )
    )
    click.echo(f"\ntotal {report['seconds']} s")


if __name__ == "__main__":
    main()
