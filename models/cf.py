"""Incremental collaborative filtering: biased matrix factorisation trained by SGD, one event at a time.

The model is River's :class:`river.reco.BiasedMF`,

    prediction(u, i) = global mean + b_u + b_i + <p_u, q_i>,

with the same update rule (squared loss, gradient ``2 * (prediction - y)`` clipped to ``clip_gradient``, L2 on the
old values, separate learning rates for biases and latent factors, latent factors drawn from N(0, ``init_std``)) and
the same defaults as River's documented MovieLens example (10 factors, SGD 0.025 for biases and 0.05 for factors,
no L2). It learns from two kinds of feedback:

* **explicit ratings** with :meth:`MatrixFactorization.learn_rating` / :meth:`MatrixFactorization.predict_rating`,
  which follow River's ``learn_one`` / ``predict_one`` step for step (the global mean is updated before the
  prediction used for the gradient);
* **implicit events** with :meth:`~MatrixFactorization.learn_one`: an event of positive weight ``w`` is a target of
  1 whose gradient counts ``w`` times, followed by ``n_negatives`` items drawn uniformly from the known catalogue as
  targets of 0 (weight 1); an event of negative weight (e.g. if you weigh ``remove_from_cart`` -1) is a target of
  0 with weight ``-w``.

Item factors live in one contiguous ``(n_items, n_factors)`` matrix with an id -> row index (capacity doubles as it
grows; evicted rows are filled by the last row), so a whole catalogue is scored with one matrix product:
:meth:`~MatrixFactorization.item_matrix`, :meth:`~MatrixFactorization.item_bias` and
:meth:`~MatrixFactorization.user_vector` hand it to a ranker, and :meth:`~MatrixFactorization.candidates` uses it
in chunks with ``argpartition``.

``learn_one`` is exact sequential SGD: the positive step, then one step per negative (about 4 microseconds per
step). ``learn_many`` is about three times faster: it takes ``batch_size`` events at a time and makes one
vectorised SGD step per *round*, round ``r`` holding every user's ``r``-th event of the batch, so each user still
moves once per event and in order; the positive and negatives of an event move the user together (their gradients
summed), and an item touched several times in one round moves by the mean of those steps (summing them would let
a hot item take a hundred steps at once and diverge).

The storage lives in :mod:`fusionrec.models._factors`, the update rule in both forms (one step, and the vectorised
rounds) in :mod:`fusionrec.models._sgd`. What stays here, past the usual 400 lines, is one algorithm that a further
split would scatter: which samples each event makes, and the three ways of reading the factors back
(``score``, ``candidates``, ``candidates_many``).

"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fusionrec.contracts.events import Event

from ._factors import FactorTable, LatentPool, top_indices
from ._sgd import SGDRates, sgd_rounds, sgd_step
from .base import Recommender, event_weight, require_at_least

if TYPE_CHECKING:
    import torch

__all__ = ["MatrixFactorization"]


class MatrixFactorization(Recommender):
    """Biased matrix factorisation for implicit events and explicit ratings.

    Parameters
    ----------
    n_factors
        Dimensionality of the user and item latent vectors.
    bias_lr
        SGD learning rate of the global-mean offsets (user and item biases).
    latent_lr
        SGD learning rate of the latent vectors.
    l2_bias
        L2 regularisation of the biases.
    l2_latent
        L2 regularisation of the latent vectors.
    init_std
        Standard deviation of the normal distribution new latent vectors are drawn from.
    clip_gradient
        The loss gradient is clipped to ``[-clip_gradient, clip_gradient]`` before being weighted.
    n_negatives
        Items drawn uniformly from the known catalogue as negatives (target 0) for every positive event.
    batch_size
        Events per mini-batch in :meth:`learn_many`.
    event_weights, max_users, max_items, max_idle_ms
        As for every model (:mod:`fusionrec.models.base`); weight 0 is ignored, a negative weight is a negative.
    seed
        Seeds the latent initialisation and the negative sampling.

    Examples
    --------

    Explicit ratings, as in River's BiasedMF example:

    >>> from fusionrec.models import MatrixFactorization

    >>> ratings = [
    ...     ("Alice", "Superman", 8), ("Alice", "Terminator", 9), ("Alice", "Star Wars", 8),
    ...     ("Alice", "Notting Hill", 2), ("Alice", "Harry Potter", 5), ("Bob", "Superman", 8),
    ...     ("Bob", "Terminator", 9), ("Bob", "Star Wars", 8), ("Bob", "Notting Hill", 2),
    ... ]
    >>> model = MatrixFactorization(latent_lr=0.025, seed=71)
    >>> for user, item, y in ratings:
    ...     model.learn_rating(user, item, y)
    >>> round(model.predict_rating("Bob", "Harry Potter"), 1)
    6.5

    Implicit events: shoppers of one kind buy tea, of another coffee.

    >>> from fusionrec.contracts.events import Event
    >>> t = 1_700_000_000_000
    >>> model = MatrixFactorization(seed=1)
    >>> events = []
    >>> for n in range(300):
    ...     kind = ["green", "black", "oolong"] if n % 2 else ["espresso", "latte", "mocha"]
    ...     events.append(Event(f"e{n}", f"u{n % 20}", kind[n % 3], "purchase", t + n))
    >>> for epoch in range(5):
    ...     model.learn_many(events)
    >>> sorted(item for item, _ in model.candidates("u1", k=3))  # u1 (odd) bought only tea
    ['black', 'green', 'oolong']

    """

    source = "cf"
    #: Rows scored per matrix product in :meth:`candidates`.
    chunk_rows = 65_536
    #: Memory bound of one block in :meth:`candidates_many` when the caller gives none.
    chunk_bytes = 64 * 2**20

    def __init__(
        self,
        n_factors: int = 10,
        bias_lr: float = 0.025,
        latent_lr: float = 0.05,
        l2_bias: float = 0.0,
        l2_latent: float = 0.0,
        init_std: float = 0.1,
        clip_gradient: float = 1e12,
        n_negatives: int = 2,
        batch_size: int = 1024,
        event_weights: Mapping[str, float] | None = None,
        max_users: int = 1_000_000,
        max_items: int = 1_000_000,
        max_idle_ms: int | None = None,
        seed: int | None = None,
    ):
        super().__init__(event_weights, max_idle_ms)
        require_at_least(1, n_factors=n_factors, batch_size=batch_size, max_users=max_users, max_items=max_items)
        require_at_least(0, n_negatives=n_negatives)
        self.n_factors = n_factors
        self.bias_lr = bias_lr
        self.latent_lr = latent_lr
        self.l2_bias = l2_bias
        self.l2_latent = l2_latent
        self.init_std = init_std
        self.clip_gradient = clip_gradient
        self.n_negatives = n_negatives
        self.batch_size = batch_size
        self.max_users = max_users
        self.max_items = max_items
        self.seed = seed

        self._rng = random.Random(seed)  # cheap per-event draws
        self._np_rng = np.random.default_rng(seed)  # vectorised draws
        self._mean = 0.0  # running (weighted) mean of the targets
        self._weight_sum = 0.0
        self._users = FactorTable(n_factors)
        self._items = FactorTable(n_factors)
        self._pool = LatentPool(n_factors, init_std, self._np_rng)  # latent vectors of the next new users and items
        self._rates = SGDRates(bias_lr, latent_lr, l2_bias, l2_latent, clip_gradient)

    # --- rows --------------------------------------------------------------------------------------------------

    def _row(self, table: FactorTable, key: str, ts: int, cap: int | None) -> int:
        """The row of ``key``, added if new, with its latest event time.

        ``cap=None`` is the batch mode: the cap and the new row's latent vector are left to the caller.
        """
        row = table.index.get(key)
        if row is None:
            if cap is None:
                return table.add(key, ts, None)
            table.trim(cap, adding=1)
            return table.add(key, ts, self._pool.take(1)[0])
        if ts > table.last[row]:
            table.last[row] = ts
        return row

    # --- learning ----------------------------------------------------------------------------------------------

    def learn_one(self, event: Event) -> None:
        """One sequential SGD step on the event (target 1, or 0 for a negative weight), then one per negative."""
        w = self._weigh(event)
        if w == 0.0:
            return
        ts = event.ts
        users, items, rates = self._users, self._items, self._rates
        u = self._row(users, event.user_id, ts, self.max_users)
        i = self._row(items, event.item_id, ts, self.max_items)
        if w < 0.0:
            self._mean, self._weight_sum = sgd_step(users, items, u, i, 0.0, -w, self._mean, self._weight_sum, rates)
            return
        mean, weight_sum = sgd_step(users, items, u, i, 1.0, w, self._mean, self._weight_sum, rates)
        n = items.n
        if n > 1:
            draw = self._rng.random
            for _ in range(self.n_negatives):
                j = int(draw() * n)
                if j != i:
                    mean, weight_sum = sgd_step(users, items, u, j, 0.0, 1.0, mean, weight_sum, rates)
        self._mean, self._weight_sum = mean, weight_sum

    def learn_many(self, events: Iterable[Event]) -> None:
        """Learn ``events`` in mini-batches of ``batch_size``, one vectorised SGD step per round (see the module)."""
        batch: list[Event] = []
        for event in events:
            batch.append(event)
            if len(batch) == self.batch_size:
                self._learn_batch(batch)
                batch = []
        if batch:
            self._learn_batch(batch)

    def _learn_batch(self, batch: list[Event]) -> None:
        weights, users, items = self._weights, self._users, self._items
        user_index, item_index = users.index, items.index
        rows_u: list[int] = []
        rows_i: list[int] = []
        stamps: list[int] = []
        signed: list[float] = []
        clock = self._clock
        new_users, new_items = users.n, items.n  # rows from here on are added by this batch
        for event in batch:  # caps are deferred so that rows stay valid until the update
            ts = event.ts
            if ts > clock:
                clock = ts
            w = event_weight(weights, event)
            if w == 0.0:
                continue
            row = user_index.get(event.user_id)
            rows_u.append(self._row(users, event.user_id, ts, None) if row is None else row)
            row = item_index.get(event.item_id)
            rows_i.append(self._row(items, event.item_id, ts, None) if row is None else row)
            stamps.append(ts)
            signed.append(w)
        self._clock = clock
        for table, start in ((users, new_users), (items, new_items)):
            if table.n > start:
                table.factors[start : table.n] = self._pool.take(table.n - start)
        if rows_u:
            u, i = np.array(rows_u, dtype=np.intp), np.array(rows_i, dtype=np.intp)
            ts_array, w_array = np.array(stamps, dtype=np.int64), np.array(signed)
            np.maximum.at(users.last, u, ts_array)
            np.maximum.at(items.last, i, ts_array)
            self._update_batch(u, i, (w_array > 0.0).astype(np.float64), np.abs(w_array))
        users.trim(self.max_users)
        items.trim(self.max_items)

    def _update_batch(self, u: np.ndarray, i: np.ndarray, y: np.ndarray, weight: np.ndarray) -> None:
        """SGD on events ``(u, i, y, weight)`` and ``n_negatives`` negatives each, drawn uniformly from the catalogue
        (:func:`~fusionrec.models._sgd.sgd_rounds` applies the steps). A negative that hits its own positive, or
        follows an event of target 0, is no sample."""
        k = self.n_negatives if self._items.n > 1 else 0
        n_events = u.shape[0]
        # (events, 1 + k) item rows, targets and weights: the event itself, then its negatives
        cols_i = np.empty((n_events, 1 + k), dtype=np.intp)
        cols_i[:, 0] = i
        cols_y = np.zeros((n_events, 1 + k))
        cols_y[:, 0] = y
        cols_w = np.zeros((n_events, 1 + k))
        cols_w[:, 0] = weight
        if k:
            cols_i[:, 1:] = self._np_rng.integers(0, self._items.n, size=(n_events, k))
            cols_w[:, 1:] = ((y > 0.0)[:, None] & (cols_i[:, 1:] != i[:, None])).astype(np.float64)
        self._mean, self._weight_sum = sgd_rounds(
            self._users, self._items, u, cols_i, cols_y, cols_w, self._mean, self._weight_sum, self._rates
        )

    def learn_rating(self, user: str, item: str, y: float, ts: int | None = None) -> None:
        """Learn an explicit rating ``y``, exactly as River's ``BiasedMF.learn_one(user, item, y)`` does.

        ``ts`` (epoch ms) marks the user and item as active for :meth:`evict`; without it, the latest time seen.
        """
        if ts is None:
            ts = self._clock
        elif ts > self._clock:
            self._clock = ts
        u = self._row(self._users, user, ts, self.max_users)
        i = self._row(self._items, item, ts, self.max_items)
        self._mean, self._weight_sum = sgd_step(
            self._users, self._items, u, i, float(y), 1.0, self._mean, self._weight_sum, self._rates
        )

    def predict_rating(self, user: str, item: str) -> float:
        """The predicted rating: global mean + biases + dot product; unknown users and items contribute 0."""
        u = self._users.index.get(user)
        i = self._items.index.get(item)
        y = self._mean
        if u is not None:
            y += float(self._users.bias[u])
        if i is not None:
            y += float(self._items.bias[i])
        if u is not None and i is not None:
            y += float(self._users.factors[u].dot(self._items.factors[i]))
        return y

    # --- inference ---------------------------------------------------------------------------------------------

    def score(self, user_id: str, items: Sequence[str], now_ms: int | None = None) -> np.ndarray:  # noqa: ARG002 - the Recommender interface; this model has no time decay
        """The predicted preference of each item; 0.0 for an unknown user or item. ``now_ms`` is not used."""
        out = np.zeros(len(items), dtype=np.float64)
        u = self._users.index.get(user_id)
        if u is None or not len(items):
            return out
        index = self._items.index
        rows = np.array([index.get(item, -1) for item in items], dtype=np.intp)
        known = rows >= 0
        rows = rows[known]
        table = self._items
        base = self._mean + float(self._users.bias[u])
        out[known] = base + table.bias[rows] + table.factors[rows] @ self._users.factors[u]
        return out

    def candidates(self, user_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:  # noqa: ARG002 - the Recommender interface; this model has no time decay
        """The ``k`` items of highest predicted preference (ties: larger id first); none for an unknown user.

        Items the user already interacted with are not excluded.
        """
        u = self._users.index.get(user_id)
        table = self._items
        if u is None or k <= 0 or table.n == 0:
            return []
        pu = self._users.factors[u]
        base = self._mean + float(self._users.bias[u])
        rows, values = [], []
        for start in range(0, table.n, self.chunk_rows):
            end = min(start + self.chunk_rows, table.n)
            chunk = table.factors[start:end] @ pu + table.bias[start:end]
            best = top_indices(chunk, k)
            rows.append(best + start)
            values.append(chunk[best])
        all_rows, all_values = np.concatenate(rows), np.concatenate(values) + base
        ids = table.ids
        pairs = sorted(zip(all_values.tolist(), (ids[r] for r in all_rows.tolist()), strict=False), reverse=True)[:k]
        return [(item, value) for value, item in pairs]

    def candidates_many(
        self,
        users: Sequence[str],
        k: int,
        now_ms: int | None = None,  # noqa: ARG002 - the Recommender interface; this model has no time decay
        *,
        device: str | torch.device | None = None,
        max_chunk_bytes: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Every user's top ``k`` over the whole catalogue at once, in float32 on ``device``: on the CPU only the items
        that can make a user's top are scored (:func:`~fusionrec.models.topk.bounded_top_k`, exact), elsewhere all
        of them in blocks of at most ``max_chunk_bytes`` (:func:`~fusionrec.models.topk.exhaustive_top_k`). The items
        are :meth:`candidates`' up to float32 rounding (and the order of near ties); none for an unknown user."""
        from .topk import bounded_top_k, exhaustive_top_k, pick_device  # torch is loaded only when a ranker asks

        out: list[list[tuple[str, float]]] = [[] for _ in users]
        index, table = self._users.index, self._users
        rows = [n for n, user in enumerate(users) if user in index]
        if not rows or self.n_items == 0:
            return out
        at = [index[users[n]] for n in rows]
        factors = table.factors[at].astype(np.float32)
        base = (self._mean + table.bias[at]).astype(np.float32)
        budget = self.chunk_bytes if max_chunk_bytes is None else max_chunk_bytes
        items, bias = self._items.factors[: self._items.n], self._items.bias[: self._items.n]
        if pick_device(str(device) if device is not None else "auto").type == "cpu":
            scores, indices = bounded_top_k(factors, items, k, item_bias=bias, user_bias=base, max_chunk_bytes=budget)
        else:
            scores, indices = exhaustive_top_k(
                factors,
                np.asarray(items, dtype=np.float32),
                k,
                item_bias=np.asarray(bias, dtype=np.float32),
                user_bias=base,
                device=device,
                max_chunk_bytes=budget,
            )
        ids = self._items.ids
        complete = bool((indices >= 0).all())
        for n, user_scores, user_indices in zip(rows, scores.tolist(), indices.tolist(), strict=True):
            if complete:
                out[n] = list(zip(map(ids.__getitem__, user_indices), user_scores, strict=False))
            else:
                out[n] = [(ids[i], s) for s, i in zip(user_scores, user_indices, strict=False) if i >= 0]
        return out

    # --- catalogue access for rankers --------------------------------------------------------------------------

    def item_ids(self) -> list[str]:
        """The item ids in row order of :meth:`item_matrix` (a copy)."""
        return list(self._items.ids)

    def item_matrix(self) -> np.ndarray:
        """The ``(n_items, n_factors)`` item factors: a read-only view, valid until the next update."""
        view = self._items.factors[: self._items.n]
        view.flags.writeable = False
        return view

    def item_bias(self) -> np.ndarray:
        """The item biases in row order: a read-only view, valid until the next update."""
        view = self._items.bias[: self._items.n]
        view.flags.writeable = False
        return view

    def user_vector(self, user_id: str) -> np.ndarray | None:
        """A copy of the user's latent vector, or ``None`` for an unknown user."""
        u = self._users.index.get(user_id)
        return None if u is None else self._users.factors[u].copy()

    def user_bias(self, user_id: str) -> float:
        """The user's bias (0.0 for an unknown user)."""
        u = self._users.index.get(user_id)
        return 0.0 if u is None else float(self._users.bias[u])

    @property
    def global_mean(self) -> float:
        """The running (weighted) mean of the targets learned."""
        return self._mean

    # --- memory ------------------------------------------------------------------------------------------------

    @property
    def n_users(self) -> int:
        return self._users.n

    @property
    def n_items(self) -> int:
        return self._items.n

    def forget_user(self, user_id: str) -> bool:
        """Drop the user's latent vector and bias; the item factors the user's events moved stay (shared state)."""
        row = self._users.index.get(user_id)
        if row is None:
            return False
        self._users.remove_rows(np.array([row]))
        return True

    def evict(self, now_ms: int) -> int:
        """Drop users and items without events since ``now_ms - max_idle_ms``; return how many were dropped."""
        if self.max_idle_ms is None:
            return 0
        cutoff = now_ms - self.max_idle_ms
        dropped = 0
        for table in (self._users, self._items):
            idle = table.idle_rows(cutoff)
            table.remove_rows(idle)
            dropped += idle.shape[0]
        return dropped

    # --- snapshots ---------------------------------------------------------------------------------------------

    def _get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "mean": self._mean,
            "weight_sum": self._weight_sum,
            "rng": self._rng.getstate(),
            "np_rng": self._np_rng.bit_generator.state,
            "pool": self._pool.remaining(),
        }
        state["users"], state["items"] = self._users.state(), self._items.state()
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        self._mean = state["mean"]
        self._weight_sum = state["weight_sum"]
        self._rng.setstate(state["rng"])
        self._np_rng.bit_generator.state = state["np_rng"]
        self._pool.refill(state["pool"])
        self._users = FactorTable.from_state(state["users"], self.n_factors)
        self._items = FactorTable.from_state(state["items"], self.n_factors)
