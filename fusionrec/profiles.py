"""User profiles and event deduplication in Redis: the key schema and the batch write that keeps both exact.

Key schema (``P`` is ``settings.redis_prefix``, default ``fr:``):

``P p:{user_id}``  hash, one per user, expires ``profile_ttl_s`` after the user's last event:
    ``v f c x b i r``  counts of view, favourite, add_to_cart, remove_from_cart, purchase (b: bought), impression,
                       rate events
    ``ls``             last event time (epoch ms)
    ``ri``             recently interacted items, most recent first, at most ``profile_recent_items``
    ``bo``             bought items, most recent first, at most ``profile_bought_items`` (for filtering)
    ``ca``             category affinities ``category=weight``, strongest first, at most ``profile_categories``
    Lists are joined with ``\\x1f`` and pairs with ``\\x1e``; neither can occur in an id (ids are printable).
``P seen:{bucket}`` hash ``event_id → "partition:offset"`` of the first record that applied it; ``bucket`` is the
    event time divided by ``dedup_bucket_s``. A duplicate carries the same event time, so one bucket answers it.
    Each bucket expires ``dedup_window_s`` after its last write.

:meth:`ProfileStore.apply` processes a batch in two round trips: read the seen-buckets and the users' profiles,
then one ``MULTI``/``EXEC`` that writes the new seen entries and the merged profiles together, so a crash leaves
either both or neither. A record whose event id is already recorded *at its own offset* is a redelivery (Kafka
at-least-once): it changes nothing. One recorded at another offset is a duplicate: skipped and counted. One
partition's events are processed by one worker at a time (events are keyed by user), so the read-merge-write is
not raced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from fusionrec.events import Event

__all__ = ["NEW", "REDELIVERED", "DUPLICATE", "Profile", "ProfileStore", "TYPE_CODES"]

NEW, REDELIVERED, DUPLICATE = 1, 0, -1

TYPE_CODES = {"view": "v", "favourite": "f", "add_to_cart": "c", "remove_from_cart": "x", "purchase": "b",
              "impression": "i", "rate": "r"}
#: How much an event type adds to a category's affinity in the profile.
CATEGORY_WEIGHTS = {"view": 1.0, "favourite": 2.0, "add_to_cart": 3.0, "purchase": 5.0, "rate": 1.0}
_LIST = "\x1f"
_PAIR = "\x1e"
_FIELDS = ("v", "f", "c", "x", "b", "i", "r", "ls", "ri", "bo", "ca")


@dataclass
class Profile:
    """A user's profile as stored in Redis."""

    user_id: str
    counts: dict[str, int] = field(default_factory=dict)
    last_seen_ms: int = 0
    recent_items: list[str] = field(default_factory=list)
    bought_items: list[str] = field(default_factory=list)
    categories: dict[str, float] = field(default_factory=dict)

    @property
    def is_new(self) -> bool:
        return not self.counts

    @classmethod
    def from_fields(cls, user_id: str, values: Sequence[Any]) -> Profile:
        data = dict(zip(_FIELDS, (v.decode() if isinstance(v, bytes) else v for v in values), strict=True))
        counts = {etype: int(data[code]) for etype, code in TYPE_CODES.items() if data.get(code)}
        cats = {}
        for pair in (data.get("ca") or "").split(_LIST):
            if pair:
                name, _, weight = pair.partition(_PAIR)
                cats[name] = float(weight)
        return cls(
            user_id, counts, int(data.get("ls") or 0),
            [i for i in (data.get("ri") or "").split(_LIST) if i],
            [i for i in (data.get("bo") or "").split(_LIST) if i],
            cats,
        )

    def learn(self, event: Event, limits: tuple[int, int, int]) -> None:
        """Fold one event into the profile (pure; ``limits`` = recent, bought, categories caps)."""
        n_recent, n_bought, n_categories = limits
        self.counts[event.type] = self.counts.get(event.type, 0) + 1
        self.last_seen_ms = max(self.last_seen_ms, event.ts)
        if event.type != "impression":
            _push_front(self.recent_items, event.item_id, n_recent)
        if event.type == "purchase":
            _push_front(self.bought_items, event.item_id, n_bought)
        weight = CATEGORY_WEIGHTS.get(event.type, 0.0)
        if event.category_id and weight:
            self.categories[event.category_id] = self.categories.get(event.category_id, 0.0) + weight
            if len(self.categories) > n_categories:
                weakest = min(self.categories, key=lambda name: (self.categories[name], name))
                del self.categories[weakest]

    def to_fields(self) -> dict[str, str]:
        out = {TYPE_CODES[etype]: str(n) for etype, n in self.counts.items()}
        out["ls"] = str(self.last_seen_ms)
        if self.recent_items:
            out["ri"] = _LIST.join(self.recent_items)
        if self.bought_items:
            out["bo"] = _LIST.join(self.bought_items)
        if self.categories:
            ranked = sorted(self.categories.items(), key=lambda kv: (-kv[1], kv[0]))
            out["ca"] = _LIST.join(f"{name}{_PAIR}{weight:g}" for name, weight in ranked)
        return out


def _push_front(items: list[str], item: str, cap: int) -> None:
    if item in items:
        items.remove(item)
    items.insert(0, item)
    del items[cap:]


class ProfileStore:
    """Reads and writes profiles and dedup entries under ``prefix`` in one Redis database."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "fr:",
        profile_ttl_s: int = 30 * 24 * 3600,
        dedup_window_s: int = 3600,
        dedup_bucket_s: int = 60,
        limits: tuple[int, int, int] = (20, 50, 10),
    ):
        self.client = client
        self.prefix = prefix
        self.profile_ttl_s = profile_ttl_s
        self.dedup_window_s = dedup_window_s
        self.dedup_bucket_ms = dedup_bucket_s * 1000
        self.limits = limits

    def profile_key(self, user_id: str) -> str:
        return f"{self.prefix}p:{user_id}"

    def _seen_key(self, ts: int) -> str:
        return f"{self.prefix}seen:{ts // self.dedup_bucket_ms}"

    def get(self, user_id: str) -> Profile:
        return Profile.from_fields(user_id, self.client.hmget(self.profile_key(user_id), _FIELDS))

    def get_many(self, user_ids: Sequence[str]) -> list[Profile]:
        pipe = self.client.pipeline(transaction=False)
        for user in user_ids:
            pipe.hmget(self.profile_key(user), _FIELDS)
        return [Profile.from_fields(u, v) for u, v in zip(user_ids, pipe.execute(), strict=True)]

    def apply(self, events: Sequence[tuple[Event, int, int]]) -> list[int]:
        """Apply ``(event, partition, offset)`` records in order; return NEW, REDELIVERED or DUPLICATE for each."""
        if not events:
            return []
        positions = [f"{p}:{o}" for _, p, o in events]
        seen_keys = [self._seen_key(e.ts) for e, _, _ in events]
        users = list(dict.fromkeys(e.user_id for e, _, _ in events))

        # Round trip 1: what is already applied, and the current profiles.
        by_bucket: dict[str, list[int]] = {}
        for index, key in enumerate(seen_keys):
            by_bucket.setdefault(key, []).append(index)
        pipe = self.client.pipeline(transaction=False)
        for key, indexes in by_bucket.items():
            pipe.hmget(key, [events[i][0].event_id for i in indexes])
        for user in users:
            pipe.hmget(self.profile_key(user), _FIELDS)
        replies = pipe.execute()
        recorded: list[bytes | None] = [None] * len(events)
        for (_key, indexes), values in zip(by_bucket.items(), replies, strict=False):
            for i, value in zip(indexes, values, strict=True):
                recorded[i] = value
        profiles = {u: Profile.from_fields(u, v) for u, v in zip(users, replies[len(by_bucket):], strict=True)}

        # Decide per record, in order (a duplicate inside the same batch is caught by `claimed`).
        statuses: list[int] = []
        claimed: dict[tuple[str, str], str] = {}
        new_seen: dict[str, dict[str, str]] = {}
        touched: set[str] = set()
        for i, (event, _p, _o) in enumerate(events):
            first = claimed.get((seen_keys[i], event.event_id))
            if first is None and recorded[i] is not None:
                first = recorded[i].decode()
            if first is None:
                statuses.append(NEW)
                claimed[(seen_keys[i], event.event_id)] = positions[i]
                new_seen.setdefault(seen_keys[i], {})[event.event_id] = positions[i]
                profiles[event.user_id].learn(event, self.limits)
                touched.add(event.user_id)
            else:
                statuses.append(REDELIVERED if first == positions[i] else DUPLICATE)

        # Round trip 2: seen entries and merged profiles, all or nothing.
        if new_seen:
            pipe = self.client.pipeline(transaction=True)
            for key, mapping in new_seen.items():
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, self.dedup_window_s)
            for user in touched:
                key = self.profile_key(user)
                pipe.hset(key, mapping=profiles[user].to_fields())
                pipe.expire(key, self.profile_ttl_s)
            pipe.execute()
        return statuses
