"""Sequential successors (SR-style): "after this item, shoppers went on to that one".

Unlike co-visitation, which links items both ways within a time window, a successor link points forward only, from
an item to the items interacted with in the next ``steps`` events of the same session, each weighted ``1 / gap``
(the next event counts fully, the one after half, ...) and by the event type of the item it points to. That is the
*sequential rules* method of session-rec (Ludewig et al. 2021), which on session click logs is about as strong as
neighbourhood models at a fraction of their cost.

A session is the events sharing a ``session_id`` when both carry one, else events at most ``session_gap_ms``
apart. Links decay with ``half_life_ms`` in forward-decay form (:mod:`fusionrec.models.popularity`), so an item's
successors never reorder with time and pruning them to the strongest ``max_successors`` is a plain sort. A user's
candidates are the successors of their last ``seed_items`` items, the latest counting most (``1 / rank``); the
user's last ``steps`` items themselves are not proposed.

"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fusionrec.contracts.events import Event

from ._state import MAX_DECAY_EXPONENT, UserItemActivity, scale_links, seeded_scores, strongest, top_k, touch
from .base import Recommender, require_at_least, require_positive

__all__ = ["Successors"]


class Successors(UserItemActivity, Recommender):
    """The items that followed the user's latest items in other shoppers' sessions.

    Parameters
    ----------
    steps
        How many later events of a session an item links to (gap 1 .. ``steps``, weighted ``1 / gap``).
    seed_items
        How many of the user's latest items seed candidates.
    session_gap_ms
        Events without a shared ``session_id`` belong to one session when at most this far apart.
    half_life_ms
        After this long, a link counts half as much.
    max_successors
        Successors kept per item, the strongest; a list is pruned back to this size when it has grown by half.
    event_weights, max_users, max_items, max_idle_ms
        As for every model (:mod:`fusionrec.models.base`); events whose type weighs 0 are ignored, and a
        ``rate`` event counts whatever its rating (consumption, ``Recommender._interaction``).

    Examples
    --------

    >>> from fusionrec.contracts.events import Event
    >>> from fusionrec.models import Successors

    Shoppers go from the kettle to the mug, then to the tea:

    >>> t = 1_700_000_000_000
    >>> model = Successors()
    >>> for n in range(2):
    ...     model.learn_one(Event(f"a{n}", f"u{n}", "kettle", "view", t))
    ...     model.learn_one(Event(f"b{n}", f"u{n}", "mug", "view", t + 1000))
    ...     model.learn_one(Event(f"c{n}", f"u{n}", "tea", "view", t + 2000))
    >>> [(item, round(s, 3)) for item, s in model.successors("kettle", k=3)]
    [('mug', 2.0), ('tea', 1.0)]

    A new shopper on the kettle page is offered what came next, not what came before:

    >>> model.learn_one(Event("d", "zoe", "mug", "view", t + 3000))
    >>> [(item, round(s, 3)) for item, s in model.candidates("zoe", k=3)]
    [('tea', 2.0)]

    """

    source = "successor"

    def __init__(
        self,
        steps: int = 3,
        seed_items: int = 3,
        session_gap_ms: int = 1_800_000,
        half_life_ms: int = 7 * 86_400_000,
        max_successors: int = 30,
        event_weights: Mapping[str, float] | None = None,
        max_users: int = 500_000,
        max_items: int = 500_000,
        max_idle_ms: int | None = None,
    ):
        super().__init__(event_weights, max_idle_ms)
        require_positive(half_life_ms=half_life_ms, session_gap_ms=session_gap_ms)
        require_at_least(
            1,
            steps=steps,
            seed_items=seed_items,
            max_successors=max_successors,
            max_users=max_users,
            max_items=max_items,
        )
        self.steps = steps
        self.seed_items = seed_items
        self.session_gap_ms = session_gap_ms
        self.half_life_ms = half_life_ms
        self.max_successors = max_successors
        self.max_users = max_users
        self.max_items = max_items

        self._keep = max(steps, seed_items)
        self._prune_at = max_successors + max(1, max_successors // 2)
        self._t0 = None
        # user -> their latest events, oldest first: [item, ts, session_id]
        self._recent: dict[str, list[list[Any]]] = {}
        self._user_last: dict[str, int] = {}
        self._links: dict[str, dict[str, float]] = {}  # item -> successor -> forward-decayed strength
        self._item_last: dict[str, int] = {}

    # --- learning ----------------------------------------------------------------------------------------------

    def learn_one(self, event: Event) -> None:
        context = self.learn_user_side(event)
        if context is not None:
            self.learn_item_side(event.item_id, event.ts, context)

    def learn_user_side(self, event: Event) -> tuple[float, list[tuple[str, int]]] | None:
        """Append the event to the user's recent ones (a new session starts afresh); return its weight and the
        earlier items of the session it follows, ``(item, gap)``."""
        w = self._interaction(event)
        if w <= 0.0:
            return None
        ts, user, item, session = event.ts, event.user_id, event.item_id, event.session_id
        touch(self._user_last, user, ts, self.max_users, self._drop_user)
        recent = self._recent.get(user)
        if recent is None:
            recent = self._recent[user] = []
        elif recent:
            last = recent[-1]
            if session is not None and last[2] is not None:
                same = session == last[2]
            else:
                same = ts - last[1] <= self.session_gap_ms
            if not same:
                recent.clear()
            elif last[0] == item:  # a reload of the same page: no step
                last[1] = max(last[1], ts)
                return None
        predecessors = []
        steps = self.steps
        for gap, (other, *_) in enumerate(reversed(recent), start=1):
            if gap > steps:
                break
            if other != item:
                predecessors.append((other, gap))
        recent.append([item, ts, session])
        if len(recent) > self._keep:
            del recent[0]
        return w, predecessors

    def learn_user_side_many(self, events: Sequence[Event]) -> list[tuple[float, list[tuple[str, int]]] | None]:
        """:meth:`learn_user_side` for each event, in one loop (the partitions' hot path)."""
        weights, gap_ms, steps, keep, cap = self._weights, self.session_gap_ms, self.steps, self._keep, self.max_users
        user_last, recents, clock, out = self._user_last, self._recent, self._clock, []
        for event in events:
            ts = event.ts
            if ts > clock:
                clock = ts
            w = weights.get(event.type, 0.0)
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
            elif recent:
                last = recent[-1]
                same = session == last[2] if session is not None and last[2] is not None else ts - last[1] <= gap_ms
                if not same:
                    recent.clear()
                elif last[0] == item:
                    last[1] = max(last[1], ts)
                    out.append(None)
                    continue
            predecessors = []
            for gap, (other, *_) in enumerate(reversed(recent), start=1):
                if gap > steps:
                    break
                if other != item:
                    predecessors.append((other, gap))
            recent.append([item, ts, session])
            if len(recent) > keep:
                del recent[0]
            out.append((w, predecessors))
        self._clock = clock
        return out

    def learn_item_side(self, item_id: str, ts: int, context: Sequence[Any]) -> None:
        """Strengthen each predecessor's link to ``item_id`` by the event's weight over the gap."""
        if ts > self._clock:
            self._clock = ts
        w, predecessors = context
        decay = 2.0 ** ((ts - self._forward_origin(ts, self.half_life_ms)) / self.half_life_ms)
        touch(self._item_last, item_id, ts, self.max_items, self._drop_item)
        links = self._links
        if item_id not in links:
            links[item_id] = {}
        prune_at = self._prune_at
        for other, gap in predecessors:
            theirs = links.get(other)
            if theirs is None:  # evicted since the user touched it
                continue
            theirs[item_id] = theirs.get(item_id, 0.0) + w * decay / gap
            if len(theirs) > prune_at:
                links[other] = strongest(theirs.items(), self.max_successors)

    def learn_item_side_many(self, records: Iterable[tuple[str, int, Sequence[Any]]]) -> None:
        """:meth:`learn_item_side` for each record, in one loop (the shared item side's hot path)."""
        half_life, cap, prune_at, keep = self.half_life_ms, self.max_items, self._prune_at, self.max_successors
        item_last, links, clock, t0 = self._item_last, self._links, self._clock, self._t0
        for item_id, ts, (w, predecessors) in records:
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
            if item_id not in links:
                links[item_id] = {}
            for other, gap in predecessors:
                theirs = links.get(other)
                if theirs is None:
                    continue
                theirs[item_id] = theirs.get(item_id, 0.0) + w * decay / gap
                if len(theirs) > prune_at:
                    links[other] = strongest(theirs.items(), keep)
        self._clock = clock

    def _rebase(self, ts: int) -> None:
        factor = 2.0 ** ((self._t0 - ts) / self.half_life_ms)  # type: ignore[operator]
        self._t0 = ts
        scale_links(self._links, factor)

    # --- inference ---------------------------------------------------------------------------------------------

    def _scored(self, user_id: str, now_ms: int | None) -> dict[str, float]:
        recent = self._recent.get(user_id)
        if not recent:
            return {}
        scores = seeded_scores(self._links, (seed for seed, *_ in reversed(recent[-self.seed_items :])))
        for seed, *_ in recent[-self.steps :]:
            scores.pop(seed, None)
        factor = self._forward_factor(now_ms, self.half_life_ms)
        return {item: value * factor for item, value in scores.items()}

    def score(self, user_id: str, items: Sequence[str], now_ms: int | None = None) -> np.ndarray:
        """Summed decayed successor strength from the user's latest items (weighted ``1 / rank``)."""
        get = self._scored(user_id, now_ms).get
        return np.array([get(item, 0.0) for item in items], dtype=np.float64)

    def candidates(self, user_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` strongest successors of the user's latest items (ties: larger id first)."""
        return top_k(self._scored(user_id, now_ms).items(), k)

    def successors(self, item_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` items most often next after ``item_id``, with their decayed strength."""
        factor = self._forward_factor(now_ms, self.half_life_ms)
        return top_k(((other, s * factor) for other, s in self._links.get(item_id, {}).items()), k)

    # --- memory (n_users, n_items and evict come with UserItemActivity) ----------------------------------------

    def forget_user(self, user_id: str) -> bool:
        """Drop the user's latest items (the links they taught the items stay)."""
        if user_id not in self._user_last:
            return False
        self._drop_user(user_id)
        return True

    def _drop_user(self, user: str) -> None:
        del self._user_last[user]
        self._recent.pop(user, None)

    def _drop_item(self, item: str) -> None:
        """Forget ``item``'s successors (links to it from other items go when those are pruned or dropped)."""
        del self._item_last[item]
        self._links.pop(item, None)

    # --- snapshots ---------------------------------------------------------------------------------------------

    _state_fields = ("t0", "recent", "user_last", "links", "item_last")
    _item_fields = ("t0", "links", "item_last")
