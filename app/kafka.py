"""How every Kafka client streamrec makes connects: one place for addresses and security.

The Faust app, topic creation, the model follower, the CLI clients, the benchmarks and the
test helpers all take their connection settings from here, so a setting added here (TLS,
SASL) reaches every client at once. Agents receive the options as a plain mapping
(:data:`agents.kafka.KafkaOptions`) and never import ``app``.
"""

from __future__ import annotations

from typing import Any

from app.settings import Settings


def bootstrap_servers(settings: Settings) -> list[str]:
    """``STREAMREC_KAFKA_BOOTSTRAP`` (comma-separated ``host:port``) as a list."""
    return [host.strip() for host in settings.kafka_bootstrap.split(",") if host.strip()]


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin)."""
    return {"bootstrap_servers": bootstrap_servers(settings)}


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App`` that say where the broker is and how to connect."""
    return {"broker": [f"kafka://{host}" for host in bootstrap_servers(settings)]}
