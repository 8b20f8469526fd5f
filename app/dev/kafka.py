"""A real single-node Apache Kafka (KRaft, combined broker + controller) from Maven Central jars.

No Docker and no Kafka package exist on the machines we run on, but Maven Central serves
Kafka's own jars: ``dev/kafka/pom.xml`` names them, ``mvn dependency:copy-dependencies``
copies them once into ``<dev_cache>/kafka/<version>/lib`` (the download itself is cached in
``~/.m2``), and ``java -cp 'lib/*' kafka.Kafka`` runs the broker. Layout under
``<dev_dir>/kafka``: ``kafka.pid``, ``kafka.log``, ``server.properties``, ``data/``.
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
from pathlib import Path

from app.dev.process import HOST, DevServiceError, ManagedProcess, log, port_open
from app.settings import PROJECT_ROOT, Settings

POM = PROJECT_ROOT / "dev" / "kafka" / "pom.xml"
HEAP = "-Xmx768m"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the broker accepts 10 MB test events; the app DLQs them

# Broker settings for a dev/test broker. Auto-creation stays on because Faust creates its
# internal topics itself; streamrec's own topics are created explicitly with their partitions.
BROKER_CONFIG = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
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
    port_env = "STREAMREC_KAFKA_PORT, STREAMREC_KAFKA_CONTROLLER_PORT"

    def __init__(self, settings: Settings) -> None:
        super().__init__(Path(settings.dev_dir) / "kafka")
        self.port = settings.kafka_port
        self.controller_port = settings.kafka_controller_port
        self.version = settings.kafka_version
        self.lib = Path(settings.dev_cache).resolve() / "kafka" / self.version / "lib"
        self.data = self.home / "data"
        self.config_file = self.home / "server.properties"
        self.bootstrap = f"{HOST}:{self.port}"

    def ports(self) -> list[int]:
        return [self.port, self.controller_port]

    def connection(self) -> dict[str, object]:
        return {"bootstrap": self.bootstrap, "version": self.version}

    def prepare(self) -> None:
        java = _java()
        resolve_jars(self.version, self.lib)
        self.config_file.write_text(self._server_properties())
        (self.home / "log4j2.properties").write_text(LOG4J2)
        if not (self.data / "meta.properties").exists():
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            done = subprocess.run(
                [java, *self._jvm_flags(), "kafka.tools.StorageTool", "format",
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
        return port_open(self.port) and metadata_ready(self.bootstrap)

    def _jvm_flags(self) -> list[str]:
        return [
            HEAP,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            "-cp",
            f"{self.lib}/*",
        ]

    def _server_properties(self) -> str:
        config = {
            **BROKER_CONFIG,
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "log.dirs": str(self.data),
        }
        lines = [f"{key}={value}" for key, value in config.items()]
        return "# written by `streamrec dev up`; edits are overwritten\n" + "\n".join(lines) + "\n"


def metadata_ready(bootstrap: str, timeout: float = 5.0) -> bool:
    """True if the Kafka cluster at ``bootstrap`` answers a metadata request with >= 1 broker."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def ask() -> bool:
        client = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000)
        )
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
