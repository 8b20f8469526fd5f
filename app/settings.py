"""The one typed settings object. Every knob is an env var named ``STREAMREC_<FIELD>``.

Defaults match the dev services started by ``streamrec dev up`` so that a fresh
checkout works with no configuration. Deployment files (compose, k8s) must only
set variables that exist here; a test checks that.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import click
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.config import LOSSES, ModelConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_MODEL = ModelConfig()
"""The model defaults live in ModelConfig only; the settings below take theirs from it."""
MODEL_FIELDS = (
    "loss",
    "no_components",
    "learning_rate",
    "max_sampled",
    "epochs_per_batch",
    "positive_threshold",
    "num_threads",
    "seed",
    "consolidate_every",
    "consolidate_epochs",
    "consolidation_window",
    "blend_neighbours",
    "blend_weight",
)
"""Settings that are ModelConfig fields (same name): STREAMREC_LOSS, ..."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMREC_", extra="ignore", frozen=True)

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    app_id: str = Field("streamrec", description="Faust app id (consumer group prefix)")
    topic_partitions: int = Field(4, ge=1, description="Partitions of every streamrec topic")
    topic_replication: int = Field(1, ge=1, description="Replication factor of created topics")
    ratings_topic: str = "ratings"
    requests_topic: str = "rec-requests"
    responses_topic: str = "rec-responses"
    model_updates_topic: str = "model-updates"
    ratings_dlq_topic: str = "ratings-dlq"
    requests_dlq_topic: str = "rec-requests-dlq"
    max_message_bytes: int = Field(64 * 1024, ge=256, description="Larger events go to the DLQ")

    # --- S3 / model store --------------------------------------------------------------
    model_store: str = Field(
        "file://var/models",
        description="Snapshot store URL: file:///abs/dir, file://rel/dir or s3://bucket/prefix",
    )
    s3_endpoint: str | None = Field("http://127.0.0.1:8333", description="S3 endpoint URL")
    s3_region: str = "us-east-1"
    s3_access_key: str = "streamrec"
    s3_secret_key: SecretStr = SecretStr("streamrec-dev-secret")
    s3_max_attempts: int = Field(5, ge=1, description="botocore retry attempts")

    # --- Model (defaults: models.config.ModelConfig; see model_config_of) --------------
    loss: str = Field(_MODEL.loss, pattern=f"^({'|'.join(LOSSES)})$")
    no_components: int = Field(_MODEL.no_components, ge=1)
    learning_rate: float = Field(_MODEL.learning_rate, gt=0)
    max_sampled: int = Field(_MODEL.max_sampled, ge=1, description="WARP negatives per positive")
    epochs_per_batch: int = Field(_MODEL.epochs_per_batch, ge=1)
    positive_threshold: float = Field(
        _MODEL.positive_threshold, ge=0, le=5, description="Ratings >= this are positives"
    )
    num_threads: int = Field(_MODEL.num_threads, ge=1)
    seed: int = Field(_MODEL.seed, ge=0)
    consolidate_every: int = Field(
        _MODEL.consolidate_every,
        ge=0,
        description="Retrain on the window after this many streamed events (0: never)",
    )
    consolidate_epochs: int = Field(
        _MODEL.consolidate_epochs,
        ge=1,
        description="Epochs of a consolidation, and of the offline bootstrap (streamrec train)",
    )
    consolidation_window: int = Field(
        _MODEL.consolidation_window, ge=0, description="Recent events a consolidation retrains on"
    )
    blend_neighbours: int = Field(
        _MODEL.blend_neighbours, ge=0, description="Item-kNN neighbours kept per item (0: no blend)"
    )
    blend_weight: float = Field(
        _MODEL.blend_weight, ge=0, description="Weight of item-kNN scores blended into the model's"
    )

    # --- Agents ------------------------------------------------------------------------
    batch_max: int = Field(2000, ge=1, description="Largest micro-batch")
    batch_seconds: float = Field(2.0, gt=0, description="Longest wait to fill a micro-batch")
    snapshot_every_batches: int = Field(20, ge=1)
    snapshot_every_seconds: float = Field(60.0, gt=0)
    seen_items_max: int = Field(200, ge=1, description="Seen items kept per user")
    default_k: int = Field(10, ge=1, le=1000)
    session_timeout: float = Field(
        20.0,
        ge=6,
        description="Kafka group session timeout (s): how fast a dead worker's "
        "partitions move to the others",
    )

    # --- Worker / web ------------------------------------------------------------------
    role: str = Field("all", pattern="^(trainer|scorer|all)$", description="Worker role")
    web_host: str = Field("127.0.0.1", description="Host other workers reach this one at")
    web_bind: str = Field("127.0.0.1", description="Address the web server binds")
    web_port: int = Field(6066, ge=1, le=65535)
    datadir: Path = Field(Path("var/faust"), description="Faust's local table data")
    log_level: str = "info"

    # --- Dev services (streamrec dev up) -------------------------------------------------
    dev_dir: Path = Field(PROJECT_ROOT / "var" / "dev", description="Dev services' data and logs")
    dev_cache: Path = Field(PROJECT_ROOT / ".cache", description="Maven and binary cache")
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    s3_port: int = 8333
    kafka_version: str = "4.1.1"


def model_config_of(settings: Settings, **overrides: object) -> ModelConfig:
    """The ModelConfig the settings choose: the trainer and ``streamrec train`` both build
    theirs here, so the offline bootstrap trains the model the service continues."""
    values = {name: getattr(settings, name) for name in MODEL_FIELDS}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**values)


class SettingsError(click.ClickException):
    """Invalid STREAMREC_* values: one line naming each variable, then a non-zero exit."""


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and ``overrides``), or a :class:`SettingsError`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"STREAMREC_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}"
            for e in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return load_settings()
