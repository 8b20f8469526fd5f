"""Synthetic ratings with the shape of real ones, for demos and tests (MovieLens may not be
redistributed).

Items belong to latent clusters ("genres"); item ids say which: ``g3-m17`` is movie 17 of
genre 3, so a demo can show a user's recommendations moving to a genre they start rating.
Item popularity within a genre and user activity both follow power laws. Each user has a
favourite and a second genre: 80% of their ratings fall in the favourite (rated high), 10%
in the second (middling), 10% anywhere (rated low). Timestamps strictly increase in event
order. The same arguments always give the same ratings.
"""

from __future__ import annotations

import numpy as np

from models.catalog import CatalogItem
from models.events import Rating

_RATING_LEVELS = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
_RATING_P = {  # P(rating) by how much the user likes the genre
    "favourite": [0.0, 0.03, 0.12, 0.40, 0.45],
    "second": [0.05, 0.2, 0.35, 0.3, 0.1],
    "other": [0.3, 0.35, 0.25, 0.1, 0.0],
}


def item_id(cluster: int, index: int) -> str:
    return f"g{cluster}-m{index}"


def user_id(index: int) -> str:
    return f"u{index}"


def _item_clusters(n_items: int, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Each item's genre; the first draw from ``rng``, so the catalog can repeat it."""
    item_cluster = np.arange(n_items) % n_clusters
    rng.shuffle(item_cluster)
    return item_cluster


GENRE_NAMES = ("Action", "Comedy", "Drama", "Sci-Fi", "Horror", "Romance", "Western", "Animation")
_ADJECTIVES = (
    "Silent",
    "Crimson",
    "Last",
    "Hidden",
    "Golden",
    "Broken",
    "Midnight",
    "Electric",
    "Frozen",
    "Lost",
    "Wild",
    "Secret",
    "Burning",
    "Distant",
    "Iron",
    "Velvet",
)
_NOUNS = (
    "Harbor",
    "Signal",
    "Garden",
    "Frontier",
    "Mirror",
    "Empire",
    "River",
    "Orbit",
    "Promise",
    "Circus",
    "Kingdom",
    "Station",
    "Canyon",
    "Machine",
    "Letter",
    "Island",
)


def genre_name(cluster: int) -> str:
    """A display name for synthetic genre ``cluster`` (numbered past the named ones)."""
    if cluster < len(GENRE_NAMES):
        return GENRE_NAMES[cluster]
    return f"Genre {cluster}"


def generate_catalog(n_items: int = 500, n_clusters: int = 8, seed: int = 0) -> list[CatalogItem]:
    """Titles and genres for the items :func:`generate_ratings` (same arguments) rates."""
    if n_clusters < 1 or n_items < n_clusters:
        raise ValueError(f"{n_items} items cannot fill {n_clusters} clusters")
    item_cluster = _item_clusters(n_items, n_clusters, np.random.default_rng(seed))
    names = np.random.default_rng([seed, 1])  # titles: a stream of their own
    adjectives = names.integers(len(_ADJECTIVES), size=n_items).tolist()
    nouns = names.integers(len(_NOUNS), size=n_items).tolist()
    years = names.integers(1950, 2026, size=n_items).tolist()
    return [
        CatalogItem(
            item=item_id(int(c), i),
            title=f"The {_ADJECTIVES[a]} {_NOUNS[n]} ({y})",
            genres=(genre_name(int(c)),),
        )
        for i, (c, a, n, y) in enumerate(
            zip(item_cluster.tolist(), adjectives, nouns, years, strict=True)
        )
    ]


def generate_ratings(
    n_users: int = 1000,
    n_items: int = 500,
    n_ratings: int = 50_000,
    n_clusters: int = 8,
    seed: int = 0,
    *,
    start_ts: float = 1_700_000_000.0,
    mean_gap_seconds: float = 30.0,
) -> list[Rating]:
    """``n_ratings`` distinct (user, item) ratings in time order; raises ValueError if the
    arguments are impossible (e.g. more ratings than user-item pairs can hold)."""
    if n_users < 1 or n_clusters < 1 or n_ratings < 0:
        raise ValueError("need at least 1 user and 1 cluster, and a non-negative rating count")
    if n_items < n_clusters:
        raise ValueError(f"{n_items} items cannot fill {n_clusters} clusters")
    if n_ratings > n_users * n_items // 2:
        raise ValueError(
            f"{n_ratings} ratings is more than half of the {n_users * n_items} user-item pairs"
        )
    rng = np.random.default_rng(seed)
    item_cluster = _item_clusters(n_items, n_clusters, rng)
    # Zipf-like popularity within each genre, in a random order of items.
    item_weight = np.empty(n_items)
    members = [np.flatnonzero(item_cluster == c) for c in range(n_clusters)]
    for items in members:
        item_weight[items] = 1.0 / (1.0 + rng.permutation(len(items))) ** 1.1
    cdfs = [np.cumsum(item_weight[items]) / item_weight[items].sum() for items in members]
    activity = 1.0 / (1.0 + rng.permutation(n_users)) ** 0.8
    activity /= activity.sum()
    favourite = rng.integers(n_clusters, size=n_users)
    second = (favourite + rng.integers(1, max(2, n_clusters), size=n_users)) % n_clusters

    users: list[np.ndarray] = []
    items_out: list[np.ndarray] = []
    affinity: list[np.ndarray] = []
    seen: set[int] = set()
    have = 0
    for _ in range(50):
        if have >= n_ratings:
            break
        size = max(1024, int((n_ratings - have) * 1.3))
        u = rng.choice(n_users, size=size, p=activity)
        roll = rng.random(size)
        kind = np.where(roll < 0.8, 0, np.where(roll < 0.9, 1, 2))
        cluster = np.where(
            kind == 0,
            favourite[u],
            np.where(kind == 1, second[u], rng.integers(n_clusters, size=size)),
        )
        kind = np.where((kind == 2) & (cluster == favourite[u]), 0, kind)
        kind = np.where((kind == 2) & (cluster == second[u]), 1, kind)
        item = np.empty(size, dtype=np.int64)
        for c in range(n_clusters):
            mask = cluster == c
            picks = np.searchsorted(cdfs[c], rng.random(int(mask.sum())), side="right")
            item[mask] = members[c][np.minimum(picks, len(members[c]) - 1)]
        keys = (u * n_items + item).tolist()
        keep = []
        for j, key in enumerate(keys):
            if key not in seen:
                seen.add(key)
                keep.append(j)
                if have + len(keep) == n_ratings:
                    break
        keep_arr = np.asarray(keep, dtype=np.int64)
        users.append(u[keep_arr])
        items_out.append(item[keep_arr])
        affinity.append(kind[keep_arr])
        have += len(keep)
    if have < n_ratings:
        raise ValueError(f"could only draw {have} distinct ratings; use more users or items")

    u = np.concatenate(users) if users else np.zeros(0, dtype=np.int64)
    item = np.concatenate(items_out) if items_out else np.zeros(0, dtype=np.int64)
    kind = np.concatenate(affinity) if affinity else np.zeros(0, dtype=np.int64)
    rating = np.empty(len(u))
    for code, name in enumerate(("favourite", "second", "other")):
        mask = kind == code
        rating[mask] = rng.choice(_RATING_LEVELS, size=int(mask.sum()), p=_RATING_P[name])
    ts = start_ts + np.cumsum(1 + np.floor(rng.exponential(mean_gap_seconds, size=len(u))))
    return [
        Rating(
            event_id=f"synthetic-{seed}:{n}",
            user=user_id(uu),
            item=item_id(int(item_cluster[ii]), ii),
            rating=float(r),
            ts=float(t),
        )
        for n, (uu, ii, r, t) in enumerate(
            zip(u.tolist(), item.tolist(), rating.tolist(), ts.tolist(), strict=True)
        )
    ]


def clustered_factors(
    n_items: int, n_users: int, dim: int = 64, clusters: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Items (``n x (dim + 1)``: embedding, bias) and user queries (``embedding, 1``) with
    the shape of trained factors: tastes around a few genre centres, Zipf-like biases."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 0.3
    items = np.empty((n_items, dim + 1), dtype=np.float32)
    items[:, :dim] = centres[rng.integers(clusters, size=n_items)]
    items[:, :dim] += rng.standard_normal((n_items, dim), dtype=np.float32) * 0.15
    items[:, dim] = -np.log1p(rng.permutation(n_items)) * 0.3
    queries = np.ones((n_users, dim + 1), dtype=np.float32)
    queries[:, :dim] = centres[rng.integers(clusters, size=n_users)]
    queries[:, :dim] += rng.standard_normal((n_users, dim), dtype=np.float32) * 0.15
    return items, queries
