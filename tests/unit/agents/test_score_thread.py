"""Large batches are scored off the event loop (agents/score_thread.py), in order, with the
same replies as on the loop; the scorer's guarantees hold on that path."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from agents.score_thread import ScoreThread
from agents.scorer import Scorer
from agents.state import ModelHolder
from models.scoring import ScoringView
from models.seen import remember
from models.wire import Reply
from tests.unit.agents.fakes import FakeMessage, FakeSeenTable, FakeSink
from tests.unit.models.conftest import integer_view


async def test_the_loop_runs_while_a_large_batch_is_scored():
    scoring = ScoreThread(inline_cells=100)
    released = threading.Event()

    async def release() -> None:
        released.set()  # only runs if the loop is free while the batch is scored

    # The "scoring" waits for the loop to release it: inline, it would wait in vain.
    waiter = asyncio.ensure_future(scoring.run(100, released.wait, 5.0))
    await asyncio.sleep(0)
    await release()
    assert await waiter is True
    scoring.close()


async def test_small_batches_stay_on_the_loop_and_large_ones_run_in_order():
    scoring = ScoreThread(inline_cells=100)
    main = threading.current_thread().name
    assert await scoring.run(99, lambda: threading.current_thread().name) == main
    done: list[int] = []

    def score(n: int) -> str:
        done.append(n)
        return threading.current_thread().name

    names = await asyncio.gather(*(scoring.run(100, score, n) for n in range(20)))
    assert done == list(range(20))  # one thread: in the order they came
    assert set(names) != {main} and len(set(names)) == 1
    scoring.close()


async def test_an_error_in_the_thread_reaches_the_caller():
    scoring = ScoreThread(inline_cells=0)

    def broken() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await scoring.run(1, broken)
    scoring.close()


def scorer_on(
    view: ScoringView, table: FakeSeenTable, inline_cells: int
) -> tuple[Scorer, FakeSink]:
    holder = ModelHolder()
    holder.publish(view)
    replies = FakeSink()

    async def exists(name: str) -> bool:
        return False

    scorer = Scorer(
        holder=holder,
        seen=table,
        default_reply=replies,
        dlq=FakeSink(),
        reply_topic=lambda name: replies,
        topic_exists=exists,
        forbidden_replies=frozenset(),
        max_bytes=65536,
        max_batch=50,
        scoring=ScoreThread(inline_cells=inline_cells),
    )
    return scorer, replies


async def test_replies_off_the_loop_equal_those_on_it():
    view = integer_view(np.random.default_rng(0), 40, 3000, dims=4)
    table = FakeSeenTable()
    rng = np.random.default_rng(1)
    seen_of: dict[str, set[str]] = {}
    for u in range(40):
        seen = [f"i{i}" for i in rng.integers(0, 3000, 30).tolist()]
        seen_of[f"u{u}"] = set(seen)
        table.put(f"u{u}", remember(None, seen, 1000), 0)
    messages = []
    for n in range(120):
        user = f"u{n % 41}"  # u40 is unknown: popularity
        body = {"request_id": f"r{n}", "user": user, "k": int(rng.integers(1, 30))}
        if n % 7 == 0:
            body["exclude_seen"] = False
        messages.append(FakeMessage("rec-requests", 0, n, user.encode(), json.dumps(body).encode()))
    answers = []
    for inline_cells in (1 << 40, 0):  # all on the loop; all in the thread
        scorer, sink = scorer_on(view, table, inline_cells)
        await scorer.handle(messages)
        await scorer.delivered()
        scorer.scoring.close()
        answers.append([Reply.parse(s["value"]) for s in sink.sent])
    on_loop, off_loop = answers
    assert [r.request_id for r in off_loop] == [f"r{n}" for n in range(120)]  # one each, in order
    strip = [(r.request_id, r.user, r.items, r.model_version, r.source) for r in on_loop]
    assert strip == [(r.request_id, r.user, r.items, r.model_version, r.source) for r in off_loop]
    for reply, message in zip(off_loop, messages, strict=True):
        if json.loads(message.value).get("exclude_seen", True):  # seen items never come back
            assert not seen_of.get(reply.user, set()) & {i.item for i in reply.items}


async def test_a_new_views_first_batch_counts_its_item_matrix_copy():
    view = integer_view(np.random.default_rng(3), 10, 1000, dims=4)
    scorer, sink = scorer_on(view, FakeSeenTable(), inline_cells=2 * 1000 * 5)
    used: list[int] = []
    run = scorer.scoring.run

    async def spy(cells: int, score, *args):  # type: ignore[no-untyped-def]
        used.append(cells)
        return await run(cells, score, *args)

    scorer.scoring.run = spy  # type: ignore[method-assign]
    one = [FakeMessage("rec-requests", 0, 0, b"u1", b'{"request_id": "r", "user": "u1"}')]
    await scorer.handle(one * 5)  # 5 x 1000 scores + 1000 x 5 cells of the copy: the thread
    await scorer.handle(one * 5)  # the copy is made: on the loop
    assert used == [5 * 1000 + 1000 * 5]
    assert view.product_cells == 0 and len(sink.sent) == 10
    scorer.scoring.close()
