"""The models layer's exception base, :class:`ModelError`, and the snapshot refusals.

Every exception class ``models/`` defines derives from :class:`ModelError` (and, where callers
already catch it so, from the builtin it always was: ``ValueError``, ``RuntimeError``).
``retriable`` follows aiokafka's convention: False unless retrying the same call may
succeed; callers that choose between retrying and refusing read it, not the type.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every exception class the models layer defines."""

    retriable: bool = False
    """True if the same call may succeed when retried (none in ``models/``: pure code on
    the same bytes gives the same answer)."""


class SnapshotError(ModelError, ValueError):
    """A snapshot was refused; the message says why."""


class UntrustedSnapshot(SnapshotError):
    """A snapshot whose manifest is not signed by a trusted key; ``kind`` says how
    (:data:`models.signing.REFUSAL_KINDS`)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"untrusted snapshot ({kind}): {reason}")
        self.kind = kind
