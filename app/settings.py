"""The one typed settings object. Every knob is an env var named ``STREAMREC_<FIELD>``.

Addresses default to the dev services started by ``streamrec dev up``; secrets have no
default (the dev tools' own settings, ``devtools.settings``, supply the dev ones).
Deployment files (compose, k8s) must only set variables that exist here; a test checks that.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import click
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import AppError
from models.bounds import reply_prefix_problem
from models.config import LOSSES, ModelConfig
from models.events import MAX_FUTURE_SKEW_SECONDS
from models.signing import DEV_KEY, Keyring, parse_keys

MIN_KEY_CHARS = 16
"""The shortest model key accepted (a secret, not a password to remember)."""

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
    "dedupe_memory",
)
"""Settings that are ModelConfig fields (same name): STREAMREC_LOSS, ..."""
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SECURITY_PROTOCOLS: tuple[str, ...] = get_args(SecurityProtocol)
"""Kafka security protocols (STREAMREC_KAFKA_SECURITY_PROTOCOL), as Kafka names them."""

SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SASL_MECHANISMS: tuple[str, ...] = get_args(SaslMechanism)
"""SASL mechanisms (STREAMREC_KAFKA_SASL_MECHANISM) streamrec supports."""

Role = Literal["trainer", "scorer", "all"]
ROLES: tuple[Role, ...] = get_args(Role)
"""Worker roles (STREAMREC_ROLE, ``streamrec worker --role``, :func:`app.service.create_app`)."""

KAFKA_CREDENTIAL_FIELDS = (
    "kafka_sasl_username",
    "kafka_sasl_password",
    "kafka_ssl_ca_file",
    "kafka_ssl_cert_file",
    "kafka_ssl_key_file",
    "kafka_ssl_key_password",
)
"""Optional Kafka credentials and TLS files (an empty value means unset)."""


MAX_USERS_DEFAULT = 400_000
MAX_ITEMS_DEFAULT = 100_000
"""STREAMREC_MAX_USERS/ITEMS defaults: what the k8s/ memory limits hold (docs/deploy.md#sizing)."""


class LineageSource(BaseModel):
    """Where scorers follow a candidate trainer lineage (an experiment's ``model`` name):
    the second trainer's store, announcements and deltas (docs/experiments.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: str
    updates_topic: str
    deltas_topic: str
    requests_topic: str | None = None


class Settings(BaseSettings):
    # hide_input_in_errors: a raw ValidationError (e.g. from Settings() in a traceback) never
    # prints the values given, which include the secrets; load_settings names them safely.
    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    # --- Kafka -------------------------------------------------------------------------
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    app_id: str = Field("streamrec", description="Faust app id (consumer group prefix)")
    topic_partitions: int = Field(4, ge=1, description="Partitions of every streamrec topic")
    topic_replication: int = Field(1, ge=1, description="Replication factor of created topics")
    ratings_topic: str = "ratings"
    requests_topic: str = "rec-requests"
    responses_topic: str = "rec-responses"
    model_updates_topic: str = "model-updates"
    model_deltas_topic: str = Field(
        "model-deltas", description="One partition: the trainer's per-batch model deltas"
    )
    model_requests_topic: str = Field(
        "model-requests",
        description="One partition: scorers whose delta chain broke ask the trainer for a "
        "snapshot at once",
    )
    delta_retention_seconds: float = Field(
        24 * 3600.0,
        gt=0,
        description="How long the delta topic keeps deltas; must exceed the snapshot interval",
    )
    delta_max_bytes: int = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        le=15 * 1024 * 1024,
        description="Largest delta message; a larger batch sends 'snapshot needed' instead",
    )
    delta_retention_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=32 * 1024 * 1024,
        description="Most bytes the delta topic keeps (retention.bytes; older segments go "
        "first); a scorer whose deltas were deleted loads the next snapshot",
    )
    ratings_dlq_topic: str = "ratings-dlq"
    requests_dlq_topic: str = "rec-requests-dlq"
    items_topic: str = Field("items", description="Compacted item catalog (titles, genres)")
    experiments_topic: str = Field(
        "experiments", description="Compacted experiment definitions (issue 20), signed"
    )
    impressions_topic: str = Field(
        "impressions", description="What each reply in an experiment showed, keyed by user"
    )
    experiment_results_topic: str = Field(
        "experiment-results", description="Compacted per-variant tallies of each experiment"
    )
    experiment_hit_window_seconds: float = Field(
        24 * 3600.0,
        gt=0,
        allow_inf_nan=False,
        description="A positive rating this long after an impression of its item is a hit",
    )
    experiment_alpha: float = Field(
        0.05, gt=0, lt=1, description="The guardrail's confidence: always-valid p <= this"
    )
    experiment_tau: float = Field(
        0.01, gt=0, le=1, description="The hit-rate difference the guardrail is tuned to"
    )
    experiment_min_impressions: int = Field(
        1000, ge=1, description="Impressions per variant before the guardrail judges"
    )
    experiment_counter: bool = Field(
        True,
        description="Count hits and run the guardrail on this trainer (false on a candidate "
        "lineage's trainer: one counter per deployment)",
    )
    experiment_lineages: dict[str, LineageSource] = Field(
        default_factory=dict,
        description='Candidate trainer lineages scorers follow, as JSON: {"NAME": {"store": '
        'URL, "updates_topic": T, "deltas_topic": T, "requests_topic": T}}',
    )
    experiment_publish_seconds: float = Field(
        5.0, gt=0, allow_inf_nan=False, description="How often the hit counter publishes tallies"
    )
    max_message_bytes: int = Field(64 * 1024, ge=256, description="Larger events go to the DLQ")
    max_future_skew_seconds: float = Field(
        MAX_FUTURE_SKEW_SECONDS,
        ge=0,
        allow_inf_nan=False,
        description="A rating whose ts is further than this past its Kafka record's "
        "timestamp is dead-lettered as ts_in_future (ms timestamps, clocks ahead)",
    )
    max_reply_bytes: int = Field(
        512 * 1024,
        ge=1024,
        le=1_000_000,
        description="Largest reply sent (under Kafka's 1 MiB default max.message.bytes); "
        "the request of a larger one is dead-lettered as too_large",
    )
    reply_topic_prefixes: str = Field(
        "",
        description="Comma-separated prefixes of the topics a request's reply_to may name "
        "besides the responses topic (empty: only the responses topic); internal topics "
        "and streamrec's own never",
    )

    # --- Kafka security (every client: Faust app, admin, follower, CLI, benchmarks) -------
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        "SCRAM-SHA-512", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user (SASL_* only)")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password")
    kafka_ssl_ca_file: Path | None = Field(
        None, description="PEM CA bundle that signed the brokers' certificates (default: system)"
    )
    kafka_ssl_cert_file: Path | None = Field(None, description="PEM client certificate (mTLS)")
    kafka_ssl_key_file: Path | None = Field(None, description="PEM client private key (mTLS)")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="Client key's password")

    # --- S3 / model store --------------------------------------------------------------
    model_store: str = Field(
        "file://var/models",
        description="Snapshot store URL: file:///abs/dir, file://rel/dir or s3://bucket/prefix",
    )
    s3_endpoint: str | None = Field("http://127.0.0.1:8333", description="S3 endpoint URL")
    s3_region: str = "us-east-1"
    s3_access_key: str = "streamrec"
    s3_secret_key: SecretStr | None = Field(
        None,
        description="Needed by an s3:// store whose STREAMREC_S3_ACCESS_KEY is set (both "
        "empty: botocore's default credential chain)",
    )
    s3_max_attempts: int = Field(5, ge=1, description="botocore retry attempts")

    # --- Model signing (models.signing; docs/deploy.md "Model key") ---------------------
    model_key: SecretStr | None = Field(
        None,
        description="Secret (>= 16 characters) that signs and verifies model deltas, "
        "announcements and snapshots (HMAC-SHA256); unset with no file: a fixed dev key",
    )
    model_key_file: Path | None = Field(
        None, description="File holding the model key (a mounted secret), instead of the var"
    )
    model_verify_keys_file: Path | None = Field(
        None,
        description="File of further keys, one per line, that verify but never sign (key rotation)",
    )
    allow_unsigned_snapshots: bool = Field(
        False,
        description="Load snapshots that carry no signature (stores written before signing); "
        "wrongly signed ones are refused regardless",
    )

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
    dedupe_memory: int = Field(
        _MODEL.dedupe_memory,
        ge=1,
        description="Recent event ids remembered to drop a redelivered rating (a new model's; "
        "a restored one keeps its snapshot's)",
    )

    # --- Agents ------------------------------------------------------------------------
    batch_max: int = Field(
        10_000, ge=1, description="Largest micro-batch (batches are what is available, up to this)"
    )
    batch_seconds: float = Field(
        0.5,
        gt=0,
        description="Longest a trainer's fetch waits when no rating is available; not a "
        "batching window (a fetch returns as soon as any rating arrives)",
    )
    # Snapshots are the durable checkpoint (and what the trainer commits offsets by); deltas
    # carry freshness to the scorers, so snapshots can be rare.
    snapshot_every_batches: int = Field(200, ge=1)
    snapshot_every_seconds: float = Field(300.0, gt=0)
    checkpoint_segments: int = Field(
        20,
        ge=0,
        description="Snapshots after a full one that hold only the rows changed since the "
        "previous (segments; a restore applies them to the full one); 0: every one is full",
    )
    checkpoint_chain_fraction: float = Field(
        0.5,
        gt=0,
        description="A full snapshot is written instead of a segment once the segments "
        "since the last full one hold more than this fraction of its bytes (or rows)",
    )
    checkpoint_keep_bases: int = Field(
        4,
        ge=0,
        description="After each full snapshot the trainer deletes the versions older than "
        "this many full ones (never the current one's chain); 0: keeps every version",
    )
    seen_items_max: int = Field(
        10_000,
        ge=1,
        description="Seen items kept per user (8 bytes each), all excluded from replies",
    )
    request_batch_max: int = Field(
        500, ge=1, description="Most requests a scorer answers together (one matmul)"
    )
    scorer_share: bool = Field(
        True,
        description="A scorer holds the user rows of only the requests partitions it owns "
        "(and every item); newly assigned partitions load from the latest checkpoint and "
        "the deltas since (issue 19); false: every scorer holds every user",
    )
    share_loading_wait_seconds: float = Field(
        5.0,
        ge=0,
        description="With scorer_share: how long a request for a user whose partition is "
        'still loading waits before a popularity reply marked "loading"',
    )
    ann_min_items: int = Field(
        50_000,
        ge=0,
        description="Catalogs of this many items or more are scored through an approximate "
        "index (candidates re-ranked exactly, changed items always exact); 0: always exact",
    )
    ingest_batch_max: int = Field(
        1000,
        ge=1,
        description="Most ratings the ingest decodes and records in one slice (in a "
        "worker thread) before requests get their turn",
    )
    max_poll_records: int = Field(
        500,
        ge=1,
        description="Records per Kafka fetch Faust hands a worker's streams at once",
    )
    default_k: int = Field(10, ge=1, le=1000)
    max_users: int = Field(
        MAX_USERS_DEFAULT,
        ge=1,
        description="Most users the model holds; ratings of new users past it are "
        "dead-lettered (kind capacity). Sizing: docs/deploy.md",
    )
    max_items: int = Field(
        MAX_ITEMS_DEFAULT,
        ge=1,
        description="Most items the model holds; ratings of new items past it are "
        "dead-lettered (kind capacity). Sizing: docs/deploy.md",
    )
    session_timeout: float = Field(
        20.0,
        ge=6,
        description="Kafka group session timeout (s): how fast a dead worker's "
        "partitions move to the others",
    )

    # --- Worker / web ------------------------------------------------------------------
    role: Role = Field("all", description="Worker role")
    web_host: str = Field("127.0.0.1", description="Host other workers reach this one at")
    web_bind: str = Field("127.0.0.1", description="Address the web server binds")
    web_port: int = Field(6066, ge=1, le=65535)
    datadir: Path = Field(Path("var/faust"), description="Faust's local table data")
    dashboard_sample_seconds: float = Field(
        5.0, gt=0, description="How often the dashboard's time series is sampled"
    )
    dashboard_points: int = Field(
        360, ge=2, le=10_000, description="Samples the dashboard keeps (a ring buffer)"
    )
    web_token: SecretStr | None = Field(
        None,
        description="Bearer token every web view but /, /static/, /health/ and /metrics needs "
        "(unset: the views are open, as on a developer machine)",
    )
    web_token_file: Path | None = Field(
        None, description="A file holding STREAMREC_WEB_TOKEN (e.g. a mounted secret)"
    )
    log_level: str = "info"

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator(
        *KAFKA_CREDENTIAL_FIELDS,
        "model_key",
        "model_key_file",
        "model_verify_keys_file",
        "web_token",
        "web_token_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # e.g. an empty key in a ConfigMap

    @field_validator("experiment_lineages", mode="before")
    @classmethod
    def _lineages_json(cls, value: object) -> object:
        """JSON text given in code (the environment's is parsed by pydantic-settings)."""
        if isinstance(value, str):
            import json

            try:
                return json.loads(value) if value.strip() else {}
            except ValueError as exc:
                raise ValueError(f"not JSON: {exc}") from None
        return value

    @field_validator("experiment_lineages")
    @classmethod
    def _lineage_names(cls, value: dict[str, LineageSource]) -> dict[str, LineageSource]:
        from models.experiment import InvalidExperiment, check_name

        for name in value:
            try:
                check_name(name, "lineage name")
            except InvalidExperiment as exc:
                raise ValueError(exc.reason) from None
        return value

    @field_validator("reply_topic_prefixes")
    @classmethod
    def _reply_prefixes(cls, value: str) -> str:
        for prefix in _split(value):
            problem = reply_prefix_problem(prefix)
            if problem:
                raise ValueError(problem)
        return value

    @property
    def reply_prefixes(self) -> tuple[str, ...]:
        """STREAMREC_REPLY_TOPIC_PREFIXES as a tuple."""
        return _split(self.reply_topic_prefixes)

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"STREAMREC_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "STREAMREC_KAFKA_SASL_USERNAME and STREAMREC_KAFKA_SASL_PASSWORD"
            )
        if self.kafka_ssl_key_file is not None and self.kafka_ssl_cert_file is None:
            raise ValueError("STREAMREC_KAFKA_SSL_KEY_FILE needs STREAMREC_KAFKA_SSL_CERT_FILE")
        # Both the key and its file, or a file that cannot be read: one clear error now.
        secret_or_file("STREAMREC_MODEL_KEY", self.model_key, self.model_key_file)
        if self.model_key is not None and len(self.model_key.get_secret_value()) < MIN_KEY_CHARS:
            raise ValueError(f"STREAMREC_MODEL_KEY must have at least {MIN_KEY_CHARS} characters")
        return self

    @model_validator(mode="after")
    def _s3_secret(self) -> Settings:
        problem = s3_secret_problem(self, self.model_store)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _web_token(self) -> Settings:
        web_token_of(self)  # a bad token or token file stops the worker before it starts
        return self


WEB_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]{16,4096}={0,2}")
"""An RFC 6750 ``b64token`` of at least 16 characters (``secrets.token_urlsafe(32)`` makes
one): what a browser can put in a header, and what ``hmac.compare_digest`` can compare."""


def web_token_of(settings: Settings) -> bytes | None:
    """The web views' bearer token of ``settings`` (see :func:`read_web_token`)."""
    return read_web_token(settings.web_token, settings.web_token_file)


def read_web_token(token: SecretStr | None, file: Path | None) -> bytes | None:
    """The bearer token: STREAMREC_WEB_TOKEN or STREAMREC_WEB_TOKEN_FILE
    (:func:`secret_or_file`), or None when neither is set; a token that is not
    :data:`WEB_TOKEN_PATTERN` is an error. Messages never show a token."""
    value = secret_or_file("STREAMREC_WEB_TOKEN", token, file)
    if value is None:
        return None
    if not WEB_TOKEN_PATTERN.fullmatch(value):
        name = "the content of STREAMREC_WEB_TOKEN_FILE" if file else "STREAMREC_WEB_TOKEN"
        raise ValueError(
            f"{name} must be 16 or more of A-Z a-z 0-9 . _ ~ + / - (an RFC 6750 token; "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value.encode("ascii")


def s3_secret_problem(settings: Settings, url: str) -> str | None:
    """Why the store at ``url`` cannot log in to S3 with ``settings``, or None: an s3:// store
    with an access key needs its secret key (no default outside the dev tools)."""
    if url.startswith("s3://") and settings.s3_access_key and settings.s3_secret_key is None:
        return (
            f"the store {url} needs STREAMREC_S3_SECRET_KEY (STREAMREC_S3_ACCESS_KEY is "
            f"{settings.s3_access_key!r}; set both empty for botocore's default credential chain)"
        )
    return None


def secret_or_file(var: str, value: SecretStr | None, file: Path | None) -> str | None:
    """The secret ``var`` (e.g. STREAMREC_MODEL_KEY) names, given as the variable itself or
    as ``<var>_FILE``, a file holding it (a mounted secret; surrounding whitespace
    stripped); None when neither is set. Setting both is an error (which one wins would be a
    guess), and so is a file that cannot be read; messages never show the secret."""
    if value is not None and file is not None:
        raise ValueError(f"set {var} or {var}_FILE, not both")
    if file is not None:
        return _read_secret_file(file, f"{var}_FILE")
    return None if value is None else value.get_secret_value()


def _read_secret_file(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name} {str(path)!r} cannot be read: {type(exc).__name__}") from None


def _split(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


SECRET_FIELDS = frozenset(
    name for name, info in Settings.model_fields.items() if "SecretStr" in str(info.annotation)
)
"""Settings whose values are never printed, logged or shown (their SecretStr fields)."""


def model_keys(settings: Settings) -> Keyring:
    """The keys this process signs and verifies model messages with: the model key (the
    var or the file) signs; it and every key in the verify-keys file verify. With no key
    set, the fixed dev key (:data:`models.signing.DEV_KEY`; workers say so in their log,
    :func:`app.runtime.worker_model_keys`)."""
    try:
        signing = secret_or_file("STREAMREC_MODEL_KEY", settings.model_key, settings.model_key_file)
        verifying = settings.model_verify_keys_file
        text = _read_secret_file(verifying, "STREAMREC_MODEL_VERIFY_KEYS_FILE") if verifying else ""
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    extra: tuple[bytes, ...] = ()
    if text:
        extra = parse_keys(text.splitlines())
        if any(len(key) < MIN_KEY_CHARS for key in extra):
            raise SettingsError(
                f"every key in STREAMREC_MODEL_VERIFY_KEYS_FILE needs {MIN_KEY_CHARS}+ characters"
            )
    if signing is None:
        return Keyring(DEV_KEY, extra, settings.allow_unsigned_snapshots)
    if len(signing) < MIN_KEY_CHARS:
        raise SettingsError(f"the model key needs at least {MIN_KEY_CHARS} characters")
    return Keyring(signing.encode(), extra, settings.allow_unsigned_snapshots)


def model_config_of(settings: Settings, **overrides: object) -> ModelConfig:
    """The ModelConfig the settings choose: the trainer and ``streamrec train`` both build
    theirs here, so the offline bootstrap trains the model the service continues."""
    values = {name: getattr(settings, name) for name in MODEL_FIELDS}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**values)


class SettingsError(AppError, click.ClickException):
    """Invalid STREAMREC_* values: one line naming each variable, then a non-zero exit."""


AnySettings = TypeVar("AnySettings", bound=Settings)


def load_settings(
    kind: type[AnySettings] = Settings,  # type: ignore[assignment]
    /,
    **overrides: Any,
) -> AnySettings:
    """Settings (or ``kind``, a subclass such as the dev tools') from the environment (and
    ``overrides``), or a :class:`SettingsError`."""
    try:
        return kind(**overrides)
    except ValidationError as exc:
        problems = "; ".join(map(_problem, exc.errors()))
        raise SettingsError(f"invalid settings: {problems}") from None


def _problem(error: Any) -> str:
    """One invalid value as ``STREAMREC_NAME='value': why``, never the value of a secret."""
    loc = [str(part) for part in error["loc"]]
    msg = str(error["msg"]).removeprefix("Value error, ")
    if not loc:  # a rule across fields: its input is every setting, secrets included
        return msg
    shown = "'***'" if loc[0] in SECRET_FIELDS else repr(error.get("input"))
    return f"STREAMREC_{'_'.join(loc).upper()}={shown}: {msg}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return load_settings()
