"""Re-engagement: the items a user recently looked at, favourited or carted and has not bought.

Each user keeps a short list of items with the strongest intent shown for each (carted beats favourited beats
viewed) and when it was last touched. An item scores ``intent weight * 2 ** (-(now - last touch) / half_life)``,
so with the default weights a carted item stays above a freshly viewed one for log2(3) ~ 1.6 half-lives.

Purchases remove the item and remember it (a capped list per user) so that it is not proposed again; viewing a
bought item again (the order page, a review) does not bring it back, adding it to the cart again does.
``remove_from_cart`` withdraws the cart intent but keeps the item at its other intents.

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fusionrec.contracts.events import Event

from ._state import decay_factor, idle_keys, top_k, touch
from .base import Recommender, require_at_least, require_positive

__all__ = ["RecentItems"]

#: The intents an item can carry, one bit each. Purchases and cart removals are handled by type.
_BITS = {"impression": 1, "view": 2, "favourite": 4, "add_to_cart": 8}
_CART = _BITS["add_to_cart"]


class RecentItems(Recommender):
    """The user's recently viewed, favourited and carted items, carted-not-bought first.

    Parameters
    ----------
    half_life_ms
        After this long, an item's recency factor halves.
    max_items_per_user
        Items remembered per user; when full, the lowest-scoring one is dropped.
    max_purchased_per_user
        Purchases remembered per user (to keep bought items out); the oldest is dropped when full.
    event_weights, max_users, max_idle_ms
        As for every model (:mod:`fusionrec.models.base`). The event weights are the intent weights of ``view``,
        ``favourite`` and ``add_to_cart`` (and ``impression`` if you give it a positive weight); types weighing 0
        are ignored.

    Examples
    --------

    >>> from fusionrec.contracts.events import Event
    >>> from fusionrec.models import RecentItems

    >>> t = 1_700_000_000_000
    >>> model = RecentItems()
    >>> model.learn_many([
    ...     Event("e1", "ann", "tea", "add_to_cart", t),
    ...     Event("e2", "ann", "mug", "view", t + 1),
    ...     Event("e3", "ann", "pot", "add_to_cart", t + 2),
    ...     Event("e4", "ann", "pot", "purchase", t + 3),
    ... ])

    The carted tea comes first, the bought pot not at all:

    >>> [item for item, _ in model.candidates("ann", k=5)]
    ['tea', 'mug']
    >>> model.score("ann", ["tea", "pot"], now_ms=t)
    array([3., 0.])

    """

    source = "recent"

    def __init__(
        self,
        half_life_ms: int = 86_400_000,
        max_items_per_user: int = 20,
        max_purchased_per_user: int = 50,
        event_weights: Mapping[str, float] | None = None,
        max_users: int = 1_000_000,
        max_idle_ms: int | None = None,
    ):
        super().__init__(event_weights, max_idle_ms)
        require_positive(half_life_ms=half_life_ms)
        require_at_least(
            1, max_items_per_user=max_items_per_user, max_purchased_per_user=max_purchased_per_user, max_users=max_users
        )
        self.half_life_ms = half_life_ms
        self.max_items_per_user = max_items_per_user
        self.max_purchased_per_user = max_purchased_per_user
        self.max_users = max_users

        weights = self._weights
        self._bits = {kind: bit for kind, bit in _BITS.items() if weights[kind] > 0.0}
        # intent weight of every combination of bits: the strongest intent shown
        self._intent = [
            max([weights[kind] for kind, bit in _BITS.items() if mask & bit and weights[kind] > 0.0], default=0.0)
            for mask in range(16)
        ]
        self._items: dict[str, dict[str, list[int]]] = {}  # user -> item -> [last ts, intent bits]; oldest first
        self._bought: dict[str, dict[str, int]] = {}  # user -> item -> purchase ts; oldest first
        self._last: dict[str, int] = {}  # user -> latest event ts

    # --- learning ----------------------------------------------------------------------------------------------

    def learn_one(self, event: Event) -> None:
        ts, kind = event.ts, event.type
        if ts > self._clock:
            self._clock = ts
        bit = self._bits.get(kind)
        if bit is None and kind != "purchase" and kind != "remove_from_cart":
            return
        user, item = event.user_id, event.item_id
        touch(self._last, user, ts, self.max_users, self._drop_user)
        items = self._items.get(user)
        if kind == "purchase":
            if items is not None:
                items.pop(item, None)
            bought = self._bought.get(user)
            if bought is None:
                bought = self._bought[user] = {}
            bought.pop(item, None)
            bought[item] = ts
            if len(bought) > self.max_purchased_per_user:
                del bought[next(iter(bought))]
        elif kind == "remove_from_cart":
            entry = None if items is None else items.get(item)
            if entry is None:
                return
            entry[1] &= ~_CART
            if ts > entry[0]:
                entry[0] = ts
            if not entry[1]:  # only the cart intent was shown, and is withdrawn
                del items[item]  # type: ignore[union-attr]
        else:
            bought = self._bought.get(user)
            if bought is not None and item in bought:
                if bit != _CART:
                    return
                del bought[item]
            if items is None:
                items = self._items[user] = {}
            entry = items.pop(item, None)
            if entry is None:
                entry = [ts, bit]  # type: ignore[list-item]
            else:
                entry[1] |= bit  # type: ignore[operator]
                if ts > entry[0]:
                    entry[0] = ts
            items[item] = entry
            if len(items) > self.max_items_per_user:
                self._drop_weakest(items, ts)

    def _drop_weakest(self, items: dict[str, list[int]], now: int) -> None:
        intent, half_life = self._intent, self.half_life_ms
        weakest = min(items, key=lambda i: intent[items[i][1]] * decay_factor((items[i][0] - now) / half_life))
        del items[weakest]

    # --- inference ---------------------------------------------------------------------------------------------

    def _scored(self, user_id: str, now_ms: int | None) -> dict[str, float]:
        items = self._items.get(user_id)
        if not items:
            return {}
        now = self._clock if now_ms is None else now_ms
        intent, half_life = self._intent, self.half_life_ms
        return {item: intent[bits] * decay_factor((ts - now) / half_life) for item, (ts, bits) in items.items()}

    def score(self, user_id: str, items: Sequence[str], now_ms: int | None = None) -> np.ndarray:
        """Intent weight times recency factor of each item; 0.0 for items not in the user's list (or bought)."""
        get = self._scored(user_id, now_ms).get
        return np.array([get(item, 0.0) for item in items], dtype=np.float64)

    def candidates(self, user_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        """The user's ``k`` best-scoring recent items (ties: larger id first)."""
        return top_k(self._scored(user_id, now_ms).items(), k)

    def bought(self, user_id: str) -> frozenset[str]:
        """The items the user bought (the newest ``max_purchased_per_user``)."""
        return frozenset(self._bought.get(user_id, ()))

    def excluded(self, user_id: str) -> frozenset[str]:
        """The items the user bought (:meth:`bought`): never to be proposed to them again, by any source."""
        return frozenset(self._bought.get(user_id, ()))

    def history_size(self, user_id: str) -> int:
        """How many distinct items the user has shown intent for or bought (capped by the per-user limits)."""
        return len(self._items.get(user_id, ())) + len(self._bought.get(user_id, ()))

    # --- memory ------------------------------------------------------------------------------------------------

    @property
    def n_users(self) -> int:
        return len(self._last)

    @property
    def n_items(self) -> int:
        """(user, item) entries held: recent items plus remembered purchases."""
        return sum(map(len, self._items.values())) + sum(map(len, self._bought.values()))

    def evict(self, now_ms: int) -> int:
        """Drop users without events since ``now_ms - max_idle_ms``; count users plus their entries."""
        if self.max_idle_ms is None:
            return 0
        return sum(self._drop_user(user) for user in idle_keys(self._last, now_ms - self.max_idle_ms))

    def forget_user(self, user_id: str) -> bool:
        """Drop the user's recent items and remembered purchases."""
        if user_id not in self._last:
            return False
        self._drop_user(user_id)
        return True

    def _drop_user(self, user: str) -> int:
        del self._last[user]
        return 1 + len(self._items.pop(user, ())) + len(self._bought.pop(user, ()))

    # --- snapshots ---------------------------------------------------------------------------------------------

    _state_fields = ("items", "bought", "last")
