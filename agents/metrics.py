"""Prometheus metrics of the agents. One registry per process; ``/metrics`` renders it."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_resident_memory_bytes etc., for sizing

EVENTS_IN = Counter(
    "streamrec_events_in_total", "Messages consumed, by topic", ["topic"], registry=REGISTRY
)
DEAD_LETTERS = Counter(
    "streamrec_dead_letters_total",
    "Messages sent to a dead-letter topic, by source topic and reason kind",
    ["topic", "kind"],
    registry=REGISTRY,
)
SEEN_RATINGS = Counter(
    "streamrec_seen_ratings_total",
    "Ratings recorded in the seen-items table by this process",
    registry=REGISTRY,
)
AGENT_BATCH = Histogram(
    "streamrec_agent_batch_events",
    "Events an agent handled together in one batch, by agent",
    ["agent"],
    buckets=(1, 2, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000),
    registry=REGISTRY,
)
TRAINED_EVENTS = Counter(
    "streamrec_trained_events_total", "Rating events trained by this process", registry=REGISTRY
)
SKIPPED_EVENTS = Counter(
    "streamrec_trainer_skipped_total",
    "Rating events the trainer did not train, by reason",
    ["reason"],
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "streamrec_batch_seconds",
    "Wall time of one micro-batch fit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "streamrec_batch_events",
    "Events per micro-batch",
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000),
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "streamrec_request_seconds",
    "Time from a request's Kafka timestamp to its reply being sent",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
REPLIES = Counter(
    "streamrec_replies_total", "Replies sent, by source", ["source"], registry=REGISTRY
)
MODEL_VERSION = Gauge(
    "streamrec_model_version", "Version of the model this process serves", registry=REGISTRY
)
SNAPSHOTS = Counter(
    "streamrec_snapshots_total", "Snapshots written by the trainer", registry=REGISTRY
)
MODEL_LOADS = Counter(
    "streamrec_model_loads_total",
    "Model snapshots loaded, by outcome",
    ["outcome"],
    registry=REGISTRY,
)
DELTAS_PUBLISHED = Counter(
    "streamrec_deltas_published_total",
    "Model deltas the trainer published, by kind (rows, a 'snapshot needed' marker, or "
    "'refused': a marker sent for a delta the scorers would refuse)",
    ["kind"],
    registry=REGISTRY,
)
DELTA_BYTES = Histogram(
    "streamrec_delta_bytes",
    "Size of one published model delta message",
    buckets=(1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20),
    registry=REGISTRY,
)
DELTAS_APPLIED = Counter(
    "streamrec_deltas_applied_total", "Model deltas applied to the served view", registry=REGISTRY
)
DELTAS_SKIPPED = Counter(
    "streamrec_deltas_skipped_total",
    "Model deltas read but not applied, by reason",
    ["reason"],
    registry=REGISTRY,
)
DELTA_APPLY_SECONDS = Histogram(
    "streamrec_delta_apply_seconds",
    "Wall time to verify and apply one model delta (with any wait for a worker thread "
    "or the GIL: streamrec_delta_apply_cpu_seconds is the CPU it costs)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
    registry=REGISTRY,
)
DELTA_APPLY_CPU_SECONDS = Histogram(
    "streamrec_delta_apply_cpu_seconds",
    "CPU time to verify and apply one model delta (the event loop's thread, without "
    "other tasks, plus the worker thread's when it applies off the loop)",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5),
    registry=REGISTRY,
)
DELTA_LAG = Histogram(
    "streamrec_delta_lag_seconds",
    "From the trainer publishing a delta to this process serving it",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
SHARE_LOAD_SECONDS = Histogram(
    "streamrec_share_load_seconds",
    "From a scorer being assigned partitions to it serving their users from the model",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
RESYNCS = Counter(
    "streamrec_resyncs_total",
    "Views reloaded from the snapshot store because the delta chain could not go on, by reason",
    ["reason"],
    registry=REGISTRY,
)
SKIPPED_MESSAGES = Counter(
    "streamrec_skipped_messages_total",
    "Messages a scorer-side reader skipped as undecodable (the trainer dead-letters them), "
    "by topic and reason kind",
    ["topic", "kind"],
    registry=REGISTRY,
)
READER_FAILURES = Counter(
    "streamrec_reader_failures_total",
    "Failures of a reader loop (it starts over), or of one record that the reader "
    "dead-lettered or skipped on an unexpected error, by reader and exception type",
    ["reader", "error"],
    registry=REGISTRY,
)
READER_FAILING = Gauge(
    "streamrec_reader_failing",
    "1 while a reader keeps failing (/health/ answers 503), else 0, by reader",
    ["reader"],
    registry=REGISTRY,
)
SNAPSHOT_REQUESTS = Counter(
    "streamrec_snapshot_requests_total",
    "Snapshots asked for on model-requests by scorers whose delta chain broke, by outcome "
    "(sent by a scorer; answered, rate_limited, malformed or untrusted at the trainer)",
    ["outcome"],
    registry=REGISTRY,
)

MODEL_REFUSED = Counter(
    "streamrec_model_refused_total",
    "Model messages and snapshots refused as untrusted, by what (delta, update, snapshot) "
    "and why (unsigned, unknown_key, bad_signature; chain: a delta that does not make the "
    "next version)",
    ["message", "reason"],
    registry=REGISTRY,
)
