"""How every Kafka client streamrec makes connects: one place for addresses and security.

The Faust app, topic creation, the model follower, the CLI clients, the benchmarks and the
test helpers all take their connection settings from here, so a setting added here (TLS,
SASL) reaches every client at once. Agents receive the options as a plain mapping
(:data:`agents.kafka.KafkaOptions`) and never import ``app``.

Security (``STREAMREC_KAFKA_SECURITY_PROTOCOL``): ``SSL`` and ``SASL_SSL`` verify the
brokers' certificates and host names against ``STREAMREC_KAFKA_SSL_CA_FILE`` (or the system
CAs) and present ``STREAMREC_KAFKA_SSL_CERT_FILE``/``_KEY_FILE`` if set (mutual TLS);
``SASL_PLAINTEXT`` and ``SASL_SSL`` log in as ``STREAMREC_KAFKA_SASL_USERNAME`` with
``STREAMREC_KAFKA_SASL_MECHANISM``.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Iterator
from typing import Any

from aiokafka.helpers import create_ssl_context

from app.settings import KAFKA_CREDENTIAL_FIELDS, Settings, SettingsError

TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


def bootstrap_servers(settings: Settings) -> list[str]:
    """``STREAMREC_KAFKA_BOOTSTRAP`` (comma-separated ``host:port``) as a list."""
    return [host.strip() for host in settings.kafka_bootstrap.split(",") if host.strip()]


class RedactedStr(str):
    """A password aiokafka can use as the ``str`` it is, whose repr never shows it: the
    options dict (or an object holding it) can end up in a log line or a traceback."""

    def __repr__(self) -> str:
        return "'**********'"


def kafka_client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin).

    aiokafka needs the SASL password as a plain ``str``; it is a :class:`RedactedStr`, so
    printing the options shows no secret.
    """
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "security_protocol": protocol,
    }
    if protocol in TLS_PROTOCOLS:
        options["ssl_context"] = ssl_context(settings)
    if protocol in SASL_PROTOCOLS:
        username, password = sasl_credentials(settings)
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    return options


CONNECTION_FIELDS = (
    "kafka_bootstrap",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    *KAFKA_CREDENTIAL_FIELDS,
)
"""The settings that say how to reach and log in to Kafka."""


def connection_env(settings: Settings) -> dict[str, str]:
    """``STREAMREC_*`` variables that make a child process connect as ``settings`` do."""
    env = {}
    for name in CONNECTION_FIELDS:
        value = getattr(settings, name)
        if value is not None:
            secret = getattr(value, "get_secret_value", None)
            env[f"STREAMREC_{name.upper()}"] = str(secret() if secret else value)
    return env


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App`` that say where the broker is and how to connect.

    Faust's URL scheme stays ``kafka://`` (its aiokafka driver) whatever the protocol;
    security travels in ``broker_credentials``, which Faust applies to its consumer,
    producer and topic creation alike.
    """
    import faust

    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"broker": [f"kafka://{h}" for h in bootstrap_servers(settings)]}
    context = ssl_context(settings) if protocol in TLS_PROTOCOLS else None
    if protocol in SASL_PROTOCOLS:
        username, password = sasl_credentials(settings)
        # With an ssl_context Faust's SASLCredentials speak SASL_SSL, without it SASL_PLAINTEXT.
        options["broker_credentials"] = faust.SASLCredentials(
            username=username,
            password=password,
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options


def sasl_credentials(settings: Settings) -> tuple[str, str]:
    """The SASL username and password (Settings refuses a SASL protocol without them)."""
    if settings.kafka_sasl_username is None or settings.kafka_sasl_password is None:
        raise SettingsError(
            "invalid settings: SASL needs STREAMREC_KAFKA_SASL_USERNAME and "
            "STREAMREC_KAFKA_SASL_PASSWORD"
        )
    password = settings.kafka_sasl_password.get_secret_value()
    return settings.kafka_sasl_username, RedactedStr(password)


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """A client TLS context: verifies the brokers (CA file or system CAs, host names checked);
    presents the client certificate when one is set. Unreadable files are one clear line."""
    key_password = settings.kafka_ssl_key_password
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_ca_file,
            certfile=settings.kafka_ssl_cert_file,
            keyfile=settings.kafka_ssl_key_file,
            password=None if key_password is None else key_password.get_secret_value(),
        )
    except (OSError, ssl.SSLError) as exc:
        files = {
            "CA_FILE": settings.kafka_ssl_ca_file,
            "CERT_FILE": settings.kafka_ssl_cert_file,
            "KEY_FILE": settings.kafka_ssl_key_file,
        }
        named = ", ".join(f"STREAMREC_KAFKA_SSL_{k}={v}" for k, v in files.items() if v)
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise SettingsError(
            f"invalid settings: cannot load Kafka TLS files ({named or 'system CAs'}): {why}"
        ) from None
    return context


class _ConnectFailures(logging.Handler):
    """Keeps the reasons aiokafka logs for each failed connection (it then raises a bare
    ``KafkaConnectionError: Unable to bootstrap``): a refused login, an untrusted certificate."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        errors = [a for a in record.args or () if isinstance(a, BaseException)]
        if errors:
            self.reasons.append(f"{type(errors[-1]).__name__}: {errors[-1]}")


@contextlib.contextmanager
def connection_errors_explained() -> Iterator[_ConnectFailures]:
    """Within: aiokafka prints nothing; its reasons are kept for :func:`kafka_unavailable`."""
    logger = logging.getLogger("aiokafka")
    saved = logger.level, logger.propagate
    handler = _ConnectFailures()
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.level, logger.propagate = saved


def kafka_unavailable(settings: Settings, exc: Exception, failures: _ConnectFailures) -> str:
    """One line saying why Kafka cannot be used: a refused login, TLS, or nobody answering."""
    where = settings.kafka_bootstrap
    reason = failures.reasons[-1] if failures.reasons else f"{type(exc).__name__}: {exc}"
    if "SaslAuthentication" in reason:
        return (
            f"Kafka at {where} refused the login of {settings.kafka_sasl_username!r} "
            f"({settings.kafka_sasl_mechanism}): {reason.split(': ', 1)[-1]}; check "
            "STREAMREC_KAFKA_SASL_USERNAME, STREAMREC_KAFKA_SASL_PASSWORD and "
            "STREAMREC_KAFKA_SASL_MECHANISM"
        )
    if "SSL" in reason or "certificate" in reason.lower():
        return (
            f"TLS with Kafka at {where} failed ({reason}); check STREAMREC_KAFKA_SSL_CA_FILE "
            f"and STREAMREC_KAFKA_SECURITY_PROTOCOL ({settings.kafka_security_protocol})"
        )
    return (
        f"Kafka is not reachable at {where} ({reason}); start it with `streamrec dev up` "
        "or set STREAMREC_KAFKA_BOOTSTRAP (and STREAMREC_KAFKA_SECURITY_PROTOCOL, now "
        f"{settings.kafka_security_protocol}, to what that listener speaks)"
    )
