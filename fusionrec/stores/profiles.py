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
``P d:{user_id}``  string, one per user, expiring ``dedup_window_s`` after the user's last event: the user's dedup
    window (:class:`fusionrec.stores.dedup.SeenIds`), at most ``15 + 16 * dedup_max_ids`` bytes.

:meth:`ProfileStore.apply` processes a batch in two round trips: one ``MGET`` of the users' dedup windows and
profiles, then one Lua call that writes the changed windows and the merged profiles together (Redis runs a script
atomically), so a crash leaves either both or neither, and a batch retried after a crash changes nothing twice.
One partition's events are processed by one worker at a time (events are keyed by user), so the read-merge-write
is not raced.

On Redis Cluster (``FUSIONREC_REDIS_CLUSTER``) a batch's users live in many hash slots, and a script may only touch
one: a user's two keys share the tag ``{user_id}`` (:mod:`fusionrec.contracts.keys`), so the read is one ``MGET``
per slot and the write one script call per user, sent as one plain pipeline per node. Each user's window and profile are
still written together, which is what exactly once needs: a record's fate depends on its own user's window only,
so a batch half written before a crash is finished by its retry (the written users' records are redeliveries, the
others new), as when a whole batch is retried (docs/worker.md, "Redis Cluster").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
import redis
from redis.crc import key_slot

from fusionrec.contracts.events import Event
from fusionrec.contracts.keys import RedisKeys
from fusionrec.contracts.settings import DedupSettings, ProfileSettings, Settings
from fusionrec.stores.client import is_cluster
from fusionrec.stores.dedup import DUPLICATE, NEW, REDELIVERED, REDELIVERED_DUPLICATE, SeenIds

__all__ = ["NEW", "REDELIVERED", "DUPLICATE", "REDELIVERED_DUPLICATE", "Profile", "ProfileStore", "TYPE_CODES"]

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

#: Writes a batch atomically: KEYS = dedup windows then profiles, ARGV = dedup TTL, profile TTL, the number of
#: dedup windows, then one value per key.
_WRITE_BATCH = """
local dedup_ttl, profile_ttl, n_dedup = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for k = 1, #KEYS do
  redis.call('SET', KEYS[k], ARGV[k + 3], 'EX', k <= n_dedup and dedup_ttl or profile_ttl)
end
return #KEYS
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
    """Reads and writes profiles and dedup windows under ``prefix`` in one Redis database."""

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
        self.limits = profile.limits
        self._write_batch = client.register_script(_WRITE_BATCH)
        self._cluster = is_cluster(client)
        self._mget = self._mget_per_slot if self._cluster else client.mget

    @classmethod
    def from_settings(cls, settings: Settings, client: redis.Redis) -> ProfileStore:
        return cls(client, settings.redis.keys, settings.profile, settings.dedup)

    def profile_key(self, user_id: str) -> str:
        return self.keys.profile(user_id)

    def get(self, user_id: str) -> Profile:
        return Profile.decode(user_id, self.client.get(self.profile_key(user_id)))

    def get_many(self, user_ids: Sequence[str]) -> list[Profile]:
        if not user_ids:
            return []
        raws = self._mget([self.profile_key(u) for u in user_ids])
        return [Profile.decode(u, raw) for u, raw in zip(user_ids, raws, strict=True)]

    def seen(self, user_id: str) -> SeenIds:
        """The user's dedup window as stored (empty when expired or never written)."""
        return SeenIds.decode(self.client.get(self.keys.dedup(user_id)), self.dedup.max_ids)

    def apply(self, events: Sequence[tuple[Event, int, int]]) -> list[int]:
        """Apply ``(event, partition, offset)`` records in order; return each one's status (:mod:`~.dedup`)."""
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
        users = list(dict.fromkeys(e.user_id for e, _, _ in events))
        keys = self.keys
        raws = self._mget([keys.dedup(u) for u in users] + [keys.profile(u) for u in users])
        max_ids = self.dedup.max_ids
        windows = {u: SeenIds.decode(raw, max_ids) for u, raw in zip(users, raws, strict=False)}
        stored = dict(zip(users, raws[len(users) :], strict=True))
        profiles: dict[str, Profile] = {}

        statuses: list[int] = []
        changed: dict[str, None] = {}  # users whose window changed (a new or a duplicate record)
        for event, partition, offset in events:
            user = event.user_id
            status = windows[user].check(event.event_id, partition, offset)
            statuses.append(status)
            if status == NEW:
                profile = profiles.get(user)
                if profile is None:
                    profile = profiles[user] = Profile.decode(user, stored[user])
                profile.learn(event, self.limits)
            if status in (NEW, DUPLICATE):
                changed[user] = None

        if not changed:
            return statuses, _nothing
        if self._cluster:
            return statuses, partial(self._write_per_user, windows, changed, profiles)
        write_keys = [keys.dedup(u) for u in changed] + [keys.profile(u) for u in profiles]
        args: list[Any] = [self.dedup.window_s, self.profile.ttl_s, len(changed)]
        args += [windows[u].encode() for u in changed]
        args += [profile.encode() for profile in profiles.values()]
        return statuses, partial(self._write_batch, keys=write_keys, args=args)

    def _mget_per_slot(self, keys: list[str]) -> list[bytes | None]:
        """``MGET`` on Redis Cluster: one per slot, one plain pipeline per node (a fifth of the CPU of redis-py's
        ``mget_nonatomic``); a refusal (a slot that moved) reads again through ``mget_nonatomic``."""
        cluster = self.client
        try:
            slots: dict[int, list[int]] = {}
            for i, key in enumerate(keys):
                slots.setdefault(key_slot(key.encode()), []).append(i)
            by_node: dict[str, tuple[Any, list[list[int]]]] = {}
            for slot, indexes in slots.items():
                node = cluster.nodes_manager.get_node_from_slot(slot)  # type: ignore[attr-defined]
                by_node.setdefault(node.name, (node, []))[1].append(indexes)
            out: list[bytes | None] = [None] * len(keys)
            for node, groups in by_node.values():
                pipe = node.redis_connection.pipeline(transaction=False)
                for indexes in groups:
                    pipe.mget([keys[i] for i in indexes])
                for indexes, values in zip(groups, pipe.execute(), strict=True):
                    for i, value in zip(indexes, values, strict=True):
                        out[i] = value
            return out
        except redis.RedisError:
            cluster.nodes_manager.initialize()  # type: ignore[attr-defined]
            return cluster.mget_nonatomic(keys)  # type: ignore[attr-defined]

    def _write_per_user(self, windows: dict[str, SeenIds], changed: dict[str, None], profiles: dict) -> None:
        """The batch write on Redis Cluster: the same script once per user (one slot each), one plain pipeline per
        node (redis-py's cluster pipeline costs ~0.4 ms of CPU per command). A refusal (a slot that moved: MOVED,
        ASK) sends the batch again through the cluster pipeline, which follows redirections: the writes are SETs of
        final values, so sending one twice changes nothing."""
        ttls = (self.dedup.window_s, self.profile.ttl_s)
        keys = self.keys
        commands = []
        for user in changed:
            profile = profiles.get(user)
            if profile is None:  # only the window changed (a duplicate)
                commands.append(("EVAL", _WRITE_BATCH, 1, keys.dedup(user), *ttls, 1, windows[user].encode()))
            else:
                commands.append(
                    ("EVAL", _WRITE_BATCH, 2, keys.dedup(user), keys.profile(user), *ttls, 1,
                     windows[user].encode(), profile.encode())
                )  # fmt: skip
        cluster = self.client
        try:
            by_node: dict[str, tuple[Any, list]] = {}
            for command in commands:
                node = cluster.get_node_from_key(command[3])  # type: ignore[attr-defined]
                by_node.setdefault(node.name, (node, []))[1].append(command)
            for node, mine in by_node.values():
                pipe = node.redis_connection.pipeline(transaction=False)
                for command in mine:
                    pipe.execute_command(*command)
                pipe.execute()
        except redis.RedisError:
            cluster.nodes_manager.initialize()  # type: ignore[attr-defined]
            pipe = cluster.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            pipe.execute()


def _nothing() -> None:
    return None
