"""The launchers behind ``streamrec dev up|down|status``, on their own ports and folder.

These tests never touch the shared services or the ones ``.ci/run`` starts: every instance
here gets free ports and a temporary ``dev_dir``.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.kafka import kafka_client_options
from app.settings import PROJECT_ROOT, Settings
from devtools import KafkaBroker, SeaweedServer, metadata_ready, s3_problem
from devtools.process import listening_sockets, pid_alive, port_free
from devtools.seaweed import DEV_BUCKET, GRPC_OFFSET
from devtools.settings import DevSettings

pytestmark = pytest.mark.timeout(600)


def _free_base(low: int, high: int, offsets: list[int]) -> int:
    """A port P in [low, high) such that P + each offset is free on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(low, high)
        if all(port_free(base + offset) for offset in offsets):
            return base
    raise RuntimeError("no free ports")


def _isolated_settings(dev_dir: Path) -> Settings:
    s3_port = _free_base(20000, 22000, [*range(5), *range(GRPC_OFFSET, GRPC_OFFSET + 5)])
    kafka_port = _free_base(23000, 30000, [0, 1])
    return DevSettings(
        dev_dir=dev_dir,
        kafka_port=kafka_port,
        kafka_controller_port=kafka_port + 1,
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        s3_port=s3_port,
        s3_endpoint=f"http://127.0.0.1:{s3_port}",
    )


@dataclass
class DevEnv:
    """A private set of dev services driven through the real CLI."""

    settings: Settings

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env |= {
            "STREAMREC_DEV_DIR": str(s.dev_dir),
            "STREAMREC_KAFKA_PORT": str(s.kafka_port),
            "STREAMREC_KAFKA_CONTROLLER_PORT": str(s.kafka_controller_port),
            "STREAMREC_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "STREAMREC_S3_PORT": str(s.s3_port),
            "STREAMREC_S3_ENDPOINT": str(s.s3_endpoint),
        }
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "dev", *args],
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=400,
        )

    def status(self) -> dict:
        done = self.cli("status", "--json")
        assert done.stdout.count("\n") == 1, done.stdout
        return json.loads(done.stdout)

    def all_ports(self) -> list[int]:
        return KafkaBroker(self.settings).ports() + SeaweedServer(self.settings).ports()


@pytest.fixture
def idle(tmp_path: Path) -> DevEnv:
    """Private settings with nothing started."""
    return DevEnv(_isolated_settings(tmp_path / "dev"))


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevEnv]:
    env = DevEnv(_isolated_settings(tmp_path_factory.mktemp("stack") / "dev"))
    yield env
    env.cli("down")


@pytest.fixture
def stack(stack_env: DevEnv) -> DevEnv:
    """Both services up (started once per module; ``up`` is a no-op when they run)."""
    done = stack_env.cli("up")
    assert done.returncode == 0, done.stderr
    return stack_env


# --- without services --------------------------------------------------------------------


def test_down_when_nothing_runs_exits_0_with_one_line(idle: DevEnv):
    done = idle.cli("down")
    assert done.returncode == 0
    assert len((done.stdout + done.stderr).strip().splitlines()) == 1
    assert "not running" in done.stdout


def test_status_json_when_stopped_is_one_object_and_exit_3(idle: DevEnv):
    done = idle.cli("status", "--json")
    assert done.returncode == 3
    report = json.loads(done.stdout)
    assert report["kafka"]["running"] is False
    assert report["kafka"]["bootstrap"] == idle.settings.kafka_bootstrap
    assert report["s3"]["endpoint"] == idle.settings.s3_endpoint


def test_ping_fails_with_one_line_when_nothing_answers(idle: DevEnv):
    done = idle.cli("ping")
    assert done.returncode == 1
    assert done.stdout.count("not reachable") == 1 and len(done.stdout.splitlines()) == 1


def test_stale_pidfile_is_cleaned(idle: DevEnv):
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile = Path(idle.settings.dev_dir) / "kafka" / "kafka.pid"
    pidfile.parent.mkdir(parents=True)
    pidfile.write_text(f"{dead.pid}\n")
    assert idle.status()["kafka"]["running"] is False
    done = idle.cli("down")
    assert done.returncode == 0
    assert not pidfile.exists()


def test_port_taken_by_a_foreign_process_fails_with_one_line(idle: DevEnv):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", idle.settings.kafka_port))
        squatter.listen()
        done = idle.cli("up", "--only", "kafka")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"port {idle.settings.kafka_port} is already in use by pid {os.getpid()}" in lines[0]
    assert not (Path(idle.settings.dev_dir) / "kafka" / "kafka.pid").exists()


# --- with a private stack ----------------------------------------------------------------


def test_up_twice_keeps_the_same_processes(stack: DevEnv):
    before = stack.status()
    done = stack.cli("up")
    assert done.returncode == 0
    assert "kafka: already running" in done.stderr
    after = stack.status()
    for name in ("kafka", "s3"):
        assert after[name]["pid"] == before[name]["pid"]
        assert after[name]["ready"] is True


def test_status_json_gives_working_connection_settings(stack: DevEnv):
    report = stack.status()
    assert metadata_ready({"bootstrap_servers": report["kafka"]["bootstrap"]})
    s3 = report["s3"]
    assert s3["endpoint"] == stack.settings.s3_endpoint
    assert s3["secret_key_env"] == "STREAMREC_S3_SECRET_KEY"  # the name, never the key
    secret = stack.settings.s3_secret_key.get_secret_value()
    problem = s3_problem(s3["endpoint"], s3["access_key"], secret, s3["region"], [DEV_BUCKET])
    assert problem is None


def test_up_secure_on_a_plaintext_broker_says_to_stop_it_first(stack: DevEnv):
    done = stack.cli("up", "--only", "kafka", "--secure")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "already running without the SASL_SSL listener" in done.stderr
    assert "secure" not in stack.status()["kafka"]  # still the plaintext broker it was


def test_ping_succeeds_when_both_answer(stack: DevEnv):
    done = stack.cli("ping")
    assert done.returncode == 0, done.stdout
    assert done.stdout.count(": ok") == 2


async def test_kafka_probe_works_from_async_code(stack: DevEnv):
    """Tests restart brokers from async tests; the probe must not need a loop-free thread."""
    assert metadata_ready(kafka_client_options(stack.settings)) is True
    assert metadata_ready({"bootstrap_servers": "127.0.0.1:1"}, timeout=1) is False


def test_services_listen_on_loopback_and_their_own_ports_only(stack: DevEnv):
    report = stack.status()
    for name, svc in (("kafka", KafkaBroker), ("s3", SeaweedServer)):
        sockets = listening_sockets(report[name]["pid"])
        assert {addr for addr, _ in sockets} == {"127.0.0.1"}
        assert sorted(port for _, port in sockets) == svc(stack.settings).ports()


async def test_broker_accepts_a_10_mb_message(stack: DevEnv):
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        **kafka_client_options(stack.settings),
        acks="all",
        max_request_size=12 * 1024 * 1024,
    )
    await producer.start()
    try:
        meta = await producer.send_and_wait("big-events", b"x" * (10 * 1024 * 1024))
    finally:
        await producer.stop()
    assert meta.offset >= 0


def test_down_leaves_no_process_pidfile_port_or_socket(stack: DevEnv):
    pids = [stack.status()[name]["pid"] for name in ("kafka", "s3")]
    done = stack.cli("down")
    assert done.returncode == 0
    assert "kafka: stopped" in done.stderr and "s3: stopped" in done.stderr
    assert not any(pid_alive(pid) for pid in pids)
    assert all(port_free(port) for port in stack.all_ports())
    assert not list(Path(stack.settings.dev_dir).glob("*/*.pid"))
    leftovers = [
        p for port in stack.all_ports() for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")
    ]
    assert leftovers == []


def test_python_api_start_and_stop_are_idempotent(tmp_path: Path):
    server = SeaweedServer(_isolated_settings(tmp_path / "dev"))
    assert server.start(timeout=60) is True
    try:
        pid = server.pid()
        assert server.is_running() and server.status()["ready"] is True
        assert server.start() is False
        assert server.pid() == pid
    finally:
        assert server.stop() is True
    assert server.stop() is False
    assert not pid_alive(pid) and not server.is_running()
    assert all(port_free(port) for port in server.ports())
