"""/health/ (app/web.py) answers 503 with the reason while a reader keeps failing
(:mod:`agents.health`), and 200 again once it works."""

from __future__ import annotations

import json
from typing import Any

from app.service import create_app
from app.settings import Settings
from tests.unit.models.conftest import tiny_view  # noqa: F401  (fixture)


class IdleConsumer:
    """Faust's consumer as /health/ reads it, before it is started."""

    def assignment(self) -> set[Any]:
        return set()


async def test_health_is_degraded_while_a_reader_keeps_failing(tiny_view) -> None:  # noqa: F811
    app = create_app(Settings(), role="scorer")
    app.consumer = IdleConsumer()
    runtime = app.streamrec
    runtime.holder.publish(tiny_view)
    health = app.web.views["/health/"]

    async def get() -> tuple[int, dict[str, Any]]:
        response = await health.get(None)
        return response.status, json.loads(response.body)

    status, body = await get()
    assert status == 200 and body["status"] == "ok" and "failing" not in body
    runtime.health.failed("ingest", ValueError("Exceeds the limit (4300 digits)"))
    assert (await get())[0] == 200  # one failure: a broker restart it rides out
    runtime.health.failed("ingest", ValueError("Exceeds the limit (4300 digits)"))
    status, body = await get()
    assert status == 503 and body["status"] == "degraded"
    assert "ValueError: Exceeds the limit" in body["failing"]["ingest"]
    runtime.health.ok("ingest")
    assert (await get())[0] == 200


def test_every_agent_metric_is_in_the_registry_metrics_renders() -> None:
    """A metric made without ``registry=REGISTRY`` lands in prometheus' global registry and
    never shows on ``/metrics`` (streamrec_snapshot_requests_total did, once)."""
    from prometheus_client import Counter, Gauge, Histogram

    from agents import metrics

    made = [v for v in vars(metrics).values() if isinstance(v, Counter | Gauge | Histogram)]
    registered = set(metrics.REGISTRY._collector_to_names)
    assert made and [m._name for m in made if m not in registered] == []
