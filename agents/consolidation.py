"""The trainer's consolidations (a retrain of the window's rows, seconds) run in a thread of
their own beside the micro-batches, yield to a backlog between epochs, and are installed
when they end; what to do about them is a pure decision (:func:`consolidation_action`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from models.consolidation import Consolidation
from models.incremental import IncrementalModel
from models.scoring import ScoringView

log = logging.getLogger(__name__)

#: The longest a consolidation waits after one of its epochs while the batches have a
#: backlog (:meth:`ConsolidationRunner.yield_to_batches`): under a flood it still progresses.
CONSOLIDATION_MAX_PAUSE = 2.0

Action = Literal["install", "wait", "start", "none"]


def consolidation_action(running: bool, finished: bool, due: bool) -> Action:
    """What to do about consolidations when no batch is training.

    * ``install`` — the one running in its thread has ended: install it (then cut the next
      one if due);
    * ``wait`` — the one running has not ended yet;
    * ``start`` — none runs and the model says one is due: cut and start it;
    * ``none`` — nothing to do.
    """
    if running:
        return "install" if finished else "wait"
    return "start" if due else "none"


def keep_yielding(backlog: bool, stopping: bool, now: float, deadline: float) -> bool:
    """Between a consolidation's epochs: go on waiting while the batches have a backlog,
    the trainer is not stopping, and ``deadline`` (its pause's bound) has not passed."""
    return backlog and not stopping and now < deadline


@dataclass
class ConsolidationRunner:
    """Runs ``model``'s deferred consolidations (``defer_consolidation``) in threads."""

    model: IncrementalModel
    #: Called on the event loop when a consolidation thread ends (the trainer installs it
    #: and publishes the new view, unless a batch did first).
    on_end: Callable[[], Awaitable[None]]
    #: The last fetch brought at least half of ``batch_max``: ratings are waiting.
    backlog: bool = field(default=False, init=False)
    stopping: bool = field(default=False, init=False)
    _running: tuple[Consolidation, threading.Event] | None = field(
        default=None, init=False, repr=False
    )  # the job, its end
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _background: set[asyncio.Future[None]] = field(default_factory=set, init=False, repr=False)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop a thread's end is reported on (the trainer's fetch loop's)."""
        self._loop = loop

    def action(self) -> Action:
        """:func:`consolidation_action` for the job running now and the model."""
        running = self._running
        if running is not None:
            return consolidation_action(True, running[1].is_set(), False)
        return consolidation_action(False, False, self.model.consolidation_due())

    def ready(self) -> bool:
        """A finished consolidation waits to be installed, or one is due to start."""
        return self.action() in ("install", "start")

    def start(self, job: Consolidation | None) -> None:
        """Run ``job`` in a thread of its own while batches go on training (its fit releases
        the GIL); installed as soon as it ends (or by a training batch that comes first)."""
        if job is None:
            return
        job.between_epochs = self.yield_to_batches
        done = threading.Event()
        self._running = (job, done)
        threading.Thread(
            target=self._run, args=(job, done), name="consolidation", daemon=True
        ).start()

    def _run(self, job: Consolidation, done: threading.Event) -> None:
        # (Not niced: a low-priority thread descheduled while it holds the GIL stalls the
        # batches behind it; measured 3.5x slower micro-batches at niceness 10.)
        try:
            job.run()
        except Exception:  # the model goes on without it; the next mark cuts another
            log.exception("Consolidation of %d interactions failed", job.events)
        finally:
            done.set()  # the thread touches the job no more
        loop = self._loop
        if loop is not None and not loop.is_closed():  # install it now, not at the next tick
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._ended)

    def _ended(self) -> None:
        """On the loop, when a consolidation thread ends: :attr:`on_end`."""
        task = asyncio.ensure_future(self.on_end())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def yield_to_batches(self) -> None:
        """Between a consolidation's epochs (its thread): wait while the batches have a
        backlog, at most :data:`CONSOLIDATION_MAX_PAUSE`. On a machine without a spare core
        the stream is trained first and the consolidation takes what is left; a cooperative
        pause, because a lower OS priority stalls the batches (see :meth:`_run`)."""
        deadline = time.monotonic() + CONSOLIDATION_MAX_PAUSE
        while keep_yielding(self.backlog, self.stopping, time.monotonic(), deadline):
            time.sleep(0.02)

    def install(self) -> bool:
        """Install the consolidation that ended, if any (in the training thread)."""
        running = self._running
        if running is None or not running[1].is_set():
            return False
        job, self._running = running[0], None
        installed = self.model.install(job)
        log.info(
            "Consolidation %s: %d interactions, %d user and %d item rows, %.1f s, "
            "%d batches replayed onto it",
            "installed" if installed else "failed (non-finite); the model goes on without it",
            job.events,
            job.user_rows,
            job.item_rows,
            job.seconds,
            len(job.tail),
        )
        return installed

    def after_batch(self) -> None:
        """In the training thread, after a batch: start the consolidation it cut, if any."""
        self.start(self.model.take_consolidation())

    def idle(self) -> ScoringView | None:
        """In a worker thread, with no batch to train: install a finished consolidation and
        start one that is due; the new view if one was installed (a new version)."""
        installed = self.install()
        if installed:
            self.model.version += 1  # a new state: deltas and snapshots need a new version
        self.start(self.model.cut_consolidation())
        return self.model.view() if installed else None
