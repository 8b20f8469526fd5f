"""A real single-node Apache Kafka (KRaft, combined broker + controller) from Maven Central jars.

No Docker and no Kafka package exist on the machines we run on, but Maven Central serves
Kafka's own jars: ``dev/kafka/pom.xml`` names them, ``mvn dependency:copy-dependencies``
copies them once into ``<dev_cache>/kafka/<version>/lib`` (the download itself is cached in
``~/.m2``), and ``java -cp 'lib/*' kafka.Kafka`` runs the broker. Layout under
``<dev_dir>/kafka``: ``kafka.pid``, ``kafka.log``, ``server.properties``, ``data/``, and with
``--secure`` (``STREAMREC_DEV_KAFKA_SECURE``) ``tls/`` (see :mod:`devtools.tls`).

Secure mode adds three listeners next to the plaintext one (which everything else keeps
using), on ``STREAMREC_KAFKA_PORT`` + their offset in :data:`SECURE_LISTENERS`: SASL_SSL
(+2), SSL (+3) and SASL_PLAINTEXT (+4). TLS uses a CA made on the spot; the SASL user
``DEV_SASL_USERNAME``/``DEV_SASL_PASSWORD`` logs in with PLAIN (the listeners' JAAS config)
or SCRAM-SHA-256/512 (created through the admin API once the broker answers). The SSL
listener requires a client certificate signed by the dev CA (mutual TLS is its login); the
SASL_SSL one requests one and verifies it if given.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.settings import SASL_MECHANISMS, Settings
from devtools.process import HOST, DevServiceError, ManagedProcess, log, port_open
from devtools.settings import PROJECT_ROOT, DevSettings
from devtools.tls import DevCertificates

POM = PROJECT_ROOT / "dev" / "kafka" / "pom.xml"
HEAP = "-Xmx768m"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the broker accepts 10 MB test events; the app DLQs them

SECURE_LISTENERS = {"SASL_SSL": 2, "SSL": 3, "SASL_PLAINTEXT": 4}
"""With --secure, each listener's port is STREAMREC_KAFKA_PORT + its offset (the
controller's default port is + 1); SASL_SSL is the one ``dev status`` names first."""
SECURE_LISTENER = "SASL_SSL"
DEV_SASL_USERNAME = "streamrec"
DEV_SASL_PASSWORD = "streamrec-dev-kafka-secret"  # dev only, like the dev S3 secret key
SCRAM_MECHANISMS = tuple(m for m in SASL_MECHANISMS if m.startswith("SCRAM-"))

# Broker settings for a dev/test broker. Auto-creation stays on because Faust creates its
# internal topics itself; streamrec's own topics are created explicitly with their partitions.
BROKER_CONFIG = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "auto.create.topics.enable": "true",
    "delete.topic.enable": "true",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "10",  # default 50 makes the first consumer group slow
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "10",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "1000",  # lets tests detect a killed worker quickly
    "message.max.bytes": str(MAX_MESSAGE_BYTES),
    "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
    "log.cleaner.dedupe.buffer.size": str(32 * 1024 * 1024),  # default 128 MB of a small heap
    "num.network.threads": "2",
    "num.io.threads": "4",
}

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
"""


class KafkaBroker(ManagedProcess):
    """The dev broker: ``start()``, ``stop()``, ``status()``, ``is_running()``."""

    name = "kafka"
    port_env = "STREAMREC_KAFKA_PORT (+2..+4 with --secure), STREAMREC_KAFKA_CONTROLLER_PORT"

    def __init__(self, settings: DevSettings) -> None:
        super().__init__(Path(settings.dev_dir) / "kafka")
        self.settings = settings
        self.port = settings.kafka_port
        self.controller_port = settings.kafka_controller_port
        self.listener_ports = {
            name: settings.kafka_port + offset for name, offset in SECURE_LISTENERS.items()
        }
        self.secure_port = self.listener_ports[SECURE_LISTENER]
        self.want_secure = settings.dev_kafka_secure
        self.version = settings.kafka_version
        self.lib = Path(settings.dev_cache).resolve() / "kafka" / self.version / "lib"
        self.data = self.home / "data"
        self.config_file = self.home / "server.properties"
        self.bootstrap = f"{HOST}:{self.port}"
        self.secure_bootstrap = f"{HOST}:{self.secure_port}"
        self.tls = DevCertificates(self.home / "tls")

    @property
    def secure(self) -> bool:
        """Has (or, once started, will have) the SASL_SSL listener: a running broker says which."""
        return self._configured_secure() if self.is_running() else self.want_secure

    def ports(self) -> list[int]:
        secure = list(self.listener_ports.values()) if self.secure else []
        return [self.port, self.controller_port, *secure]

    def connection(self) -> dict[str, object]:
        info: dict[str, object] = {"bootstrap": self.bootstrap, "version": self.version}
        if self.secure:
            info["secure"] = {
                "bootstrap": self.secure_bootstrap,
                "security_protocol": SECURE_LISTENER,
                "listeners": {name: f"{HOST}:{p}" for name, p in self.listener_ports.items()},
                "sasl_mechanisms": list(SASL_MECHANISMS),
                "username": DEV_SASL_USERNAME,
                "password_env": "STREAMREC_KAFKA_SASL_PASSWORD",  # never the password itself
                "ca_file": str(self.tls.ca_file),
                "client_cert_file": str(self.tls.client_cert),
                "client_key_file": str(self.tls.client_key),
                "client_key_password_file": str(self.tls.client_key_password_file),
                "ready": self.is_running() and self.secure_ready(),
            }
        return info

    def client_settings(
        self,
        base: Settings | None = None,
        *,
        protocol: str = SECURE_LISTENER,
        mechanism: str = "SCRAM-SHA-512",
        username: str = DEV_SASL_USERNAME,
        password: str = DEV_SASL_PASSWORD,
    ) -> Settings:
        """``base`` (default: this broker's settings) pointed at the ``protocol`` listener
        with the dev login: the SASL user, and for SSL the dev client certificate."""
        changes: dict[str, object] = {
            "kafka_bootstrap": f"{HOST}:{self.listener_ports[protocol]}",
            "kafka_security_protocol": protocol,
        }
        if protocol.startswith("SASL_"):
            changes |= {
                "kafka_sasl_mechanism": mechanism,
                "kafka_sasl_username": username,
                "kafka_sasl_password": password,
            }
        if protocol.endswith("SSL"):
            changes["kafka_ssl_ca_file"] = self.tls.ca_file
        if protocol == "SSL":
            changes |= {
                "kafka_ssl_cert_file": self.tls.client_cert,
                "kafka_ssl_key_file": self.tls.client_key,
                "kafka_ssl_key_password": self.tls.client_key_password(),
            }
        return Settings(**{**(base or self.settings).model_dump(), **changes})

    def secure_probe(self, **login: str) -> bool:
        """A secure listener (default SASL_SSL) answers a metadata request for ``login``
        (:meth:`client_settings`' keywords; default: the dev user)."""
        from app.kafka import kafka_client_options

        settings = self.client_settings(**login)
        port = self.listener_ports[settings.kafka_security_protocol]
        return port_open(port) and metadata_ready(kafka_client_options(settings))

    def secure_ready(self) -> bool:
        """Every secure listener lets the dev login in."""
        return all(self.secure_probe(protocol=name) for name in SECURE_LISTENERS)

    def start(self, wait: bool = True, timeout: float = 120.0) -> bool:
        if self.want_secure and self.is_running() and not self._configured_secure():
            raise DevServiceError(
                "kafka: already running without the SASL_SSL listener; stop it first "
                "(`streamrec dev down --only kafka`), then `streamrec dev up --secure`"
            )
        return super().start(wait, timeout)

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Ready on the plaintext listener; in secure mode, the dev users can also log in."""
        took = super().wait_ready(timeout)
        if self.secure and not self.secure_probe():
            self.add_scram_user(DEV_SASL_USERNAME, DEV_SASL_PASSWORD)
        if self.secure and not self.secure_ready():
            raise DevServiceError(
                f"kafka: a secure listener ({', '.join(SECURE_LISTENERS)} on ports "
                f"{', '.join(map(str, self.listener_ports.values()))}) refuses the dev login "
                f"(log {self.logfile})"
            )
        return took

    def add_scram_user(self, username: str, password: str) -> None:
        """Create or update SCRAM-SHA-256/512 credentials (Kafka's admin tool, plaintext listener).

        The password travels in a private file, not on a command line others can read; it
        must not contain ``,`` or ``=`` (the tool's list syntax).
        """
        if "," in password or "=" in password:
            raise DevServiceError("kafka: a dev SCRAM password must not contain ',' or '='")
        # One run per mechanism: from a file, the tool sends both as a duplicate alteration.
        for mechanism in SCRAM_MECHANISMS:
            with tempfile.TemporaryDirectory(dir=self.home) as tmp:
                config = Path(tmp) / "scram.properties"
                config.touch(mode=0o600)
                config.write_text(f"{mechanism}=iterations=4096,password={password}\n")
                done = subprocess.run(
                    [_java(), *self._jvm_flags(tool=True), "kafka.admin.ConfigCommand",
                     "--bootstrap-server", self.bootstrap, "--alter", "--entity-type", "users",
                     "--entity-name", username, "--add-config-file", str(config)],
                    cwd=self.home, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                )  # fmt: skip
            if done.returncode != 0:
                tail = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()][-1:]
                raise DevServiceError(
                    f"kafka: creating {mechanism} user {username!r} failed: {' '.join(tail)}"
                )
        log.info("kafka: SCRAM user %r ready on %s", username, self.secure_bootstrap)

    def _configured_secure(self) -> bool:
        try:
            return f"{SECURE_LISTENER}://" in self.config_file.read_text()
        except OSError:
            return False

    def prepare(self) -> None:
        java = _java()
        resolve_jars(self.version, self.lib)
        if self.want_secure and self.tls.ensure():
            log.info("kafka: made a dev CA and broker keystore in %s", self.tls.dir)
        self.config_file.touch(mode=0o600)  # the secure listener's passwords are in it
        self.config_file.chmod(0o600)
        self.config_file.write_text(self._server_properties())
        (self.home / "log4j2.properties").write_text(LOG4J2)
        if not (self.data / "meta.properties").exists():
            # Kafka's own format (base64url of 16 random bytes); one in 64 starts with "-",
            # which kafka-storage's argument parser takes for an option: never such a one.
            cluster_id = "-"
            while cluster_id.startswith("-"):
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            done = subprocess.run(
                [java, *self._jvm_flags(tool=True), "kafka.tools.StorageTool", "format",
                 "-t", cluster_id, "-c", str(self.config_file)],
                cwd=self.home, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
                raise DevServiceError(f"kafka: formatting storage failed: {' '.join(tail)}")
            log.info("kafka: formatted KRaft storage in %s (cluster id %s)", self.data, cluster_id)

    def command(self) -> list[str]:
        return [_java(), *self._jvm_flags(), "kafka.Kafka", str(self.config_file)]

    def probe(self) -> bool:
        """A metadata request answers and lists this broker (a TCP connect is not enough)."""
        return port_open(self.port) and metadata_ready({"bootstrap_servers": self.bootstrap})

    def _secure_listener_config(self) -> dict[str, str]:
        keystore_password = self.tls.keystore_password()
        config: dict[str, str] = {}
        for name in SECURE_LISTENERS:
            prefix = f"listener.name.{name.lower()}"
            if name.endswith("SSL"):
                config |= {
                    f"{prefix}.ssl.keystore.type": "PKCS12",
                    f"{prefix}.ssl.keystore.location": str(self.tls.keystore),
                    f"{prefix}.ssl.keystore.password": keystore_password,
                    f"{prefix}.ssl.key.password": keystore_password,
                    f"{prefix}.ssl.truststore.type": "PEM",
                    f"{prefix}.ssl.truststore.location": str(self.tls.ca_file),
                    # SSL alone: the client certificate is the login
                    f"{prefix}.ssl.client.auth": "required" if name == "SSL" else "requested",
                }
            if name.startswith("SASL_"):
                config |= {
                    f"{prefix}.sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
                    f"{prefix}.plain.sasl.jaas.config": (
                        "org.apache.kafka.common.security.plain.PlainLoginModule required "
                        f'user_{DEV_SASL_USERNAME}="{DEV_SASL_PASSWORD}";'
                    ),
                }
                for mechanism in SCRAM_MECHANISMS:
                    config[f"{prefix}.{mechanism.lower()}.sasl.jaas.config"] = (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    )
        return config

    def _jvm_flags(self, tool: bool = False) -> list[str]:
        """The broker's JVM flags, or (``tool``) those of a short-lived Kafka tool: a small
        heap and the client compiler only start it ~40% faster (3-4 s instead of 5-9 s)."""
        memory = ["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
        return [
            *(memory if tool else [HEAP, "-XX:+UseG1GC"]),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            f"{self.lib}/*",
        ]

    def _server_properties(self) -> str:
        listeners = {"PLAINTEXT": self.port, "CONTROLLER": self.controller_port}
        if self.want_secure:
            listeners |= self.listener_ports
        advertised = {name: port for name, port in listeners.items() if name != "CONTROLLER"}
        config = {
            **BROKER_CONFIG,
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": ",".join(f"{n}://{HOST}:{p}" for n, p in listeners.items()),
            "advertised.listeners": ",".join(f"{n}://{HOST}:{p}" for n, p in advertised.items()),
            "listener.security.protocol.map": ",".join(
                f"{name}:{'PLAINTEXT' if name == 'CONTROLLER' else name}" for name in listeners
            ),
            "log.dirs": str(self.data),
            **(self._secure_listener_config() if self.want_secure else {}),
        }
        lines = [f"{key}={value}" for key, value in config.items()]
        return "# written by `streamrec dev up`; edits are overwritten\n" + "\n".join(lines) + "\n"


def metadata_ready(options: Mapping[str, Any], timeout: float = 5.0) -> bool:
    """True if the cluster answers a metadata request with >= 1 broker.

    ``options`` are aiokafka client options (``app.kafka.kafka_client_options``), so a
    probe connects exactly as streamrec's clients do (TLS, SASL).
    """
    from aiokafka.admin import AIOKafkaAdminClient

    async def ask() -> bool:
        client = AIOKafkaAdminClient(**options, request_timeout_ms=int(timeout * 1000))
        try:
            await client.start()
            cluster = await asyncio.wait_for(client.describe_cluster(), timeout)
            return bool(cluster["brokers"])
        finally:
            await client.close()

    def run() -> bool:
        try:
            return asyncio.run(ask())
        except Exception:
            return False

    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # each failed probe would log a connection error
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return run()
        # called from async code (e.g. a test): asyncio.run needs a thread without a loop
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(run).result()
    finally:
        quiet.setLevel(level)


def resolve_jars(version: str, lib: Path) -> Path:
    """Copy Kafka ``version`` and its runtime dependencies into ``lib`` with Maven, once.

    A ``.complete`` marker makes a half-copied folder count as missing. Raises
    DevServiceError naming the artifact Maven could not get.
    """
    marker = lib / ".complete"
    if marker.exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevServiceError("kafka: `mvn` (Apache Maven) is not installed; it fetches the jars")
    log.info("kafka: resolving Kafka %s jars from Maven Central into %s", version, lib)
    began = time.monotonic()
    lib.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(lib, ignore_errors=True)  # an interrupted earlier copy
    staging = Path(tempfile.mkdtemp(prefix="lib-", dir=lib.parent))
    try:
        done = subprocess.run(
            [mvn, "-q", "-B", "-f", str(POM), f"-Dkafka.version={version}",
             "dependency:copy-dependencies", "-DincludeScope=runtime",
             f"-DoutputDirectory={staging}"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            errors = [ln for ln in done.stdout.splitlines() if ln.startswith("[ERROR]")]
            raise DevServiceError(
                "kafka: Maven could not resolve the broker jars: "
                + (errors[0] if errors else done.stderr.strip()[-300:])
            )
        (staging / ".complete").write_text(version + "\n")
        with contextlib.suppress(OSError):  # a concurrent run may have won the race
            staging.rename(lib)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not marker.exists():
        raise DevServiceError(f"kafka: jars missing in {lib} after Maven ran")
    count = sum(1 for _ in lib.glob("*.jar"))
    log.info("kafka: resolved %d jars in %.1f s", count, time.monotonic() - began)
    return lib


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise DevServiceError("kafka: `java` (17 or newer) is not installed; the broker needs it")
    return java
