"""Item-based collaborative filtering for implicit feedback: item-item cosine over the users who touched both.

River's :class:`~fusionrec.models.cf.MatrixFactorization` (BiasedMF) learns ratings, and its top items are those
with the best predicted rating, not those a user is likely to touch next: on MovieLens it falls below plain
popularity at hit rate. Item-based CF (Sarwar et al. 2001; Linden et al. 2003, Amazon's "customers who bought this
also bought") works from implicit co-occurrence instead, streams naturally and is cheap per event:

* each user-item pair counts once (binary implicit feedback): a user's first event on an item (among their last
  ``max_seen`` distinct items) adds 1 to the item's count ``n_i`` and to its co-occurrence ``c_ij`` with each of
  their last ``max_history`` distinct items, both ways;
* the similarity is the cosine ``c_ij / sqrt(n_i n_j)``; counts decay with ``half_life_ms`` in forward-decay form,
  and the decay factor cancels out of the cosine, so scores need no decay on read;
* each item keeps its ``max_neighbours`` most similar items (pruned by ``c_ij / sqrt(n_j)``, which orders them as
  the cosine does), so memory is bounded by the item cap;
* a user's candidates are the summed similarities from their last ``recent_items`` items; the items they have
  touched (their last ``max_seen``) are not proposed.

Unlike co-visitation, pairs need no session or time window: two items co-occur when one user touched both, hours or
months apart, which is what long-lived histories (MovieLens, loyal shoppers) need.

"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fusionrec.contracts.events import Event

from ._state import MAX_DECAY_EXPONENT, UserItemActivity, scale_links, strongest, top_k, touch
from .base import Recommender, require_at_least, require_positive

__all__ = ["ItemCF"]


class ItemCF(UserItemActivity, Recommender):
    """Cosine item-item CF from the user's latest items.

    Parameters
    ----------
    recent_items
        How many of the user's latest distinct items seed candidates (at most ``max_history`` are remembered).
    max_history
        The user's latest distinct items a new item co-occurs with: few, since items touched close together in a
        user's history are more alike than items touched far apart (10 beat 30 and 100 on MovieLens-100K).
    max_seen
        Distinct items remembered per user to keep out of their candidates (and to count a user-item pair once).
    half_life_ms
        After this long, a co-occurrence counts half as much.
    max_neighbours
        Neighbours kept per item, the most similar; a list is pruned back to this size when it has doubled.
    event_weights, max_users, max_items, max_idle_ms
        As for every model (:mod:`fusionrec.models.base`); events whose type weighs 0 are ignored, and a
        ``rate`` event counts whatever its rating (consumption, ``Recommender._interaction``); the
        others all count as 1.

    Examples
    --------

    >>> from fusionrec.contracts.events import Event
    >>> from fusionrec.models import ItemCF

    Two users who watched Alien also watched Aliens; one of them watched Heat:

    >>> t = 1_700_000_000_000
    >>> model = ItemCF()
    >>> for n, films in enumerate([["alien", "aliens", "heat"], ["alien", "aliens"]]):
    ...     for m, film in enumerate(films):
    ...         model.learn_one(Event(f"e{n}{m}", f"u{n}", film, "rate", t + m, rating=5))
    >>> model.similar("alien", k=3)
    [('aliens', 1.0), ('heat', 0.7071)]

    A third user watches Alien (and so makes it a little less similar to the others):

    >>> model.learn_one(Event("z", "zoe", "alien", "view", t))
    >>> [(film, round(score, 4)) for film, score in model.candidates("zoe", k=3)]
    [('aliens', 0.8165), ('heat', 0.5774)]

    """

    source = "itemcf"

    def __init__(
        self,
        recent_items: int = 10,
        max_history: int = 10,
        max_seen: int = 100,
        half_life_ms: int = 30 * 86_400_000,
        max_neighbours: int = 50,
        event_weights: Mapping[str, float] | None = None,
        max_users: int = 500_000,
        max_items: int = 500_000,
        max_idle_ms: int | None = None,
    ):
        super().__init__(event_weights, max_idle_ms)
        require_positive(half_life_ms=half_life_ms)
        require_at_least(
            1,
            recent_items=recent_items,
            max_history=max_history,
            max_seen=max_seen,
            max_neighbours=max_neighbours,
            max_users=max_users,
            max_items=max_items,
        )
        self.recent_items = recent_items
        self.max_history = max_history
        self.max_seen = max_seen
        self.half_life_ms = half_life_ms
        self.max_neighbours = max_neighbours
        self.max_users = max_users
        self.max_items = max_items

        self._prune_at = 2 * max_neighbours  # pruning sorts the list: amortised over as many new neighbours
        self._t0 = None
        self._history: dict[str, list[str]] = {}  # user -> their latest distinct items, oldest first
        self._seen: dict[str, dict[str, None]] = {}  # user -> their last max_seen distinct items (an ordered set)
        self._user_last: dict[str, int] = {}
        self._count: dict[str, float] = {}  # item -> forward-decayed user count n_i
        self._pairs: dict[str, dict[str, float]] = {}  # item -> neighbour -> forward-decayed co-occurrence c_ij
        self._item_last: dict[str, int] = {}

    # --- learning ----------------------------------------------------------------------------------------------

    def learn_one(self, event: Event) -> None:
        context = self.learn_user_side(event)
        if context is not None:
            self.learn_item_side(event.item_id, event.ts, context)

    def learn_user_side(self, event: Event) -> list[str] | None:
        """Add the item to the user's history; return the items it now co-occurs with (None if it was there)."""
        if self._interaction(event) <= 0.0:
            return None
        user, item = event.user_id, event.item_id
        touch(self._user_last, user, event.ts, self.max_users, self._drop_user)
        history = self._history.get(user)
        if history is None:
            history = self._history[user] = []
            seen = self._seen[user] = {}
        else:
            seen = self._seen[user]
        known = item in seen
        if known:
            del seen[item]
        seen[item] = None
        if len(seen) > self.max_seen:
            del seen[next(iter(seen))]
        if item in history:
            history.remove(item)
        others = None if known else list(history)
        history.append(item)
        if len(history) > self.max_history:
            del history[0]
        return others

    def learn_user_side_many(self, events: Sequence[Event]) -> list[list[str] | None]:
        """:meth:`learn_user_side` for each event, in one loop (the partitions' hot path)."""
        weights, max_seen, max_history, cap = self._weights, self.max_seen, self.max_history, self.max_users
        user_last, histories, seens, clock, out = self._user_last, self._history, self._seen, self._clock, []
        for event in events:
            ts = event.ts
            if ts > clock:
                clock = ts
            if weights.get(event.type, 0.0) <= 0.0:
                out.append(None)
                continue
            user, item = event.user_id, event.item_id
            previous = user_last.get(user)  # touch(), inline
            if previous is None:
                if len(user_last) >= cap:
                    touch(user_last, user, ts, cap, self._drop_user)
                else:
                    user_last[user] = ts
            elif ts > previous:
                user_last[user] = ts
            history = histories.get(user)
            if history is None:
                history = histories[user] = []
                seen = seens[user] = {}
            else:
                seen = seens[user]
            known = item in seen
            if known:
                del seen[item]
            seen[item] = None
            if len(seen) > max_seen:
                del seen[next(iter(seen))]
            if item in history:
                history.remove(item)
            out.append(None if known else list(history))
            history.append(item)
            if len(history) > max_history:
                del history[0]
        self._clock = clock
        return out

    def learn_item_side(self, item_id: str, ts: int, context: Sequence[Any]) -> None:
        """Count one more user of ``item_id``, and one more co-occurrence with each of ``context``'s items."""
        if ts > self._clock:
            self._clock = ts
        decay = 2.0 ** ((ts - self._forward_origin(ts, self.half_life_ms)) / self.half_life_ms)
        touch(self._item_last, item_id, ts, self.max_items, self._drop_item)
        count, pairs = self._count, self._pairs
        count[item_id] = count.get(item_id, 0.0) + decay
        mine = pairs.get(item_id)
        if mine is None:
            mine = pairs[item_id] = {}
        prune_at = self._prune_at
        for other in context:
            theirs = pairs.get(other)
            if theirs is None:  # evicted since the user touched it
                continue
            theirs[item_id] = theirs.get(item_id, 0.0) + decay
            if len(theirs) > prune_at:
                self._prune(other)
            mine[other] = mine.get(other, 0.0) + decay
        if len(mine) > prune_at:
            self._prune(item_id)

    def learn_item_side_many(self, records: Iterable[tuple[str, int, Sequence[Any]]]) -> None:
        """:meth:`learn_item_side` for each record, in one loop (the shared item side's hot path)."""
        half_life, cap, prune_at = self.half_life_ms, self.max_items, self._prune_at
        item_last, count, pairs, clock, t0 = self._item_last, self._count, self._pairs, self._clock, self._t0
        for item_id, ts, context in records:
            if ts > clock:
                clock = ts
            if t0 is None or (ts - t0) / half_life > MAX_DECAY_EXPONENT:
                t0 = self._forward_origin(ts, half_life)
            decay = 2.0 ** ((ts - t0) / half_life)
            previous = item_last.get(item_id)  # touch(), inline
            if previous is None:
                if len(item_last) >= cap:
                    touch(item_last, item_id, ts, cap, self._drop_item)
                else:
                    item_last[item_id] = ts
            elif ts > previous:
                item_last[item_id] = ts
            count[item_id] = count.get(item_id, 0.0) + decay
            mine = pairs.get(item_id)
            if mine is None:
                mine = pairs[item_id] = {}
            for other in context:
                theirs = pairs.get(other)
                if theirs is None:
                    continue
                theirs[item_id] = theirs.get(item_id, 0.0) + decay
                if len(theirs) > prune_at:
                    self._prune(other)
                mine[other] = mine.get(other, 0.0) + decay
            if len(mine) > prune_at:
                self._prune(item_id)
        self._clock = clock

    def _prune(self, item: str) -> None:
        count = self._count
        neighbours = self._pairs[item]
        self._pairs[item] = strongest(
            neighbours.items(), self.max_neighbours, key=lambda pair: pair[1] / math.sqrt(count.get(pair[0], 1.0))
        )

    def _rebase(self, ts: int) -> None:
        factor = 2.0 ** ((self._t0 - ts) / self.half_life_ms)  # type: ignore[operator]
        self._t0 = ts
        for item in self._count:
            self._count[item] *= factor
        scale_links(self._pairs, factor)

    # --- inference ---------------------------------------------------------------------------------------------

    def _scored(self, user_id: str) -> dict[str, float]:
        history = self._history.get(user_id)
        if not history:
            return {}
        sums: dict[str, float] = {}  # item -> sum over seeds of c_hj / sqrt(n_h); the cosine divides by sqrt(n_j)
        get = sums.get
        count, pairs = self._count, self._pairs
        for seed in history[-self.recent_items :]:
            neighbours = pairs.get(seed)
            if not neighbours:
                continue
            inverse = 1.0 / math.sqrt(count[seed])
            for other, together in neighbours.items():
                sums[other] = get(other, 0.0) + together * inverse
        for seen in self._seen[user_id]:
            sums.pop(seen, None)
        sqrt = math.sqrt
        return {item: value / sqrt(count[item]) for item, value in sums.items() if item in count}

    def score(self, user_id: str, items: Sequence[str], now_ms: int | None = None) -> np.ndarray:  # noqa: ARG002
        """Summed cosine similarity to the user's latest items (the decay cancels out of a cosine: no ``now_ms``)."""
        get = self._scored(user_id).get
        return np.array([get(item, 0.0) for item in items], dtype=np.float64)

    def candidates(self, user_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:  # noqa: ARG002
        """The ``k`` items most similar to the user's latest ones, outside their history (ties: larger id first)."""
        return top_k(self._scored(user_id).items(), k)

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` items most similar to ``item_id`` (cosine, rounded to 4 places): "also bought" for a page."""
        n = self._count.get(item_id)
        if not n:
            return []
        count = self._count
        return top_k(
            (
                (other, round(c / math.sqrt(n * count[other]), 4))
                for other, c in self._pairs.get(item_id, {}).items()
                if count.get(other)
            ),
            k,
        )

    # --- memory (n_users, n_items and evict come with UserItemActivity) ----------------------------------------

    def forget_user(self, user_id: str) -> bool:
        """Drop the user's history and seen items (the co-occurrences they taught the items stay)."""
        if user_id not in self._user_last:
            return False
        self._drop_user(user_id)
        return True

    def _drop_user(self, user: str) -> None:
        del self._user_last[user]
        self._history.pop(user, None)
        self._seen.pop(user, None)

    def _drop_item(self, item: str) -> None:
        """Forget ``item``, its count and the pairs with it on both sides."""
        del self._item_last[item]
        self._count.pop(item, None)
        pairs = self._pairs
        for other in pairs.pop(item, ()):
            theirs = pairs.get(other)
            if theirs is not None:
                theirs.pop(item, None)

    # --- snapshots ---------------------------------------------------------------------------------------------

    _state_fields = ("t0", "history", "seen", "user_last", "count", "pairs", "item_last")
    _item_fields = ("t0", "count", "pairs", "item_last")
