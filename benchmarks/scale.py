"""How the trainer's and a scorer's per-unit costs grow with the model
(``python -m benchmarks.scale [--quick] [--json]``).

One process, one thread, the project's own ``models/`` API, consolidation off, 64
components. For each model size (users x items) a model is grown to that size (every user
and item rated once, all positive), then measured on work that does not change with the
size:

* **a batch**: ``train_batch`` of 2,000 positive ratings on users and items the model
  already holds (the best of a few rounds), in seconds and ratings/s;
* **a checkpoint**: ``to_bytes`` of the whole model (what a snapshot writes today), its
  bytes and seconds; and what changed since the previous one if 5% of the users were
  touched (the rows a checkpoint that costs what changed would write);
* **a request**: ``ScoringView.recommend`` for one user, k = 10.

Each figure is the cost at a size divided by the cost at the smallest size of the same run
(10k users x 20k items): work that follows the batch keeps the ratio near 1; work that
follows the model grows it with the size. Issue targets: a batch at 1M x 200k ≤ 2x the
batch at 10k x 20k; checkpoint bytes ≤ 0.05x the full model when 5% of users changed.
``--quick`` (``run_all --quick``) measures 10k x 20k, 100k x 20k and 10k x 200k; the full
run adds 1M x 20k, 100k x 200k and 1M x 200k (several GB of memory, minutes).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import click
import numpy as np

from benchmarks.common import Figure, machine, table
from models.config import ModelConfig
from models.events import Rating
from models.incremental import IncrementalModel

QUICK_SECONDS = 45
BATCH = 2_000
ROUNDS = 3
BASE = (10_000, 20_000)
QUICK_SIZES = [BASE, (100_000, 20_000), (10_000, 200_000)]
FULL_SIZES = [*QUICK_SIZES, (1_000_000, 20_000), (100_000, 200_000), (1_000_000, 200_000)]
#: The issue's goals (ratios to the 10k x 20k model): a batch, a checkpoint's share.
BATCH_GOAL = 2.0
CHECKPOINT_SHARE_GOAL = 0.05
TOUCHED_USERS = 0.05


@dataclass(frozen=True)
class Size:
    users: int
    items: int
    batch_seconds: float
    checkpoint_bytes: int
    checkpoint_seconds: float
    changed_bytes: int  # the rows of 5% of the users and every item touched since
    recommend_seconds: float

    @property
    def label(self) -> str:
        return f"{_short(self.users)} users x {_short(self.items)} items"


def _short(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1_000}k"


def grown_model(users: int, items: int, seed: int = 0) -> IncrementalModel:
    """A model holding ``users`` x ``items``: every user and item rated once (positive)."""
    config = ModelConfig(
        no_components=64, consolidate_every=0, positive_threshold=0.0, epochs_per_batch=1
    )
    model = IncrementalModel(config)
    rng = np.random.default_rng(seed)
    n = max(users, items)
    u = np.arange(n) % users
    i = rng.permutation(n) % items
    now = time.time()
    chunk = 200_000
    for start in range(0, n, chunk):
        model.train_batch(
            [
                Rating(f"g{k}", f"u{u[k]}", f"i{i[k]}", 5.0, now)
                for k in range(start, min(n, start + chunk))
            ]
        )
    return model


def known_batch(users: int, items: int, rng: np.random.Generator, tag: int) -> list[Rating]:
    """``BATCH`` positive ratings on ids the model holds, each with a new event id."""
    u = rng.integers(0, users, BATCH)
    i = rng.integers(0, items, BATCH)
    now = time.time()
    return [Rating(f"b{tag}-{k}", f"u{u[k]}", f"i{i[k]}", 5.0, now) for k in range(BATCH)]


def measure_size(users: int, items: int) -> Size:
    model = grown_model(users, items)
    rng = np.random.default_rng(1)
    model.train_batch(known_batch(users, items, rng, -1))  # warm-up
    batch = min(_timed(model.train_batch, known_batch(users, items, rng, r)) for r in range(ROUNDS))
    start = time.perf_counter()
    payload, _ = model.to_bytes()
    checkpoint_seconds = time.perf_counter() - start
    arrays = model.state_arrays()
    per_user = sum(a[0].nbytes for name, a in arrays.items() if name.startswith("user"))
    per_item = sum(a[0].nbytes for name, a in arrays.items() if name.startswith("item"))
    changed = int(TOUCHED_USERS * users) * per_user + items * per_item
    view = model.view()
    probe = [f"u{k}" for k in rng.integers(0, users, 200)]
    view.recommend(probe[0], k=10)
    start = time.perf_counter()
    for user in probe:
        view.recommend(user, k=10)
    recommend = (time.perf_counter() - start) / len(probe)
    size = Size(users, items, batch, len(payload), checkpoint_seconds, changed, recommend)
    del model, view, payload, arrays
    gc.collect()
    return size


def _timed(fn: Callable[[list[Rating]], object], batch: list[Rating]) -> float:
    start = time.perf_counter()
    fn(batch)
    return time.perf_counter() - start


def measure(sizes: list[tuple[int, int]]) -> list[Size]:
    return [measure_size(users, items) for users, items in sizes]


def figures(quick: bool) -> list[Figure]:
    sizes = measure(QUICK_SIZES if quick else FULL_SIZES)
    base = sizes[0]
    found = []
    for s in sizes[1:]:
        found.append(
            Figure(
                f"scale: a batch of {BATCH:,} at {s.label} (vs {base.label})",
                baseline=round(base.batch_seconds, 4),
                value=round(s.batch_seconds, 4),
                goal=BATCH_GOAL,
                better="lower",
                unit="s",
            )
        )
    for s in sizes:
        found.append(
            Figure(
                f"scale: checkpoint bytes at {s.label}, {TOUCHED_USERS:.0%} of users changed "
                "(written vs changed)",
                baseline=s.checkpoint_bytes,
                value=s.checkpoint_bytes,  # today a checkpoint is the whole model
                goal=CHECKPOINT_SHARE_GOAL,
                better="lower",
                unit="bytes",
                note=f"the changed rows are {s.changed_bytes:,} bytes "
                f"({s.changed_bytes / s.checkpoint_bytes:.2f}x); "
                f"encode {s.checkpoint_seconds:.2f} s",
            )
        )
    for s in sizes[1:]:
        found.append(
            Figure(
                f"scale: one recommend at {s.label} (vs {base.label})",
                baseline=round(base.recommend_seconds * 1e3, 4),
                value=round(s.recommend_seconds * 1e3, 4),
                goal=BATCH_GOAL,
                better="lower",
                unit="ms",
            )
        )
    return found


@click.command()
@click.option("--quick", is_flag=True, help="Three sizes up to 100k users or 200k items.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(quick: bool, as_json: bool) -> None:
    """Per-batch, per-checkpoint and per-request cost across model sizes."""
    sizes = measure(QUICK_SIZES if quick else FULL_SIZES)
    rows = [
        [
            s.label,
            f"{s.batch_seconds * 1e3:.1f}",
            f"{BATCH / s.batch_seconds:,.0f}",
            f"{s.batch_seconds / sizes[0].batch_seconds:.2f}",
            f"{s.checkpoint_bytes / 2**20:,.0f}",
            f"{s.checkpoint_seconds:.2f}",
            f"{s.changed_bytes / s.checkpoint_bytes:.3f}",
            f"{s.recommend_seconds * 1e3:.2f}",
        ]
        for s in sizes
    ]
    header = [
        "model",
        "batch ms",
        "ratings/s",
        "batch ratio",
        "checkpoint MiB",
        "encode s",
        "changed share",
        "recommend ms",
    ]
    if as_json:
        click.echo(json.dumps({"machine": machine(), "sizes": [s.__dict__ for s in sizes]}))
    else:
        click.echo(table(header, rows))
        click.echo(f"machine: {machine()}")


if __name__ == "__main__":
    main()
