"""Micro-batch training speed (``python -m benchmarks.training [--json]``).

``IncrementalModel.train_batch(batch)`` — the streaming call the trainer makes, with one
epoch per batch — against the raw baseline measured in the same run: one
``LightFM.fit_partial(coo, epochs=1)`` on the same interactions, starting from the same
state (the model's arrays copied into a plain LightFM), with LightFM's own identity
features. The ratio (ours / raw throughput) is the price of what train_batch adds: dedupe,
id mapping and growth, building the COO, the rollback copy and the finiteness check.

Consolidation is off here (``consolidate_every=0``): the trainer runs it in a thread of
its own beside the micro-batches (``agents.trainer``), so it is no part of a batch's cost;
``benchmarks.trainer`` measures the trainer with it. (An offline batch, ``epochs=N``, also
rebuilds the blending neighbours from the whole window: a bootstrap's cost, not a batch's.)

Steady state: every id is known. Growth: each batch brings 25% new users, so the twelve
arrays are reallocated (capacity doubling) along the way. Ratings are synthetic and all
positive (threshold 0) so ours and raw train exactly the same number of interactions.
"""

from __future__ import annotations

import json
import time

import click
import numpy as np
import scipy.sparse as sp
from lightfm import LightFM

from benchmarks.common import Figure, machine, table
from models.config import ModelConfig
from models.events import Rating
from models.incremental import IncrementalModel
from models.snapshot import STATE_ARRAYS
from models.synthetic import generate_ratings

#: Events each steady-state case trains at least (in more rounds for small batches).
MIN_EVENTS = 20_000

#: What ``figures(quick=True)`` takes on the dev machine, roughly (benchmarks.run_all).
QUICK_SECONDS = 5


def raw_copy(model: IncrementalModel) -> LightFM:
    """A plain LightFM holding a copy of the model's current state (exact n rows)."""
    c = model.config
    raw = LightFM(
        no_components=c.no_components,
        loss=c.loss,
        learning_rate=c.learning_rate,
        learning_schedule=c.learning_schedule,
        max_sampled=c.max_sampled,
        random_state=c.seed,
    )
    for name, array in model.state_arrays().items():
        setattr(raw, name, np.array(array, dtype=np.float32, order="C"))
    return raw


def coo_of(model: IncrementalModel, batch: list[Rating]) -> sp.coo_matrix:
    rows = np.array([model.users.get(r.user) for r in batch], dtype=np.int32)
    cols = np.array([model.items.get(r.item) for r in batch], dtype=np.int32)
    return sp.coo_matrix(
        (np.ones(len(batch), dtype=np.float32), (rows, cols)), shape=(model.n_users, model.n_items)
    )


def run_case(model: IncrementalModel, batches: list[list[Rating]], threads: int) -> dict:
    ours = raw_time = 0.0
    events = 0
    for batch in batches:
        start = time.perf_counter()
        model.train_batch(batch)
        ours += time.perf_counter() - start
        raw = raw_copy(model)  # same shapes and (statistically) the same work
        coo = coo_of(model, batch)
        start = time.perf_counter()
        raw.fit_partial(coo, epochs=1, num_threads=threads)
        raw_time += time.perf_counter() - start
        events += len(batch)
    return {
        "batches": len(batches),
        "batch_size": len(batches[0]),
        "ours_events_per_s": events / ours,
        "raw_events_per_s": events / raw_time,
        "ratio": raw_time / ours,
        "overhead_ms_per_batch": (ours - raw_time) / len(batches) * 1000,
    }


def measure(
    users: int = 5000,
    items: int = 2000,
    components: int = 32,
    loss: str = "warp",
    threads: int = 1,
    rounds: int = 5,
    warmup: int = 200_000,
) -> dict:
    """The report: one case per batch size in steady state, and one of growth."""
    sizes = (500, 2000, 20_000)
    # Small batches take a few ms each: run enough of them (>= MIN_EVENTS events per case)
    # that one scheduler hiccup on a shared machine does not decide the figure.
    per_size = {size: max(rounds, -(-MIN_EVENTS // size)) for size in sizes}
    needed = warmup + sum(n * size for size, n in per_size.items()) + rounds * 2000
    stream = generate_ratings(users, items, needed, 16, seed=3)
    config = ModelConfig(
        loss=loss,
        no_components=components,
        num_threads=threads,
        positive_threshold=0.0,
        dedupe_memory=1_000_000,
        epochs_per_batch=1,
        consolidate_every=0,
    )
    model = IncrementalModel(config)
    model.train_batch(stream[:warmup], epochs=1)
    cases = []
    offset = warmup
    for size in sizes:
        n = per_size[size]
        batches = [stream[offset + i * size : offset + (i + 1) * size] for i in range(n)]
        offset += n * size
        cases.append({"case": "steady state", **run_case(model, batches, threads)})
    growth = []
    for r in range(rounds):  # a quarter of each batch from brand-new users
        base = stream[offset + r * 2000 : offset + (r + 1) * 2000]
        growth.append(
            [
                Rating(
                    e.event_id + "-g",
                    f"new{r}-{j}" if j % 4 == 0 else e.user,
                    e.item,
                    e.rating,
                    e.ts,
                )
                for j, e in enumerate(base)
            ]
        )
    cases.append({"case": "growth: 25% new users", **run_case(model, growth, threads)})
    assert all(np.isfinite(a).all() for a in model.state_arrays().values()), STATE_ARRAYS
    return {
        "users": model.n_users,
        "items": model.n_items,
        "components": components,
        "loss": loss,
        "threads": threads,
        "machine": machine(),
        "cases": cases,
    }


#: What ``train_batch`` may cost over raw ``fit_partial`` (1 epoch, the hardest case for us).
GOAL = 0.25


def figures(quick: bool) -> list[Figure]:
    """train_batch events/s vs raw fit_partial events/s on the same batches."""
    report = measure(rounds=2 if quick else 5, warmup=50_000 if quick else 200_000)
    return [
        Figure(
            f"train_batch vs raw fit_partial, {c['case']}, batch {c['batch_size']:,}",
            baseline=round(c["raw_events_per_s"]),
            value=round(c["ours_events_per_s"]),
            goal=GOAL,
            unit="events/s",
        )
        for c in report["cases"]
    ]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--users", default=5000, show_default=True)
@click.option("--items", default=2000, show_default=True)
@click.option("--components", default=32, show_default=True)
@click.option("--loss", default="warp", show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--rounds", default=5, show_default=True, help="Batches per case.")
def main(
    as_json: bool, users: int, items: int, components: int, loss: str, threads: int, rounds: int
) -> None:
    """train_batch throughput against raw fit_partial on the same interactions."""
    report = measure(users, items, components, loss, threads, rounds)
    cases = report["cases"]
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"{loss}, {components} components, {threads} thread(s), 1 epoch per batch, "
        f"{report['users']} users x {report['items']} items; {report['machine']}\n"
    )
    click.echo(
        table(
            ["case", "batch", "ours ev/s", "raw ev/s", "ours/raw", "overhead ms/batch"],
            [
                [
                    c["case"],
                    c["batch_size"],
                    f"{c['ours_events_per_s']:,.0f}",
                    f"{c['raw_events_per_s']:,.0f}",
                    f"{c['ratio']:.2f}",
                    f"{c['overhead_ms_per_batch']:.1f}",
                ]
                for c in cases
            ],
        )
    )


if __name__ == "__main__":
    main()
