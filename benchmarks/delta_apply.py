"""A scorer's CPU per delta against loading the snapshot, in process, at two model sizes
(issue 19: "CPU per delta per scorer"): ``python -m benchmarks.delta_apply [--quick] [--json]``.

A trainer's model (k=64) is trained on one rating per user and item, its snapshot stored
(a local file store) and loaded by the scorer's own :class:`agents.follower.ModelFollower`;
then the trainer makes deltas of one new user with 5 ratings (the freshness benchmark's
trials) and the follower applies each with :meth:`ModelFollower.on_delta`: signature check,
decode, chain rule, apply, publish, metrics. Per delta, the process's CPU time (every
thread: a worker thread's too, when the apply goes off the loop) and the wall time; the
baseline is the CPU of loading the same snapshot (:func:`models.snapshot.load_scoring_view`)
in the same run. Figures, each a ratio within the run:

* **scorer CPU per delta vs loading the snapshot**, at each size (goal <= 0.1, issue 19's
  freshness figure);
* **growth**: the CPU per delta of the large model against the small one's (a delta of the
  same 5 rows: the cost follows the delta, not the model; goal <= 2).

Besides, in the notes: the CPU of the item matrix the first scored request makes for each
new view (:meth:`models.scoring.ScoringView.product_items`, O(items), paid once per view by
a scorer that serves between deltas).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.common import Figure, figures_table, machine

QUICK_SECONDS = 10
COMPONENTS = 64
DELTAS = 40
#: (users, items) of the small and the large model.
SIZES = {True: ((2_000, 2_000), (50_000, 20_000)), False: ((2_000, 2_000), (500_000, 50_000))}
RATIO_GOAL, GROWTH_GOAL = 0.1, 2.0


@dataclass
class _Record:
    """One delta record as the follower reads it (aiokafka's ``ConsumerRecord``'s fields)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int | None


def measure(users: int, items: int, deltas: int = DELTAS) -> dict[str, Any]:
    """CPU and wall seconds per delta applied by a follower, and of a snapshot load."""
    from models.config import ModelConfig
    from models.events import Rating
    from models.incremental import IncrementalModel

    model = IncrementalModel(ModelConfig(no_components=COMPONENTS, initial_capacity=users))
    model.train_batch(
        [Rating(f"e{j}", f"u{j % users}", f"i{j % items}", 5.0, 1e9) for j in range(users)],
        epochs=1,
    )
    model.view()
    with tempfile.TemporaryDirectory() as home:
        return asyncio.run(_apply(model, f"file://{home}", deltas))


async def _apply(model: Any, uri: str, deltas: int) -> dict[str, Any]:
    from agents.follower import ModelFollower
    from agents.state import ModelHolder
    from models.events import Rating
    from models.signing import Keyring
    from models.snapshot import load_scoring_view, sign_manifest
    from models.wire import ModelUpdate, seal_delta
    from storage import open_store

    keys, topic = Keyring.dev(), "model-deltas"
    payload, manifest = model.to_bytes()
    manifest = sign_manifest(manifest, keys)
    loads = []
    for _ in range(3):
        start = time.process_time()
        load_scoring_view(payload, manifest, keys)
        loads.append(time.process_time() - start)
    rng = random.Random(5)
    async with open_store(uri) as store:
        stored = await store.put(manifest["version"], payload, manifest)
        await store.promote(manifest["version"])
        update = ModelUpdate.from_manifest(stored, manifest, created_at=manifest["created_at"])
        follower = ModelFollower(ModelHolder(), store, keys, "model-updates", deltas_topic=topic)
        if not await follower.load(update.version, update.signed(keys), seek=False):
            raise RuntimeError("the follower did not load the snapshot")
        cpu, wall, product = [], [], []
        for d in range(deltas):
            ratings = [
                Rating(f"n{d}-{j}", f"new{d}", f"i{rng.randrange(model.n_items)}", 5.0, 2e9 + d)
                for j in range(5)
            ]
            model.train_batch(ratings)
            model.view()
            raw = seal_delta(model.last_delta.encode(), keys)
            record = _Record(topic, 0, d, b"k", raw, int(time.time() * 1000))
            wall_start, start = time.perf_counter(), time.process_time()
            await follower.on_delta(record)
            cpu.append(time.process_time() - start)
            wall.append(time.perf_counter() - wall_start)
            view = follower.holder.view
            start = time.process_time()
            view.product_items()  # what the first scored request makes for this view
            product.append(time.process_time() - start)
        applied = follower.holder.info["deltas"]["applied"]
    if applied != deltas:
        raise RuntimeError(f"{applied} of {deltas} deltas applied")
    return {
        "users": model.n_users,
        "items": model.n_items,
        "load_cpu": min(loads),
        "apply_cpu": statistics.median(cpu),
        "apply_wall": statistics.median(wall),
        "product_items_cpu": statistics.median(product),
        "deltas": deltas,
    }


def run(quick: bool) -> dict[str, Any]:
    small, large = (measure(u, i) for u, i in SIZES[quick])
    return {"machine": machine(), "small": small, "large": large}


def _label(entry: dict[str, Any]) -> str:
    return f"{entry['users']:,} users x {entry['items']:,} items x {COMPONENTS}"


def figures_from(result: dict[str, Any]) -> list[Figure]:
    small, large = result["small"], result["large"]
    found = [
        Figure(
            f"scorer CPU per delta vs loading the snapshot, in process ({_label(e)})",
            e["load_cpu"],
            e["apply_cpu"],
            RATIO_GOAL,
            "lower",
            "s",
            f"median of {e['deltas']} deltas of 5 ratings (ModelFollower.on_delta, process CPU); "
            f"wall {e['apply_wall'] * 1e6:.0f} us; the item matrix a request then makes: "
            f"{e['product_items_cpu'] * 1e6:.0f} us once per view",
        )
        for e in (small, large)
    ]
    found.append(
        Figure(
            "scorer CPU per delta: large model vs small (the same 5-row delta)",
            small["apply_cpu"],
            large["apply_cpu"],
            GROWTH_GOAL,
            "lower",
            "s",
            f"{_label(large)} against {_label(small)}",
        )
    )
    return found


def figures(quick: bool) -> list[Figure]:
    """The figures for ``benchmarks.run_all``."""
    return figures_from(run(quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller large model")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.quick)
    found = figures_from(result)
    if args.json:
        print(json.dumps({"result": result, "figures": [f.to_dict() for f in found]}))
        return
    print(figures_table(found))
    for f in found:
        print(f"- {f.figure}: {f.note}")


if __name__ == "__main__":
    main()
