"""Freed heap is given back to the OS after a large view is replaced (agents/memory.py)."""

from __future__ import annotations

import pytest

from agents import follower as follower_module
from agents import memory
from tests.unit.agents import test_follower
from tests.unit.agents.test_follower import Trainer


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(memory._trim() is None, reason="not glibc: no malloc_trim to call")
def test_freed_rows_in_the_middle_of_the_heap_leave_the_resident_set() -> None:
    kept, freed = [], []
    for n in range(40_000):  # 4 KiB each: malloc's heap, not pymalloc's arenas nor mmap
        (kept if n % 16 == 0 else freed).append(bytearray(4096) + bytearray(n % 7))
    for chunk in freed:
        chunk[::512] = b"x" * len(chunk[::512])  # touched: resident
    before = resident()
    del freed  # ~150 MiB free between the kept chunks: brk cannot shrink past them
    after_free = resident()
    assert memory.release_freed_memory()
    trimmed = resident()
    assert after_free - trimmed > 50 * 2**20, (before, after_free, trimmed)
    assert len(kept) == 2500


async def test_a_loaded_snapshot_gives_the_freed_pages_back(
    store: test_follower.SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []

    async def counted() -> bool:
        calls.append(True)
        return True

    monkeypatch.setattr(follower_module, "released_freed_memory", counted)
    trainer = Trainer()
    trainer.batch(0)
    await trainer.snapshot(store)
    follower = test_follower.ModelFollower(
        test_follower.ModelHolder(), store, {}, test_follower.UPDATES
    )
    assert await follower.load(trainer.model.version, None, seek=False)
    assert calls == [True]


store = test_follower.store  # the same fixture
