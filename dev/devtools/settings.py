"""The dev tools' settings: :class:`app.settings.Settings` plus the dev services' fields and
the dev S3 secret, read from the same ``STREAMREC_<FIELD>`` variables."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from pydantic import Field, SecretStr

from app.settings import Settings, load_settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The checkout the dev tools run from (they are installed editable, never as a wheel)."""

DEV_S3_SECRET_KEY = "streamrec-dev-secret"
"""The dev S3 server's secret key (dev only, like the dev Kafka password)."""

DEV_ENV = {"STREAMREC_S3_SECRET_KEY": DEV_S3_SECRET_KEY}
"""What production :class:`~app.settings.Settings` leave unset and the dev services need."""


class DevSettings(Settings):
    """What ``streamrec dev``, the demo, the tests and the benchmarks run with."""

    s3_secret_key: SecretStr = SecretStr(DEV_S3_SECRET_KEY)  # the dev S3 server's own

    # --- Dev services (streamrec dev up) -------------------------------------------------
    dev_dir: Path = Field(PROJECT_ROOT / "var" / "dev", description="Dev services' data and logs")
    dev_cache: Path = Field(PROJECT_ROOT / ".cache", description="Maven and binary cache")
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    s3_port: int = 8333
    kafka_version: str = "4.1.1"
    dev_kafka_secure: bool = Field(
        False,
        description="`dev up` adds SASL_SSL, SSL and SASL_PLAINTEXT listeners "
        "(ports STREAMREC_KAFKA_PORT + 2, + 3, + 4)",
    )


def load_dev_settings(**overrides: object) -> DevSettings:
    """:class:`DevSettings` from the environment (and ``overrides``), or a SettingsError."""
    return load_settings(DevSettings, **overrides)


def use_dev_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
    """Give this process, and the workers it starts, the :data:`DEV_ENV` values it was not
    given: the test suite and the benchmarks run as a dev deployment of the dev services."""
    for name, value in DEV_ENV.items():
        environ.setdefault(name, value)
