"""Offline sweep of the streaming defaults (the service without Kafka), a few seeds each.

    python -m benchmarks.quality_sweep [--dataset ml-100k] [--seeds 3] VARIANT...

A VARIANT is ``name=value[,name=value...]`` over :class:`models.config.ModelConfig` fields
(``base`` for the defaults), e.g. ``consolidate_every=0`` or ``max_sampled=30,epochs_per_batch=5``.
Each is replayed through ``IncrementalModel.train_batch`` in micro-batches of
``STREAMREC_BATCH_MAX`` on the temporal leave-10-out split of
:mod:`benchmarks.quality_service`; printed: mean and spread of P@10 over the seeds, beside
batch LightFM (same hyperparameters, 10 epochs) for the same seeds. docs/benchmarks.md
records what the sweeps found.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys

from benchmarks.common import table
from benchmarks.quality_service import DATASETS, baselines, load_split, offline_replay
from models.config import ModelConfig

QUICK_SECONDS = 1  # no figures: a sweep tool


def parse_variant(text: str, base: ModelConfig) -> ModelConfig:
    if text == "base":
        return base
    fields = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    changes = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        kind = fields.get(name)
        if kind is None:
            raise SystemExit(f"unknown ModelConfig field {name!r}")
        changes[name] = {"int": int, "float": float, "str": str, "bool": lambda v: v == "true"}[
            kind
        ](value)
    return dataclasses.replace(base, **changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(DATASETS), default="ml-100k")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="Default: STREAMREC_BATCH_MAX")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("variants", nargs="+")
    args = parser.parse_args()

    from app.settings import Settings, model_config_of

    settings = Settings()
    base = model_config_of(settings)
    split = load_split(args.dataset)
    if isinstance(split, str):
        sys.exit(f"skipped: {split}")
    rows = []
    for text in args.variants:
        config = parse_variant(text, base)
        ours, batch = [], []
        for seed in range(args.seeds):
            seeded = dataclasses.replace(config, seed=seed)
            ours.append(offline_replay(split, seeded, args.batch or settings.batch_max))
            if not args.no_baseline:
                batch.append(
                    baselines(split, seeded, ["batch LightFM"])["batch LightFM"]["precision"]
                )
        p = [r["precision"] for r in ours]
        rows.append(
            [
                text,
                statistics.mean(p),
                statistics.pstdev(p),
                statistics.mean(r["ndcg"] for r in ours),
                statistics.mean(batch) if batch else "-",
                statistics.mean(r["seconds"] for r in ours),
            ]
        )
        print(table(["variant", "P@10", "sd", "NDCG@10", "batch LightFM P@10", "s"], rows[-1:]))
    print()
    print(table(["variant", "P@10", "sd", "NDCG@10", "batch LightFM P@10", "s"], rows))


if __name__ == "__main__":
    main()
