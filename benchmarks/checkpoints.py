"""Incremental checkpoints (``python -m benchmarks.checkpoints [--quick] [--json]``).

In process, no broker or store: a model of ``users`` users (one rating each), then 200
batches whose ratings come from 5% of the users (no consolidation in between: one rewrites
every row, and the checkpoint after it is a base). Figures, each against a baseline of the
same run: the segment's bytes vs the full snapshot's; the time the trainer holds its lock
for a segment (``cut_checkpoint``: a copy of the changed rows) and for a fresh model's first
base (a copy of the state; later bases, and a restored trainer's, are compacted outside the
lock from the stored chain and the segment) vs before (``to_bytes`` + signing under the
lock). The segment is restored (base + segment) and checked bit-identical to the live model.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

import numpy as np

from benchmarks.common import Figure, table
from models.config import ModelConfig
from models.events import Rating
from models.incremental import IncrementalModel
from models.segment import Segment, assemble, decode_segment, encode_segment
from models.signing import Keyring
from models.snapshot import decode, encode, sign_manifest

QUICK_SECONDS = 40
BATCHES = 200
TOUCHED = 0.05
#: The issue's target: a checkpoint after 200 batches touching 5% of the users costs at
#: most 0.05x the full model.
GOAL_BYTES = 0.05
#: And the lock is held for a small fraction of what encoding under it took.
GOAL_LOCK = 0.1


def _ratings(
    rng: random.Random, start: int, users: list[int], items: int, n: int, *, each: bool = False
) -> list[Rating]:
    """``n`` ratings by ``users`` (``each``: one by each, in order) of random items."""
    return [
        Rating(
            f"e{start + i}",
            f"u{users[i] if each else rng.choice(users)}",
            f"i{rng.randrange(items)}",
            float(rng.randint(1, 5)),
            1_700_000_000.0 + start + i,
        )
        for i in range(n)
    ]


def _timed(fn: Any, repeat: int = 1) -> tuple[Any, float]:
    """``fn()``'s result and its fastest time of ``repeat`` calls."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return out, best


def run(users: int, items: int, per_batch: int) -> dict[str, Any]:
    rng = random.Random(1)
    # No consolidation in between: one retrains every row (the checkpoint after it is a base).
    model = IncrementalModel(ModelConfig(seed=1, consolidate_every=10**9))
    everyone = list(range(users))
    for at in range(0, users, 50_000):  # every user rates once
        chunk = everyone[at : at + 50_000]
        model.train_batch(_ratings(rng, at, chunk, items, len(chunk), each=True))
    keys = Keyring.dev()

    def before() -> Any:  # what cut_snapshot did under the lock
        payload, manifest = model.to_bytes()
        return payload, sign_manifest(manifest, keys)

    (full, _), lock_before = _timed(before, 3)
    base, lock_base = _timed(lambda: model.cut_checkpoint(segment=False), 3)
    base_bytes = encode(base)
    few = rng.sample(everyone, int(users * TOUCHED))
    for b in range(BATCHES):
        model.train_batch(_ratings(rng, 10**9 + b * per_batch, few, items, per_batch))
    segment, lock_segment = _timed(lambda: model.cut_checkpoint(segment=True, max_rows=1.0))
    assert isinstance(segment, Segment)
    (payload, manifest), encode_seconds = _timed(
        lambda: encode_segment(segment, base_bytes[1]["sha256"], base.version)
    )
    # a base due now is compacted outside the lock: the stored chain plus the segment
    compacted, compact_seconds = _timed(
        lambda: encode(assemble(decode(*base_bytes), [decode_segment(payload, manifest)]))
    )
    assert compacted[0] == model.to_bytes()[0]
    restored = assemble(decode(*base_bytes), [decode_segment(payload, manifest)])
    live = model.snapshot_state()
    identical = all(np.array_equal(restored.arrays[n], live.arrays[n]) for n in live.arrays)
    return {
        "users": users,
        "items": items,
        "batches": BATCHES,
        "events_per_batch": per_batch,
        "user_rows_changed": len(segment.user_rows),
        "item_rows_changed": len(segment.item_rows),
        "full_bytes": len(full),
        "segment_bytes": len(payload),
        "bytes_ratio": len(payload) / len(full),
        "lock_seconds_before": lock_before,
        "lock_seconds_segment": lock_segment,
        "lock_seconds_base": lock_base,
        "segment_encode_seconds_outside_lock": encode_seconds,
        "base_compaction_seconds_outside_lock": compact_seconds,
        "restore_bit_identical": identical,
    }


def sizes(quick: bool) -> tuple[int, int, int]:
    return (40_000, 400, 20) if quick else (400_000, 2_000, 200)


def figures(quick: bool) -> list[Figure]:
    r = run(*sizes(quick))
    where = f"{r['users']:,} users, {r['items']:,} items, {BATCHES} batches on 5% of users"
    return [
        Figure(
            f"checkpoint bytes: segment vs full snapshot ({where})",
            baseline=r["full_bytes"],
            value=r["segment_bytes"],
            goal=GOAL_BYTES,
            better="lower",
            unit="B",
            note=f"{r['user_rows_changed']} user rows, {r['item_rows_changed']} item rows changed; "
            f"restore bit-identical: {r['restore_bit_identical']}",
        ),
        Figure(
            "trainer lock held for a segment vs to_bytes+sign under the lock before",
            baseline=round(r["lock_seconds_before"], 4),
            value=round(r["lock_seconds_segment"], 4),
            goal=GOAL_LOCK,
            better="lower",
            unit="s",
        ),
        Figure(
            "trainer lock held for a run's first base (a copy; later ones are compacted "
            "outside the lock) vs to_bytes+sign under the lock before",
            baseline=round(r["lock_seconds_before"], 4),
            value=round(r["lock_seconds_base"], 4),
            goal=0.5,
            better="lower",
            unit="s",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(*sizes(args.quick))
    if args.json:
        print(json.dumps({"benchmark": "checkpoints", **result}, indent=2))
        return
    print(table(["measure", "value"], [(k, str(v)) for k, v in result.items()]))


if __name__ == "__main__":
    main()
