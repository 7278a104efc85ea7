"""A lost or rewound events topic: detected, said loudly, and never a reason to skip events.

A broker that restarts without its data (Tansu with memory storage), or a topic deleted and created again, gives
the events topic a new **topic id** and offsets that start again at 0. The worker's state names offsets of the old
topic (snapshots, dedup windows, the item side's records), so without care it would resume at its old offsets and
treat the new topic's first events as redeliveries: silently skipped (issue 12: 41,588 of 66,000).

:class:`TopicWatch` remembers, per partition, the topic id the state was built from and an **offset base**
(Redis ``{prefix}topic-id:{topic}``: ``id:{partition}``, ``base:{partition}``). The worker's state counts in
*state offsets*: a record's state offset is its offset on the topic plus the partition's base (0 until the topic
is first lost). The watch checks the topic's id when a partition is assigned, when a batch looks like a
redelivery, and on every snapshot tick; when the id changed (or the topic is gone) it:

- logs an error, sets ``fusionrec_events_topic_lost`` and counts ``fusionrec_events_topic_losses_total``, and marks
  the worker **not ready** (:attr:`TopicWatch.ready`, ``fusionrec_worker_ready``);
- once the topic exists again, **rebases** the partition: its base becomes the state's next offset, so the new
  topic's offset 0 continues the state exactly where it stopped. Every event on the new topic is then processed
  (a producer's re-send of an event already applied is caught by the per-user dedup, by ``event_id``); events the
  old broker had acknowledged but the worker had not read yet are gone with it, and nothing can bring them back;
- reads every rebased partition **from the new topic's start, without a gap**: a batch that starts after the next
  offset expected of the new topic (the consumer still at the old offsets: it was assigned while the topic was
  gone, or no rebalance moved it; or a batch fetched from there before the seek) is dropped, not applied, and the
  consumer is sent back to that offset (:meth:`TopicWatch.translate` answers None, :meth:`TopicWatch.resume_at`
  says where, the worker seeks). Before this, a worker assigned while the topic was missing resumed at its old
  offsets on the new topic and skipped every event below them (2,928 of 3,000 in one run, with "read from its
  start" in the log);
- is ready again once every rebased partition it holds has processed a batch from the new topic's start.

A partition whose topic kept its id but whose end went behind what the state has processed (a truncated log:
an unclean leader election, a broker that lost its tail) is reported, not rebased (``fusionrec_events_rewound``,
an error log, not ready): its next records would be taken as redeliveries, and only an operator can tell whether
to run ``fusionrec rebuild``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from fusionrec.streams.batching import Record, RecordBatch
from fusionrec.streams.metrics import WorkerMetrics

__all__ = ["MISSING", "TopicWatch", "admin_identify"]

log = logging.getLogger("fusionrec.rewind")

#: What :func:`admin_identify` answers for a topic that does not exist.
MISSING = ""
#: A check younger than this is not repeated for a batch that looks like a redelivery.
RECHECK_S = 1.0


def admin_identify(admin_config: dict, topic: str, timeout_s: float = 3.0) -> Callable[[], str | None]:
    """A function returning ``topic``'s id (``MISSING`` when it does not exist, None when the broker does not
    answer), through a librdkafka admin client made once."""
    from confluent_kafka import KafkaError, KafkaException, TopicCollection
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(admin_config)

    def identify() -> str | None:
        try:
            description = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)[topic].result()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if getattr(error, "code", lambda: None)() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return MISSING
            log.debug("describing %s failed: %s", topic, exc)
            return None
        except Exception as exc:  # noqa: BLE001 - a broker away answers in many ways
            log.debug("describing %s failed: %s", topic, exc)
            return None
        return str(description.topic_id)

    return identify


class TopicWatch:
    """The events topic's identity per partition, the offset bases, and the worker's readiness.

    Parameters
    ----------
    client, key
        Where the identity lives in Redis (``RedisKeys.topic_identity``).
    topic
        The events topic (for logs).
    identify
        Returns the topic's current id, ``MISSING``, or None when it cannot tell (:func:`admin_identify`).
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        topic: str,
        identify: Callable[[], str | None],
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_rebase: Callable[[], None] | None = None,
        on_ready: Callable[[bool], None] | None = None,
    ):
        self.on_rebase = on_rebase  # e.g. create the item-side topic again: it went with the broker too
        self.on_ready = on_ready  # told whenever readiness is published (the worker's /readyz)
        self.client = client
        self.key = key
        self.topic = topic
        self.identify = identify
        self.metrics = metrics
        self.clock = clock
        self.ids: dict[int, str] = {}
        self.bases: dict[int, int] = {}
        self.lost = False  # the topic is gone, or was found recreated and not yet read from
        self.recovering: set[int] = set()  # rebased partitions that have not processed a batch of the new topic
        #: rebased partitions -> the next offset of the new topic to apply: a batch starting after it is dropped
        self.expect: dict[int, int] = {}
        self._dropped: set[tuple[int, int]] = set()  # (partition, expected offset) already logged
        self.rewound: set[int] = set()  # same topic, but its end is behind the state (reported only)
        self.detections = 0
        self._counted: str | None = None  # the incarnation (topic id, or MISSING) last counted as a loss
        self._current: str | None = None
        self._checked_at = float("-inf")
        self.load()

    # --- readiness -----------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """False while a lost, recreated or rewound events topic is being dealt with."""
        return not (self.lost or self.recovering or self.rewound)

    def _publish(self) -> None:
        if self.on_ready is not None:
            self.on_ready(self.ready)
        if self.metrics:
            self.metrics.topic_lost.set(1 if (self.lost or self.recovering) else 0)
            self.metrics.rewound.set(len(self.rewound))

    # --- offsets -------------------------------------------------------------------------------------------------

    def load(self) -> None:
        data = self.client.hgetall(self.key)
        for raw, value in data.items():
            field, _, partition = raw.decode().partition(":")
            if field == "id":
                self.ids[int(partition)] = value.decode()
            elif field == "base":
                self.bases[int(partition)] = int(value)
        self._publish()

    def to_topic(self, partition: int, offset: int) -> int:
        """The topic offset of a state offset (negative: before the topic's start)."""
        return offset - self.bases.get(partition, 0)

    def to_state(self, partition: int, offset: int) -> int:
        return offset + self.bases.get(partition, 0)

    def translate(self, batch: RecordBatch) -> RecordBatch | None:
        """``batch`` with state offsets (the batch itself while the base is 0); None for a batch of a rebased
        partition that starts after the next offset expected of the new topic: the consumer read from the old
        offsets, so it
        must go back (:meth:`resume_at`) and the batch must not be applied (its records come again)."""
        expected = self.expect.get(batch.partition)
        if expected is not None:
            if batch.first_offset > expected:
                if (batch.partition, expected) not in self._dropped:
                    self._dropped.add((batch.partition, expected))
                    log.error(
                        "partition %d of the recreated topic %s was read from offset %d, not from %d: dropping "
                        "what comes from there and reading the partition again from offset %d",
                        batch.partition,
                        self.topic,
                        batch.first_offset,
                        expected,
                        expected,
                    )
                return None
            self.expect[batch.partition] = max(expected, batch.last_offset + 1)
        base = self.bases.get(batch.partition, 0)
        if base:
            batch = RecordBatch(
                batch.topic,
                batch.partition,
                [Record(r.offset + base, r.key, r.value, r.timestamp_ms) for r in batch.records],
            )
        if batch.partition in self.recovering:
            self.recovering.discard(batch.partition)
            if not self.recovering and not self.lost:
                log.warning("processing the recreated topic %s again from its start on every partition", self.topic)
            self._publish()
        return batch

    def resume_at(self, partition: int) -> int:
        """After :meth:`translate` dropped a batch: the topic offset the consumer must be sent back to."""
        return self.expect.get(partition, 0)

    # --- checks --------------------------------------------------------------------------------------------------

    def current(self, max_age_s: float = 0.0) -> str | None:
        """The topic's id now (cached for ``max_age_s``)."""
        now = self.clock()
        if self._current is None or now - self._checked_at > max_age_s:
            self._current = self.identify()
            self._checked_at = now
        return self._current

    def check(self, partitions: dict[int, int], max_age_s: float = 0.0) -> set[int]:
        """Compare the topic with what ``partitions`` (partition -> the state's next offset) were built from;
        rebase those built from another incarnation. Returns the partitions rebased now."""
        current = self.current(max_age_s)
        if current is None:  # the broker does not answer: nothing can be concluded
            return set()
        if current == MISSING:
            if not self.lost:
                log.error(
                    "the events topic %s is gone (a broker restarted without its data, or the topic was deleted); "
                    "not ready until it is back",
                    self.topic,
                )
            self._count(MISSING)
            self.lost = True
            self._publish()
            return set()
        self.lost = False
        rebased: dict[int, int] = {}
        fresh: list[int] = []
        for partition, next_offset in partitions.items():
            known = self.ids.get(partition)
            if known == current:
                continue
            if known is None:  # first sight of the topic (or of this partition): remember its id
                fresh.append(partition)
            else:
                rebased[partition] = max(next_offset, self.bases.get(partition, 0))
            self.ids[partition] = current
        if rebased:
            mapping = {f"id:{p}": current for p in rebased} | {f"base:{p}": b for p, b in rebased.items()}
            self.client.hset(self.key, mapping=mapping)
            self.bases.update(rebased)
            self.recovering.update(rebased)
            self.expect.update(dict.fromkeys(rebased, 0))
            self._count(current)
            log.error(
                "the events topic %s was recreated (topic id %s; a broker restarted without its data?): the state "
                "continues at its own offsets, the new topic read from its start (partition: base %s). Events the "
                "old topic held but this worker had not read are lost with it",
                self.topic,
                current,
                dict(sorted(rebased.items())),
            )
            if self.on_rebase is not None:
                self.on_rebase()
        if fresh:
            self.client.hset(self.key, mapping={f"id:{p}": current for p in fresh})
        self._publish()
        return set(rebased)

    def _count(self, incarnation: str) -> None:
        """Count one loss per lost topic, however many partitions find it (a topic gone, then recreated, is one)."""
        if self._counted is None or (incarnation != self._counted and self._counted != MISSING):
            self.detections += 1
            if self.metrics:
                self.metrics.topic_lost_total.inc()
        self._counted = incarnation

    def check_end(self, partition: int, end: int | None, state_next: int) -> None:
        """Report (not rebase) a partition whose topic end (``end``, a topic offset) is behind the state."""
        if end is None:
            return
        behind = self.to_state(partition, end) < state_next
        if behind and partition not in self.rewound:
            log.error(
                "partition %d of %s ends at %d (state offset %d) but the state has processed up to %d: the topic "
                "went back (a truncated log). Records until it passes that point look like redeliveries and are "
                "skipped; run `fusionrec rebuild` if they are new events",
                partition,
                self.topic,
                end,
                self.to_state(partition, end),
                state_next - 1,
            )
            self.rewound.add(partition)
        elif not behind:
            self.rewound.discard(partition)
        self._publish()

    def forget(self, partitions) -> None:
        """Partitions no longer held: their readiness is their next owner's business."""
        for partition in partitions:
            self.recovering.discard(partition)
            self.expect.pop(partition, None)
            self.rewound.discard(partition)
        self._publish()
