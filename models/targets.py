"""Which events are recommendation targets: one rule shared by the offline and the online evaluation.

A list is judged by whether the user's next interactions were on it. Not every event is such a test: a second view
of an item the user already knows says little about the list, and an impression is the list being shown, not the
user choosing. :class:`TargetFilter` reads a user's events in order and says which ones count, and of which kind:

* ``"new"``: a ``view``, ``favourite``, ``add_to_cart``, ``purchase``, or a ``rate`` of at least
  :data:`MIN_POSITIVE_RATING`, on an item the user has not interacted with before (discovery: what a recommender is
  for).
* ``"repeat"``: an ``add_to_cart`` or ``purchase`` of an item the user has interacted with before (conversion of
  known interest: re-engagement sources such as ``recent`` are meant to win these).
* anything else is not a target: repeat views and favourites, impressions, cart removals, low ratings.

Every event except an impression marks its item as seen by the user afterwards (whether or not it was a target).
Impressions do not: an item that was shown and then clicked is a discovery, the case the evaluation is about.

Memory is bounded: each user remembers at most ``max_items_per_user`` items (the least recently touched one goes
first), and at most ``max_users`` users are tracked (a new user beyond it first drops the least recently active
1/16). A forgotten item or user reads as unseen again, so a cap set too low turns some repeats into new targets.

"""

from __future__ import annotations

from itertools import islice

from fusionrec.contracts.events import Event

from ._state import cap_chunk

__all__ = ["MIN_POSITIVE_RATING", "TARGET_KINDS", "TargetFilter"]

#: The kinds :meth:`TargetFilter.classify` returns.
TARGET_KINDS: tuple[str, ...] = ("new", "repeat")

#: A ``rate`` event is a positive target from this many stars on (the 1–5 scale, as in ``fusionrec.models.base``).
MIN_POSITIVE_RATING = 4.0

_DISCOVERY_TYPES = frozenset({"view", "favourite", "add_to_cart", "purchase"})
_CONVERSION_TYPES = frozenset({"add_to_cart", "purchase"})
_NOT_AN_INTERACTION = frozenset({"impression"})


class TargetFilter:
    """Classify a stream of events into recommendation targets (``"new"``, ``"repeat"``) or not (``None``).

    Feed it every event of a user, in event order: :meth:`classify` both answers and remembers the item as seen.

    Parameters
    ----------
    max_items_per_user
        Items remembered per user; the least recently touched one is forgotten first.
    max_users
        Users tracked; a new user beyond it first drops the least recently active 1/16 of them.

    Examples
    --------

    >>> from fusionrec.contracts.events import Event
    >>> targets = TargetFilter()
    >>> def ev(type, item, rating=None):
    ...     return Event("e", "ann", item, type, 1_700_000_000_000, rating=rating)

    A first view is a discovery; viewing it again is not a target; carting it then is a conversion:

    >>> [targets.classify(ev(type, "tea")) for type in ("view", "view", "add_to_cart")]
    ['new', None, 'repeat']

    Impressions are never targets and do not make an item seen; a low rating is not a target but does:

    >>> targets.classify(ev("impression", "mug")), targets.classify(ev("view", "mug"))
    (None, 'new')
    >>> targets.classify(ev("rate", "pot", rating=2)), targets.classify(ev("purchase", "pot"))
    (None, 'repeat')
    >>> targets.classify(ev("rate", "cup", rating=5))
    'new'

    """

    def __init__(self, max_items_per_user: int = 500, max_users: int = 1_000_000):
        if max_items_per_user < 1 or max_users < 1:
            raise ValueError("max_items_per_user and max_users must be at least 1")
        self.max_items_per_user = max_items_per_user
        self.max_users = max_users
        # user -> {item: None} in the order the items were last touched; users in the order they were last active.
        self._seen: dict[str, dict[str, None]] = {}

    def __len__(self) -> int:
        """Users tracked."""
        return len(self._seen)

    def seen(self, user_id: str, item_id: str) -> bool:
        """Whether ``user_id`` has interacted with ``item_id`` (as far as the caps remember)."""
        items = self._seen.get(user_id)
        return items is not None and item_id in items

    def classify(self, event: Event) -> str | None:
        """The target kind of ``event`` (``"new"``, ``"repeat"``) or ``None``; then remember its item as seen."""
        etype = event.type
        if etype in _NOT_AN_INTERACTION:
            return None
        items = self._touch_user(event.user_id)
        item = event.item_id
        known = item in items
        if known:
            del items[item]  # re-inserted below: the item becomes the most recently touched
        elif len(items) >= self.max_items_per_user:
            del items[next(iter(items))]
        items[item] = None
        if known:
            return "repeat" if etype in _CONVERSION_TYPES else None
        if etype in _DISCOVERY_TYPES:
            return "new"
        if etype == "rate" and event.rating is not None and event.rating >= MIN_POSITIVE_RATING:
            return "new"
        return None

    def forget(self, user_id: str) -> None:
        """Drop what is remembered about ``user_id`` (eviction)."""
        self._seen.pop(user_id, None)

    def to_state(self) -> dict[str, list[str]]:
        """The remembered items per user, oldest first (JSON-able, in activity order)."""
        return {user: list(items) for user, items in self._seen.items()}

    def load_state(self, state: dict[str, list[str]]) -> None:
        self._seen = {user: dict.fromkeys(items) for user, items in state.items()}

    def _touch_user(self, user_id: str) -> dict[str, None]:
        seen = self._seen
        items = seen.pop(user_id, None)
        if items is None:
            items = {}
            if len(seen) >= self.max_users:
                for old in list(islice(seen, cap_chunk(self.max_users))):
                    del seen[old]
        seen[user_id] = items  # most recently active last
        return items
