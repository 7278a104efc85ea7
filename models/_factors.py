"""Storage for :mod:`fusionrec.models.cf`: contiguous rows of latent factors with an id index, the pool new rows'
latent vectors come from, and two numpy helpers."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._state import cap_chunk

__all__ = ["FactorTable", "LatentPool", "occurrence", "top_indices"]

_INITIAL_ROWS = 1024


class FactorTable:
    """Latent vectors, biases and latest event times of one side (users or items), one row each.

    Rows ``[0, n)`` are in use, so the live factors are the contiguous ``factors[:n]``; the capacity doubles when
    full, and removing rows moves survivors from the end into the holes.

    >>> table = FactorTable(n_factors=2)
    >>> [table.add(key, ts=t, vector=np.full(2, t)) for t, key in enumerate("abc")]
    [0, 1, 2]
    >>> table.remove_rows(np.array([0]))
    >>> table.ids, table.index["c"], table.factors[: table.n].tolist()
    (['c', 'b'], 0, [[2.0, 2.0], [1.0, 1.0]])

    """

    __slots__ = ("index", "ids", "factors", "bias", "last", "n")

    def __init__(self, n_factors: int, rows: int = _INITIAL_ROWS) -> None:
        self.index: dict[str, int] = {}  # id -> row
        self.ids: list[str] = []  # row -> id
        self.factors = np.zeros((rows, n_factors))
        self.bias = np.zeros(rows)
        self.last = np.zeros(rows, dtype=np.int64)
        self.n = 0

    def add(self, key: str, ts: int, vector: np.ndarray | None) -> int:
        """Append ``key`` (bias 0, latent ``vector``, or left for the caller to fill when ``None``); its row."""
        row = self.n
        if row == self.factors.shape[0]:
            rows = self.factors.shape[0]
            self.factors = np.concatenate([self.factors, np.zeros_like(self.factors)])
            self.bias = np.concatenate([self.bias, np.zeros(rows)])
            self.last = np.concatenate([self.last, np.zeros(rows, dtype=np.int64)])
        self.n = row + 1
        self.ids.append(key)
        self.index[key] = row
        if vector is not None:
            self.factors[row] = vector
        self.bias[row] = 0.0
        self.last[row] = ts
        return row

    def oldest_rows(self, count: int) -> np.ndarray:
        """The ``count`` rows with the oldest latest event."""
        if count >= self.n:
            return np.arange(self.n)
        return np.argpartition(self.last[: self.n], count - 1)[:count]

    def idle_rows(self, cutoff: int) -> np.ndarray:
        """The rows without an event since ``cutoff``."""
        return np.flatnonzero(self.last[: self.n] < cutoff)

    def trim(self, cap: int, adding: int = 0) -> None:
        """If ``adding`` more rows would pass ``cap``, first drop the least recently touched rows down to
        ``cap - cap_chunk(cap)`` (the convention of :mod:`fusionrec.models.base`)."""
        if self.n + adding > cap:
            self.remove_rows(self.oldest_rows(self.n - cap + cap_chunk(cap)))

    def remove_rows(self, rows: np.ndarray) -> None:
        """Drop ``rows``: survivors from the tail fill the holes, keeping rows ``[0, n)`` contiguous."""
        if not rows.shape[0]:
            return
        rows = np.sort(rows)
        index, ids = self.index, self.ids
        for row in rows.tolist():
            del index[ids[row]]
        n, kept = self.n, self.n - rows.shape[0]
        holes = rows[rows < kept]
        movers = np.setdiff1d(np.arange(kept, n), rows, assume_unique=True)
        self.factors[holes] = self.factors[movers]
        self.bias[holes] = self.bias[movers]
        self.last[holes] = self.last[movers]
        for hole, mover in zip(holes.tolist(), movers.tolist(), strict=False):
            key = ids[mover]
            ids[hole] = key
            index[key] = hole
        del ids[kept:]
        self.n = kept

    def state(self) -> dict[str, Any]:
        n = self.n
        return {
            "ids": list(self.ids),
            "factors": self.factors[:n].copy(),
            "bias": self.bias[:n].copy(),
            "last": self.last[:n].copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], n_factors: int) -> FactorTable:
        n = len(state["ids"])
        table = cls(n_factors, rows=max(_INITIAL_ROWS, 1 << max(n - 1, 0).bit_length()))
        table.factors[:n] = state["factors"]
        table.bias[:n] = state["bias"]
        table.last[:n] = state["last"]
        table.ids = list(state["ids"])
        table.index = {key: row for row, key in enumerate(table.ids)}
        table.n = n
        return table


class LatentPool:
    """Initial latent vectors for new rows, drawn from N(0, ``std``) ``rows`` at a time (one numpy call instead of
    one per new user or item); the draws come from ``rng``, which the model shares with its negative sampling.

    >>> pool = LatentPool(n_factors=2, std=0.1, rng=np.random.default_rng(0), rows=4)
    >>> pool.take(3).shape, pool.remaining().shape, pool.take(2).shape, pool.remaining().shape
    ((3, 2), (1, 2), (2, 2), (3, 2))

    """

    __slots__ = ("n_factors", "std", "rng", "rows", "_pool", "_next")

    def __init__(self, n_factors: int, std: float, rng: np.random.Generator, rows: int = 256) -> None:
        self.n_factors, self.std, self.rng, self.rows = n_factors, std, rng, rows
        self._pool = np.empty((0, n_factors))
        self._next = 0

    def take(self, count: int) -> np.ndarray:
        """``count`` fresh vectors, as a ``(count, n_factors)`` array (possibly a view of the pool: copy it in)."""
        if self._next + count <= self._pool.shape[0]:
            self._next += count
            return self._pool[self._next - count : self._next]
        out = np.empty((count, self.n_factors))
        filled = 0
        while filled < count:
            if self._next == self._pool.shape[0]:
                self._pool = self.rng.normal(0.0, self.std, (self.rows, self.n_factors))
                self._next = 0
            take = min(count - filled, self._pool.shape[0] - self._next)
            out[filled : filled + take] = self._pool[self._next : self._next + take]
            self._next += take
            filled += take
        return out

    def remaining(self) -> np.ndarray:
        """A copy of the vectors drawn but not taken yet (for a snapshot: they come next, after a restore too)."""
        return self._pool[self._next :].copy()

    def refill(self, vectors: np.ndarray) -> None:
        """Make ``vectors`` (what :meth:`remaining` returned) the next ones taken."""
        self._pool = np.array(vectors, dtype=np.float64).reshape(-1, self.n_factors)
        self._next = 0


def occurrence(keys: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same key.

    >>> occurrence(np.array([7, 3, 7, 7, 3])).tolist()
    [0, 0, 1, 2, 1]

    """
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    positions = np.arange(keys.shape[0])
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, positions, 0))
    out = np.empty_like(positions)
    out[order] = positions - group_start
    return out


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``values``, in no particular order.

    A full ``argpartition`` costs ~6 ns per value; for large arrays a threshold read off a strided 1/32 sample
    first keeps only the values that can make the top ``k`` (about ``k + 128`` of them), falling back to the full
    partition when fewer than ``k`` pass.

    >>> values = np.random.default_rng(0).permutation(10_000).astype(float)
    >>> sorted(values[top_indices(values, 3)].tolist())
    [9997.0, 9998.0, 9999.0]

    """
    n = values.shape[0]
    if n <= k:
        return np.arange(n)
    if n > 64 * (k + 8):
        sample = values[::32]
        rank = sample.shape[0] - (k // 32 + 4)
        threshold = np.partition(sample, rank)[rank]
        survivors = np.flatnonzero(values >= threshold)
        if survivors.shape[0] >= k:
            cut = survivors.shape[0] - k
            return survivors[np.argpartition(values[survivors], cut)[cut:]]
    return np.argpartition(values, n - k)[n - k :]
