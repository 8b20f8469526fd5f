"""A worker's lease on the partitions it owns: presumed lost when the process stood still.

A scorer writes ``seen-items`` rows for the partitions Faust assigned it. If the whole
process stops for longer than the group's session timeout (SIGSTOP, a VM pause, swap), the
group gives its partitions to another worker; when it resumes, the first thing it may do is
flush rows it computed before the stop. Those rows are stale (the new owner has added the
ratings that came meanwhile) and, as the last write to the changelog, they would win: items
seen during the pause were lost (the paused-scorer fault test, 1 item in 1 of 5 loaded runs).

So a clock thread ticks; a gap longer than the session timeout between two ticks (or since
the last one, seen from :meth:`Lease.check`) means the process stood still and the lease is
lost: writers refuse (:class:`LeaseLost`) until the next rebalance completes
(:meth:`Lease.renew`), or until twice the session timeout has passed without one (then the
group evidently kept this worker, and what was refused is read and written again).
"""

from __future__ import annotations

import logging
import threading
import time

from agents.errors import AgentError

log = logging.getLogger(__name__)


class LeaseLost(AgentError, RuntimeError):
    """The process stood still for longer than its session timeout: it may not own what it
    owned before (retriable: after the next rebalance it knows)."""

    retriable = True


class Lease:
    def __init__(self, timeout: float, tick: float = 0.1) -> None:
        self.timeout = timeout
        self.tick = tick
        self._last = time.monotonic()
        self._lost_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Lease:
        self._thread = threading.Thread(target=self._run, name="lease-clock", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            self._observe(advance=True)

    def _observe(self, *, advance: bool) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last > self.timeout and self._lost_at is None:
                self._lost_at = now
                log.warning(
                    "The process stood still for %.1fs (session timeout %gs): its partitions "
                    "may have moved; table writes wait for the next rebalance",
                    now - self._last,
                    self.timeout,
                )
            if advance:
                self._last = now
            if self._lost_at is not None and now - self._lost_at > 2 * self.timeout:
                self._lost_at = None  # no rebalance came: the group kept us
                log.info("No rebalance followed the stall; table writes resume")

    @property
    def lost(self) -> bool:
        self._observe(advance=False)
        return self._lost_at is not None

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is (presumed) lost."""
        if self.lost:
            raise LeaseLost("the worker stood still past its session timeout")

    def renew(self) -> None:
        """A rebalance completed: what the worker owns now is known again."""
        with self._lock:
            self._last = time.monotonic()
            self._lost_at = None
