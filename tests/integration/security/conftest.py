"""The dev broker's SASL_SSL listener (``streamrec dev up --secure``) for the security tests.

``dev/test.sh`` (hence CI) starts the dev broker with ``--secure``, so these tests run there.
Against a broker without the listener they skip, saying how to run them; if
``STREAMREC_DEV_KAFKA_SECURE=true`` says the listener should be there, they fail instead.
"""

from __future__ import annotations

import pytest

from app.settings import Settings
from devtools import KafkaBroker


@pytest.fixture(scope="session")
def secure_broker(settings: Settings) -> KafkaBroker:
    """The dev broker, checked to accept the dev user on its SASL_SSL listener."""
    broker = KafkaBroker(settings)
    if broker.secure and broker.secure_probe():
        return broker
    problem = (
        f"the dev broker has no working SASL_SSL listener at {broker.secure_bootstrap} "
        "(run `streamrec dev down --only kafka && streamrec dev up --secure`)"
    )
    if settings.dev_kafka_secure:
        pytest.fail(f"STREAMREC_DEV_KAFKA_SECURE is set but {problem}")
    pytest.skip(f"{problem}; dev/test.sh and CI do this")
