"""Reading a checkpoint from the store: a version and the segments back to its full snapshot
(the chain's base), fetched in order; what the trainer restores and scorers load.

A segment whose parent is missing, or whose stored parent is not the one it names, is a
:class:`~models.errors.SnapshotError` (a refusal, like a corrupt snapshot); the rest of the
checks are :func:`models.segment.decode_chain`'s.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from models.errors import SnapshotError
from models.incremental import IncrementalModel
from models.manifest import ChainMark
from models.ownership import Share
from models.scoring import ScoringView
from models.segment import ChainHead, decode_chain, load_chain_view
from models.signing import Keyring
from storage import SnapshotStore
from storage.base import manifest_parent
from storage.errors import SnapshotNotFound

MAX_CHAIN = 100_000
"""More segments than this behind one version is refused (a forged loop of parents)."""

Chain = list[tuple[bytes, dict[str, Any]]]


async def fetch_chain(store: SnapshotStore, version: int) -> Chain:
    """``version``'s payload and manifest and those of every version it needs, base first;
    each is checksum-verified by the store."""
    chain = [await store.get(version)]
    while (parent := manifest_parent(chain[-1][1])) is not None:
        child = chain[-1][1]["version"]
        if parent >= child or len(chain) > MAX_CHAIN:
            raise SnapshotError(f"segment v{child} names parent v{parent}: not an earlier version")
        try:
            chain.append(await store.get(parent))
        except SnapshotNotFound as exc:
            raise SnapshotError(
                f"segment v{child} needs v{parent}, which is missing or incomplete: {exc}"
            ) from None
    chain.reverse()
    return chain


async def restore_version(
    store: SnapshotStore, version: int, keys: Keyring | None = None
) -> tuple[IncrementalModel, dict[str, Any]]:
    """The model at ``version`` (a full snapshot, or a segment assembled onto its base)
    and that version's manifest; the model's :attr:`~IncrementalModel.restored_chain` is
    that chain, so that a trainer's next segment continues it."""
    chain = await fetch_chain(store, version)
    state = await asyncio.to_thread(decode_chain, chain, keys)
    model = IncrementalModel.from_state(state)
    model.restored_chain = ChainHead.stored(chain)
    return model, chain[-1][1]


async def load_view(
    store: SnapshotStore, version: int, keys: Keyring | None = None, share: Share | None = None
) -> tuple[ScoringView, ChainMark | None, dict[str, Any]]:
    """A scorer's view of ``version``, its delta chain and its manifest (with ``share``,
    holding only that share's users)."""
    chain = await fetch_chain(store, version)  # each payload checked against its sha256
    view, mark = await asyncio.to_thread(
        functools.partial(load_chain_view, chain, keys, share, payload_checked=True)
    )
    return view, mark, chain[-1][1]
