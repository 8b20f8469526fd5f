"""The agents layer's exception base, :class:`AgentError`, and the one rule of which
failures refuse a snapshot rather than retry it (:func:`is_refusal`).

``retriable`` follows aiokafka's convention (``KafkaError.retriable``): False unless
retrying the same operation may succeed; callers decide on it, not on the exception's type.
"""

from __future__ import annotations

from models.errors import ModelError
from storage.errors import IntegrityError, SnapshotNotFound


class AgentError(Exception):
    """Base class of every exception class the agents layer defines."""

    retriable: bool = False
    """True if the same operation may succeed when retried."""


def is_refusal(exc: BaseException) -> bool:
    """Whether a snapshot read that raised ``exc`` is refused for good (its bytes are
    wrong, or it is not there): a model-layer error that is not retriable, or the store
    saying the stored bytes do not verify or do not exist. Anything else (a store down,
    refused credentials) is a failure the caller retries later."""
    if isinstance(exc, ModelError):
        return not exc.retriable
    return isinstance(exc, IntegrityError | SnapshotNotFound)
