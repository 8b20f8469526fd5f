"""The scorer's approximate index (agents/ann_index.py): exact until built, built in a
thread of its own, made right for each view, rebuilt when too many items changed, never
used when not worth it or below the size threshold; and the scorer's batches through it."""

from __future__ import annotations

import logging
import threading

import numpy as np

from agents import ann_index
from agents.ann_index import AnnIndex
from agents.scorer import scoring_batch
from agents.state import ModelHolder
from benchmarks.scoring import factor_view as view_of
from models.ann import FreshIndex
from models.events import RecRequest
from models.seen import remember
from models.synthetic import clustered_factors as clustered
from models.wire import Reply
from tests.unit.agents.fakes import FakeMessage, FakeSeenTable
from tests.unit.agents.test_score_thread import scorer_on


def test_exact_until_built_then_the_index_for_each_view(monkeypatch) -> None:
    items, queries = clustered(6000, 300, dim=16, clusters=12, seed=3)
    view = view_of(items, queries)
    threads: list[str] = []
    built = ann_index._built

    def recorded(v):
        threads.append(threading.current_thread().name)
        return built(v)

    monkeypatch.setattr(ann_index, "_built", recorded)
    ann = AnnIndex(min_items=6000)
    assert ann.search(view) is None  # the build starts; exact meanwhile
    ann.wait()
    assert threads and threads[0] != threading.current_thread().name
    assert ann.search(view, prepare=False) is None  # not yet made right for this view
    fresh = ann.search(view)
    assert fresh is not None and fresh.items is view.product_items() and not len(fresh.stale)
    assert ann.search(view, prepare=False) is fresh
    later = items.copy()
    later[[3, 30, 300], -1] += 1.0  # a delta's three changed items, in a later view
    newer = view_of(later, queries, version=2)
    fresh2 = ann.search(newer)
    assert fresh2 is not None and fresh2.index is fresh.index
    assert fresh2.stale.tolist() == [3, 30, 300]
    assert not ann.building  # three stale rows: no rebuild
    assert len(threads) == 1
    ann.close()


def test_a_rebuild_starts_when_many_items_changed_and_the_old_index_serves_meanwhile() -> None:
    items, queries = clustered(6000, 300, dim=16, clusters=12, seed=3)
    ann = AnnIndex(min_items=1000)
    ann.search(view_of(items, queries))
    ann.wait()
    first = ann.built()
    later = items.copy()
    later[: ann_index.REBUILD_ROWS + 1, -1] += 0.5
    newer = view_of(later, queries, version=2)
    fresh = ann.search(newer)
    assert fresh is not None and fresh.index is first  # right for the view: stale rows exact
    assert len(fresh.stale) == ann_index.REBUILD_ROWS + 1
    ann.wait()
    assert ann.built() is not first
    rebuilt = ann.search(newer)
    assert rebuilt is not None and rebuilt.index is ann.built() and not len(rebuilt.stale)
    ann.close()


def test_small_catalogs_and_useless_indexes_stay_exact(caplog) -> None:
    items, queries = clustered(6000, 300, dim=16, clusters=12, seed=3)
    view = view_of(items, queries)
    assert AnnIndex(min_items=6001).search(view) is None
    never = AnnIndex(min_items=0)
    assert never.search(view) is None and not never.building and never.built() is None
    rng = np.random.default_rng(0)  # no structure at all: IVF cannot reach the recall cheaply
    noise = view_of(
        rng.standard_normal((6000, 65)).astype(np.float32),
        rng.standard_normal((300, 65)).astype(np.float32),
    )
    ann = AnnIndex(min_items=1000)
    with caplog.at_level(logging.INFO, logger="agents.ann_index"):
        assert ann.search(noise) is None
        ann.wait()
    assert "ann index not used: recall" in caplog.text
    assert ann.built() is None and ann.search(noise) is None
    assert not ann.building  # not retried until the catalog grows by half
    ann.close()


def test_the_scorers_batches_go_through_the_index_once_built(monkeypatch) -> None:
    items, queries = clustered(6000, 300, dim=16, clusters=12, seed=3)
    view = view_of(items, queries)
    holder = ModelHolder()
    holder.publish(view)
    ann = AnnIndex(min_items=1000)
    requests = [RecRequest(request_id=str(i), user=f"u{i}", k=10) for i in range(300)]
    seen = [np.zeros(0, dtype=np.uint64)] * len(requests)
    exact = scoring_batch(requests, holder, seen).score()
    assert scoring_batch(requests, holder, seen, ann).score() == exact  # not built yet
    ann.wait()
    searched: list[int] = []
    top_k = FreshIndex.top_k

    def recorded(self, queries, *args, **kwargs):
        searched.append(len(queries))
        return top_k(self, queries, *args, **kwargs)

    monkeypatch.setattr(FreshIndex, "top_k", recorded)
    assert scoring_batch(requests, holder, seen, ann).score(prepare=False) == exact
    assert not searched  # on the loop: not made right for the view yet, so exact
    near = scoring_batch(requests, holder, seen, ann).score()
    assert searched == [300]
    hits = sum(
        len({s.item for s in a.items} & {s.item for s in b.items})
        for a, b in zip(exact, near, strict=True)
    )
    assert hits / (10 * len(requests)) >= 0.98
    for rec in near:
        assert [s.score for s in rec.items] == sorted((s.score for s in rec.items), reverse=True)
    ann.close()


async def test_a_scorer_answers_through_the_index_in_its_thread_seen_items_excluded(
    monkeypatch,
) -> None:
    items, queries = clustered(6000, 300, dim=16, clusters=12, seed=3)
    view = view_of(items, queries)
    table = FakeSeenTable()
    rng = np.random.default_rng(1)
    seen_of = {}
    for u in range(300):
        exact = view.recommend(f"u{u}", 5).items  # its 5 best are seen: never sent
        seen_of[f"u{u}"] = {s.item for s in exact} | {f"i{i}" for i in rng.integers(0, 6000, 20)}
        table.put(f"u{u}", remember(None, sorted(seen_of[f"u{u}"]), 1000), 0)
    messages = [
        FakeMessage(
            "rec-requests",
            0,
            n,
            f"u{n}".encode(),
            f'{{"request_id": "r{n}", "user": "u{n}", "k": 10}}'.encode(),
        )
        for n in range(300)
    ]
    threads: list[str] = []
    top_k = FreshIndex.top_k

    def recorded(self, queries, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return top_k(self, queries, *args, **kwargs)

    monkeypatch.setattr(FreshIndex, "top_k", recorded)
    scorer, sink = scorer_on(view, table, inline_cells=0)
    scorer.ann = AnnIndex(min_items=1000)
    await scorer.handle(messages)  # exact: the index is being built
    scorer.ann.wait()
    await scorer.handle(messages)
    await scorer.delivered()
    scorer.scoring.close()
    scorer.ann.close()
    assert threads and all(t.startswith("streamrec-scoring") for t in threads)
    replies = [Reply.parse(s["value"]) for s in sink.sent]
    exact, near = replies[:300], replies[300:]
    assert [r.request_id for r in near] == [f"r{n}" for n in range(300)]
    hits = 0
    for a, b in zip(exact, near, strict=True):
        assert not seen_of[b.user] & {i.item for i in b.items}
        assert len(b.items) == 10
        hits += len({i.item for i in a.items} & {i.item for i in b.items})
    assert hits / 3000 >= 0.98
