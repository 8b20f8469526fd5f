"""LightFM's C random stream computed ahead in numpy: the numbers its WARP and BPR loops draw
from a thread's seed (``rand_r``: an LCG mod 2**32, musl's tempering, halved), and how
many they drew, from the state they left.

LightFM's Cython draws each thread's seed with ``random_state.randint(...).astype(np.uint32)``
and advances it in place; :class:`EpochDraws` stands in for that ``random_state`` so that
the seeds are known before the epoch and the final states readable after it.
"""

from __future__ import annotations

import numpy as np

_MUL, _ADD, _MASK = 1103515245, 12345, 0xFFFFFFFF
#: The most draws computed ahead (tables of 8 MB at most).
MAX_DRAWS = 1 << 20
# (mul, add): s_t = mul[t] * s_0 + add[t] (mod 2**32), the LCG's jumps by t = 0, 1, ...;
# grown by doubling and replaced whole (threads read one consistent pair).
_jumps_table = (np.ones(1, dtype=np.uint32), np.zeros(1, dtype=np.uint32))


def _jumps(m: int) -> tuple[np.ndarray, np.ndarray]:
    """The jump tables for t = 0..m (at least)."""
    global _jumps_table
    mul, add = _jumps_table
    while len(mul) <= m:
        # (mul_n, add_n): the jump by n = len(mul) steps, one step past the last one
        mul_n = (int(mul[-1]) * _MUL) & _MASK
        add_n = (int(add[-1]) * _MUL + _ADD) & _MASK
        # s_{n+t} = mul_t * s_n + add_t = (mul_t * mul_n) s_0 + (mul_t * add_n + add_t)
        mul, add = (
            np.concatenate([mul, mul * np.uint32(mul_n)]),
            np.concatenate([add, mul * np.uint32(add_n) + add]),
        )
        _jumps_table = (mul, add)
    return mul, add


def states(seed: int, m: int) -> np.ndarray:
    """The generator's states after 1..m draws from ``seed`` (uint32; m <= MAX_DRAWS)."""
    m = min(m, MAX_DRAWS)
    mul, add = _jumps(m)
    out: np.ndarray = mul[1 : m + 1] * np.uint32(seed) + add[1 : m + 1]
    return out


def outputs(after: np.ndarray) -> np.ndarray:
    """``rand_r``'s results for these states (``temper(state) / 2``, as int64)."""
    x = after.copy()
    x ^= x >> np.uint32(11)
    x ^= (x << np.uint32(7)) & np.uint32(0x9D2C5680)
    x ^= (x << np.uint32(15)) & np.uint32(0xEFC60000)
    x ^= x >> np.uint32(18)
    out: np.ndarray = (x >> np.uint32(1)).astype(np.int64)
    return out


def draws_made(seed: int, final: int, m: int) -> int | None:
    """How many draws took the generator from ``seed`` to ``final`` (None: more than m,
    or than MAX_DRAWS)."""
    if seed == final:
        return 0
    found = np.flatnonzero(states(seed, m) == np.uint32(final))
    return int(found[0]) + 1 if len(found) else None


class EpochDraws:
    """What one epoch draws from the fit's RandomState, drawn ahead in LightFM's order: the
    shuffle, then (every loss but logistic) one ``rand_r`` seed per thread. Passed to the
    Cython routine as its ``random_state``: each run advances a fresh copy of the seeds,
    :attr:`advanced`."""

    def __init__(
        self, random_state: np.random.RandomState, n: int, num_threads: int, seeds: bool
    ) -> None:
        self.shuffle = np.arange(n, dtype=np.int32)
        random_state.shuffle(self.shuffle)
        self.seeds = np.zeros(0, dtype=np.uint32)
        if seeds:
            high = np.iinfo(np.int32).max
            self.seeds = random_state.randint(0, high, size=num_threads).astype(np.uint32)
        self.advanced = self.seeds.copy()

    def randint(self, low: int, high: int, size: int) -> EpochDraws:
        """LightFM's ``random_state.randint(0, high, size=num_threads)``: the seeds drawn
        ahead (see :meth:`astype`)."""
        self.advanced = self.seeds.copy()
        return self

    def astype(self, dtype: type) -> np.ndarray:
        """``.astype(np.uint32)`` of the seeds: the array the C code advances in place."""
        return self.advanced

    def made(self, m: int) -> int | None:
        """The most draws a thread made in the last run (None: one made more than m)."""
        most = 0
        for seed, final in zip(self.seeds.tolist(), self.advanced.tolist(), strict=True):
            made = draws_made(seed, final, m)
            if made is None:
                return None
            most = max(most, made)
        return most

    def candidates(self, m: int, n_items: int) -> np.ndarray:
        """The items a thread's first m draws name (``rand_r() % n_items``)."""
        if not len(self.seeds):
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([outputs(states(s, m)) % n_items for s in self.seeds.tolist()])
