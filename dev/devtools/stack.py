"""``streamrec dev stack up|down``: the compose stack on podman, its startup order kept.

``podman-compose up -d`` alone does not start this stack on Debian's podman 4.3: it ignores
``condition: service_healthy`` before podman 4.6 (so ``catalog`` races Kafka), and podman
4.3's ``start`` refuses a container whose ``--requires`` dependency has dependencies of its
own ("depends on container ... not found in input list"). So this starts one service at a
time (``podman-compose up -d --no-deps SERVICE``), in dependency order, after checking each
of its ``depends_on`` conditions itself: ``service_healthy`` runs the container's health
check (``podman healthcheck run``; without systemd podman runs none on its own),
``service_completed_successfully`` waits for the job and requires exit code 0. With a
newer podman, plain ``podman-compose up -d`` does the same.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import yaml

from devtools.images import podman_env
from devtools.process import DevServiceError, log
from devtools.settings import PROJECT_ROOT

COMPOSE_FILES = ("docker-compose.yml", "docker-compose.local.yml")


def podman_compose() -> str:
    """The podman-compose of this virtualenv (the deploy extra), else the one on PATH."""
    if shutil.which("podman") is None:
        raise DevServiceError("stack: podman is not installed (as root: apt-get install podman)")
    here = Path(sys.executable).parent / "podman-compose"
    found = str(here) if here.exists() else shutil.which("podman-compose")
    if found is None:
        raise DevServiceError("stack: podman-compose is missing: pip install -e '.[deploy]'")
    return found


class Stack:
    """The compose project of ``files`` (relative to ``root``), driven by podman-compose."""

    def __init__(
        self,
        files: Sequence[str] = COMPOSE_FILES,
        root: Path = PROJECT_ROOT,
        echo: Callable[[str], None] = log.info,
    ) -> None:
        self.root = root
        self.files = list(files)
        self.echo = echo
        main = yaml.safe_load((root / self.files[0]).read_text())
        self.project = main.get("name") or root.name
        self.services: dict[str, Any] = main["services"]

    def compose(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        files = [arg for name in self.files for arg in ("-f", name)]
        return subprocess.run(
            [podman_compose(), *files, *argv], cwd=self.root, env=podman_env(),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def podman(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *argv], env=podman_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"  # podman-compose's naming

    def order(self) -> list[str]:
        graph = {name: set(spec.get("depends_on") or ()) for name, spec in self.services.items()}
        try:
            return list(TopologicalSorter(graph).static_order())
        except CycleError as exc:
            raise DevServiceError(f"stack: depends_on has a cycle: {exc.args[1]}") from None

    def _last_log_line(self, service: str) -> str:
        logs = self.podman("logs", "--tail", "5", self.container(service))
        lines = [ln for ln in (logs.stdout + logs.stderr).splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    def wait_condition(self, service: str, condition: str, deadline: float) -> None:
        """Block until ``service`` meets a compose ``depends_on`` condition."""
        name = self.container(service)
        while True:
            state = self.podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                                name).stdout.split()  # fmt: skip
            status, code = [*state, "?", "?"][:2]
            if condition == "service_completed_successfully" and status == "exited":
                if code != "0":
                    raise DevServiceError(
                        f"stack: {service} exited {code}: {self._last_log_line(service)}"
                    )
                return
            if condition == "service_started" and status in ("running", "exited"):
                return
            if (
                condition == "service_healthy"
                and status == "running"
                and self.podman("healthcheck", "run", name).returncode == 0
            ):
                return
            if status == "exited" and condition != "service_completed_successfully":
                raise DevServiceError(
                    f"stack: {service} exited {code} before it was {condition.split('_')[1]}: "
                    f"{self._last_log_line(service)}"
                )
            if time.monotonic() > deadline:
                raise DevServiceError(f"stack: timed out waiting for {service} ({condition})")
            time.sleep(2)

    def up(self, timeout: float = 900) -> float:
        """Start every service in dependency order; returns the seconds it took."""
        began = time.monotonic()
        deadline = began + timeout
        for service in self.order():
            for dep, spec in (self.services[service].get("depends_on") or {}).items():
                self.wait_condition(dep, (spec or {}).get("condition", "service_started"), deadline)
            self.echo(f"stack: starting {service}")
            done = self.compose("up", "-d", "--no-deps", service)
            if done.returncode != 0:
                errors = [ln for ln in done.stderr.splitlines() if ln.startswith("Error")]
                why = errors[-1] if errors else f"exit {done.returncode}"
                raise DevServiceError(f"stack: starting {service} failed: {why}")
        took = time.monotonic() - began
        self.echo(f"stack: all {len(self.services)} services started in {took:.0f} s")
        return took

    def down(self) -> None:
        """Stop and remove every container, volume, network and pod of the project."""
        done = self.compose("down", "-v", "-t", "20")
        if done.returncode != 0:
            raise DevServiceError(f"stack: down failed: {done.stderr.strip().splitlines()[-1:]}")

    def leftovers(self) -> list[str]:
        """Containers, pods, volumes and networks of the project that still exist."""
        found = []
        for kind in ("container", "pod", "volume", "network"):
            every = ["-a"] if kind == "container" else []
            names = self.podman(kind, "ls", *every, "--format", "{{.Name}}").stdout.split()
            prefixes = (f"{self.project}_", f"pod_{self.project}")
            found += [f"{kind} {n}" for n in names if n.startswith(prefixes)]
        return found
