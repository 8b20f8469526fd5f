"""Progress bars for long work, in one place: frames on a terminal, a few plain lines elsewhere.

tqdm redraws a bar with carriage returns; in a CI log or ``docker logs`` that is one
ever-growing line of frames. When stderr is not a terminal, the bar prints a plain line at
most every :data:`PLAIN_INTERVAL_SECONDS` (and at the end) instead.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

PLAIN_INTERVAL_SECONDS = 10.0


class _Lines:
    """A file for tqdm that turns each redraw (``\\r...``) into one plain line."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(*, stream: IO[str] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr (or ``stream``); ``kwargs`` go to tqdm (total, unit, desc, ...)."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(file=stream, **kwargs)
    return tqdm(
        file=_Lines(stream),
        mininterval=PLAIN_INTERVAL_SECONDS,
        maxinterval=PLAIN_INTERVAL_SECONDS,
        ascii=True,
        ncols=80,
        dynamic_ncols=False,
        **kwargs,
    )
