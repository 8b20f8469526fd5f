"""benchmarks.share_join's bookkeeping: the scorers' log lines it times, the probe's users
(each of the partition the producers' rule names) and when a set of partitions counts as
served from the model (every one of them, after the moment asked about)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.share_join import (
    PARTITIONS,
    PROBE_USERS,
    Answer,
    Probe,
    _users_by_partition,
    first_event,
    log_events,
    parts_of,
)
from models.ownership import partition_of

LOG = """No STREAMREC_MODEL_KEY: a line without a stamp
[2026-12-08 01:22:27,148] [22513] [INFO] Joined group 'g' (generation 2)
[2026-12-08 01:22:27,460] [22513] [INFO] Holding the users of partitions [] of 4 \n\
[2026-12-08 01:22:28,460] [22513] [INFO] Holding the users of partitions [0, 1] of 4 \n\
+Topic Partition Set----+
[2026-12-08 01:22:43,540] [22513] [INFO] Serving model v1 \n\
"""


def test_log_lines_are_timed_and_their_partitions_read(tmp_path: Path) -> None:
    log = tmp_path / "scorer.log"
    log.write_text(LOG)
    events = log_events(log)
    assert [m for _, m in events][1:] == [
        "Holding the users of partitions [] of 4",
        "Holding the users of partitions [0, 1] of 4",
        "Serving model v1",
    ]
    assigned = first_event(log, "Holding the users", where=lambda m: bool(parts_of(m)))
    assert assigned is not None and parts_of(assigned[1]) == {0, 1}
    loaded = first_event(log, "Serving model v")
    assert loaded is not None and round(loaded[0] - assigned[0], 3) == 15.08
    assert first_event(log, "Serving model v", after=loaded[0] + 0.001) is None
    assert parts_of("Holding the users of partitions [] of 4") == set()
    assert log_events(tmp_path / "missing.log") == []


def test_the_probes_users_are_of_the_partition_they_are_sent_for() -> None:
    users = _users_by_partition(1_000_000)
    assert sorted(users) == list(range(PARTITIONS))
    for partition, ids in users.items():
        assert len(ids) == PROBE_USERS
        assert all(partition_of(u, PARTITIONS) == partition for u in ids)


def test_partitions_are_served_once_each_had_a_model_reply_after_the_moment() -> None:
    probe = Probe(settings=None, users={})  # type: ignore[arg-type]  # only its answers
    probe.answers += [
        Answer(0, 0.5, 1.0, "model", False),  # before the moment: A's, not B's
        Answer(0, 2.0, 3.0, "popularity", True),
        Answer(1, 2.0, 4.0, "none", False),
    ]
    assert probe.first_model({0, 1}, after=2.0) is None
    probe.answers += [Answer(0, 4.0, 5.0, "model", False), Answer(1, 5.0, 7.0, "model", False)]
    assert probe.first_model({0, 1}, after=2.0) == 7.0  # the last partition's first
    assert probe.first_model({0}, after=0.0) == 1.0
    assert probe.last_reply({0, 1}, before=4.5) == 4.0
    assert probe.since({0, 1}, after=2.0) == {"loading": 1, "none": 1, "model": 2}
