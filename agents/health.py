"""Whether this worker's readers are working: what ``/health/`` degrades on.

A reader (the trainer's fetch loop, the bulk readers of ratings and requests, the model
follower) that fails starts over after a pause; one that *keeps* failing would otherwise go
unseen behind a 200. Each reader reports here: :meth:`ReaderHealth.failed` after a failure,
:meth:`ReaderHealth.ok` after a round that worked. A reader whose last
:data:`FAILING_AFTER` rounds all failed is *failing*: ``/health/`` answers 503 with the
reason, ``streamrec_reader_failing{reader}`` is 1, and the log has one line per reader and
exception type (not one per retry) until it recovers, which is logged once too.

A record that a reader could not handle (an unexpected exception while decoding it: a bug, or
an input no rule foresaw) is not a reader failure: the reader dead-letters or skips that
record and goes on (:func:`record_error` gives its reason, counts it, and logs once per
reader and exception type).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from agents import metrics
from models.wire import Undecodable

log = logging.getLogger(__name__)

FAILING_AFTER = 2
"""Consecutive failed rounds after which a reader counts as failing (one failure, e.g. a
broker restart the reader rides out, is not yet a problem)."""

HEALTHY_SECONDS = 10.0
"""A reader round that ran this long without failing counts as working (one that handled
messages counts at once). A reader that never reported a working round would stay failing
for ever after two failures: a broker restart of a few seconds did that once."""


@dataclass
class _State:
    streak: int = 0  # consecutive failed rounds
    reason: str = ""
    logged: set[str] = field(default_factory=set)  # exception types logged in this streak


@dataclass
class ReaderHealth:
    """The readers of one worker (``app/`` keeps one per process and gives it to each)."""

    failing_after: int = FAILING_AFTER
    _readers: dict[str, _State] = field(default_factory=dict)

    def failed(
        self, reader: str, exc: BaseException, *, retry_seconds: float | None = None
    ) -> None:
        """One round of ``reader`` failed with ``exc`` (it will start over)."""
        state = self._readers.setdefault(reader, _State())
        state.streak += 1
        kind = type(exc).__name__
        state.reason = f"{kind}: {exc}"[:500]
        metrics.READER_FAILURES.labels(reader, kind).inc()
        if state.streak >= self.failing_after:
            metrics.READER_FAILING.labels(reader).set(1)
        if kind not in state.logged:  # one line per exception type, not one per retry
            state.logged.add(kind)
            again = "" if retry_seconds is None else f"; retrying every {retry_seconds:g}s"
            log.error("Reader %s failed (%s)%s", reader, state.reason, again)

    def ok(self, reader: str) -> None:
        """A round of ``reader`` worked (cheap: called after every fetch)."""
        state = self._readers.get(reader)
        if state is None or not state.streak:
            return
        log.info("Reader %s works again after %d failed round(s)", reader, state.streak)
        self._readers[reader] = _State()
        metrics.READER_FAILING.labels(reader).set(0)

    def problems(self) -> dict[str, str]:
        """The readers failing now, each with its last failure."""
        return {
            reader: f"failed {state.streak} times in a row; last: {state.reason}"
            for reader, state in self._readers.items()
            if state.streak >= self.failing_after
        }


_record_errors: set[tuple[str, str]] = set()
_record_lock = threading.Lock()  # readers decode in worker threads


def record_error(reader: str, exc: BaseException) -> Undecodable:
    """The rejection of a record on which ``reader`` raised ``exc`` unexpectedly (its
    decoder raises :class:`~models.wire.Undecodable` for every input it refuses): the
    record is dead-lettered (or skipped) as ``malformed`` with a reason naming the
    exception, never retried for ever."""
    kind = type(exc).__name__
    metrics.READER_FAILURES.labels(reader, kind).inc()
    with _record_lock:
        first = (reader, kind) not in _record_errors
        _record_errors.add((reader, kind))
    if first:  # once per reader and exception type, with the traceback
        log.error("Reader %s: a record raised %s; it is set aside", reader, kind, exc_info=exc)
    return Undecodable("malformed", f"unexpected {kind} while decoding: {exc}"[:1000])
