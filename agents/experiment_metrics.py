"""The Prometheus metrics of experiments, on the agents' one registry: what scorers serve
per variant, and the hit counter's tallies and guardrail per variant."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from agents.metrics import REGISTRY

REPLIES = Counter(
    "streamrec_experiment_replies_total",
    "Replies served in an experiment, by experiment and variant",
    ["experiment", "variant"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "streamrec_experiment_fallbacks_total",
    "Replies answered from control because the variant was not loaded, by experiment",
    ["experiment"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "streamrec_experiment_latency_seconds",
    "Receive-to-reply latency of replies in an experiment, by experiment and variant",
    ["experiment", "variant"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
IMPRESSIONS_LOST = Counter(
    "streamrec_experiment_impressions_lost_total",
    "Impressions messages that could not be delivered",
    registry=REGISTRY,
)
IMPRESSIONS = Gauge(
    "streamrec_experiment_impressions",
    "Impressions counted by the hit counter, by experiment and variant",
    ["experiment", "variant"],
    registry=REGISTRY,
)
HITS = Gauge(
    "streamrec_experiment_hits",
    "Hits counted by the hit counter, by experiment and variant",
    ["experiment", "variant"],
    registry=REGISTRY,
)
HIT_RATE = Gauge(
    "streamrec_experiment_hit_rate",
    "Hit-rate and its 95% Wilson interval, by experiment, variant and bound (rate/low/high)",
    ["experiment", "variant", "bound"],
    registry=REGISTRY,
)
P_VALUE = Gauge(
    "streamrec_experiment_p_value",
    "The guardrail's always-valid p-value, by experiment",
    ["experiment"],
    registry=REGISTRY,
)
