"""Item-to-item co-visitation: "people who looked at this went on to that".

When a user interacts with item ``j`` shortly after item ``i``, both links ``i -> j`` and ``j -> i`` get stronger.
"Shortly after" means in the same session when both events carry the same ``session_id``, and otherwise within
``window_ms`` of each other among the user's last ``max_recent`` items (events from two *different* sessions are
never paired). Each direction is weighted by the event on the item it points to: viewing a kettle then buying a
mug adds the purchase weight (5) to ``kettle -> mug`` and the view weight (1) to ``mug -> kettle``.

Links decay exponentially with ``half_life_ms``, stored in forward-decay form (see
:mod:`fusionrec.models.popularity`), so the
order of an item's neighbours never changes with time and pruning them to the strongest ``max_neighbours`` is a
plain sort. A user's candidates are the neighbours of their recent items, the most recent item counting most
(``1 / rank``); the recent items themselves are not proposed (that is the ``recent`` source's job).

"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fusionrec.contracts.events import Event

from ._state import MAX_DECAY_EXPONENT, UserItemActivity, scale_links, seeded_scores, strongest, top_k, touch
from .base import Recommender, event_weight, require_at_least, require_positive

__all__ = ["CoVisitation"]


class CoVisitation(UserItemActivity, Recommender):
    """Co-visitation neighbours of the user's recent items.

    Parameters
    ----------
    window_ms
        Events without a shared ``session_id`` are paired when at most this far apart.
    max_recent
        How many of the user's latest distinct items are paired with a new event and seed candidates.
    half_life_ms
        After this long, a co-visit counts half as much.
    max_neighbours
        Neighbours kept per item, the strongest; an item's list is pruned back to this size when it has grown by
        half again.
    event_weights, max_users, max_items, max_idle_ms
        As for every model (:mod:`fusionrec.models.base`); events weighing 0 or less are ignored. The users are
        those whose recent items are tracked, the items those with neighbour lists.

    Examples
    --------

    >>> from fusionrec.contracts.events import Event
    >>> from fusionrec.models import CoVisitation

    Shoppers who view a kettle tend to buy a mug next, in the same session:

    >>> t = 1_700_000_000_000
    >>> model = CoVisitation()
    >>> for n in range(3):
    ...     model.learn_one(Event(f"a{n}", f"u{n}", "kettle", "view", t, session_id=f"s{n}"))
    ...     model.learn_one(Event(f"b{n}", f"u{n}", "mug", "purchase", t + 1000, session_id=f"s{n}"))
    >>> model.neighbours("kettle", k=3, now_ms=t + 1000)
    [('mug', 15.0)]

    A new shopper who just viewed a kettle is offered the mug:

    >>> model.learn_one(Event("c", "zoe", "kettle", "view", t + 2000))
    >>> [item for item, _ in model.candidates("zoe", k=3)]
    ['mug']

    """

    source = "covisit"

    def __init__(
        self,
        window_ms: int = 1_800_000,
        max_recent: int = 10,
        half_life_ms: int = 7 * 86_400_000,
        max_neighbours: int = 30,
        event_weights: Mapping[str, float] | None = None,
        max_users: int = 500_000,
        max_items: int = 500_000,
        max_idle_ms: int | None = None,
    ):
        super().__init__(event_weights, max_idle_ms)
        require_positive(half_life_ms=half_life_ms)
        require_at_least(
            1, max_recent=max_recent, max_neighbours=max_neighbours, max_users=max_users, max_items=max_items
        )
        self.window_ms = window_ms
        self.max_recent = max_recent
        self.half_life_ms = half_life_ms
        self.max_neighbours = max_neighbours
        self.max_users = max_users
        self.max_items = max_items

        self._prune_at = max_neighbours + max(1, max_neighbours // 2)
        self._t0 = None
        # user -> their latest distinct items, oldest first: [item, ts, session_id, weight]
        self._recent: dict[str, list[list[Any]]] = {}
        self._user_last: dict[str, int] = {}  # user -> latest event ts
        self._links: dict[str, dict[str, float]] = {}  # item -> neighbour -> forward-decayed strength
        self._item_last: dict[str, int] = {}  # item -> latest event ts

    # --- learning ----------------------------------------------------------------------------------------------

    def learn_one(self, event: Event) -> None:
        context = self.learn_user_side(event)
        if context is not None:
            self.learn_item_side(event.item_id, event.ts, context)

    def learn_user_side(self, event: Event) -> tuple[float, list[tuple[str, float]]] | None:
        """Move the item to the front of the user's recent items; return the event's weight and the recent items
        it pairs with, ``(other, other's weight)``, for the links."""
        w = self._weigh(event)
        if w <= 0.0:
            return None
        ts, user, item, session = event.ts, event.user_id, event.item_id, event.session_id
        touch(self._user_last, user, ts, self.max_users, self._drop_user)
        recent = self._recent.get(user)
        if recent is None:
            recent = self._recent[user] = []
        window = self.window_ms
        partners = []
        seen_at = -1
        for position, (other, other_ts, other_session, other_w) in enumerate(recent):
            if other == item:
                seen_at = position
                continue
            if session is not None and other_session is not None:
                if session != other_session:
                    continue
            elif abs(ts - other_ts) > window:
                continue
            partners.append((other, other_w))
        if seen_at >= 0:
            entry = recent.pop(seen_at)
            entry[1], entry[2], entry[3] = max(ts, entry[1]), session, max(w, entry[3])
        else:
            entry = [item, ts, session, w]
        recent.append(entry)
        if len(recent) > self.max_recent:
            del recent[0]
        return w, partners

    def learn_user_side_many(self, events: Sequence[Event]) -> list[tuple[float, list[tuple[str, float]]] | None]:
        """:meth:`learn_user_side` for each event, in one loop (the partitions' hot path)."""
        weights, window, keep, cap = self._weights, self.window_ms, self.max_recent, self.max_users
        user_last, recents, clock, out = self._user_last, self._recent, self._clock, []
        for event in events:
            ts = event.ts
            if ts > clock:
                clock = ts
            w = event_weight(weights, event)
            if w <= 0.0:
                out.append(None)
                continue
            user, item, session = event.user_id, event.item_id, event.session_id
            previous = user_last.get(user)  # touch(), inline
            if previous is None:
                if len(user_last) >= cap:
                    touch(user_last, user, ts, cap, self._drop_user)
                else:
                    user_last[user] = ts
            elif ts > previous:
                user_last[user] = ts
            recent = recents.get(user)
            if recent is None:
                recent = recents[user] = []
            partners = []
            seen_at = -1
            for position, (other, other_ts, other_session, other_w) in enumerate(recent):
                if other == item:
                    seen_at = position
                    continue
                if session is not None and other_session is not None:
                    if session != other_session:
                        continue
                elif abs(ts - other_ts) > window:
                    continue
                partners.append((other, other_w))
            if seen_at >= 0:
                entry = recent.pop(seen_at)
                entry[1], entry[2], entry[3] = max(ts, entry[1]), session, max(w, entry[3])
            else:
                entry = [item, ts, session, w]
            recent.append(entry)
            if len(recent) > keep:
                del recent[0]
            out.append((w, partners))
        self._clock = clock
        return out

    def learn_item_side(self, item_id: str, ts: int, context: Sequence[Any]) -> None:
        """Strengthen the links between ``item_id`` and each partner, both ways."""
        if ts > self._clock:
            self._clock = ts
        w, partners = context
        item = item_id
        exponent = (ts - self._forward_origin(ts, self.half_life_ms)) / self.half_life_ms
        decay = 2.0**exponent
        touch(self._item_last, item, ts, self.max_items, self._drop_item)
        links = self._links
        mine = links.get(item)
        if mine is None:
            mine = links[item] = {}
        prune_at = self._prune_at
        for other, other_w in partners:
            theirs = links.get(other)
            if theirs is None:  # evicted since the user touched it
                continue
            theirs[item] = theirs.get(item, 0.0) + w * decay
            if len(theirs) > prune_at:
                self._prune(other)
            mine[other] = mine.get(other, 0.0) + other_w * decay
        if len(mine) > prune_at:
            self._prune(item)

    def learn_item_side_many(self, records: Iterable[tuple[str, int, Sequence[Any]]]) -> None:
        """:meth:`learn_item_side` for each record, in one loop (the shared item side's hot path)."""
        half_life, cap, prune_at = self.half_life_ms, self.max_items, self._prune_at
        item_last, links, clock, t0 = self._item_last, self._links, self._clock, self._t0
        for item, ts, (w, partners) in records:
            if ts > clock:
                clock = ts
            if t0 is None or (ts - t0) / half_life > MAX_DECAY_EXPONENT:
                t0 = self._forward_origin(ts, half_life)
            decay = 2.0 ** ((ts - t0) / half_life)
            previous = item_last.get(item)  # touch(), inline
            if previous is None:
                if len(item_last) >= cap:
                    touch(item_last, item, ts, cap, self._drop_item)
                else:
                    item_last[item] = ts
            elif ts > previous:
                item_last[item] = ts
            mine = links.get(item)
            if mine is None:
                mine = links[item] = {}
            for other, other_w in partners:
                theirs = links.get(other)
                if theirs is None:
                    continue
                theirs[item] = theirs.get(item, 0.0) + w * decay
                if len(theirs) > prune_at:
                    self._prune(other)
                mine[other] = mine.get(other, 0.0) + other_w * decay
            if len(mine) > prune_at:
                self._prune(item)
        self._clock = clock

    def _prune(self, item: str) -> None:
        links = self._links[item]
        self._links[item] = strongest(links.items(), self.max_neighbours)

    def _rebase(self, ts: int) -> None:
        factor = 2.0 ** ((self._t0 - ts) / self.half_life_ms)  # type: ignore[operator]
        self._t0 = ts
        scale_links(self._links, factor)

    # --- inference ---------------------------------------------------------------------------------------------

    def _scored(self, user_id: str, now_ms: int | None) -> dict[str, float]:
        recent = self._recent.get(user_id)
        if not recent:
            return {}
        scores = seeded_scores(self._links, (seed for seed, *_ in reversed(recent)))
        for seed, *_ in recent:
            scores.pop(seed, None)
        factor = self._forward_factor(now_ms, self.half_life_ms)
        return {item: value * factor for item, value in scores.items()}

    def score(self, user_id: str, items: Sequence[str], now_ms: int | None = None) -> np.ndarray:
        """Summed decayed co-visit strength from the user's recent items (weighted ``1 / rank``, the latest first).

        The user's recent items themselves score 0.0.
        """
        get = self._scored(user_id, now_ms).get
        return np.array([get(item, 0.0) for item in items], dtype=np.float64)

    def candidates(self, user_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` best-scoring neighbours of the user's recent items (ties: larger id first)."""
        return top_k(self._scored(user_id, now_ms).items(), k)

    def neighbours(self, item_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` items most co-visited after or before ``item_id``, with their decayed strength.

        This is the "shoppers also viewed" list of a product page, independent of any user.
        """
        factor = self._forward_factor(now_ms, self.half_life_ms)
        return top_k(((other, s * factor) for other, s in self._links.get(item_id, {}).items()), k)

    # --- memory (n_users, n_items and evict come with UserItemActivity) ----------------------------------------

    def _drop_user(self, user: str) -> None:
        del self._user_last[user]
        self._recent.pop(user, None)

    def _drop_item(self, item: str) -> None:
        """Forget ``item`` and the links to it from its neighbours (links kept one-sided after pruning may stay)."""
        del self._item_last[item]
        links = self._links
        for other in links.pop(item, ()):
            theirs = links.get(other)
            if theirs is not None:
                theirs.pop(item, None)

    # --- snapshots ---------------------------------------------------------------------------------------------

    _state_fields = ("t0", "recent", "user_last", "links", "item_last")
    _item_fields = ("t0", "links", "item_last")
