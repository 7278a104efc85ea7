"""Applying one batch of records: plain code, no Faust, so it is tested and profiled directly.

For a batch of one partition, :class:`BatchApplier` validates every record (invalid ones become dead-letter
records with the original bytes and the reasons), applies the valid ones to the Redis profiles with deduplication,
and lets the partition's models (from the :class:`~fusionrec.streams.state.PartitionRegistry`) learn every event
they have not learned yet. In a large batch the Redis write runs on its own thread while the models learn (the
statuses it depends on are known before it starts; a small batch writes first); ``apply`` returns only after it is
done. The caller sends the dead letters
(:func:`fusionrec.streams.dead_letters.deliver`) and only then lets the batch be acknowledged, so no record is lost
between the two.

The models dedupe by offset, the profiles by event id, and the one decides for the other: an event the profile
store calls a duplicate (or a redelivered duplicate) is never learned, and an event it applied now or before is
learned once its offset is beyond what the partition's models have learned (a batch replayed after a crash is
partly new to the models restored from their snapshot, and already in the profiles).

With a :class:`~fusionrec.contracts.privacy.Pseudonymiser` that has a key, every valid event's user id (and session
id) is replaced by its pseudonym right after validation, and a rejected record's dead letter keeps only the
pseudonymised payload (:func:`~fusionrec.contracts.dead_letters.pseudonymise_rejected`): nothing after this step
sees a raw user id (docs/privacy.md).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fusionrec.contracts.control import MARKER as CONTROL_MARKER
from fusionrec.contracts.control import Control, parse_control
from fusionrec.contracts.dead_letters import (
    dead_letter_key,
    dead_letter_record,
    pseudonymise_rejected,
    was_truncated,
)
from fusionrec.contracts.events import Reason, Validation, validate
from fusionrec.contracts.privacy import Pseudonymiser
from fusionrec.contracts.settings import EventSettings
from fusionrec.stores.profiles import NEW, REDELIVERED, REDELIVERED_DUPLICATE, ProfileStore
from fusionrec.streams.batching import RecordBatch
from fusionrec.streams.dead_letters import DeadLetter
from fusionrec.streams.forget import Forgetter
from fusionrec.streams.metrics import WorkerMetrics
from fusionrec.streams.state import PartitionRegistry, PartitionState

__all__ = ["BatchApplier", "BatchOutcome"]

log = logging.getLogger("fusionrec.worker")

#: Bytes a producer counts for one record beyond its key and value (batch and record headers; aiokafka: ~80).
RECORD_OVERHEAD = 512
#: Batches of at least this many valid events write their profiles on a thread of their own while the models learn;
#: smaller ones (a live shop's: a few events per partition per fetch) write first, on the state thread.
OVERLAP_MIN_EVENTS = 64


@dataclass
class BatchOutcome:
    """What one batch did. ``dead_letters`` are still to be sent."""

    records: int = 0
    applied: int = 0
    learned: int = 0
    duplicates: int = 0
    redelivered: int = 0
    forgotten: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    by_type: Counter = field(default_factory=Counter)


class BatchApplier:
    """Validates a batch, writes its profiles with dedup and feeds its partition's models."""

    def __init__(
        self,
        partitions: PartitionRegistry,
        profiles: ProfileStore,
        limits: EventSettings,
        metrics: WorkerMetrics | None = None,
        dead_letter_max_bytes: int = 1_000_000,
        pseudonyms: Pseudonymiser | None = None,
        forgetter: Forgetter | None = None,
    ):
        self.partitions = partitions
        self.profiles = profiles
        self.limits = limits  # what a valid event may be: its size, how far ahead of now its time, its values
        self.metrics = metrics
        self.dead_letter_max_bytes = dead_letter_max_bytes  # the dead-letter producer's limit for key and value
        self.forgetter = forgetter  # carries out forget_user control records (none: they are logged and skipped)
        self.pseudonyms = pseudonyms if pseudonyms is not None and pseudonyms.enabled else None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusionrec-redis-write")
        self.check_failures = 0  # records the checks raised on (dead-lettered as check_failed)

    def apply(self, batch: RecordBatch) -> BatchOutcome:
        started = time.perf_counter()
        out = BatchOutcome(records=len(batch.records))
        limits = self.limits
        valid = []
        latencies: list[int] = []
        now_ms = int(time.time() * 1000)
        pseudonyms = self.pseudonyms
        hide = None if pseudonyms is None else pseudonyms.event
        state = self.partitions.state(batch.partition)
        for record in batch.records:
            value = record.value
            # a re-driven dead letter whose ids are pseudonyms already (``fusionrec dlq redrive``): not hashed again
            pseudonymous = (
                record.headers is not None and pseudonyms is not None and pseudonyms.tagged(value, record.headers)
            )
            if value is not None and CONTROL_MARKER in value:  # rare: a cheap test first, then a parse
                try:
                    control = parse_control(value, record.key)
                except Exception as exc:  # noqa: BLE001 - a bug in the checks costs this record, not the partition
                    control = [self._check_failed(batch, record, exc)]
                if isinstance(control, list):
                    out.dead_letters.append(self._dead_letter(batch, record, control, pseudonymous))
                    continue
                if control is not None:  # the events before it first, then the request, in the partition's order
                    self._apply_events(state, valid, record.offset - 1, out, latencies)
                    valid = []
                    self._control(state, control, record.offset, out, pseudonymous)
                    continue
            try:
                result = validate(
                    value,
                    now_ms=now_ms,
                    max_bytes=limits.max_bytes,
                    max_future_skew_ms=limits.max_future_skew_ms,
                    max_price=limits.max_price,
                    max_quantity=limits.max_quantity,
                    key=record.key,
                )
            except Exception as exc:  # noqa: BLE001 - a bug in the checks costs this record, not the partition
                result = Validation(None, [self._check_failed(batch, record, exc)])
            if result.event is None:
                out.dead_letters.append(self._dead_letter(batch, record, result.reasons, pseudonymous))
            elif hide is None or pseudonymous:
                valid.append((result.event, batch.partition, record.offset))
            else:
                valid.append((hide(result.event), batch.partition, record.offset))
        self._apply_events(state, valid, batch.last_offset, out, latencies)
        written_at_ms = time.time() * 1000
        latencies = [(written_at_ms - ts) / 1000.0 for ts in latencies]
        if self.metrics:
            self._observe(out, latencies, state)
        took = time.perf_counter() - started
        if took > 1.0:  # a full catch-up batch takes 0.1–0.5 s; longer means trouble (Redis, GC, a huge model)
            log.warning(
                "slow batch: %d records of partition %d took %.0f ms", out.records, batch.partition, took * 1000
            )
        return out

    def _apply_events(
        self, state: PartitionState, valid: list, last_offset: int, out: BatchOutcome, latencies: list[int]
    ) -> None:
        """Profiles with dedup and the models, for consecutive valid events of the batch (all of them, unless a
        control record cuts the batch); ``last_offset``: the last record they stand for."""
        statuses, write = self.profiles.prepare(valid)
        if len(valid) < OVERLAP_MIN_EVENTS:  # the models learn it in less than the two thread hand-overs cost
            write()
            pending_write = None
        else:
            pending_write = self._writer.submit(write)  # Redis runs the atomic write while the models learn
        learn = []
        for (event, _partition, offset), status in zip(valid, statuses, strict=True):
            if status == NEW:
                out.applied += 1
                out.by_type[event.type] += 1
                latencies.append(event.ts)
            elif status == REDELIVERED:
                out.redelivered += 1
            elif status == REDELIVERED_DUPLICATE:
                out.redelivered += 1
                continue
            else:
                out.duplicates += 1
                continue
            if offset > state.offset:  # not yet in the models (a redelivery after a crash may still be new to them)
                learn.append((event, offset))
        state.settled = False
        rewards_before = 0 if state.fusion is None else state.fusion.rewards
        try:
            state.learn(learn, last_offset)
            self.partitions.learned(state)  # the item-side halves go to the shared item side
            out.learned += len(learn)
            if self.metrics and state.fusion is not None and state.fusion.rewards > rewards_before:
                self.metrics.rewards.inc(state.fusion.rewards - rewards_before)
        finally:
            if pending_write is not None:
                pending_write.result()  # the batch may be acknowledged only once its profiles are written
        state.settled = True

    def _control(
        self, state: PartitionState, control: Control, offset: int, out: BatchOutcome, pseudonymous: bool = False
    ) -> None:
        """Carry out a control record (so far only ``forget_user``) at ``offset``."""
        user = control.user_id if self.pseudonyms is None or pseudonymous else self.pseudonyms.user(control.user_id)
        if self.forgetter is None:
            log.warning("control record at offset %d of partition %d ignored: no forgetter", offset, state.partition)
            return
        if self.forgetter.forget(state, control, user, offset):
            out.forgotten += 1

    def _check_failed(self, batch: RecordBatch, record, exc: Exception) -> Reason:
        """The reason for a record the checks themselves failed on (a bug in fusionrec, not in the record alone):
        it goes to the dead letters like any rejected record, instead of failing its batch again and again, which
        would stop every partition the agent serves; logged with the traceback, so the bug can be found."""
        self.check_failures += 1
        if self.check_failures <= 5 or self.check_failures % 1000 == 0:
            log.error(
                "the event checks raised on offset %d of partition %d (%d so far); the record goes to the dead "
                "letters with code check_failed",
                record.offset,
                batch.partition,
                self.check_failures,
                exc_info=exc,
            )
        return Reason("check_failed", "", f"fusionrec's checks raised {type(exc).__name__}: {str(exc)[:200]}")

    def _dead_letter(self, batch: RecordBatch, record, reasons, pseudonymous: bool = False) -> DeadLetter:
        """The dead letter of a rejected record, cut to what the dead-letter producer accepts."""
        raw, raw_key, marks = record.value, record.key, None
        if pseudonymous:  # re-driven, its ids pseudonyms already
            marks = {"pseudonymised": ["re-driven"]}
        elif self.pseudonyms is not None:  # no raw user id in the letter
            raw, raw_key, reasons, marks = pseudonymise_rejected(
                raw, raw_key, reasons, self.pseudonyms.user, self.pseudonyms.session
            )
        key = dead_letter_key(raw_key)
        value = dead_letter_record(
            raw,
            reasons,
            topic=batch.topic,
            partition=batch.partition,
            offset=record.offset,
            key=raw_key,
            max_bytes=self.dead_letter_max_bytes - (len(key) if key else 0) - RECORD_OVERHEAD,
            privacy=marks,
        )
        if self.metrics and was_truncated(value):
            self.metrics.dead_letter_truncated.inc()
        return DeadLetter(key, value, reasons[0].code)

    def _observe(self, out: BatchOutcome, latencies: list[float], state: PartitionState) -> None:
        m = self.metrics
        m.batch_size.observe(out.records)
        for etype, n in out.by_type.items():
            m.events.labels(etype).inc(n)
        if out.duplicates:
            m.duplicates.inc(out.duplicates)
        if out.redelivered:
            m.redelivered.inc(out.redelivered)
        if out.learned:
            for name in state.models:
                m.model_updates.labels(name).inc(out.learned)
        observe = m.latency.observe
        for seconds in latencies:
            observe(max(seconds, 0.0))
