"""Every Redis key fusionrec reads or writes, built in this one place.

All keys live under one prefix (``FUSIONREC_REDIS_PREFIX``, default ``fr:``), so one Redis can hold several
deployments and ``fusionrec rebuild`` can delete exactly one of them.

Keys are hash-tagged for Redis Cluster (``{...}``: the part of a key that decides its slot), so that every
multi-key operation touches one slot: a user's profile, dedup window and list share the tag ``{user_id}`` (the
worker's per-user write and ``forget``'s transaction span those three), and every partition's weights share the
tag ``{topic}`` (the serving API reads them with one ``MGET``). Why per user and not per partition:
docs/worker.md, "Redis Cluster".

========================================  =======  ==========================================================
key                                       type     what (who writes it)
========================================  =======  ==========================================================
``P p:{user_id}``                         string   the user's profile (:mod:`fusionrec.stores.profiles`)
``P d:{user_id}``                         string   the user's dedup window: last record processed, digests
                                                   of the last event ids applied (:mod:`fusionrec.stores.dedup`)
``P snap:topic:partition``                hash     one partition's model state: ``offset``, ``model:{name}``,
                                                   ``pending:{name}``, ``fusion`` (:mod:`fusionrec.streams.state`)
``P items:topic``                         hash     the item-side replica: ``model:{name}``, ``meta`` (clocks,
                                                   queued records), ``positions`` (:mod:`fusionrec.streams.item_side`)
``P weights:{topic}:partition``           string   the partition's bandit weights, JSON (the worker)
``P topic-id:topic``                      hash     the events topic's identity the state was built from: ``id``,
                                                   ``base:{partition}`` offset bases (:mod:`fusionrec.streams.rewind`)
``P epoch``                               string   written once when the worker state starts; its loss means
                                                   Redis lost its data (:mod:`fusionrec.streams.epoch`)
``P rec:{user_id}``                       string   the serving copy of the user's latest list, JSON, with a TTL
``P unavailable``                         set      item ids the shop marked unavailable (the shop writes it)
``P similar:item_id``                     string   the item's co-visitation neighbours, JSON ``[[item, score], ...]``
                                                   (the serving API, from the item-side snapshot)
``P fallback``                            string   the shop-wide fallback list and where it came from, JSON (ditto)
``P api-writer``                          string   which serving API process writes those two (a lease with a TTL)
========================================  =======  ==========================================================

A user id holding a ``}`` would end the tag early (and one starting with it would leave the tag empty, so the
user's keys would scatter): such an id is tagged by a digest instead, ``P p:{digest}:user_id`` (keys of the two
forms never collide: only the second holds more than one ``}``).

>>> keys = RedisKeys("fr:")
>>> keys.profile("u1"), keys.snapshot("events", 3), keys.recommendation("u1"), keys.weights("events", 3)
('fr:p:{u1}', 'fr:snap:events:3', 'fr:rec:{u1}', 'fr:weights:{events}:3')
>>> keys.dedup("}odd")
'fr:d:{b145a0fb}:}odd'
>>> keys.partition_of(keys.snapshot("events", 3)), keys.partition_of(keys.weights("events", 3))
(3, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import blake2b

__all__ = ["RedisKeys", "user_tag"]


def user_tag(user_id: str) -> str:
    """``{user_id}``, the hash tag of a user's keys; for an id holding a ``}``, ``{digest}:user_id``."""
    if "}" not in user_id:
        return "{" + user_id + "}"
    return "{" + blake2b(user_id.encode(), digest_size=4).hexdigest() + "}:" + user_id


@dataclass(frozen=True)
class RedisKeys:
    """The key schema under one prefix."""

    prefix: str = "fr:"

    def profile(self, user_id: str) -> str:
        return f"{self.prefix}p:{user_tag(user_id)}"

    def dedup(self, user_id: str) -> str:
        """The user's dedup window."""
        return f"{self.prefix}d:{user_tag(user_id)}"

    @property
    def dedups(self) -> str:
        """The ``SCAN`` pattern of every user's dedup window."""
        return f"{self.prefix}d:*"

    def snapshot(self, topic: str, partition: int) -> str:
        return f"{self.prefix}snap:{topic}:{partition}"

    def snapshots(self, topic: str = "*") -> str:
        """The ``SCAN`` pattern of every snapshot of ``topic`` (default: of every topic)."""
        return f"{self.prefix}snap:{topic}:*"

    def item_side(self, topic: str) -> str:
        """The item-side replica's snapshot, by the item-side topic it was read from."""
        return f"{self.prefix}items:{topic}"

    def topic_identity(self, topic: str) -> str:
        """The identity (topic id, offset bases) of the topic the worker state was built from."""
        return f"{self.prefix}topic-id:{topic}"

    def weights(self, topic: str, partition: int) -> str:
        """The partition's bandit weights; every partition's of one topic in one slot (one ``MGET`` reads them)."""
        return f"{self.prefix}weights:{{{topic}}}:{partition}"

    def all_weights(self, topic: str = "*") -> str:
        """The ``SCAN`` pattern of every partition's weights of ``topic`` (default: of every topic)."""
        return f"{self.prefix}weights:{{{topic}}}:*"

    @property
    def epoch(self) -> str:
        """The worker state's epoch: written when the state starts, gone when Redis lost its data."""
        return f"{self.prefix}epoch"

    def recommendation(self, user_id: str) -> str:
        return f"{self.prefix}rec:{user_tag(user_id)}"

    @property
    def unavailable(self) -> str:
        return f"{self.prefix}unavailable"

    def similar(self, item_id: str) -> str:
        """The item's neighbours as the serving API publishes them (``"*"``: the SCAN pattern of all of them)."""
        return f"{self.prefix}similar:{item_id}"

    @property
    def fallback(self) -> str:
        return f"{self.prefix}fallback"

    @property
    def api_writer(self) -> str:
        return f"{self.prefix}api-writer"

    @property
    def everything(self) -> str:
        """The ``SCAN`` pattern of every key of this deployment."""
        return f"{self.prefix}*"

    @staticmethod
    def partition_of(key: str | bytes) -> int:
        """The partition a ``snap:`` or ``weights:`` key belongs to."""
        text = key.decode() if isinstance(key, bytes) else key
        return int(text.rsplit(":", 1)[1])
