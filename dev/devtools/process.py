"""Pidfile, port and readiness logic shared by the dev-service launchers.

A dev service is one long-running process started in its own session (so it outlives the
CLI that started it) with its pidfile, log and data under one home folder. The pidfile is
trusted only if the pid is alive *and* its command line mentions that home folder, so a
recycled pid never makes us stop a stranger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from app.errors import AppError

log = logging.getLogger("streamrec.dev")

HOST = "127.0.0.1"

# Popen objects of the services this interpreter started, kept so they are reaped (no zombies)
# and never garbage-collected while running.
_children: dict[int, subprocess.Popen[bytes]] = {}


class DevServiceError(AppError, RuntimeError):
    """A dev service could not be started or stopped; the message is one clear line."""


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    """The process's command line joined by spaces, or "" if unknown."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def port_free(port: int, host: str = HOST) -> bool:
    """True if a server could bind ``host:port`` now (nothing listens or is bound there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listen_table() -> dict[str, tuple[str, int]]:
    """Socket inode -> ``(address, port)`` of every listening TCP socket (Linux procfs)."""
    table: dict[str, tuple[str, int]] = {}
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with contextlib.suppress(OSError):
            for line in Path(path).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    addr_hex, port_hex = fields[1].split(":")
                    table[fields[9]] = (_decode_addr(addr_hex, v6), int(port_hex, 16))
    return table


def _decode_addr(addr_hex: str, v6: bool) -> str:
    raw = bytes.fromhex(addr_hex)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # procfs prints IPv6 as four host-order 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words).removeprefix("::ffff:")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """``(address, port)`` of every TCP socket the process listens on (Linux procfs).

    Used by ``status`` and by the tests that check nothing binds outside 127.0.0.1.
    """
    table = _listen_table()
    return {table[inode] for inode in _socket_inodes(pid) if inode in table}


def describe_listener(port: int) -> str:
    """``"pid 123 (java)"`` for whoever listens on ``port``, or ``"another process"``."""
    inodes = {inode for inode, (_, p) in _listen_table().items() if p == port}
    with contextlib.suppress(OSError):
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and _socket_inodes(int(proc.name)) & inodes:
                with contextlib.suppress(OSError):
                    return f"pid {proc.name} ({(proc / 'comm').read_text().strip()})"
    return "another process"


class ManagedProcess:
    """One dev service: a process with a pidfile, a log and data under ``home``.

    Subclasses say how to prepare, what to run, which ports it binds and how to probe
    readiness; this class does the start/stop/status contract once for all of them.
    """

    name = "service"
    port_env = "STREAMREC_*_PORT"  # named in the "port taken" message

    def __init__(self, home: Path) -> None:
        self.home = Path(home).resolve()
        self.pidfile = self.home / f"{self.name}.pid"
        self.logfile = self.home / f"{self.name}.log"
        self._started_at: float | None = None  # set by start(), cleared once ready

    # --- to override -----------------------------------------------------------------
    def ports(self) -> list[int]:
        """Every TCP port the service binds."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Work before the first start (download, format); idempotent."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def probe(self) -> bool:
        """One readiness check at the protocol level; never raises."""
        raise NotImplementedError

    def connection(self) -> dict[str, object]:
        """What a client needs to connect (printed by ``streamrec dev status --json``)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove leftovers after the process has exited."""

    # --- the contract ------------------------------------------------------------------
    def pid(self) -> int | None:
        """The pid of our live process, or None (a stale pidfile counts as None)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if not pid_alive(pid):
            return None
        line = cmdline(pid)
        if line and str(self.home) not in line:
            return None  # the pid was recycled by an unrelated process
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, wait: bool = True, timeout: float = 120.0) -> bool:
        """Start the service; return False (and do nothing) if it already runs.

        Raises DevServiceError if a port is taken by a foreign process, if the process dies
        while starting, or if it is not ready within ``timeout`` seconds (it is then stopped).
        """
        pid = self.pid()
        if pid is not None:
            log.info("%s: already running (pid %d)", self.name, pid)
            if wait:
                self.wait_ready(timeout)
            return False
        self._clear_stale_pidfile()
        for port in self.ports():
            if not port_free(port):
                raise DevServiceError(
                    f"{self.name}: port {port} is already in use by {describe_listener(port)}; "
                    f"stop it or choose other ports ({self.port_env})"
                )
        self.home.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with self.logfile.open("ab") as out:
            proc = subprocess.Popen(
                self.command(),
                cwd=self.home,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _children[proc.pid] = proc
        tmp = self.pidfile.with_suffix(".pid.tmp")
        tmp.write_text(f"{proc.pid}\n")
        tmp.replace(self.pidfile)
        self._started_at = time.monotonic()
        log.info("%s: started (pid %d), log %s", self.name, proc.pid, self.logfile)
        if wait:
            self.wait_ready(timeout)
        return True

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Block until ``probe()`` succeeds; return the seconds waited.

        If the process dies or the time runs out, stop it and raise DevServiceError with
        the tail of its log.
        """
        began = time.monotonic()
        pid = self.pid()
        if pid is None:
            raise DevServiceError(f"{self.name}: not running (see {self.logfile})")
        deadline = began + timeout
        delay = 0.05
        while not self.probe():
            if not pid_alive(pid):
                self.stop()
                raise DevServiceError(
                    f"{self.name}: exited while starting: {self._log_tail()} (log {self.logfile})"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise DevServiceError(
                    f"{self.name}: not ready after {timeout:.0f} s, stopped it (log {self.logfile})"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        took = time.monotonic() - (self._started_at or began)
        if self._started_at is not None:
            self._started_at = None
            log.info("%s: ready at %s in %.1f s", self.name, self.address(), took)
        return took

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the process group, SIGKILL it after ``timeout``; False if nothing ran."""
        pid = self.pid()
        if pid is None:
            self._clear_stale_pidfile()
            log.debug("%s: not running", self.name)
            return False
        began = time.monotonic()
        _signal_group(pid, signal.SIGTERM)
        if not _wait_dead(pid, timeout):
            log.warning(
                "%s: pid %d ignored SIGTERM for %.0f s, killing it", self.name, pid, timeout
            )
            _signal_group(pid, signal.SIGKILL)
            if not _wait_dead(pid, 10.0):
                raise DevServiceError(f"{self.name}: pid {pid} survived SIGKILL")
        _children.pop(pid, None)
        self.pidfile.unlink(missing_ok=True)
        self.cleanup()
        log.info("%s: stopped (pid %d) in %.1f s", self.name, pid, time.monotonic() - began)
        return True

    def status(self) -> dict[str, object]:
        """Running state, readiness, ports, paths and connection settings, JSON-ready."""
        pid = self.pid()
        return {
            "running": pid is not None,
            "ready": pid is not None and self.probe(),
            "pid": pid,
            "ports": self.ports(),
            "listening": sorted(f"{a}:{p}" for a, p in listening_sockets(pid)) if pid else [],
            "home": str(self.home),
            "log": str(self.logfile),
            **self.connection(),
        }

    def address(self) -> str:
        return f"{HOST}:{self.ports()[0]}"

    # --- helpers -----------------------------------------------------------------------
    def _clear_stale_pidfile(self) -> None:
        """Our process died without ``stop()`` (killed, crashed): drop what it left."""
        if self.pidfile.exists():
            self.pidfile.unlink(missing_ok=True)
            self.cleanup()
            log.info("%s: removed stale pidfile %s", self.name, self.pidfile)

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # started with start_new_session: pgid == pid
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, sig)


def _wait_dead(pid: int, timeout: float) -> bool:
    return wait_for(lambda: not pid_alive(pid), timeout)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
