"""Fixtures shared by every integration test: settings, service addresses, unique names.

Integration tests run against the real Kafka broker and S3 server started by
``streamrec dev up`` (``bash dev/test.sh`` does that). Tests that need them are marked
``kafka``/``s3`` (using the ``kafka_bootstrap``/``s3_config`` fixtures marks them too); if a
selected test needs a service that does not answer, the whole run fails at once with one
message instead of every test timing out on its own.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from app.kafka import kafka_client_options
from app.settings import Settings
from devtools import DevSettings, metadata_ready, s3_problem

SERVICE_FIXTURES = {"kafka_bootstrap": "kafka", "kafka_options": "kafka", "s3_config": "s3"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the service fixtures they use, then check those services once."""
    needed: set[str] = set()
    for item in items:
        for fixture, marker in SERVICE_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
        needed |= {m for m in ("kafka", "s3") if item.get_closest_marker(m)}
    if config.option.collectonly:
        return
    settings = DevSettings()
    if "kafka" in needed and not metadata_ready(kafka_client_options(settings)):
        pytest.exit(
            f"Kafka is not reachable at {settings.kafka_bootstrap} — run `streamrec dev up`",
            returncode=pytest.ExitCode.TESTS_FAILED,
        )
    if "s3" in needed:
        problem = s3_problem(*_s3_args(settings))
        if problem is not None:
            where = f"{settings.s3_endpoint} ({problem})"
            pytest.exit(
                f"S3 is not reachable at {where} — run `streamrec dev up`",
                returncode=pytest.ExitCode.TESTS_FAILED,
            )


def _s3_args(settings: Settings) -> tuple[str, str, str, str]:
    return (
        settings.s3_endpoint or "",
        settings.s3_access_key,
        settings.s3_secret_key.get_secret_value(),
        settings.s3_region,
    )


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The settings from the environment (STREAMREC_*), as the services see them, with the
    dev services' fields (ports, dev dir) the dev tools need."""
    return DevSettings()


@pytest.fixture(scope="session")
def kafka_bootstrap(settings: Settings) -> str:
    """The bootstrap servers of the running broker (checked before the session starts)."""
    return settings.kafka_bootstrap


@pytest.fixture(scope="session")
def kafka_options(settings: Settings) -> dict[str, Any]:
    """aiokafka client options for the running broker, as streamrec's clients use (TLS, SASL)."""
    return kafka_client_options(settings)


@pytest.fixture(scope="session")
def s3_config(settings: Settings) -> dict[str, str]:
    """Keyword arguments for ``session.create_client("s3", **s3_config)``; use path-style."""
    endpoint, access_key, secret_key, region = _s3_args(settings)
    return {
        "endpoint_url": endpoint,
        "aws_access_key_id": access_key,
        "aws_secret_access_key": secret_key,
        "region_name": region,
    }


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Make names no other test or run uses: ``unique_name("ratings")`` -> ``"ratings-3f9a..."``.

    Valid as a Kafka topic, consumer group and S3 bucket name (lowercase, digits, hyphens,
    <= 63 chars), so tests never collide and need no cleanup ordering.
    """

    def make(prefix: str = "test") -> str:
        clean = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40] or "test"
        return f"{clean}-{uuid.uuid4().hex[:16]}"

    return make
