"""Recommendation quality *through the running service*, beside batch-trained baselines.

    python -m benchmarks.quality_service [--quick] [--offline] [--json]

Split (both MovieLens sets, read from the shared data dir; a missing set is skipped with
the reason): each user's 10 latest ratings are held out, their ratings >= 4 are the test
positives; the rest is the training part. The training part is published in time order
through the real broker into a fresh deployment in the production shape (one trainer and
one scorer, ``streamrec worker`` subprocesses, topics, groups and store of their own, the
settings' model defaults). Once the scorer serves a snapshot covering the whole stream and
its seen-items table holds every rating, every test user is asked over Kafka with
``exclude_seen: true``, and the replies are scored (P/R/NDCG/HR@10).

Baselines, computed in the same run on the same training part, each ranking all items
minus the user's training items:

* ``popularity``: the service's cold-start ranking (recency-decayed counts);
* ``batch LightFM``: plain ``LightFM.fit`` on the training positives, the service's
  hyperparameters, 10 epochs (the ``streamrec train`` default);
* ``EASE``: Steck 2019, closed form ``B = I - P/diag(P)`` with ``P = (X'X + λI)^-1``;
* ``item-kNN``: cosine item-item similarity of the training positives, summed over the
  user's positives;
* ``offline replay``: the training part through ``IncrementalModel.train_batch`` in
  micro-batches of ``STREAMREC_BATCH_MAX``, as the trainer does (the service without Kafka).

``--offline`` skips the service (no broker needed). ``--quick``: ml-100k only.
:func:`figures` is the entry point for ``benchmarks/run_all.py`` (quick: ml-100k offline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmarks.common import Figure, data_dir, machine, namespace, table
from models.config import ModelConfig
from models.datasets import iter_ratings
from models.evaluation import (
    positives_by_user,
    prequential_vs_frozen,
    ranking_metrics,
    split_latest_per_user,
)
from models.events import Rating, RecRequest
from models.incremental import IncrementalModel
from models.wire import Reply, encode_request

QUICK_SECONDS = 50  # run_all --quick: the offline replay and the prequential replay of ml-100k

DATASETS = {"ml-100k": ("u.data", "ml100k"), "ml-latest-small": ("ratings.csv", "mlcsv")}
HOLDOUT = 10
K = 10
TEST_THRESHOLD = 4.0
BATCH_EPOCHS = 10
EASE_LAMBDA = 500.0
SEEN_ITEMS_MAX = 10_000  # more than any user rates (ml-latest-small: 2,698): exclusion is complete
METRICS = ("precision", "recall", "ndcg", "hit_rate")
#: The prequential replay trains once per this much of the ratings' own time (see
#: :func:`prequential_ratio` and docs/benchmarks.md).
PREQUENTIAL_WINDOW_SECONDS = 600.0


@dataclass
class Split:
    name: str
    train: list[Rating]  # time order
    test: dict[str, set[str]]  # user -> held-out items rated >= 4
    seen: dict[str, set[str]]  # user -> every training item (what exclude_seen removes)


def load_split(name: str) -> Split | str:
    """The temporal leave-10-out split of ``name``, or the reason it is skipped."""
    filename, fmt = DATASETS[name]
    path = data_dir() / name / filename
    if not path.is_file():
        return f"{path} not found (MovieLens is not shipped; set STREAMREC_DATA_DIR)"
    with path.open(encoding="latin-1" if fmt == "ml100k" else "utf-8") as f:
        ratings = list(iter_ratings(f, fmt, source=filename))
    train, test = split_latest_per_user(ratings, HOLDOUT)
    train.sort(key=lambda r: r.ts)  # stable: file order breaks ties
    return Split(name, train, positives_by_user(test, TEST_THRESHOLD), positives_by_user(train))


# --- baselines --------------------------------------------------------------------------
def _top_lists(
    scores: np.ndarray, users: Sequence[str], item_ids: Sequence[str], split: Split, index
) -> dict[str, list[str]]:
    """Top K item ids per user (row of ``scores``), the user's training items excluded."""
    out = {}
    for row, user in enumerate(users):
        s = np.asarray(scores[row], dtype=np.float64).ravel().copy()
        s[[index[i] for i in split.seen.get(user, ()) if i in index]] = -np.inf
        top = np.argpartition(-s, K)[:K]
        out[user] = [item_ids[j] for j in top[np.argsort(-s[top], kind="stable")]]
    return out


def _positives_matrix(split: Split, threshold: float):
    users = sorted({r.user for r in split.train})
    items = sorted({r.item for r in split.train})
    u_index = {u: i for i, u in enumerate(users)}
    i_index = {x: i for i, x in enumerate(items)}
    pairs = {(u_index[r.user], i_index[r.item]) for r in split.train if r.rating >= threshold}
    rows, cols = zip(*sorted(pairs), strict=True)
    x = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(users), len(items))
    )
    return x, users, items, u_index, i_index


def _popularity_scores(x: sp.csr_matrix, rows: list[int], split: Split, config, index):
    """Most-rated first (every training rating counts, as in the service's popularity)."""
    counts = np.zeros(x.shape[1])
    np.add.at(counts, [index[r.item] for r in split.train], 1.0)
    return np.broadcast_to(counts, (len(rows), len(counts)))


def _lightfm_scores(x: sp.csr_matrix, rows: list[int], split: Split, config, index):
    """Plain ``LightFM.fit`` on the training positives, the service's hyperparameters."""
    from lightfm import LightFM

    lfm = LightFM(
        no_components=config.no_components,
        loss=config.loss,
        learning_rate=config.learning_rate,
        learning_schedule=config.learning_schedule,
        max_sampled=config.max_sampled,
        random_state=config.seed,
    )
    lfm.fit(x.tocoo(), epochs=BATCH_EPOCHS, num_threads=config.num_threads)
    return lfm.user_embeddings[rows] @ lfm.item_embeddings.T + lfm.item_biases


def _ease_scores(x: sp.csr_matrix, rows: list[int], split: Split, config, index):
    """EASE scores of ``rows`` over every column of ``x``; items without a training
    positive score 0 (the closed form only involves the items that have one)."""
    used = np.flatnonzero(x.getnnz(axis=0))
    xu = x[:, used]
    p = (xu.T @ xu).toarray().astype(np.float32)
    p[np.diag_indices_from(p)] += EASE_LAMBDA
    p = np.linalg.inv(p)
    p /= -np.diag(p)  # B = -P / diag(P), column-wise, in place
    p[np.diag_indices_from(p)] = 0.0
    scores = np.zeros((len(rows), x.shape[1]), dtype=np.float32)
    scores[:, used] = xu[rows] @ p
    return scores


def _knn_scores(x: sp.csr_matrix, rows: list[int], split: Split, config, index):
    """Cosine item-item similarity of the training positives, summed over the user's."""
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel()) + 1e-9
    xn = x @ sp.diags(1.0 / norms)
    sim = (xn.T @ xn).tocsr()
    sim.setdiag(0.0)
    return (x[rows] @ sim).toarray()


BASELINES = {
    "popularity": _popularity_scores,
    "batch LightFM": _lightfm_scores,
    "EASE": _ease_scores,
    "item-kNN": _knn_scores,
}


def baselines(
    split: Split, config: ModelConfig, which: Sequence[str] = tuple(BASELINES)
) -> dict[str, dict[str, Any]]:
    """Metrics of the ``which`` baselines on ``split`` (training items excluded)."""
    x, _, items, u_index, i_index = _positives_matrix(split, config.positive_threshold)
    test_users = [u for u in split.test if u in u_index]
    rows = [u_index[u] for u in test_users]
    out = {}
    for name in which:
        started = time.perf_counter()
        scores = BASELINES[name](x, rows, split, config, i_index)
        lists = _top_lists(scores, test_users, items, split, i_index)
        out[name] = _scored(lists, split, started)
    return out


def _scored(lists: Mapping[str, Sequence[str]], split: Split, started: float) -> dict[str, Any]:
    return {**ranking_metrics(lists, split.test, K), "seconds": time.perf_counter() - started}


def offline_replay(split: Split, config: ModelConfig, batch_size: int) -> dict[str, Any]:
    """The trainer's work without Kafka: micro-batches of ``batch_size`` in time order."""
    started = time.perf_counter()
    model = IncrementalModel(config)
    consolidations = 0
    for start in range(0, len(split.train), batch_size):
        consolidations += model.train_batch(split.train[start : start + batch_size]).consolidated
    view = model.view()
    users = list(split.test)
    seen = [split.seen.get(u, ()) for u in users]
    recs = view.recommend_many(users, K, seen, histories=seen)  # as the scorer does
    lists = {r.user: [s.item for s in r.items] for r in recs}
    return {**_scored(lists, split, started), "consolidations": consolidations}


def prequential_ratio(
    split: Split,
    config: ModelConfig,
    batch_size: int,
    window_seconds: float | None = PREQUENTIAL_WINDOW_SECONDS,
) -> dict[str, float]:
    """Prequential hit-rate@10 over the second half of the training part: incremental
    training vs the same model frozen after the first half (the trainer's /model/ figure).

    Batches of at most ``batch_size`` events that also end at every ``window_seconds`` of
    the ratings' own time: the model learns at most that late, as a trainer keeping pace
    with the stream does (``None``: batches of ``batch_size``, as in a replay at full
    speed, where most positives come before their user was ever trained)."""
    half = len(split.train) // 2
    started = time.perf_counter()
    results = dict(
        zip(
            ("incremental", "frozen"),
            prequential_vs_frozen(
                split.train,
                IncrementalModel(config),
                freeze_after=half,
                batch_size=batch_size,
                window_seconds=window_seconds,
            ),
            strict=True,
        )
    )
    rates = {name: r.hit_rate_between(half) for name, r in results.items()}
    return {
        **rates,
        "ratio": rates["incremental"] / rates["frozen"],
        **{f"{name} model share": r.model_share(half) for name, r in results.items()},
        **{
            f"{name} model-scored HR@10": r.hit_rate_between(half, model_only=True)
            for name, r in results.items()
        },
        "window_seconds": window_seconds,
        "batches": len(results["incremental"].curve),
        "seconds": time.perf_counter() - started,
    }


# --- through the service ----------------------------------------------------------------
def _metric(text: str, name: str, label: str) -> float:
    match = re.search(rf'^{name}\{{topic="{re.escape(label)}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def through_service(split: Split) -> dict[str, Any]:
    """Publish ``split.train`` into a fresh trainer + scorer, ask for every test user."""
    from app.commands.service import publish_ratings
    from devtools.workers import WorkerProcess, free_port

    ns = namespace("quality", snapshot_every_seconds=2, seen_items_max=SEEN_ITEMS_MAX)
    settings, env, home = ns.settings, ns.env, ns.home
    workers = [
        WorkerProcess("trainer", free_port(), home / "trainer.log", env).start(),
        WorkerProcess("scorer", free_port(), home / "scorer.log", env).start(),
    ]
    trainer, scorer = workers
    n = len(split.train)
    try:
        for w in workers:
            w.wait_ready(timeout=180, model=False)
        started = time.perf_counter()
        asyncio.run(publish_ratings(settings, split.train))
        published = time.perf_counter() - started

        def covered() -> bool:
            """The scorer serves the trainer's model of every rating, consolidation included
            (a consolidation covering the stream's tail is installed a few seconds after the
            last micro-batch; until then the scorer serves the micro-batches' model)."""
            _, body = scorer.get("/model/")
            _, text = scorer.get("/metrics")
            _, trainer_body = trainer.get("/model/")
            if not isinstance(body, dict) or not isinstance(trainer_body, dict):
                return False
            ingested = _metric(str(text), "streamrec_events_in_total", settings.ratings_topic)
            return (
                body.get("trained_events", 0) >= n
                and ingested >= n
                and not trainer_body.get("consolidation_pending", False)
                and body.get("version") == trainer_body.get("version")
            )

        deadline = time.monotonic() + 30 * 60
        while not covered():
            for w in workers:
                if not w.running():
                    raise RuntimeError(f"{w.role} exited:\n{w.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the scorer never covered {n} ratings:\n{scorer.log_tail()}")
            time.sleep(0.5)
        trained_after = time.perf_counter() - started
        _, model_info = trainer.get("/model/")
        replies = asyncio.run(_ask_everyone(settings, list(split.test)))
        asked = time.perf_counter() - started - trained_after
    finally:
        for w in workers:
            w.stop()
    lists = {u: [i.item for i in r.items] for u, r in replies.items()}
    sources: dict[str, int] = defaultdict(int)
    for r in replies.values():
        sources[r.source] += 1
    return {
        **ranking_metrics(lists, split.test, K),
        "replies": len(replies),
        "sources": dict(sources),
        "publish_seconds": round(published, 1),
        "covered_after_seconds": round(trained_after, 1),
        "ask_seconds": round(asked, 1),
        "prequential_hit_rate": model_info.get("prequential_hit_rate"),
    }


async def _ask_everyone(settings: Any, users: list[str]) -> dict[str, Reply]:
    """One request per user over Kafka (exclude_seen), all in flight; replies by user."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from app.kafka import kafka_client_options

    options = kafka_client_options(settings)
    consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
    producer = AIOKafkaProducer(**options, acks="all")
    await consumer.start()
    await producer.start()
    try:
        tps = [
            TopicPartition(settings.responses_topic, p) for p in range(settings.topic_partitions)
        ]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        wanted = {}
        for user in users:
            request = RecRequest(request_id=uuid.uuid4().hex, user=user, k=K, exclude_seen=True)
            wanted[request.request_id] = user
            key, value = encode_request(request)
            await producer.send(settings.requests_topic, key=key, value=value)
        await producer.flush()
        replies: dict[str, Reply] = {}
        deadline = time.monotonic() + 300
        while len(replies) < len(users) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                for m in messages:
                    reply = Reply.parse(m.value)
                    user = wanted.get(reply.request_id)
                    if user is not None:
                        replies[user] = reply
        if len(replies) < len(users):
            raise TimeoutError(f"{len(users) - len(replies)} of {len(users)} requests unanswered")
        return replies
    finally:
        await producer.stop()
        await consumer.stop()


# --- the run ----------------------------------------------------------------------------
def run(datasets: Sequence[str], *, service: bool = True) -> dict[str, Any]:
    from app.settings import Settings, model_config_of

    settings = Settings()
    config = model_config_of(settings)
    report: dict[str, Any] = {
        "machine": machine(),
        "config": config.to_dict(),
        "batch_max": settings.batch_max,
        "datasets": {},
    }
    for name in datasets:
        split = load_split(name)
        if isinstance(split, str):
            report["datasets"][name] = {"skipped": split}
            continue
        rows = baselines(split, config)
        rows["offline replay"] = offline_replay(split, config, settings.batch_max)
        if service:
            rows["service"] = through_service(split)
        report["datasets"][name] = {
            "train": len(split.train),
            "test_users": sum(1 for v in split.test.values() if v),
            "results": rows,
        }
        if name == "ml-100k":
            report["datasets"][name]["prequential"] = prequential_ratio(
                split, config, settings.batch_max
            )
            if service:  # full runs: the same at the replay's full speed, for comparison
                report["datasets"][name]["prequential at full speed"] = prequential_ratio(
                    split, config, settings.batch_max, window_seconds=None
                )
    return report


def figures_of(report: dict[str, Any]) -> list[Figure]:
    """The ratio figures of a :func:`run`: P@10 of the service (or, without it, of the
    offline replay) over each baseline, and the prequential incremental/frozen ratio."""
    out = []
    for name, data in report["datasets"].items():
        if "skipped" in data:
            out.append(Figure(f"quality {name}", None, None, 1.0, note=data["skipped"]))
            continue
        results = data["results"]
        ours = "service" if "service" in results else "offline replay"
        for baseline in ("batch LightFM", "EASE", "popularity"):
            out.append(
                Figure(
                    f"quality {name}: P@10 {ours} / {baseline}",
                    baseline=round(results[baseline]["precision"], 4),
                    value=round(results[ours]["precision"], 4),
                    goal=1.0,
                    unit="P@10",
                    note="the issue's goal; the target is batch LightFM"
                    if baseline == "EASE"
                    else "",
                )
            )
        pre = data.get("prequential")
        if pre:
            out.append(
                Figure(
                    f"quality {name}: prequential HR@10, incremental / frozen after half",
                    baseline=round(pre["frozen"], 4),
                    value=round(pre["incremental"], 4),
                    goal=1.2,
                    unit="HR@10",
                    note=_trained_every(pre, report),
                )
            )
    return out


def _trained_every(pre: dict[str, Any], report: dict[str, Any]) -> str:
    window = pre["window_seconds"]
    if window:
        return f"trained every {window:g} s of the ratings' time"
    return f"trained every {report['batch_max']} events"


def figures(quick: bool = False) -> list[Figure]:
    """For ``benchmarks/run_all.py``. Quick: ml-100k, offline replay only (about a minute);
    full: both datasets through the service (``streamrec dev up``; 10-20 minutes)."""
    return figures_of(run(["ml-100k"] if quick else list(DATASETS), service=not quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ml-100k only")
    parser.add_argument("--offline", action="store_true", help="no service (no broker needed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = run(["ml-100k"] if args.quick else list(DATASETS), service=not args.offline)
    report["figures"] = figures_of(report)
    if args.json:
        print(json.dumps({**report, "figures": [f.to_dict() for f in report["figures"]]}))
        return
    for name, data in report["datasets"].items():
        if "skipped" in data:
            print(f"{name}: skipped: {data['skipped']}\n")
            continue
        print(f"{name}: {data['train']} training ratings, {data['test_users']} test users")
        print(
            table(
                ["model", "P@10", "R@10", "NDCG@10", "HR@10", "s"],
                [
                    [
                        model,
                        *(r[m] for m in METRICS),
                        f"{r['seconds']:.1f}" if "seconds" in r else "-",
                    ]
                    for model, r in data["results"].items()
                ],
            )
        )
        if "service" in data["results"]:
            svc = data["results"]["service"]
            print(
                f"service: replies by source {svc['sources']}, published in "
                f"{svc['publish_seconds']} s, covered after {svc['covered_after_seconds']} s, "
                f"/model/ prequential hit-rate {svc['prequential_hit_rate']}"
            )
        for key in ("prequential", "prequential at full speed"):
            if key in data:
                pre = data[key]
                print(
                    f"{key} HR@10 (2nd half, {_trained_every(pre, report)}, "
                    f"{pre['batches']} batches): "
                    f"incremental {pre['incremental']:.4f}, frozen {pre['frozen']:.4f}, "
                    f"ratio {pre['ratio']:.2f}; answered by the model "
                    f"{pre['incremental model share']:.0%} / {pre['frozen model share']:.0%}, "
                    f"their HR@10 {pre['incremental model-scored HR@10']:.4f} / "
                    f"{pre['frozen model-scored HR@10']:.4f}"
                )
        print()
    print(
        table(
            ["figure", "baseline", "value", "ratio", "goal", "pass"],
            [list(f.to_dict().values())[:6] for f in report["figures"]],
        )
    )


if __name__ == "__main__":
    main()
