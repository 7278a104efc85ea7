"""User profiles and event deduplication in Redis: the stored format and the batch write that keeps both exact.

The keys (built by :class:`fusionrec.contracts.keys.RedisKeys`; ``P`` is ``settings.redis.prefix``, default ``fr:``):

``P p:{user_id}``  string, one per user, expiring ``profile_ttl_s`` after the user's last event: a compact JSON
    array ``[counts, last_seen_ms, recent_items, bought_items, categories]`` where
    ``counts``        ``{"v": views, "f": favourites, "c": carts, "x": cart removals, "b": purchases,
                      "i": impressions, "r": ratings}`` (absent codes are 0)
    ``recent_items``  items interacted with, most recent first, at most ``profile_recent_items``
    ``bought_items``  bought items, most recent first, at most ``profile_bought_items`` (for filtering)
    ``categories``    ``[[category, weight], ...]``, strongest first, at most ``profile_categories``
    One string per user (not a hash) so that a batch reads every profile with one ``MGET`` and writes them with
    one call. Read it with :meth:`ProfileStore.get` rather than by hand.
``P seen:{bucket}`` hash ``event_id → "partition:offset"`` of the first record that applied it; ``bucket`` is the
    event time divided by ``dedup_bucket_s``. A duplicate carries the same event time, so one bucket answers it.
    Each bucket expires ``dedup_window_s`` after its last write.

:meth:`ProfileStore.apply` processes a batch in two round trips: read the seen-buckets and the users' profiles,
then one Lua call that writes the new seen entries and the merged profiles together (Redis runs a script
atomically), so a crash leaves either both or neither. A record whose event id is already recorded *at its own
offset* is a redelivery (Kafka at-least-once): it changes nothing. One recorded at another offset is a duplicate:
skipped and counted. One partition's events are processed by one worker at a time (events are keyed by user), so
the read-merge-write is not raced. (The script names its keys, but a batch spans many hash slots: Redis Cluster is
not supported; use one primary with replicas.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
import redis

from fusionrec.contracts.events import Event
from fusionrec.contracts.keys import RedisKeys
from fusionrec.contracts.settings import DedupSettings, ProfileSettings, Settings

__all__ = ["NEW", "REDELIVERED", "DUPLICATE", "Profile", "ProfileStore", "TYPE_CODES"]

NEW, REDELIVERED, DUPLICATE = 1, 0, -1

TYPE_CODES = {
    "view": "v",
    "favourite": "f",
    "add_to_cart": "c",
    "remove_from_cart": "x",
    "purchase": "b",
    "impression": "i",
    "rate": "r",
}
#: How much an event type adds to a category's affinity in the profile.
CATEGORY_WEIGHTS = {"view": 1.0, "favourite": 2.0, "add_to_cart": 3.0, "purchase": 5.0, "rate": 1.0}
_CODE_TYPES = {code: etype for etype, code in TYPE_CODES.items()}

#: Writes a batch atomically: KEYS = seen buckets then profiles; ARGV = profile TTL, seen TTL, then for each
#: bucket its field count followed by field/value pairs, then one value per profile key.
_WRITE_BATCH = """
local profile_ttl, seen_ttl, n_buckets = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local arg = 4
for b = 1, n_buckets do
  local n = tonumber(ARGV[arg])
  local first, last = arg + 1, arg + 2 * n
  while first <= last do  -- unpack() is limited to a few thousand values: 1000 pairs at a time
    local upto = math.min(first + 1999, last)
    redis.call('HSET', KEYS[b], unpack(ARGV, first, upto))
    first = upto + 1
  end
  redis.call('EXPIRE', KEYS[b], seen_ttl)
  arg = last + 1
end
for k = n_buckets + 1, #KEYS do
  redis.call('SET', KEYS[k], ARGV[arg], 'EX', profile_ttl)
  arg = arg + 1
end
return #KEYS - n_buckets
"""


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
    def decode(cls, user_id: str, raw: bytes | None) -> Profile:
        """A profile from its stored JSON (an empty profile for ``None``)."""
        if raw is None:
            return cls(user_id)
        counts, last_seen, recent, bought, categories = orjson.loads(raw)
        return cls(
            user_id,
            {_CODE_TYPES[c]: n for c, n in counts.items()},
            last_seen,
            recent,
            bought,
            {name: weight for name, weight in categories},
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

    def encode(self) -> bytes:
        counts = {TYPE_CODES[etype]: n for etype, n in self.counts.items()}
        ranked = sorted(self.categories.items(), key=lambda kv: (-kv[1], kv[0]))
        return orjson.dumps(
            [
                counts,
                self.last_seen_ms,
                self.recent_items,
                self.bought_items,
                [[name, weight] for name, weight in ranked],
            ]
        )


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
        keys: RedisKeys = RedisKeys(),
        profile: ProfileSettings = ProfileSettings(),
        dedup: DedupSettings = DedupSettings(),
    ):
        self.client = client
        self.keys = keys
        self.profile = profile
        self.dedup = dedup
        self.dedup_bucket_ms = dedup.bucket_s * 1000
        self.limits = profile.limits
        self._write_batch = client.register_script(_WRITE_BATCH)

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis) -> ProfileStore:
        return cls(client, settings.redis.keys, settings.profile, settings.dedup)

    def profile_key(self, user_id: str) -> str:
        return self.keys.profile(user_id)

    def _seen_key(self, ts: int) -> str:
        return self.keys.seen(ts // self.dedup_bucket_ms)

    def get(self, user_id: str) -> Profile:
        return Profile.decode(user_id, self.client.get(self.profile_key(user_id)))

    def get_many(self, user_ids: Sequence[str]) -> list[Profile]:
        if not user_ids:
            return []
        raws = self.client.mget([self.profile_key(u) for u in user_ids])
        return [Profile.decode(u, raw) for u, raw in zip(user_ids, raws, strict=True)]

    def apply(self, events: Sequence[tuple[Event, int, int]]) -> list[int]:
        """Apply ``(event, partition, offset)`` records in order; return NEW, REDELIVERED or DUPLICATE for each."""
        statuses, write = self.prepare(events)
        write()
        return statuses

    def prepare(self, events: Sequence[tuple[Event, int, int]]) -> tuple[list[int], Callable[[], None]]:
        """Decide each record's status (one read round trip) and return it with the write still to be done.

        Calling the returned function performs the atomic write; a caller may do other work (learn the models)
        while it runs on another thread, as long as it waits for it before acknowledging the records.
        """
        if not events:
            return [], _nothing
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
        pipe.mget([self.profile_key(u) for u in users])
        replies = pipe.execute()
        recorded: list[bytes | None] = [None] * len(events)
        for indexes, values in zip(by_bucket.values(), replies, strict=False):
            for i, value in zip(indexes, values, strict=True):
                recorded[i] = value
        profiles = {u: Profile.decode(u, raw) for u, raw in zip(users, replies[-1], strict=True)}

        # Decide per record, in order (a duplicate inside the same batch is caught by `claimed`).
        statuses: list[int] = []
        claimed: dict[tuple[str, str], str] = {}
        new_seen: dict[str, dict[str, str]] = {}
        touched: dict[str, None] = {}
        for i, (event, _p, _o) in enumerate(events):
            first = claimed.get((seen_keys[i], event.event_id))
            if first is None and recorded[i] is not None:
                first = recorded[i].decode()
            if first is None:
                statuses.append(NEW)
                claimed[(seen_keys[i], event.event_id)] = positions[i]
                new_seen.setdefault(seen_keys[i], {})[event.event_id] = positions[i]
                profiles[event.user_id].learn(event, self.limits)
                touched[event.user_id] = None
            else:
                statuses.append(REDELIVERED if first == positions[i] else DUPLICATE)

        # Round trip 2: seen entries and merged profiles in one atomic script call.
        if not new_seen:
            return statuses, _nothing
        keys: list[str] = list(new_seen)
        args: list[Any] = [self.profile.ttl_s, self.dedup.window_s, len(new_seen)]
        for mapping in new_seen.values():
            args.append(len(mapping))
            for event_id, position in mapping.items():
                args += (event_id, position)
        for user in touched:
            keys.append(self.profile_key(user))
            args.append(profiles[user].encode())
        return statuses, partial(self._write_batch, keys=keys, args=args)


def _nothing() -> None:
    return None
