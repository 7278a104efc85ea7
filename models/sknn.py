"""Session neighbours (session-kNN in the V-SKNN / STAN family): "shoppers whose session looked like yours went on
to these".

On session click logs the simple neighbourhood models are among the strongest published (session-rec, Ludewig et
al. 2021: VSTAN, STAN and V-SKNN ahead of most neural models). This is a streaming version of them:

* **Sessions.** A user's events form a session while they carry the same ``session_id`` (when they carry one) or
  follow each other within ``session_gap_ms``. A session's key is the user and the time it began, so it is the
  same in every run.
* **The current session** is a vector over its last ``query_items`` distinct items, weighted linearly by recency
  (the latest 1, the one before ``(L-1)/L``, ...: V-SKNN's linear decay, STAN's λ1).
* **Neighbours.** Every item keeps the ``sample_size`` newest sessions that contain it (the item -> recent sessions
  index), so the candidate neighbours of a session are sampled from the newest sessions sharing an item with it,
  at a cost bounded per item. Their similarity is the cosine of the two item vectors, weighted by the neighbour's
  recency (``2 ** (-age / neighbour_half_life_ms)``, STAN's λ2); the best ``neighbours`` are kept.
* **Scores.** Each item of a neighbour scores the neighbour's weight, times its position weight (``1 / (1 + d)``
  for an item ``d`` steps away from the latest item the neighbour shares with the current session, STAN's λ3),
  times its IDF boost ``log(1 + N / df)`` (``df`` of the ``N`` sessions held contain it, VSTAN's IDF). The items of
  the current session are not proposed.

State is split the usual way (:mod:`fusionrec.models.item_side`): the user side holds each user's current session,
the item side the sessions of the whole shop (at most ``max_sessions``, at most ``max_session_items`` items each),
the index and the document frequencies.

"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np

from fusionrec.contracts.events import Event

from ._state import evict_idle, top_k, touch
from .base import Recommender, require_at_least, require_positive

__all__ = ["SessionKNN"]


class SessionKNN(Recommender):
    """The items of the sessions most similar to the user's current one.

    Parameters
    ----------
    session_gap_ms
        Events without a shared ``session_id`` belong to one session when at most this far apart.
    query_items
        How many of the current session's latest distinct items make its vector.
    sample_size
        Newest sessions remembered per item: where neighbours are looked for.
    neighbours
        Neighbour sessions whose items are scored.
    neighbour_half_life_ms
        A neighbour session this much older than now weighs half as much.
    max_session_items
        Items kept per remembered session (the first ones; later items are not added).
    max_sessions
        Sessions remembered for the whole shop (the least recently active go first).
    event_weights, max_users, max_items, max_idle_ms
        As for every model (:mod:`fusionrec.models.base`); events whose type weighs 0 are ignored, and a
        ``rate`` event counts whatever its rating (consumption, ``Recommender._interaction``). Idle sessions are
        evicted like idle items.

    Examples
    --------

    >>> from fusionrec.contracts.events import Event
    >>> from fusionrec.models import SessionKNN

    Two earlier sessions went from a tent to a sleeping bag and a stove; another one was about kettles:

    >>> t = 1_700_000_000_000
    >>> model = SessionKNN()
    >>> for n, items in enumerate([["tent", "bag", "stove"], ["tent", "bag"], ["kettle", "mug"]]):
    ...     for m, item in enumerate(items):
    ...         model.learn_one(Event(f"e{n}{m}", f"u{n}", item, "view", t + n * 1000 + m))

    A shopper looking at a tent is offered what those sessions held, not the kettle session's items:

    >>> model.learn_one(Event("z", "zoe", "tent", "view", t + 5000))
    >>> [item for item, _ in model.candidates("zoe", k=5)]
    ['bag', 'stove']

    """

    source = "sknn"

    def __init__(
        self,
        session_gap_ms: int = 1_800_000,
        query_items: int = 10,
        sample_size: int = 50,
        neighbours: int = 50,
        neighbour_half_life_ms: int = 3 * 86_400_000,
        max_session_items: int = 20,
        max_sessions: int = 200_000,
        event_weights: Mapping[str, float] | None = None,
        max_users: int = 500_000,
        max_items: int = 500_000,
        max_idle_ms: int | None = None,
    ):
        super().__init__(event_weights, max_idle_ms)
        require_positive(session_gap_ms=session_gap_ms, neighbour_half_life_ms=neighbour_half_life_ms)
        require_at_least(
            1,
            query_items=query_items,
            sample_size=sample_size,
            neighbours=neighbours,
            max_session_items=max_session_items,
            max_sessions=max_sessions,
            max_users=max_users,
            max_items=max_items,
        )
        self.session_gap_ms = session_gap_ms
        self.query_items = query_items
        self.sample_size = sample_size
        self.neighbours = neighbours
        self.neighbour_half_life_ms = neighbour_half_life_ms
        self.max_session_items = max_session_items
        self.max_sessions = max_sessions
        self.max_users = max_users
        self.max_items = max_items

        self._trim_at = sample_size + max(1, sample_size // 2)
        # user side: user -> [session key, session_id, last ts, latest distinct items oldest first]
        self._current: dict[str, list[Any]] = {}
        self._user_last: dict[str, int] = {}
        # item side
        self._sessions: dict[str, dict[str, int]] = {}  # session key -> item -> position (first seen, 0, 1, ...)
        self._session_last: dict[str, int] = {}  # session key -> latest event ts
        self._index: dict[str, list[str]] = {}  # item -> keys of the newest sessions holding it, oldest first
        self._df: dict[str, int] = {}  # item -> sessions held that contain it
        self._item_last: dict[str, int] = {}

    # --- learning ----------------------------------------------------------------------------------------------

    def learn_one(self, event: Event) -> None:
        context = self.learn_user_side(event)
        if context is not None:
            self.learn_item_side(event.item_id, event.ts, context)

    def learn_user_side(self, event: Event) -> str | None:
        """Add the item to the user's current session (starting a new one after a gap or a new ``session_id``);
        return the session's key, which the item side files the item under."""
        if self._interaction(event) <= 0.0:
            return None
        ts, user, item, session = event.ts, event.user_id, event.item_id, event.session_id
        touch(self._user_last, user, ts, self.max_users, self._drop_user)
        current = self._current.get(user)
        if current is not None:
            _key, sid, last, _items = current
            same = session == sid if session is not None and sid is not None else ts - last <= self.session_gap_ms
            if not same:
                current = None
        if current is None:
            # The key names no user (the shared item side keeps sessions after their user is forgotten)
            key = hashlib.blake2b(f"{user}#{ts}".encode(), digest_size=8).hexdigest()
            current = self._current[user] = [key, session, ts, []]
        current[2] = max(current[2], ts)
        items = current[3]
        if item in items:
            items.remove(item)
        items.append(item)
        if len(items) > self.query_items:
            del items[0]
        return current[0]

    def learn_user_side_many(self, events: Sequence[Event]) -> list[str | None]:
        """:meth:`learn_user_side` for each event, in one loop (the partitions' hot path)."""
        weights, gap_ms, query_items, cap = self._weights, self.session_gap_ms, self.query_items, self.max_users
        user_last, currents, clock, out = self._user_last, self._current, self._clock, []
        for event in events:
            ts = event.ts
            if ts > clock:
                clock = ts
            if weights.get(event.type, 0.0) <= 0.0:
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
            current = currents.get(user)
            if current is not None:
                sid, last = current[1], current[2]
                same = session == sid if session is not None and sid is not None else ts - last <= gap_ms
                if not same:
                    current = None
            if current is None:
                key = hashlib.blake2b(f"{user}#{ts}".encode(), digest_size=8).hexdigest()
                current = currents[user] = [key, session, ts, []]
            current[2] = max(current[2], ts)
            items = current[3]
            if item in items:
                items.remove(item)
            items.append(item)
            if len(items) > query_items:
                del items[0]
            out.append(current[0])
        self._clock = clock
        return out

    def learn_item_side(self, item_id: str, ts: int, context: Any) -> None:
        """File ``item_id`` under the session ``context`` names, and the session under the item."""
        if ts > self._clock:
            self._clock = ts
        key = context
        touch(self._item_last, item_id, ts, self.max_items, self._drop_item)
        touch(self._session_last, key, ts, self.max_sessions, self._drop_session)
        items = self._sessions.get(key)
        if items is None:
            items = self._sessions[key] = {}
        if item_id in items or len(items) >= self.max_session_items:
            return
        items[item_id] = len(items)
        self._df[item_id] = self._df.get(item_id, 0) + 1
        index = self._index.get(item_id)
        if index is None:
            self._index[item_id] = [key]
        else:
            index.append(key)
            if len(index) > self._trim_at:
                del index[: len(index) - self.sample_size]

    def learn_item_side_many(self, records: Iterable[tuple[str, int, Any]]) -> None:
        """:meth:`learn_item_side` for each record, in one loop (the shared item side's hot path)."""
        item_cap, session_cap, max_items, trim_at, sample = (
            self.max_items,
            self.max_sessions,
            self.max_session_items,
            self._trim_at,
            self.sample_size,
        )
        item_last, session_last, sessions, df, index_of = (
            self._item_last,
            self._session_last,
            self._sessions,
            self._df,
            self._index,
        )
        clock = self._clock
        for item_id, ts, key in records:
            if ts > clock:
                clock = ts
            previous = item_last.get(item_id)  # touch(), inline, for the item and the session
            if previous is None:
                if len(item_last) >= item_cap:
                    touch(item_last, item_id, ts, item_cap, self._drop_item)
                else:
                    item_last[item_id] = ts
            elif ts > previous:
                item_last[item_id] = ts
            previous = session_last.get(key)
            if previous is None:
                if len(session_last) >= session_cap:
                    touch(session_last, key, ts, session_cap, self._drop_session)
                else:
                    session_last[key] = ts
            elif ts > previous:
                session_last[key] = ts
            items = sessions.get(key)
            if items is None:
                items = sessions[key] = {}
            if item_id in items or len(items) >= max_items:
                continue
            items[item_id] = len(items)
            df[item_id] = df.get(item_id, 0) + 1
            index = index_of.get(item_id)
            if index is None:
                index_of[item_id] = [key]
            else:
                index.append(key)
                if len(index) > trim_at:
                    del index[: len(index) - sample]
        self._clock = clock

    # --- inference ---------------------------------------------------------------------------------------------

    def _scored(self, user_id: str, now_ms: int | None) -> dict[str, float]:
        current = self._current.get(user_id)
        if current is None:
            return {}
        own, query = current[0], current[3]
        sessions, session_last = self._sessions, self._session_last
        # similarity (dot product of the linearly decayed query with the neighbour's binary vector), and where the
        # neighbour holds the latest shared item
        dots: dict[str, float] = {}
        match: dict[str, int] = {}
        n_query = len(query)
        sample = self.sample_size
        for rank, item in enumerate(query, start=1):
            index = self._index.get(item)
            if not index:
                continue
            weight = rank / n_query
            for key in index[-sample:]:
                if key == own:
                    continue
                position = sessions.get(key, {}).get(item)
                if position is None:  # the session was dropped, or trimmed before the item
                    continue
                dots[key] = dots.get(key, 0.0) + weight
                match[key] = position  # the query's later items overwrite earlier ones
        if not dots:
            return {}
        now = self._clock if now_ms is None else now_ms
        scale = 1.0 / self.neighbour_half_life_ms
        norm = math.sqrt(sum(rank * rank for rank in range(1, n_query + 1))) / n_query
        sqrt = math.sqrt
        weighted = [
            (key, dot * 2.0 ** (max(min(session_last[key] - now, 0) * scale, -1000.0)) / sqrt(len(sessions[key])))
            for key, dot in dots.items()
        ]
        best = heapq.nlargest(self.neighbours, weighted, key=itemgetter(1, 0))
        held = max(len(sessions), 1)
        df = self._df
        boosts: dict[str, float] = dict.fromkeys(query, 0.0)  # item -> IDF boost; the query's items score nothing
        scores: dict[str, float] = {}
        get = scores.get
        log1p = math.log1p
        for key, weight in best:
            if weight <= 0.0:
                continue
            weight /= norm
            anchor = match[key]
            for item, position in sessions[key].items():
                boost = boosts.get(item)
                if boost is None:
                    boost = boosts[item] = log1p(held / df.get(item, 1))
                elif boost == 0.0:
                    continue
                scores[item] = get(item, 0.0) + weight * boost / (1 + abs(position - anchor))
        return scores

    def score(self, user_id: str, items: Sequence[str], now_ms: int | None = None) -> np.ndarray:
        """The neighbour-weighted, position-weighted, IDF-boosted sum over the user's neighbour sessions."""
        get = self._scored(user_id, now_ms).get
        return np.array([get(item, 0.0) for item in items], dtype=np.float64)

    def candidates(self, user_id: str, k: int, now_ms: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` best items of the neighbour sessions, outside the current one (ties: larger id first)."""
        return top_k(self._scored(user_id, now_ms).items(), k)

    # --- memory ------------------------------------------------------------------------------------------------

    @property
    def n_users(self) -> int:
        return len(self._user_last)

    @property
    def n_items(self) -> int:
        return len(self._item_last)

    @property
    def n_sessions(self) -> int:
        """How many sessions of the whole shop are held (the item side)."""
        return len(self._session_last)

    def evict(self, now_ms: int) -> int:
        """Drop users, sessions and items idle since ``now_ms - max_idle_ms``; return how many users and items."""
        evict_idle(now_ms, self.max_idle_ms, (self._session_last, self._drop_session))
        return evict_idle(
            now_ms, self.max_idle_ms, (self._user_last, self._drop_user), (self._item_last, self._drop_item)
        )

    def forget_user(self, user_id: str) -> bool:
        """Drop the user's current session (the sessions filed on the item side are keyed by a digest, not the
        user, and stay as the items' anonymous co-occurrences)."""
        if user_id not in self._user_last:
            return False
        self._drop_user(user_id)
        return True

    def _drop_user(self, user: str) -> None:
        del self._user_last[user]
        self._current.pop(user, None)

    def _drop_session(self, key: str) -> None:
        """Forget a session; its items count one session fewer (its index entries are skipped, then trimmed)."""
        del self._session_last[key]
        df = self._df
        for item in self._sessions.pop(key, ()):
            left = df.get(item, 0) - 1
            if left > 0:
                df[item] = left
            else:
                df.pop(item, None)

    def _drop_item(self, item: str) -> None:
        """Forget ``item``'s index and frequency (sessions holding it keep it until they go)."""
        del self._item_last[item]
        self._index.pop(item, None)
        self._df.pop(item, None)

    # --- snapshots ---------------------------------------------------------------------------------------------

    _state_fields = ("current", "user_last", "sessions", "session_last", "index", "df", "item_last")
    _item_fields = ("sessions", "session_last", "index", "df", "item_last")
