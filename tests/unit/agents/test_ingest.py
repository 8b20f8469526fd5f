"""The ingest agent against fake messages and a fake table (no Kafka)."""

from __future__ import annotations

import json

from agents.ingest import Ingest
from models.seen import decode_row, item_hashes
from tests.unit.agents.fakes import FakeMessage, FakeSeenTable


def rating_message(user: str, item: str, offset: int, partition: int = 0) -> FakeMessage:
    body = {"event_id": f"e{offset}", "user": user, "item": item, "rating": 4, "ts": offset}
    return FakeMessage("ratings", partition, offset, user.encode(), json.dumps(body).encode())


def ingest(table: FakeSeenTable, limit: int = 100) -> Ingest:
    return Ingest(seen=table, max_bytes=65536, seen_limit=limit)


async def test_one_row_write_per_user_per_batch_in_the_users_partition():
    messages = [
        rating_message("u1", "a", 0, partition=1),
        rating_message("u2", "x", 1, partition=3),
        rating_message("u1", "b", 2, partition=1),
        rating_message("u1", "a", 3, partition=1),
    ]
    table = FakeSeenTable()
    await ingest(table).handle(messages)
    await table.flush()
    assert [(p, u) for p, u, _ in table.changelog] == [(1, "u1"), (3, "u2")]
    assert decode_row(table.rows["u1"]).tolist() == item_hashes(["b", "a"]).tolist()


async def test_slices_rebuild_the_same_rows_from_the_changelog():
    messages = [
        rating_message(f"u{n % 7}", f"i{n % 13}", n, partition=n % 7 % 4) for n in range(60)
    ]
    table = FakeSeenTable()
    agent = ingest(table, limit=5)
    for start in range(0, len(messages), 8):
        await agent.handle(messages[start : start + 8])
        if start % 16 == 0:
            await table.flush()  # the reader flushes before each commit
    await table.flush()
    assert len({u for _, u, _ in table.changelog}) == 7
    # A restart recovers the rows from the changelog: the same rows, byte for byte.
    assert FakeSeenTable.recovered(table.changelog).rows == table.rows
    # ... and each user's row equals the last 5 distinct items it rated.
    for user in {f"u{n}" for n in range(7)}:
        rated: list[str] = []
        for n in range(60):
            if f"u{n % 7}" == user:
                item = f"i{n % 13}"
                rated = [*(i for i in rated if i != item), item][-5:]
        assert decode_row(table.rows[user]).tolist() == item_hashes(rated).tolist()
    # The partition of every record is the one the user's ratings came from.
    assert all(p == int(u[1:]) % 4 for p, u, _ in table.changelog)


async def test_invalid_ratings_are_skipped_the_trainer_dead_letters_them():
    good = rating_message("u1", "a", 0)
    bad = FakeMessage("ratings", 0, 1, b"u1", b"{nope")
    miskeyed = rating_message("u2", "b", 2)
    miskeyed.key = b"someone-else"
    table = FakeSeenTable()
    await ingest(table).handle([good, bad, miskeyed])
    assert list(table.rows) == ["u1"]
    assert not hasattr(Ingest, "dlq")  # one owner of ratings' dead letters: the trainer


async def test_a_flood_of_new_users_stops_at_the_models_bound():
    """Past STREAMREC_MAX_USERS users the table records no new user (a flood of fake ids
    would grow every scorer for ever); known users' rows still grow, and what was not
    recorded is counted."""
    table = FakeSeenTable()
    agent = Ingest(seen=table, max_bytes=65536, seen_limit=100, max_users=3)
    known = [rating_message(f"u{n}", "a", n) for n in range(3)]
    flood = [rating_message(f"fake{n}", "a", 10 + n) for n in range(50)]
    later = [rating_message("u1", "b", 100), rating_message("new", "c", 101)]
    for batch in (known, flood, later):
        await agent.handle(batch)
    assert sorted(table.rows) == ["u0", "u1", "u2"]
    assert decode_row(table.rows["u1"]).tolist() == item_hashes(["a", "b"]).tolist()
    assert agent.full == 51 and agent.recorded == 4
