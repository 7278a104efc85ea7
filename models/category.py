"""Category affinity: the best items of the categories a user keeps coming back to.

Two decayed tallies, both fed by the same events (``category_id`` comes with the event, or from an earlier event on
the same item):

* per user, how much they interacted with each category (``user_half_life_ms``), the strongest
  ``max_categories_per_user`` kept;
* per category, how much each item was interacted with by everyone (``item_half_life_ms``), the strongest
  ``items_per_category`` kept, and the category's total.

An item ``i`` of category ``c`` scores ``affinity(user, c) / sum of the user's affinities`` times
``tally(c, i) / total(c)``: the chance that the user picks category ``c`` and then, like everyone else, item ``i``.
Both are ratios of values decayed alike, so scores do not depend on ``now_ms``. Candidates come from the user's
``top_categories`` best categories. A user without history gets none (the fusion layer falls back to trending);
a new item is a candidate as soon as one event with its category is seen.

"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from fusionrec.contracts.events import Event

from ._state import MAX_DECAY_EXPONENT, UserItemActivity, strongest, touch
from .base import Recommender, event_weight, require_at_least, require_positive

__all__ = ["CategoryAffinity"]

_BY_SCORE_THEN_ID = itemgetter(1, 0)  # the order of top_k (models._state): score, then the larger id


class CategoryAffinity(UserItemActivity, Recommender):
    """Popular items from the user's favourite categories.

    Parameters
    ----------
    user_half_life_ms
        After this long, an event counts half as much towards the user's category affinity.
    item_half_life_ms
        After this long, an event counts half as much towards the item's popularity within its category.
    top_categories
        How many of the user's best categories :meth:`candidates` draws from.
    max_categories_per_user
        Categories kept per user, the strongest; pruned back to this size when grown by half again.
    items_per_category
        Items kept per category, the most popular; pruned back to this size when grown by half again.
    event_weights, max_users, max_items, max_idle_ms
        As for every model (:mod:`fusionrec.models.base`); events weighing 0 or less are ignored. The items are
        those whose category is remembered.

    Examples
    --------

    >>> from fusionrec.contracts.events import Event
    >>> from fusionrec.models import CategoryAffinity

    >>> t = 1_700_000_000_000
    >>> model = CategoryAffinity()
    >>> model.learn_many([
    ...     Event("e1", "ann", "green-tea", "view", t, category_id="tea"),
    ...     Event("e2", "ann", "black-tea", "purchase", t, category_id="tea"),
    ...     Event("e3", "ann", "mug", "view", t, category_id="kitchen"),
    ...     Event("e4", "bob", "oolong", "view", t, category_id="tea"),
    ... ])

    Ann spent 6 of her 7 weighted interactions on tea; black tea has 5 of tea's 7:

    >>> [(item, round(s, 4)) for item, s in model.candidates("ann", k=2)]
    [('black-tea', 0.6122), ('mug', 0.1429)]

    A user without history gets nothing:

    >>> model.candidates("newcomer", k=2)
    []

    """

    source = "category"

    def __init__(
        self,
        user_half_life_ms: int = 7 * 86_400_000,
        item_half_life_ms: int = 86_400_000,
        top_categories: int = 3,
        max_categories_per_user: int = 20,
        items_per_category: int = 50,
        event_weights: Mapping[str, float] | None = None,
        max_users: int = 1_000_000,
        max_items: int = 1_000_000,
        max_idle_ms: int | None = None,
    ):
        super().__init__(event_weights, max_idle_ms)
        require_positive(user_half_life_ms=user_half_life_ms, item_half_life_ms=item_half_life_ms)
        require_at_least(
            1,
            top_categories=top_categories,
            max_categories_per_user=max_categories_per_user,
            items_per_category=items_per_category,
            max_users=max_users,
            max_items=max_items,
        )
        self.user_half_life_ms = user_half_life_ms
        self.item_half_life_ms = item_half_life_ms
        self.top_categories = top_categories
        self.max_categories_per_user = max_categories_per_user
        self.items_per_category = items_per_category
        self.max_users = max_users
        self.max_items = max_items

        self._prune_user_at = max_categories_per_user + max(1, max_categories_per_user // 2)
        self._prune_category_at = items_per_category + max(1, items_per_category // 2)
        self._t0 = None
        self._affinity: dict[str, dict[str, float]] = {}  # user -> category -> forward-decayed affinity
        self._user_last: dict[str, int] = {}  # user -> latest event ts
        self._category_items: dict[str, dict[str, float]] = {}  # category -> item -> forward-decayed tally
        self._category_total: dict[str, float] = {}  # category -> forward-decayed total of every item's events
        self._item_category: dict[str, str] = {}
        self._item_last: dict[str, int] = {}  # item -> latest event ts
        #: category -> its tally's positive items, best first: sorted once and kept until the category changes
        #: (many users of a refresh share categories); not state, rebuilt on demand
        self._category_ranked: dict[str, list[tuple[str, float]]] = {}

    # --- learning ----------------------------------------------------------------------------------------------

    def learn_one(self, event: Event) -> None:
        context = self._context(event)
        if context is not None and context[1] is not None:
            self.learn_item_side(event.item_id, event.ts, context)
            self._learn_affinity(event, context)

    def _context(self, event: Event) -> tuple[float, str | None] | None:
        """The event's weight and category (the event's own, else the one last reported for the item here; None
        when neither is known)."""
        w = self._weigh(event)
        if w <= 0.0:
            return None
        category = event.category_id
        if category is None:
            category = self._item_category.get(event.item_id)
        return w, category

    def learn_user_side(self, event: Event) -> tuple[float, str] | None:
        """Strengthen the user's affinity for the event's category; return the weight and the category.

        The item → category map learned here stays on this side: it resolves later events that carry no category
        for the affinity. The item side keeps its own map, learned from every partition, and resolves with it what
        this side could not (the category is then None here).
        """
        context = self._context(event)
        if context is None:
            return None
        if event.category_id is not None:
            touch(self._item_last, event.item_id, event.ts, self.max_items, self._drop_item)
            self._item_category[event.item_id] = event.category_id
        if context[1] is not None:
            self._learn_affinity(event, context)
        return context

    def learn_user_side_many(self, events: Sequence[Event]) -> list[tuple[float, str | None] | None]:
        """:meth:`learn_user_side` for each event, in one loop (the partitions' hot path)."""
        weights, user_half_life = self._weights, self.user_half_life_ms
        origin_half_life = min(self.user_half_life_ms, self.item_half_life_ms)
        item_cap, user_cap, keep, prune_at = (
            self.max_items,
            self.max_users,
            self.max_categories_per_user,
            self._prune_user_at,
        )
        item_category, item_last, user_last, affinities = (
            self._item_category,
            self._item_last,
            self._user_last,
            self._affinity,
        )
        clock, t0, out = self._clock, self._t0, []
        for event in events:
            ts = event.ts
            if ts > clock:
                clock = ts
            w = event_weight(weights, event)
            if w <= 0.0:
                out.append(None)
                continue
            item, category = event.item_id, event.category_id
            if category is None:
                category = item_category.get(item)
            else:
                previous = item_last.get(item)  # touch(), inline
                if previous is None:
                    if len(item_last) >= item_cap:
                        touch(item_last, item, ts, item_cap, self._drop_item)
                    else:
                        item_last[item] = ts
                elif ts > previous:
                    item_last[item] = ts
                item_category[item] = category
            out.append((w, category))
            if category is None:
                continue
            user = event.user_id
            if t0 is None or (ts - t0) / origin_half_life > MAX_DECAY_EXPONENT:
                t0 = self._forward_origin(ts, origin_half_life)
            user_weight = w * 2.0 ** ((ts - t0) / user_half_life)
            previous = user_last.get(user)
            if previous is None:
                if len(user_last) >= user_cap:
                    touch(user_last, user, ts, user_cap, self._drop_user)
                else:
                    user_last[user] = ts
            elif ts > previous:
                user_last[user] = ts
            affinity = affinities.get(user)
            if affinity is None:
                affinity = affinities[user] = {}
            affinity[category] = affinity.get(category, 0.0) + user_weight
            if len(affinity) > prune_at:
                affinities[user] = strongest(affinity.items(), keep)
        self._clock = clock
        return out

    def _learn_affinity(self, event: Event, context: tuple[float, str]) -> None:
        w, category = context
        ts, user = event.ts, event.user_id
        t0 = self._forward_origin(ts, min(self.user_half_life_ms, self.item_half_life_ms))
        user_weight = w * 2.0 ** ((ts - t0) / self.user_half_life_ms)
        touch(self._user_last, user, ts, self.max_users, self._drop_user)
        affinity = self._affinity.get(user)
        if affinity is None:
            affinity = self._affinity[user] = {}
        affinity[category] = affinity.get(category, 0.0) + user_weight
        if len(affinity) > self._prune_user_at:
            self._affinity[user] = strongest(affinity.items(), self.max_categories_per_user)

    def learn_item_side(self, item_id: str, ts: int, context: Sequence[Any]) -> None:
        """Add the event's weight to the item's share of its category (moving the item if its category changed)."""
        if ts > self._clock:
            self._clock = ts
        w, category = context
        item = item_id
        known = self._item_category.get(item)
        if category is None:
            if known is None:
                return
            category = known
        elif known != category:
            if known is not None:  # the item moved: it leaves its old category's tally
                self._category_items.get(known, {}).pop(item, None)
                self._category_ranked.pop(known, None)
            self._item_category[item] = category
        touch(self._item_last, item, ts, self.max_items, self._drop_item)
        t0 = self._forward_origin(ts, min(self.user_half_life_ms, self.item_half_life_ms))
        item_weight = w * 2.0 ** ((ts - t0) / self.item_half_life_ms)
        tally = self._category_items.get(category)
        if tally is None:
            tally = self._category_items[category] = {}
            self._category_total[category] = 0.0
        tally[item] = tally.get(item, 0.0) + item_weight
        self._category_total[category] += item_weight
        self._category_ranked.pop(category, None)
        if len(tally) > self._prune_category_at:
            self._category_items[category] = strongest(tally.items(), self.items_per_category)

    def learn_item_side_many(self, records: Iterable[tuple[str, int, Sequence[Any]]]) -> None:
        """:meth:`learn_item_side` for each record, in one loop (the shared item side's hot path)."""
        half_life, origin_half_life = self.item_half_life_ms, min(self.user_half_life_ms, self.item_half_life_ms)
        cap, prune_at, keep = self.max_items, self._prune_category_at, self.items_per_category
        item_category, category_items, category_total, item_last = (
            self._item_category,
            self._category_items,
            self._category_total,
            self._item_last,
        )
        clock, t0 = self._clock, self._t0
        changed: set[str] = set()
        for item, ts, (w, category) in records:
            if ts > clock:
                clock = ts
            known = item_category.get(item)
            if category is None:
                if known is None:
                    continue
                category = known
            elif known != category:
                if known is not None:
                    category_items.get(known, {}).pop(item, None)
                    changed.add(known)
                item_category[item] = category
            previous = item_last.get(item)  # touch(), inline
            if previous is None:
                if len(item_last) >= cap:
                    touch(item_last, item, ts, cap, self._drop_item)
                else:
                    item_last[item] = ts
            elif ts > previous:
                item_last[item] = ts
            if t0 is None or (ts - t0) / origin_half_life > MAX_DECAY_EXPONENT:
                t0 = self._forward_origin(ts, origin_half_life)
            item_weight = w * 2.0 ** ((ts - t0) / half_life)
            tally = category_items.get(category)
            if tally is None:
                tally = category_items[category] = {}
                category_total[category] = 0.0
            tally[item] = tally.get(item, 0.0) + item_weight
            category_total[category] += item_weight
            changed.add(category)
            if len(tally) > prune_at:
                category_items[category] = strongest(tally.items(), keep)
        ranked = self._category_ranked
        for category in changed:
            ranked.pop(category, None)
        self._clock = clock

    def _rebase(self, ts: int) -> None:
        shift = self._t0 - ts  # type: ignore[operator]
        user_factor = 2.0 ** (shift / self.user_half_life_ms)
        item_factor = 2.0 ** (shift / self.item_half_life_ms)
        self._t0 = ts
        for affinity in self._affinity.values():
            for category in affinity:
                affinity[category] *= user_factor
        for tally in self._category_items.values():
            for item in tally:
                tally[item] *= item_factor
        for category in self._category_total:
            self._category_total[category] *= item_factor
        self._category_ranked.clear()

    # --- inference ---------------------------------------------------------------------------------------------

    def _shares(self, user_id: str) -> dict[str, float]:
        affinity = self._affinity.get(user_id)
        if not affinity:
            return {}
        total = sum(affinity.values())
        return {category: value / total for category, value in affinity.items()}

    def score(self, user_id: str, items: Sequence[str], now_ms: int | None = None) -> np.ndarray:  # noqa: ARG002 - the Recommender interface; this model has no time decay
        """Share of the item's category in the user's affinity times the item's share of its category."""
        shares = self._shares(user_id)
        out = np.zeros(len(items), dtype=np.float64)
        if not shares:
            return out
        for n, item in enumerate(items):
            category = self._item_category.get(item)
            share = shares.get(category) if category is not None else None
            tally = self._category_items.get(category) if share else None  # type: ignore[arg-type]
            if tally:
                out[n] = share * tally.get(item, 0.0) / self._category_total[category]  # type: ignore[index,operator]
        return out

    def candidates(self, user_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:  # noqa: ARG002 - the Recommender interface; this model has no time decay
        """The best items of the user's ``top_categories`` best categories (ties: larger id first)."""
        shares = self._shares(user_id)
        if k <= 0 or not shares:
            return []
        # sorted(...)[:n] is heapq.nlargest(n, ...) with the same key, in one C-level sort
        best = sorted(shares.items(), key=_BY_SCORE_THEN_ID, reverse=True)[: self.top_categories]
        pairs: list[tuple[str, float]] = []
        for category, share in best:
            ranked = self._ranked(category)
            if ranked:
                scale = share / self._category_total[category]
                pairs += [(item, score) for item, value in ranked[:k] if (score := value * scale) > 0.0]
        pairs.sort(key=_BY_SCORE_THEN_ID, reverse=True)
        return pairs[:k]

    def _ranked(self, category: str) -> list[tuple[str, float]]:
        """The category's items with a positive tally, best first (ties: larger id first), cached until it changes:
        a user's candidates are the best ``k`` of each top category scaled by one factor, so only the first ``k`` of
        each can make the list (up to ties that the scaling's rounding creates)."""
        ranked = self._category_ranked.get(category)
        if ranked is None:
            tally = self._category_items.get(category)
            ranked = (
                sorted((p for p in tally.items() if p[1] > 0.0), key=_BY_SCORE_THEN_ID, reverse=True) if tally else []
            )
            self._category_ranked[category] = ranked
        return ranked

    def category_of(self, item_id: str) -> str | None:
        """The item's category as last reported by an event, or ``None`` if unknown (for diversity caps)."""
        return self._item_category.get(item_id)

    # --- memory (n_users, n_items and evict come with UserItemActivity) ----------------------------------------

    def _drop_user(self, user: str) -> None:
        del self._user_last[user]
        self._affinity.pop(user, None)

    def _drop_item(self, item: str) -> None:
        """Forget ``item``; a category whose items are all dropped goes too (evict does not count it)."""
        del self._item_last[item]
        category = self._item_category.pop(item)
        self._category_ranked.pop(category, None)
        tally = self._category_items.get(category)
        if tally is not None:
            tally.pop(item, None)
            if not tally:
                del self._category_items[category]
                del self._category_total[category]

    # --- snapshots ---------------------------------------------------------------------------------------------

    _state_fields = ("t0", "affinity", "user_last", "category_items", "category_total", "item_category", "item_last")
    #: ``category_ranked`` is derived from ``category_items``, so it goes with it into a ranking view
    _item_fields = ("category_items", "category_total", "item_category", "item_last", "category_ranked")

    def _set_state(self, state: dict[str, Any]) -> None:
        super()._set_state(state)
        self._category_ranked = {}
