"""Immutable, lock-free scoring of a trained model: numpy matmul + argpartition top-k.

A :class:`ScoringView` owns read-only copies of the embeddings, biases, id maps and
popularity of one model version, so any number of threads can score with it while the
trainer keeps mutating its own arrays, and the agent swaps in a newer view by assignment.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import scipy.sparse as sp

from models.batch_scoring import TopK, block_top_k, top_k_products
from models.blocks import BLOCK_ROWS, RowBlocks
from models.delta import DeltaError, ModelDelta, check_applies
from models.idmap import IdMap
from models.ownership import Share

_CHUNK_CELLS = 1 << 22  # scores computed per matmul chunk in recommend_many (16 MiB float32)
_USERS_PER_PRODUCT = 1024  # users scored together (models.batch_scoring tiles the items)


class ItemSearch(Protocol):
    """A faster way to :func:`models.batch_scoring.top_k_products` over one view's
    :meth:`ScoringView.product_items` (``items``): :class:`models.ann.FreshIndex`."""

    @property
    def items(self) -> np.ndarray: ...

    def top_k(
        self,
        queries: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray] = (),
        offsets: np.ndarray | None = None,
    ) -> list[TopK]: ...


class ScoredItem(NamedTuple):
    """One recommended item, and the item of a reply as it goes on the wire
    (:data:`models.wire.ReplyItem` is this type): a named tuple, because a reply makes ten of
    these (a frozen dataclass costs ~3x as much to build, and a second object per item for
    the reply cost the scorer ~12% of its time). ``title`` is the catalog's, when known."""

    item: str
    score: float
    title: str | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Top items for ``user`` from model ``version``; ``source`` says how they were chosen:
    ``"model"`` (the user has trained positives) or ``"popularity"`` (cold start)."""

    user: str
    items: list[ScoredItem]
    version: int
    source: Literal["model", "popularity"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for reply messages."""
        return {
            "user": self.user,
            "items": [{"item": s.item, "score": s.score} for s in self.items],
            "version": self.version,
            "source": self.source,
        }


class ScoringView:
    """Scores for one model version. Never mutated after construction.

    Users who are unknown or have no trained positives get the popularity ranking
    (recency-decayed rating counts), because their embedding is still the random init.

    Blending (``neighbours``, from the last consolidation): when a request brings the
    user's ``history`` (the items they rated), the model's scores and the item-kNN scores
    of that history (the sum of each history item's neighbour similarities) are each
    standardised over all items and added, the kNN side weighted by ``blend_weight``.
    Items newer than the neighbour matrix have no neighbours (kNN score 0).
    User rows and item rows (embedding and bias) are :class:`models.blocks.RowBlocks`,
    the item rows also one contiguous matrix (:meth:`product_items`) made once per view
    when scoring first needs it; the id maps are append-only and shared with the views
    built from this one, each reading only its own first ``n`` ids. :meth:`with_delta`
    makes the next version's view by copying only the blocks a
    :class:`models.delta.ModelDelta` touches (and the per-item popularity and stamps:
    8 bytes an item each, the decay changes every popularity).
    """

    __slots__ = (
        "_blend_weight",
        "_global_n",
        "_item_rows",
        "_item_stamps",
        "_items",
        "_k",
        "_local",
        "_n_items",
        "_n_users",
        "_neighbours",
        "_pop_order",
        "_popularity",
        "_product_items",
        "_share",
        "_user_rows",
        "_users",
        "popularity_ts",
        "version",
    )

    def __init__(
        self,
        *,
        version: int,
        user_ids: list[str],
        user_index: Mapping[str, int],
        item_ids: list[str],
        item_index: Mapping[str, int],
        user_embeddings: np.ndarray,
        user_biases: np.ndarray,
        item_embeddings: np.ndarray,
        item_biases: np.ndarray,
        popularity: np.ndarray,
        user_positives: np.ndarray,
        popularity_ts: float | None = None,
        neighbours: sp.csr_matrix | None = None,
        blend_weight: float = 0.0,
    ) -> None:
        n_users, n_items = len(user_ids), len(item_ids)
        shapes = {
            "user_embeddings": (user_embeddings, n_users, 2),
            "user_biases": (user_biases, n_users, 1),
            "item_embeddings": (item_embeddings, n_items, 2),
            "item_biases": (item_biases, n_items, 1),
            "popularity": (popularity, n_items, 1),
            "user_positives": (user_positives, n_users, 1),
        }
        for name, (array, rows, ndim) in shapes.items():
            if array.ndim != ndim or array.shape[0] != rows:
                raise ValueError(f"{name} has shape {array.shape}, expected {rows} rows")
        for ids, index, what in ((user_ids, user_index, "user"), (item_ids, item_index, "item")):
            if len(index) != len(ids) or any(index.get(v) != i for i, v in enumerate(ids)):
                raise ValueError(f"{what}_index does not match {what}_ids")
        self._init(
            version=version,
            users=IdMap(user_ids),
            n_users=n_users,
            items=IdMap(item_ids),
            n_items=n_items,
            k=user_embeddings.shape[1],
            user_rows=_packed_blocks(user_embeddings, user_biases, user_positives),
            item_rows=_item_blocks(item_embeddings, item_biases),
            popularity=popularity,
            popularity_ts=popularity_ts,
            neighbours=neighbours,
            blend_weight=blend_weight,
        )

    def _init(
        self,
        *,
        version: int,
        users: IdMap,
        n_users: int,
        items: IdMap,
        n_items: int,
        k: int,
        user_rows: RowBlocks,
        item_rows: tuple[RowBlocks, np.ndarray | None],
        popularity: np.ndarray,
        popularity_ts: float | None,
        neighbours: sp.csr_matrix | None = None,
        blend_weight: float = 0.0,
        item_stamps: np.ndarray | None = None,
        share: Share | None = None,
        global_n: int | None = None,
        local: LocalRows | None = None,
    ) -> None:
        self.version = version
        self._users, self._n_users = users, n_users
        # A share (issue 19): only the users of some partitions held; ``_users`` and the user
        # rows are then local, ``_local`` maps the model's rows (deltas') to them.
        self._share = share
        self._global_n = n_users if global_n is None else global_n
        self._local = local
        self._items, self._n_items = items, n_items
        self._k = k
        self._user_rows = user_rows  # per user: embedding (k), bias, positives (float32)
        # per item: embedding (k), bias (float32); and as one matrix if already made whole
        self._item_rows, self._product_items = item_rows
        self._popularity = _frozen(popularity)
        self.popularity_ts = popularity_ts
        self._pop_order: np.ndarray | None = None  # computed on first use
        if item_stamps is None:  # rows from whole arrays: one new write for all of them
            item_stamps = np.full(n_items, next(_WRITES), dtype=np.int64)
        self._item_stamps = _frozen(item_stamps)
        self._init_neighbours(neighbours, blend_weight)

    def _init_neighbours(self, neighbours: sp.csr_matrix | None, blend_weight: float) -> None:
        if neighbours is not None:
            m = neighbours.shape[0]
            if neighbours.shape != (m, m) or m > self._n_items:
                raise ValueError(
                    f"neighbours has shape {neighbours.shape}, expected <= {self._n_items}"
                )
            if blend_weight <= 0 or not neighbours.nnz:
                neighbours = None
        self._neighbours = neighbours  # shared between views: never mutated
        self._blend_weight = float(blend_weight)

    @classmethod
    def _from_parts(cls, **parts: Any) -> ScoringView:
        view = cls.__new__(cls)
        view._init(**parts)
        return view

    @classmethod
    def from_arrays(
        cls,
        *,
        version: int,
        users: IdMap,
        items: IdMap,
        arrays: Mapping[str, np.ndarray],
        popularity_ts: float | None,
        neighbours: sp.csr_matrix | None = None,
        blend_weight: float = 0.0,
        share: Share | None = None,
        held_rows: np.ndarray | None = None,
        n_global: int | None = None,
    ) -> ScoringView:
        """A view over the first ``len(users)``/``len(items)`` rows of ``arrays``
        (embeddings, biases, popularity, user_positives); the maps are shared, not copied.
        ``neighbours``/``blend_weight``: for blending (see the class docstring).

        With a ``share``: ``users`` are only the held ones, the users at ``held_rows``
        (increasing) of the ``n_global`` in ``arrays``; only their rows are kept."""
        n_users, n_items = len(users), len(items)
        local = None
        if share is None:
            pick: slice | np.ndarray = slice(0, n_users)
        else:
            if held_rows is None or n_global is None or len(held_rows) != n_users:
                raise ValueError("a share's view needs its held rows and the model's user count")
            pick, local = held_rows, LocalRows.of(n_global, held_rows)
        return cls._from_parts(
            version=version,
            users=users,
            n_users=n_users,
            items=items,
            n_items=n_items,
            k=arrays["user_embeddings"].shape[1],
            user_rows=_packed_blocks(
                arrays["user_embeddings"][pick],
                arrays["user_biases"][pick],
                arrays["user_positives"][pick],
            ),
            item_rows=_item_blocks(
                arrays["item_embeddings"][:n_items], arrays["item_biases"][:n_items]
            ),
            popularity=np.array(arrays["popularity"][:n_items]),
            popularity_ts=popularity_ts,
            neighbours=neighbours,
            blend_weight=blend_weight,
            share=share,
            global_n=n_global,
            local=local,
        )

    @classmethod
    def empty(cls, no_components: int, version: int = 0, share: Share | None = None) -> ScoringView:
        """A view of no users and no items (the base of a fresh model's first delta);
        with ``share``, one that holds only that share's users as deltas bring them."""
        f32 = np.dtype(np.float32)
        return cls._from_parts(
            version=version,
            users=IdMap(),
            n_users=0,
            items=IdMap(),
            n_items=0,
            k=no_components,
            user_rows=RowBlocks.empty((no_components + 2,), f32),
            item_rows=(RowBlocks.empty((no_components + 1,), f32), None),
            popularity=np.zeros(0, dtype=np.float64),
            popularity_ts=None,
            share=share,
            global_n=0,
            local=None if share is None else LocalRows.of(0, _EMPTY),
        )

    def with_delta(self, delta: ModelDelta, *, join: bool = False) -> ScoringView:
        """The view of ``delta.version``: this one with the delta's rows, copy-on-write.

        User and item rows copy only their blocks; popularity and item stamps are copied
        whole (8 bytes an item each).
        Raises :class:`models.delta.DeltaError` (and changes nothing visible) if the delta
        does not fit this view exactly. ``join``: the delta starts a new lineage from the
        state this view holds, whatever version number that lineage gave it.
        """
        base = delta.base_version if join else self.version
        check_applies(delta, version=base, n_users=self._global_n, n_items=self._n_items, k=self._k)
        packed = _pack(delta.user_embeddings, delta.user_biases, delta.user_positives)
        rows, new_ids = delta.user_rows, delta.new_user_ids
        local = self._local
        if self._share is not None and local is not None:  # only the held users' rows
            held = self._share.held(new_ids) if new_ids else np.zeros(0, dtype=bool)
            new_ids = [u for u, h in zip(new_ids, held.tolist(), strict=True) if h]
            at = np.full(len(held), -1, dtype=np.int32)
            at[held] = np.arange(self._n_users, self._n_users + len(new_ids), dtype=np.int32)
            local.extend_at(self._global_n, at)
            rows = local.get(rows)
            keep = rows >= 0
            rows, packed = rows[keep], packed[keep]
        try:
            self._users.extend_at(self._n_users, new_ids)
            self._items.extend_at(self._n_items, delta.new_item_ids)
        except ValueError as exc:
            raise DeltaError(str(exc)) from None
        n_users, n_items = self._n_users + len(new_ids), delta.n_items
        item_values = np.empty((len(delta.item_rows), self._k + 1), dtype=np.float32)
        item_values[:, : self._k] = delta.item_embeddings
        item_values[:, self._k] = delta.item_biases
        item_rows = self._item_rows.updated(delta.item_rows, item_values, n_items)
        popularity = _grown(self._popularity, n_items)
        if delta.popularity_decay != 1.0:
            popularity[: self._n_items] *= delta.popularity_decay
        popularity[delta.popularity_rows] = delta.popularity_values
        item_stamps = _grown(self._item_stamps, n_items)
        written = next(_WRITES)
        item_stamps[delta.item_rows] = written
        item_stamps[self._n_items :] = written
        return self._from_parts(
            version=delta.version,
            users=self._users,
            n_users=n_users,
            items=self._items,
            n_items=n_items,
            k=self._k,
            user_rows=self._user_rows.updated(rows, packed, n_users),
            item_rows=(item_rows, None),
            popularity=popularity,
            popularity_ts=delta.popularity_ts,
            neighbours=self._neighbours,  # deltas carry rows; neighbours come with snapshots
            blend_weight=self._blend_weight,
            item_stamps=item_stamps,
            share=self._share,
            global_n=delta.n_users,
            local=local,
        )

    def delta_bytes(self, delta: ModelDelta) -> int:
        """The bytes :meth:`with_delta` copies for ``delta``: the blocks its user and item
        rows touch (or the whole arrays, when it touches most blocks), and the per-item
        popularity and stamps. What decides whether a scorer applies it off its event
        loop (the delta's own size is the caller's)."""
        users = min(len(delta.user_rows) * BLOCK_ROWS, delta.n_users) * (self._k + 2)
        items = min(len(delta.item_rows) * BLOCK_ROWS, delta.n_items) * (self._k + 1)
        return 4 * (users + items) + 16 * delta.n_items

    def restricted(self, share: Share) -> ScoringView:
        """This view holding only the users of ``share`` (a part of what it holds): what a
        scorer keeps when partitions are revoked. Copies the kept rows once."""
        if self._share is not None and not self._share.covers(share):
            raise ValueError(f"a view of {self._share.describe()} cannot hold {share.describe()}")
        ids = self._users.ids(self._n_users)
        keep = np.flatnonzero(share.held(ids))
        if self._local is None:
            global_rows = np.arange(self._n_users, dtype=np.int64)
        else:
            global_rows = self._local.global_rows(self._global_n, self._n_users)
        kept = global_rows[keep]
        user_rows = self._user_rows.to_array()[keep]
        return self._from_parts(
            version=self.version,
            users=IdMap([ids[i] for i in keep.tolist()]),
            n_users=len(keep),
            items=self._items,
            n_items=self._n_items,
            k=self._k,
            user_rows=RowBlocks.from_array(user_rows),
            item_rows=(self._item_rows, self._product_items),
            popularity=self._popularity,
            popularity_ts=self.popularity_ts,
            neighbours=self._neighbours,
            blend_weight=self._blend_weight,
            item_stamps=self._item_stamps,  # the same item rows
            share=share,
            global_n=self._global_n,
            local=LocalRows.of(self._global_n, kept),
        )

    def with_neighbours(self, neighbours: sp.csr_matrix | None, blend_weight: float) -> ScoringView:
        """This view (sharing every array) with other blending neighbours."""
        view = ScoringView.__new__(ScoringView)
        for name in ScoringView.__slots__:
            object.__setattr__(view, name, getattr(self, name))
        view._init_neighbours(neighbours, blend_weight)
        return view

    def blending(self) -> tuple[sp.csr_matrix | None, float]:
        """The blending neighbours and weight (for :meth:`with_neighbours` on another view)."""
        return self._neighbours, self._blend_weight

    def blends_with(self, neighbours: sp.csr_matrix | None) -> bool:
        """Whether this view's blending neighbours are ``neighbours`` (the same object)."""
        return self._neighbours is neighbours

    def scoring_arrays(self) -> dict[str, np.ndarray]:
        """The view's arrays as plain arrays (tests, benchmarks)."""
        users, k, items = self._user_rows.to_array(), self._k, self.product_items()
        return {
            "user_embeddings": users[:, :k],
            "user_biases": users[:, k],
            "user_positives": users[:, k + 1].astype(np.int64),
            "item_embeddings": items[:, :k],
            "item_biases": items[:, k],
            "popularity": self._popularity,
        }

    # --- inspection --------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return self._n_users

    @property
    def n_items(self) -> int:
        return self._n_items

    @property
    def model_users(self) -> int:
        """The model's users (a share's view holds only some: :attr:`n_users`)."""
        return self._global_n

    @property
    def share(self) -> Share | None:
        """The partitions whose users this view holds (None: every user)."""
        return self._share

    @property
    def no_components(self) -> int:
        return self._k

    def user_ids(self) -> list[str]:
        return self._users.ids(self._n_users)

    def has_user(self, user: str) -> bool:
        return self._user_row(user) is not None

    def has_item(self, item: str) -> bool:
        return self._item_row(item) is not None

    def item_ids(self) -> list[str]:
        return self._items.ids(self._n_items)

    def _user_row(self, user: str) -> int | None:
        row = self._users.get(user)
        return row if row is not None and row < self._n_users else None

    def _item_row(self, item: str) -> int | None:
        row = self._items.get(item)
        return row if row is not None and row < self._n_items else None

    def model_row(self, user: str) -> int | None:
        """The embedding row used for ``user``, or None if the user gets popularity."""
        row = self._user_row(user)
        if row is None or self._user_rows.row(row)[self._k + 1] == 0:
            return None
        return row

    def item_rows(self, items: Iterable[str]) -> np.ndarray:
        """Dense indices of the known items among ``items`` (unknown ones are dropped)."""
        get, n = self._items.get, self._n_items
        return np.fromiter(
            (i for i in (get(item) for item in items) if i is not None and i < n),
            dtype=np.int64,
        )

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """Model scores (len(rows) x n_items, float32) for embedding rows from :meth:`model_row`.

        Equal to ``LightFM.predict`` for the same pairs, computed as one matmul.
        """
        users, dim, items = self._user_rows.take(rows), self._k, self.product_items()
        scores = users[:, :dim] @ items[:, :dim].T
        scores += items[:, dim]
        scores += users[:, dim, None]
        return np.asarray(scores)

    def blend(self, scores: np.ndarray, history: np.ndarray) -> np.ndarray:
        """``scores`` (one user's model scores over every item) blended in place with the
        item-kNN scores of ``history`` (item rows, from :meth:`item_rows`); unchanged when
        there is nothing to blend (no neighbours, or none for this history)."""
        if self._neighbours is None or not len(history):
            return scores
        known = history[history < self._neighbours.shape[0]]
        if not len(known):
            return scores
        indptr = self._neighbours.indptr
        lengths = indptr[known + 1] - indptr[known]
        total = int(lengths.sum())
        if not total:
            return scores
        # the positions of every neighbour entry of the history rows, gathered at once
        at = np.repeat(indptr[known] - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
        knn = np.bincount(
            self._neighbours.indices[at], self._neighbours.data[at], minlength=len(scores)
        ).astype(np.float32)
        spread = float(knn.std())
        if spread == 0.0:
            return scores
        scores -= scores.mean()
        scores /= max(float(scores.std()), 1e-12)
        knn -= knn.mean()
        knn *= self._blend_weight / spread
        scores += knn
        return scores

    def popularity_scores(self) -> np.ndarray:
        """Recency-decayed counts per item (read-only, float64)."""
        return self._popularity

    # --- recommendations ---------------------------------------------------------------
    def recommend(
        self, user: str, k: int = 10, exclude: Iterable[str] = (), history: Iterable[str] = ()
    ) -> Recommendation:
        """Top ``k`` items for ``user``, never one in ``exclude``; popularity for cold users.
        ``history``: the items the user rated, for blending (see the class docstring)."""
        _check_k(k)
        row = self.model_row(user)
        excluded = (
            _EMPTY if isinstance(exclude, Sized) and not len(exclude) else self.item_rows(exclude)
        )
        if row is None:
            return Recommendation(user, self._popular(k, excluded), self.version, "popularity")
        vector, dim, items = self._user_rows.row(row), self._k, self.product_items()
        scores = items[:, :dim] @ vector[:dim]
        scores += items[:, dim]
        scores += vector[dim]
        if self._neighbours is not None:
            self.blend(scores, self.item_rows(history))
        return Recommendation(user, self._top_k(scores, k, excluded), self.version, "model")

    def recommend_many(
        self,
        users: Sequence[str],
        k: int = 10,
        excludes: Sequence[Iterable[str]] | None = None,
        histories: Sequence[Iterable[str]] | None = None,
    ) -> list[Recommendation]:
        """:meth:`recommend` for many users with one matmul per chunk of users."""
        _check_k(k)
        if excludes is not None and len(excludes) != len(users):
            raise ValueError(f"{len(excludes)} exclude sets for {len(users)} users")
        if histories is not None and len(histories) != len(users):
            raise ValueError(f"{len(histories)} histories for {len(users)} users")
        rows = [self.item_rows(e) for e in excludes] if excludes else [_EMPTY] * len(users)
        history_rows = [self.item_rows(h) for h in histories] if histories is not None else None
        return self.recommend_batch(users, [k] * len(users), rows, history_rows)

    def recommend_batch(
        self,
        users: Sequence[str],
        ks: Sequence[int],
        exclude_rows: Sequence[np.ndarray],
        history_rows: Sequence[np.ndarray] | None = None,
        search: ItemSearch | None = None,
    ) -> list[Recommendation]:
        """:meth:`recommend` for a batch of requests, each with its own ``k`` and its own
        excluded item *rows* (dense indices of this view, e.g. from
        :meth:`models.seen.ItemHashIndex.rows`), and optionally the rows of each user's
        history to blend with (see the class docstring). Warm users without blending are
        scored together by :func:`models.batch_scoring.top_k_products` (or ``search``'s
        ``top_k`` when it searches this view's :meth:`product_items`: an approximate
        index, :mod:`models.ann`); those who blend, a chunk of whole rows at a time. Ties
        go to the lower item row."""
        if not len(users) == len(ks) == len(exclude_rows):
            raise ValueError(f"{len(users)} users, {len(ks)} ks, {len(exclude_rows)} excludes")
        if history_rows is not None and len(history_rows) != len(users):
            raise ValueError(f"{len(history_rows)} histories for {len(users)} users")
        for k in ks:
            _check_k(k)
        blends = history_rows if self._neighbours is not None else None
        results: list[Recommendation | None] = [None] * len(users)
        warm: list[int] = []  # scored by products
        rows: list[int] = []
        blended: list[int] = []  # scored as whole rows, blended
        blended_rows: list[int] = []
        for pos, user in enumerate(users):
            row = self.model_row(user)
            if row is None:
                items = self._popular(ks[pos], exclude_rows[pos])
                results[pos] = Recommendation(user, items, self.version, "popularity")
            elif blends is not None and len(blends[pos]):
                blended.append(pos)
                blended_rows.append(row)
            else:
                warm.append(pos)
                rows.append(row)
        self._products(users, ks, exclude_rows, warm, rows, results, search)
        if blends is not None:
            self._blended(users, ks, exclude_rows, blends, blended, blended_rows, results)
        return results  # type: ignore[return-value]

    def _blended(
        self,
        users: Sequence[str],
        ks: Sequence[int],
        exclude_rows: Sequence[np.ndarray],
        history_rows: Sequence[np.ndarray],
        warm: list[int],
        rows: list[int],
        results: list[Recommendation | None],
    ) -> None:
        """:meth:`recommend_batch`'s warm users who blend, into ``results``: whole rows of
        scores, each blended with its history, a chunk of users at a time."""
        n = self.n_items
        chunk = max(1, _CHUNK_CELLS // max(1, n))
        for start in range(0, len(warm), chunk):
            positions = warm[start : start + chunk]
            scores = self.score_rows(np.asarray(rows[start : start + chunk], dtype=np.int64))
            for r, pos in enumerate(positions):
                self.blend(scores[r], history_rows[pos])
            masks = [exclude_rows[pos] for pos in positions]
            if any(len(m) for m in masks):
                flat = np.concatenate([m + r * n for r, m in enumerate(masks)])
                scores.reshape(-1)[flat] = -np.inf
            tops = block_top_k(scores, max(ks[pos] for pos in positions))
            for pos, (idx, vals) in zip(positions, tops, strict=True):
                k = ks[pos]
                items = self._scored(idx[:k], vals[:k])
                results[pos] = Recommendation(users[pos], items, self.version, "model")

    def _products(
        self,
        users: Sequence[str],
        ks: Sequence[int],
        exclude_rows: Sequence[np.ndarray],
        warm: list[int],
        rows: list[int],
        results: list[Recommendation | None],
        search: ItemSearch | None = None,
    ) -> None:
        """:meth:`recommend_batch`'s warm users without blending, into ``results``: the
        user rows (with a 1 for the item bias) against :meth:`product_items`, the user
        bias added to the k best (it ranks nothing)."""
        dim, items = self._k, self.product_items()
        top_k = search.top_k if search is not None and search.items is items else None
        for start in range(0, len(warm), _USERS_PER_PRODUCT):
            positions = warm[start : start + _USERS_PER_PRODUCT]
            packed = self._user_rows.take(
                np.asarray(rows[start : start + _USERS_PER_PRODUCT], dtype=np.int64)
            )
            queries = np.empty((len(positions), dim + 1), dtype=np.float32)
            queries[:, :dim] = packed[:, :dim]
            queries[:, dim] = 1.0
            k, excluded = max(ks[pos] for pos in positions), [exclude_rows[p] for p in positions]
            tops = (
                top_k_products(queries, items, k, excluded, offsets=packed[:, dim])
                if top_k is None
                else top_k(queries, k, excluded, offsets=packed[:, dim])
            )
            for pos, (idx, vals) in zip(positions, tops, strict=True):
                k = ks[pos]
                results[pos] = Recommendation(
                    users[pos], self._scored(idx[:k], vals[:k]), self.version, "model"
                )

    @property
    def product_cells(self) -> int:
        """The cells :meth:`product_items` still has to copy (0 once made)."""
        return 0 if self._product_items is not None else self._n_items * (self._k + 1)

    def product_items(self) -> np.ndarray:
        """The item embeddings with the item biases as one more column (float32,
        read-only), made once per view: what a batch's user rows are multiplied with."""
        items = self._product_items
        if items is None:  # two threads may both make it: the same array either way
            items = self._product_items = _frozen(self._item_rows.to_array())
        return items

    def item_stamps(self) -> np.ndarray:
        """Per item row, the write that last set it (read-only int64): rows of two views
        with equal stamps are equal. Every :meth:`with_delta` is a new write of the rows it
        changes or adds; a view made from whole arrays, a new write of all its rows. What
        an approximate index compares instead of the rows (:mod:`models.ann`)."""
        return self._item_stamps

    def sample_queries(self, count: int, seed: int = 0) -> np.ndarray:
        """Up to ``count`` warm users drawn at random, as rows :meth:`product_items` is
        multiplied with (embedding, then 1 for the item bias): what an approximate index
        is calibrated on (:mod:`models.ann`)."""
        rng = np.random.default_rng(seed)
        drawn = rng.choice(self._n_users, min(self._n_users, 4 * count), replace=False)
        packed = self._user_rows.take(np.sort(drawn).astype(np.int64))
        packed = packed[packed[:, self._k + 1] != 0][:count]
        queries = np.empty((len(packed), self._k + 1), dtype=np.float32)
        queries[:, : self._k] = packed[:, : self._k]
        queries[:, self._k] = 1.0
        return queries

    def popular(self, k: int = 10, exclude: Iterable[str] = ()) -> list[ScoredItem]:
        """The ``k`` most popular items (recency-decayed counts), skipping ``exclude``."""
        _check_k(k)
        return self._popular(k, self.item_rows(exclude))

    def _popular(self, k: int, excluded: np.ndarray) -> list[ScoredItem]:
        skip = set(excluded.tolist())
        out: list[ScoredItem] = []
        order = self._pop_order
        if order is None:  # most popular first; ties by first appearance (deterministic)
            order = self._pop_order = _frozen(np.argsort(-self._popularity, kind="stable"))
        ids = self._items.ids(self._n_items) if k + len(skip) > 64 else None
        for i in order[: k + len(skip)].tolist():
            if i not in skip:
                item = ids[i] if ids is not None else self._items.id_of(i)
                out.append(ScoredItem(item, float(self._popularity[i])))
                if len(out) == k:
                    break
        return out

    def _top_k(self, scores: np.ndarray, k: int, excluded: np.ndarray) -> list[ScoredItem]:
        """1-d fast path of :func:`top_k_rows` (one user: no take_along_axis overhead)."""
        if len(excluded):
            scores[excluded] = -np.inf
        n = len(scores)
        kk = min(k, n)
        part = np.argpartition(scores, n - kk)[n - kk :] if kk < n else np.arange(n)
        part_scores = scores[part]
        order = np.argsort(-part_scores, kind="stable")
        idx, vals = part[order].tolist(), part_scores[order].tolist()
        if vals and vals[-1] == -np.inf:
            keep = [j for j, v in enumerate(vals) if v != -np.inf]
            idx, vals = [idx[j] for j in keep], [vals[j] for j in keep]
        return self._scored(idx, vals)

    def _scored(self, idx: list[int], vals: list[float]) -> list[ScoredItem]:
        id_of = self._items.id_of
        return list(map(ScoredItem, map(id_of, idx), vals))  # vals: Python floats (tolist)


_EMPTY = np.zeros(0, dtype=np.int64)
_WRITES = itertools.count(1)  # item stamps: one number per write, never reused in a process
_NEG_INF = float("-inf")


def top_k_rows(scores: np.ndarray, k: int) -> list[tuple[list[int], list[float]]]:
    """Per row: the indices and scores of the k largest scores, best first, leaving out
    ``-inf`` (the mark of an excluded item). argpartition, then a sort of only k values."""
    n = scores.shape[1]
    kk = min(k, n)
    if kk == 0:
        return [([], []) for _ in range(scores.shape[0])]
    if kk < n:  # the kk largest sit at the end; partitioning in place of -scores saves a copy
        part = np.argpartition(scores, n - kk, axis=1)[:, n - kk :]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    top_scores = np.take_along_axis(part_scores, order, axis=1)
    out = []
    for idx, vals in zip(top.tolist(), top_scores.tolist(), strict=True):
        if vals and vals[-1] == _NEG_INF:  # best first: the excluded ones are the tail
            cut = vals.index(_NEG_INF)
            idx, vals = idx[:cut], vals[:cut]
        out.append((idx, vals))
    return out


class LocalRows:
    """A share's map from the model's user rows (the ones deltas name) to the rows it
    holds (-1: not held): int32, append-only and shared by the views built from one
    another like the id maps, each reading only its own first ``n`` entries."""

    __slots__ = ("_array",)

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    @classmethod
    def of(cls, n: int, held: np.ndarray) -> LocalRows:
        """``n`` model rows of which the rows ``held`` (increasing) are held, in order."""
        array = np.full(max(n, 16), -1, dtype=np.int32)
        array[np.asarray(held, dtype=np.int64)] = np.arange(len(held), dtype=np.int32)
        return cls(array)

    def extend_at(self, start: int, values: np.ndarray) -> None:
        """Set the entries from ``start`` on to ``values`` (growing the buffer if needed)."""
        end = start + len(values)
        if end > len(self._array):
            grown = np.full(max(end, 2 * len(self._array)), -1, dtype=np.int32)
            grown[:start] = self._array[:start]
            self._array = grown
        self._array[start:end] = values

    def get(self, rows: np.ndarray) -> np.ndarray:
        """The held row of each model row (int64; -1 where not held)."""
        return self._array[np.asarray(rows, dtype=np.int64)].astype(np.int64)

    def global_rows(self, n: int, held: int) -> np.ndarray:
        """The model row of each of the ``held`` rows, among the first ``n`` model rows."""
        where = np.flatnonzero(self._array[:n] >= 0)
        out = np.empty(held, dtype=np.int64)
        out[self._array[where]] = where
        return out


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _pack(
    embeddings: np.ndarray,
    biases: np.ndarray,
    positives: np.ndarray,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """User rows as one float32 array: embedding, bias, positives count (exact below 2**24;
    scoring only asks whether it is zero). One block structure instead of three."""
    if out is None:
        out = np.empty((len(embeddings), embeddings.shape[1] + 2), dtype=np.float32)
    out[:, :-2] = embeddings
    out[:, -2] = biases
    out[:, -1] = np.minimum(positives, 1 << 24)
    return out


def _packed_blocks(embeddings: np.ndarray, biases: np.ndarray, positives: np.ndarray) -> RowBlocks:
    """:func:`_pack` written straight into the blocks' buffer (one copy of the user rows,
    not two: they are most of a scorer's memory)."""
    n = len(embeddings)
    whole = RowBlocks.buffer(n, (embeddings.shape[1] + 2,), np.dtype(np.float32))
    _pack(embeddings, biases, positives, out=whole[:n])
    return RowBlocks.adopt(whole, n)


def _item_blocks(embeddings: np.ndarray, biases: np.ndarray) -> tuple[RowBlocks, None]:
    """Item rows (embedding, then bias: float32) written straight into the blocks' buffer;
    :meth:`ScoringView.product_items` is made from them when scoring first needs it."""
    n, k = len(embeddings), embeddings.shape[1]
    whole = RowBlocks.buffer(n, (k + 1,), np.dtype(np.float32))
    whole[:n, :k] = embeddings
    whole[:n, k] = biases
    return RowBlocks.adopt(whole, n), None


def _grown(array: np.ndarray, n: int) -> np.ndarray:
    """A writable copy of ``array`` with ``n`` rows (the new ones zero)."""
    out = np.zeros((n, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array
