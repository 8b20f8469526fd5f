"""How the trainer's and a scorer's per-unit costs grow with the model
(``python -m benchmarks.scale [--quick | --full] [--kafka] [--json]``).

One process, one thread, the project's own ``models/`` API, consolidation off, 64
components. For each model size (users x items) a model is grown to that size (every user
and item rated once, all positive), then measured on work that does not change with the
size:

* **a batch**: ``train_batch`` of 2,000 positive ratings on users and items the model
  already holds (the best of a few rounds), in seconds and ratings/s;
* **a checkpoint**: ``to_bytes`` of the whole model (what a snapshot writes today), its
  bytes and seconds; and what changed since the previous one if 5% of the users were
  touched (the rows a checkpoint that costs what changed would write);
* **a request**: ``ScoringView.recommend`` for one user, k = 10;
* **a consolidation**: one epoch of the retrain on the whole window (every rating the
  model was grown with), in seconds and per window event (``--quick``: windows of at most
  ``QUICK_WINDOW`` events only, to stay under a minute);
* **memory**: the process's resident set grown by the model (id maps, arrays, window).

The batches are :class:`~models.rating_columns.RatingColumns`, what the trainer decodes
Kafka records into. With ``--kafka`` (and in the full run of ``run_all``), the trainer
service itself: **publish → trained** against a raw aiokafka consumer of the same topic in
the same run (:func:`benchmarks.trainer.run`; needs the dev broker).

Each figure is the cost at a size divided by the cost at the smallest size of the same run
(10k users x 20k items): work that follows the batch keeps the ratio near 1; work that
follows the model grows it with the size. Issue targets: a batch at 1M x 200k ≤ 2x the
batch at 10k x 20k; checkpoint bytes ≤ 0.05x the full model when 5% of users changed.
``--quick`` (``run_all --quick``, under a minute) measures 10k x 20k, 100k x 20k and
10k x 200k; ``--full`` adds 1M x 20k, 100k x 200k and 1M x 200k (several GB of memory,
minutes). docs/scaling.md derives what one trainer holds and sustains from these curves.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import click
import numpy as np

from benchmarks.common import Figure, machine, table
from models.config import ModelConfig
from models.incremental import IncrementalModel
from models.rating_columns import RatingColumns

QUICK_SECONDS = 35
BATCH = 2_000
ROUNDS = 3
BASE = (10_000, 20_000)
QUICK_SIZES = [BASE, (100_000, 20_000), (10_000, 200_000)]
FULL_SIZES = [*QUICK_SIZES, (1_000_000, 20_000), (100_000, 200_000), (1_000_000, 200_000)]
#: The issue's goal (a ratio to the 10k x 20k model) for a batch.
BATCH_GOAL = 2.0
TOUCHED_USERS = 0.05
#: The largest window a quick run consolidates (one epoch at 200k items took ~27 s loaded).
QUICK_WINDOW = 120_000
#: Ratings of the publish -> trained run (benchmarks.trainer) in the full run.
KAFKA_RATINGS = 300_000


@dataclass(frozen=True)
class Size:
    users: int
    items: int
    batch_seconds: float
    checkpoint_bytes: int
    checkpoint_seconds: float
    changed_bytes: int  # the rows of 5% of the users and every item touched since
    recommend_seconds: float
    consolidation_seconds: float | None  # one epoch on the whole window (None: not measured)
    window: int  # events in the window
    rss_bytes: int  # resident memory the model added to the process

    @property
    def ratings_per_second(self) -> float:
        return BATCH / self.batch_seconds

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
        stop = min(n, start + chunk)
        model.train_batch(
            RatingColumns(
                [f"g{k}" for k in range(start, stop)],
                [f"u{k}" for k in u[start:stop].tolist()],
                [f"i{k}" for k in i[start:stop].tolist()],
                np.full(stop - start, 5.0),
                np.full(stop - start, now),
            )
        )
    return model


def known_batch(users: int, items: int, rng: np.random.Generator, tag: int) -> RatingColumns:
    """``BATCH`` positive ratings on ids the model holds, each with a new event id."""
    u = rng.integers(0, users, BATCH)
    i = rng.integers(0, items, BATCH)
    return RatingColumns(
        [f"b{tag}-{k}" for k in range(BATCH)],
        [f"u{k}" for k in u.tolist()],
        [f"i{k}" for k in i.tolist()],
        np.full(BATCH, 5.0),
        np.full(BATCH, time.time()),
    )


def rss() -> int:
    """This process's resident memory, bytes (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def measure_size(users: int, items: int, consolidation_window: int | None = None) -> Size:
    """Every figure at one size (a consolidation only if the window is at most
    ``consolidation_window`` events, when given)."""
    gc.collect()
    before = rss()
    model = grown_model(users, items)
    grown = rss() - before
    rng = np.random.default_rng(1)
    model.train_batch(known_batch(users, items, rng, -1))  # warm-up
    batch = min(_timed(model.train_batch, known_batch(users, items, rng, r)) for r in range(ROUNDS))
    start = time.perf_counter()
    payload, _ = model.to_bytes()
    checkpoint_bytes = len(payload)
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
    del view, payload, arrays
    window = model.window_size
    consolidation = None
    if consolidation_window is None or window <= consolidation_window:
        start = time.perf_counter()
        model.consolidate(epochs=1)
        consolidation = time.perf_counter() - start
    size = Size(
        users, items, batch, checkpoint_bytes, checkpoint_seconds, changed, recommend,
        consolidation, window, grown,
    )  # fmt: skip
    del model
    gc.collect()
    return size


def _timed(fn: Callable[[RatingColumns], object], batch: RatingColumns) -> float:
    start = time.perf_counter()
    fn(batch)
    return time.perf_counter() - start


def measure(quick: bool) -> list[Size]:
    """The quick sizes (consolidations on small windows only) or all of them."""
    if quick:
        return [measure_size(users, items, QUICK_WINDOW) for users, items in QUICK_SIZES]
    return [measure_size(users, items) for users, items in FULL_SIZES]


def publish_to_trained(ratings: int) -> dict[str, Any]:
    """The trainer service's publish -> trained and backlog -> trained against raw aiokafka
    consume, in one run (:func:`benchmarks.trainer.run`; the dev broker must be up)."""
    from benchmarks import trainer  # Kafka, workers: only when asked for

    return trainer.run(ratings)


def figures(quick: bool) -> list[Figure]:
    sizes = measure(quick)
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
                note=f"{s.ratings_per_second:,.0f} ratings/s (vs {base.ratings_per_second:,.0f})",
            )
        )
    # A checkpoint's bytes against the rows changed: benchmarks.checkpoints measures the
    # segments a checkpoint now is; the table here keeps a base's (the full model's) size.
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
        if base.consolidation_seconds is not None and s.consolidation_seconds is not None:
            found.append(
                Figure(
                    f"scale: a consolidation epoch per window event at {s.label} (vs {base.label})",
                    baseline=round(base.consolidation_seconds / base.window * 1e6, 3),
                    value=round(s.consolidation_seconds / s.window * 1e6, 3),
                    goal=BATCH_GOAL,
                    better="lower",
                    unit="us",
                    note=f"{s.consolidation_seconds:.2f} s for {s.window:,} events",
                )
            )
    if not quick:  # the quick run leaves the service to benchmarks.trainer (run_all has it)
        found.extend(kafka_figures(publish_to_trained(KAFKA_RATINGS)))
    return found


def kafka_figures(r: dict[str, Any]) -> list[Figure]:
    """Publish -> trained and backlog -> trained against raw consume, of one run."""
    from benchmarks.trainer import TARGET

    return [
        Figure(
            f"scale: ratings/s {what}, one trainer, {r['ratings']:,} ratings, vs raw aiokafka "
            "consume",
            baseline=round(r["raw_consume_per_second"]),
            value=round(r[field]),
            goal=TARGET,
            unit="ratings/s",
        )
        for what, field in (
            ("publish -> trained", "trained_per_second"),
            ("backlog -> trained", "backlog_trained_per_second"),
        )
    ]


@click.command()
@click.option(
    "--quick/--full",
    default=False,
    help="Three sizes up to 100k users or 200k items (under a minute), or all six up to "
    "1M users x 200k items (the default; several GB, minutes).",
)
@click.option(
    "--kafka",
    is_flag=True,
    help="Also publish -> trained vs raw aiokafka consume (the dev broker must be up).",
)
@click.option("--ratings", default=KAFKA_RATINGS, show_default=True, help="For --kafka.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(quick: bool, kafka: bool, ratings: int, as_json: bool) -> None:
    """Per-batch, per-checkpoint, per-request and per-consolidation cost across model
    sizes, the memory each size takes, and (``--kafka``) the trainer against raw consume."""
    sizes = measure(quick)
    service = publish_to_trained(ratings) if kafka else None
    if as_json:
        found = {
            "machine": machine(),
            "sizes": [{**asdict(s), "ratings_per_second": s.ratings_per_second} for s in sizes],
            "service": service,
        }
        click.echo(json.dumps(found))
        return
    rows = [
        [
            s.label,
            f"{s.batch_seconds * 1e3:.1f}",
            f"{s.ratings_per_second:,.0f}",
            f"{s.batch_seconds / sizes[0].batch_seconds:.2f}",
            f"{s.checkpoint_bytes / 2**20:,.0f}",
            f"{s.checkpoint_seconds:.2f}",
            f"{s.changed_bytes / s.checkpoint_bytes:.3f}",
            f"{s.recommend_seconds * 1e3:.2f}",
            "-" if s.consolidation_seconds is None else f"{s.consolidation_seconds:.2f}",
            f"{s.rss_bytes / 2**20:,.0f}",
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
        "consolidation epoch s",
        "memory MiB",
    ]
    click.echo(table(header, rows))
    if service is not None:
        click.echo(
            f"publish -> trained {service['trained_per_second']:,.0f}/s, backlog -> trained "
            f"{service['backlog_trained_per_second']:,.0f}/s, raw consume "
            f"{service['raw_consume_per_second']:,.0f}/s: ratios {service['ratio']:.3f} / "
            f"{service['backlog_ratio']:.3f} ({service['ratings']:,} ratings)"
        )
    click.echo(f"machine: {machine()}")


if __name__ == "__main__":
    main()
