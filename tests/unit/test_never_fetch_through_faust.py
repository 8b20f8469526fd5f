"""app.faust_adapters.never_fetch_through_faust: Faust's consumer keeps the request partitions
paused through every resume, so only the bulk request reader hands requests on."""

from __future__ import annotations

from aiokafka import TopicPartition

from app.faust_adapters import never_fetch_through_faust


class FakeConsumer:
    """Faust's pause/resume bookkeeping (faust/transport/consumer.py): the partitions it
    fetches for its streams are the assigned ones that are not paused."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.paused: set[TopicPartition] = set()
        self.verified: list[TopicPartition] = []

    def verify_event_path(self, now: float, tp: TopicPartition) -> None:
        self.verified.append(tp)  # Faust logs an error when a partition's stream idles

    def pause_partitions(self, tps: set[TopicPartition]) -> None:
        self.paused |= set(tps)

    def resume_partitions(self, tps: set[TopicPartition]) -> None:
        self.paused -= set(tps)

    def active(self) -> set[TopicPartition]:
        return self.assigned - self.paused


def test_request_partitions_stay_paused_through_every_resume() -> None:
    requests = {TopicPartition("rec-requests", p) for p in range(3)}
    others = {TopicPartition("seen-items-changelog", p) for p in range(3)}
    others.add(TopicPartition("items", 0))
    consumer = FakeConsumer(requests | others)
    never_fetch_through_faust(consumer, "rec-requests")  # type: ignore[arg-type]
    for _ in range(2):  # a rebalance pauses everything; recovery resumes what it resumes
        consumer.pause_partitions(requests | others)
        consumer.resume_partitions(requests | others)
        assert consumer.active() == others
    consumer.resume_partitions({TopicPartition("rec-requests", 1)})
    assert consumer.active() == others


def test_faust_does_not_report_the_request_partitions_as_stuck() -> None:
    requests = {TopicPartition("rec-requests", p) for p in range(3)}
    others = {TopicPartition("seen-items-changelog", 0)}
    consumer = FakeConsumer(requests | others)
    never_fetch_through_faust(consumer, "rec-requests")  # type: ignore[arg-type]
    for tp in sorted(requests | others):  # as Faust's livelock detector walks the assignment
        consumer.verify_event_path(0.0, tp)
    assert consumer.verified == sorted(others)
