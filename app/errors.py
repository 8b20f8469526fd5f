"""The wiring layer's exception base, :class:`AppError` (``retriable``: aiokafka's convention)."""

from __future__ import annotations


class AppError(Exception):
    """Base class of every exception class ``app/`` defines."""

    retriable: bool = False
    """True if the same command may succeed when run again."""
