"""Popularity and trending: what every shopper is buying, with exponential time decay.

Both sources are user-independent, so they answer for cold users too (the fusion layer's fallback).

Decay is lazy and costs nothing per tick: an item's score is its weighted event count, each event decayed by
``2 ** (-(now - ts) / half_life)``. The model stores it in *forward-decay* form, every event weighted
``2 ** ((ts - t0) / half_life)`` against a fixed reference time ``t0``, and multiplies by
``2 ** (-(now - t0) / half_life)`` on read. That is the same number as decaying each score from its last update, but
the stored values never change with time, so their order does not either, and a small heap keeps the ``top_n`` best
items exact at O(log top_n) per event. The reference time moves forward (one pass over the state) every 256
half-lives to keep the stored numbers finite.

"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from fusionrec.contracts.events import Event

from ._state import MAX_DECAY_EXPONENT, by_score_then_id, evict_idle, touch
from .base import Recommender, event_weight, require_at_least, require_positive

__all__ = ["Popularity", "Trending"]


class Popularity(Recommender):
    """Decayed item popularity: the same candidates for every user.

    Parameters
    ----------
    half_life_ms
        After this long, an event counts half as much.
    top_n
        How many best items are kept ready for :meth:`candidates`; asking for more scans every item.
    event_weights, max_items, max_idle_ms
        As for every model (:mod:`fusionrec.models.base`); events weighing 0 or less are ignored.

    Examples
    --------

    >>> from fusionrec.contracts.events import Event
    >>> from fusionrec.models import Popularity

    >>> hour = 3_600_000
    >>> t = 1_700_000_000_000
    >>> model = Popularity(half_life_ms=hour)
    >>> for i, (item, kind) in enumerate([("tea", "view"), ("mug", "purchase"), ("tea", "view")]):
    ...     model.learn_one(Event(f"e{i}", "ann", item, kind, t))

    Any user gets the most popular items, with their decayed scores:

    >>> model.candidates("bob", k=2)
    [('mug', 5.0), ('tea', 2.0)]

    An hour later every score has halved:

    >>> model.score("bob", ["tea", "kettle"], now_ms=t + hour)
    array([1., 0.])

    """

    personal = False
    source = "popular"

    def __init__(
        self,
        half_life_ms: int = 86_400_000,
        top_n: int = 100,
        event_weights: Mapping[str, float] | None = None,
        max_items: int = 1_000_000,
        max_idle_ms: int | None = None,
    ):
        super().__init__(event_weights, max_idle_ms)
        require_positive(half_life_ms=half_life_ms)
        require_at_least(1, top_n=top_n, max_items=max_items)
        self.half_life_ms = half_life_ms
        self.top_n = top_n
        self.max_items = max_items

        self._t0 = None
        self._score: dict[str, float] = {}  # item -> forward-decayed score (relative to _t0)
        self._last: dict[str, int] = {}  # item -> latest event ts
        self._top: dict[str, float] = {}  # the top_n items of _score
        self._heap: list[tuple[float, str]] = []  # min-heap over _top; entries whose value is outdated are stale
        self._top_dropped = False  # an item of _top was dropped: _top must be rebuilt

    # --- learning ----------------------------------------------------------------------------------------------

    def learn_one(self, event: Event) -> None:
        w = self._weigh(event)
        if w > 0.0:
            self.learn_item_side(event.item_id, event.ts, w)

    def learn_user_side(self, event: Event) -> float | None:
        """Popularity keeps nothing per user: the item side needs only the event's weight."""
        w = self._weigh(event)
        return w if w > 0.0 else None

    def learn_user_side_many(self, events: Sequence[Event]) -> list[float | None]:
        """:meth:`learn_user_side` for each event, in one loop."""
        weights, clock, out = self._weights, self._clock, []
        for event in events:
            if event.ts > clock:
                clock = event.ts
            w = event_weight(weights, event)
            out.append(w if w > 0.0 else None)
        self._clock = clock
        return out

    def learn_item_side(self, item_id: str, ts: int, context: float) -> None:
        if ts > self._clock:
            self._clock = ts
        w, item = context, item_id
        exponent = (ts - self._forward_origin(ts, self.half_life_ms)) / self.half_life_ms
        touch(self._last, item, ts, self.max_items, self._drop)
        if self._top_dropped:
            self._rebuild_top()
        value = self._score.get(item, 0.0) + w * 2.0**exponent
        self._score[item] = value
        self._offer(item, value)

    def learn_item_side_many(self, records: Iterable[tuple[str, int, float]]) -> None:
        """:meth:`learn_item_side` for each record, in one loop: the shared item side's hot path (most records
        leave the top as it is, which is seen here without a call)."""
        half_life, cap, top_n = self.half_life_ms, self.max_items, self.top_n
        last, clock, t0 = self._last, self._clock, self._t0
        for item, ts, w in records:
            if ts > clock:
                clock = ts
            if t0 is None or (ts - t0) / half_life > MAX_DECAY_EXPONENT:
                t0 = self._forward_origin(ts, half_life)
            exponent = (ts - t0) / half_life
            previous = last.get(item)  # touch(), inline
            if previous is None:
                if len(last) >= cap:
                    touch(last, item, ts, cap, self._drop)
                else:
                    last[item] = ts
            elif ts > previous:
                last[item] = ts
            if self._top_dropped:
                self._rebuild_top()
            score = self._score
            value = score.get(item, 0.0) + w * 2.0**exponent
            score[item] = value
            top = self._top
            if item not in top and len(top) >= top_n:
                low = self._heap[0]
                if top.get(low[1]) == low[0] and (value, item) <= low:  # what _offer finds: no change
                    continue
            self._offer(item, value)
        self._clock = clock

    def _offer(self, item: str, value: float) -> None:
        """Keep ``_top`` equal to the ``top_n`` best items after ``item``'s score rose to ``value``."""
        top, heap = self._top, self._heap
        if item in top or len(top) < self.top_n:
            top[item] = value
            heapq.heappush(heap, (value, item))
        else:
            while top.get(heap[0][1]) != heap[0][0]:  # drop stale entries until the true minimum shows
                heapq.heappop(heap)
            if (value, item) <= heap[0]:
                return
            del top[heapq.heappop(heap)[1]]
            top[item] = value
            heapq.heappush(heap, (value, item))
        if len(heap) > 4 * self.top_n + 16:
            self._heap = [(v, i) for i, v in top.items()]
            heapq.heapify(self._heap)

    def _rebase(self, ts: int) -> None:
        factor = 2.0 ** ((self._t0 - ts) / self.half_life_ms)  # type: ignore[operator]
        self._t0 = ts
        self._score = {item: value * factor for item, value in self._score.items()}
        self._rebuild_top()

    def _rebuild_top(self) -> None:
        best = heapq.nlargest(self.top_n, ((v, i) for i, v in self._score.items()))
        self._top = {i: v for v, i in best}
        self._heap = best[::-1]
        heapq.heapify(self._heap)
        self._top_dropped = False

    # --- inference ---------------------------------------------------------------------------------------------

    def score(self, user_id: str, items: Sequence[str], now_ms: int | None = None) -> np.ndarray:  # noqa: ARG002 - the Recommender interface; the same list for every user
        """Each item's decayed popularity at ``now_ms``; ``user_id`` is ignored."""
        factor = self._forward_factor(now_ms, self.half_life_ms)
        values = np.fromiter(map(self._score.get, items, repeat(0.0)), dtype=np.float64, count=len(items))
        return values * factor

    def candidates(self, user_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:  # noqa: ARG002 - the Recommender interface; the same list for every user
        """The ``k`` most popular items (ties: larger id first); ``user_id`` is ignored."""
        if k <= 0:
            return []
        pool = self._top if k <= self.top_n else self._score
        best = heapq.nlargest(k, pool.items(), key=by_score_then_id)
        factor = self._forward_factor(now_ms, self.half_life_ms)
        return [(item, value * factor) for item, value in best]

    # --- memory ------------------------------------------------------------------------------------------------

    @property
    def n_users(self) -> int:
        return 0

    @property
    def n_items(self) -> int:
        return len(self._score)

    def evict(self, now_ms: int) -> int:
        """Drop items without events since ``now_ms - max_idle_ms``; return how many were dropped."""
        dropped = evict_idle(now_ms, self.max_idle_ms, (self._last, self._drop))
        if self._top_dropped:
            self._rebuild_top()
        return dropped

    def _drop(self, item: str) -> None:
        """Forget ``item``; if it was among the best, ``_top`` is rebuilt once the dropping is done."""
        del self._score[item]
        del self._last[item]
        if item in self._top:
            self._top_dropped = True

    # --- snapshots ---------------------------------------------------------------------------------------------

    _state_fields = ("t0", "score", "last")
    _item_fields = ("t0", "score", "last", "top", "heap", "top_dropped")

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self._rebuild_top()


class Trending(Popularity):
    """What is taking off right now: :class:`Popularity` with a short half-life, as a source of its own.

    With a one-hour half-life, yesterday's best seller that nobody touched today scores about 2**-24 of its
    count, while an item bought ten times in the last hour scores about 7 per purchase weight; the fusion layer
    uses this source for cold users (no history, so no personal candidates).

    The parameters are :class:`Popularity`'s; only the default ``half_life_ms`` differs (one hour).

    Examples
    --------

    >>> from fusionrec.contracts.events import Event
    >>> from fusionrec.models import Popularity, Trending

    A mug sold four times a day ago; a lamp is bought once now.

    >>> day, t = 86_400_000, 1_700_000_000_000
    >>> events = [Event(f"e{i}", f"u{i}", "mug", "purchase", t - day) for i in range(4)]
    >>> events.append(Event("e9", "u9", "lamp", "purchase", t))
    >>> trending, popular = Trending(), Popularity(half_life_ms=7 * day)
    >>> trending.learn_many(events)
    >>> popular.learn_many(events)
    >>> [item for item, _ in trending.candidates("anyone", k=2)]
    ['lamp', 'mug']
    >>> [item for item, _ in popular.candidates("anyone", k=2)]
    ['mug', 'lamp']

    """

    source = "trending"

    def __init__(
        self,
        half_life_ms: int = 3_600_000,
        top_n: int = 100,
        event_weights: Mapping[str, float] | None = None,
        max_items: int = 1_000_000,
        max_idle_ms: int | None = None,
    ):
        super().__init__(half_life_ms, top_n, event_weights, max_items, max_idle_ms)
