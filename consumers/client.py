"""A typed client for the recommendations topic and its Redis serving copy, for downstream services.

Imports confluent-kafka and the message format only: no Faust, torch or models, so a web service can use it.

* :class:`RecommendationsConsumer` reads the topic and yields
:class:`~fusionrec.contracts.recommendations.Recommendation`
  objects. Records that are not valid version-1 lists are logged with their partition and offset, counted in
  :attr:`RecommendationsConsumer.invalid`, and skipped: a bad record never stops a consumer.
* :class:`RecommendationStore` reads the latest list of given users from Redis (what a serving path calls).

>>> with RecommendationsConsumer(settings, idle_timeout=5) as lists:     # doctest: +SKIP
...     for rec in lists:
...         print(rec.user_id, rec.item_ids[:5])
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from fusionrec.contracts.keys import RedisKeys
from fusionrec.contracts.privacy import Pseudonymiser
from fusionrec.contracts.recommendations import Recommendation, RecommendationFormatError, decode
from fusionrec.contracts.settings import Settings

__all__ = ["RecommendationStore", "RecommendationsConsumer", "format_recommendation"]

log = logging.getLogger("fusionrec.consumers")


class RecommendationsConsumer:
    """Iterate the lists published on the recommendations topic.

    Parameters
    ----------
    settings
        Connection settings; the topic is ``settings.topic.recommendations``.
    group_id
        ``None`` (default): no consumer group; every partition is assigned, read from the beginning or from the end.
        A group id: subscribe as a member of that group (partitions are shared with its other members, offsets are
        committed automatically, and a restart resumes where the group left off; ``from_beginning`` then only
        applies when the group has no committed offset). Group joins take a few seconds.
    from_beginning
        Start at the oldest record (every user's latest list, as the topic is compacted) or only read lists
        published from now on.
    idle_timeout
        Iteration stops once nothing has arrived for this many seconds; ``None``: iterate until :meth:`close`.
    overrides
        Extra librdkafka consumer keys.

    Notes
    -----
    Without a group and with ``from_beginning=False``, records whose Kafka timestamp is older than the moment the
    consumer started are skipped: Tansu reports the end of a partition inside its newest batch, so "the end"
    would otherwise replay part of that batch.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str | None = None,
        from_beginning: bool = True,
        idle_timeout: float | None = None,
        overrides: dict[str, Any] | None = None,
    ):
        self.topic = settings.topic.recommendations
        self.idle_timeout = idle_timeout
        #: Records that were not valid version-1 lists (skipped).
        self.invalid = 0
        #: Records with no value (deletions on the compacted topic; skipped).
        self.tombstones = 0
        self._not_before_ms: int | None = None
        extra: dict[str, Any] = {
            "enable.auto.commit": group_id is not None,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
        }
        conf = settings.consumer_config(
            group_id or f"{settings.kafka.client_id}-recs-{uuid.uuid4().hex[:8]}", **(extra | (overrides or {}))
        )
        self._consumer = Consumer(conf)
        try:
            if group_id is not None:
                self._consumer.subscribe([self.topic])
            else:
                partitions = self._partitions()
                if not from_beginning:
                    self._not_before_ms = int(time.time() * 1000)
                start = OFFSET_BEGINNING if from_beginning else OFFSET_END
                self._consumer.assign([TopicPartition(self.topic, p, start) for p in partitions])
        except BaseException:
            self._consumer.close()
            raise

    def _partitions(self) -> list[int]:
        meta = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if meta is None or meta.error is not None:
            reason = "it does not exist" if meta is None else meta.error.str()
            raise KafkaException(f"cannot read topic {self.topic!r}: {reason} (`fusionrec topics` creates it)")
        return sorted(meta.partitions)

    def poll(self, timeout: float = 1.0, max_records: int = 1000) -> list[Recommendation]:
        """The lists that arrive within ``timeout`` seconds (at most ``max_records`` records); may be empty."""
        out = []
        for msg in self._consumer.consume(max_records, timeout=timeout):
            rec = self._decode(msg)
            if rec is not None:
                out.append(rec)
        return out

    def _decode(self, msg: Message) -> Recommendation | None:
        err = msg.error()
        if err is not None:
            if err.fatal():
                raise KafkaException(err)
            log.warning("recommendations consumer: %s", err)
            return None
        value = msg.value()
        if value is None:
            self.tombstones += 1
            return None
        if self._not_before_ms is not None:
            kind, ts = msg.timestamp()
            if kind != TIMESTAMP_NOT_AVAILABLE and ts < self._not_before_ms:
                return None
        try:
            return decode(value)
        except RecommendationFormatError as exc:
            self.invalid += 1
            log.warning("skipping invalid record at %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc)
            return None

    def __iter__(self) -> Iterator[Recommendation]:
        last = time.monotonic()
        while True:
            wait = 0.5
            if self.idle_timeout is not None:
                left = self.idle_timeout - (time.monotonic() - last)
                if left <= 0:
                    return
                wait = min(wait, left)
            batch = self._consumer.consume(1000, timeout=wait)
            if batch:
                last = time.monotonic()
            for msg in batch:
                rec = self._decode(msg)
                if rec is not None:
                    yield rec

    def close(self) -> None:
        """Leave the group (committing its offsets) or drop the assignment; idempotent."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None  # type: ignore[assignment]

    def __enter__(self) -> RecommendationsConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RedisReader(Protocol):
    """The two calls :class:`RecommendationStore` needs (a ``redis.Redis`` has them)."""

    def get(self, name: str) -> Any: ...

    def mget(self, keys: list[str]) -> list[Any]: ...


class RecommendationStore:
    """Read users' latest lists from their Redis serving copy (``{prefix}rec:{user_id}``).

    A value that is not a valid version-1 list is logged, counted in :attr:`invalid` and read as missing.

    >>> store = RecommendationStore(redis.Redis.from_url(settings.redis.url), settings.redis.keys)  # doctest: +SKIP
    >>> store.get("u42").item_ids[:3]                                                                 # doctest: +SKIP
    ['i7', 'i9', 'i2']
    """

    def __init__(self, redis_client: _RedisReader, keys: RedisKeys, pseudonyms: Pseudonymiser | None = None):
        self._redis = redis_client
        self.keys = keys
        #: With a key, users are looked up by their pseudonym: callers keep passing the shop's raw ids.
        self.pseudonyms = pseudonyms or Pseudonymiser(None)
        self.invalid = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> RecommendationStore:
        """A store on a new Redis client built from ``settings`` (URL, password, TLS, prefix, the pseudonym key)."""
        from fusionrec.stores.client import connect

        return cls(
            connect(settings.redis),
            settings.redis.keys,
            Pseudonymiser.from_settings(settings),
        )

    def get(self, user_id: str) -> Recommendation | None:
        """``user_id``'s latest list, or ``None`` when there is none (never made, expired, or invalid).

        With the pseudonym key set, ``user_id`` is the shop's raw id and the list's ``user_id`` its pseudonym."""
        key = self.keys.recommendation(self.pseudonyms.user(user_id))
        return self._decode(key, self._redis.get(key))

    def get_many(self, user_ids: Iterable[str]) -> dict[str, Recommendation | None]:
        """The lists of several users with one ``MGET``, in the order given (``None`` where there is none)."""
        users = list(dict.fromkeys(user_ids))
        if not users:
            return {}
        keys = [self.keys.recommendation(self.pseudonyms.user(user)) for user in users]
        # on Redis Cluster every user's list is in its own slot: one MGET per slot, pipelined
        mget = getattr(self._redis, "mget_nonatomic", self._redis.mget)
        values = mget(keys)
        return {user: self._decode(key, value) for user, key, value in zip(users, keys, values, strict=True)}

    def _decode(self, key: str, value: bytes | str | None) -> Recommendation | None:
        if value is None:
            return None
        try:
            return decode(value)
        except RecommendationFormatError as exc:
            self.invalid += 1
            log.warning("invalid list in Redis at %s: %s", key, exc)
            return None


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S.%f")[:-3]


def format_recommendation(rec: Recommendation) -> str:
    """A list as people read it: who, which policy, which event it reflects, then each item and its sources.

    Times are local wall-clock time. For example::

        user u42  segment returning  policy exploit (p=0.90)  reflects event at 12:00:01.042, made 12:00:01.123
          1. i7   0.830  covisit 0.51 + cf 0.32
    """
    arm = "" if rec.policy.arm == "bandit" else f" [{rec.policy.arm}]"
    lines = [
        f"user {rec.user_id}  segment {rec.segment}  policy {rec.policy.action}{arm} "
        f"(p={rec.policy.propensity:.2f})  reflects event at {_clock(rec.newest_event_ts)}, "
        f"made {_clock(rec.generated_at)}"
    ]
    width = max((len(item.item_id) for item in rec.items), default=0)
    rank_width = len(str(len(rec.items)))
    for n, item in enumerate(rec.items, 1):
        shares = " + ".join(f"{source} {item.contributions[source]:.2f}" for source in item.sources)
        lines.append(f"  {n:>{rank_width}}. {item.item_id:<{width}}  {item.score:.3f}  {shares}".rstrip())
    return "\n".join(lines)
