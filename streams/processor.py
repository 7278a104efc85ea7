"""What the worker does with one batch of records: plain code, no Faust, so it is tested and profiled directly.

For a batch of one partition: validate every record (invalid ones become dead-letter records with the original
bytes and the reasons), apply the valid ones to the Redis profiles with deduplication, and let the partition's
models learn every event they have not learned yet. The Redis write runs on its own thread while the models
learn (the statuses it depends on are known before it starts); ``process`` returns only after it is done. The caller sends the dead letters and only then lets the
batch be acknowledged, so no record is lost between the two.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fusionrec.events import dead_letter_record, validate
from fusionrec.profiles import DUPLICATE, NEW, ProfileStore
from fusionrec.settings import Settings
from streams.batching import RecordBatch
from streams.metrics import WorkerMetrics
from streams.state import PartitionState, SnapshotStore

__all__ = ["BatchOutcome", "BatchProcessor"]


@dataclass
class BatchOutcome:
    """What one batch did. ``dead_letters`` are ``(key, value)`` pairs still to be sent."""

    records: int = 0
    applied: int = 0
    learned: int = 0
    duplicates: int = 0
    redelivered: int = 0
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    by_type: Counter = field(default_factory=Counter)


class BatchProcessor:
    """Owns the per-partition model states of this worker; processes batches and snapshots them."""

    def __init__(self, settings: Settings, profiles: ProfileStore, snapshots: SnapshotStore,
                 metrics: WorkerMetrics | None = None):
        self.settings = settings
        self.profiles = profiles
        self.snapshots = snapshots
        self.metrics = metrics
        self.states: dict[int, PartitionState] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusionrec-redis-write")

    def state(self, partition: int) -> PartitionState:
        state = self.states.get(partition)
        if state is None:
            state = self.states[partition] = self.snapshots.load(partition)
            if self.metrics:
                self.metrics.partitions.set(len(self.states))
        return state

    def process(self, batch: RecordBatch) -> BatchOutcome:
        out = BatchOutcome(records=len(batch.records))
        settings = self.settings
        valid = []
        now_ms = int(time.time() * 1000)
        for record in batch.records:
            result = validate(record.value, now_ms=now_ms, max_bytes=settings.max_event_bytes,
                              max_future_skew_ms=settings.max_future_skew_ms)
            if result.event is None:
                out.dead_letters.append((record.key, dead_letter_record(
                    record.value, result.reasons, topic=batch.topic, partition=batch.partition,
                    offset=record.offset, key=record.key)))
                if self.metrics:
                    self.metrics.dead_letter.labels(result.reasons[0].code).inc()
            else:
                valid.append((result.event, batch.partition, record.offset))

        statuses, write = self.profiles.prepare(valid)
        pending_write = self._writer.submit(write)  # Redis runs the atomic write while the models learn
        state = self.state(batch.partition)
        learn = []
        latencies = []
        for (event, _partition, offset), status in zip(valid, statuses, strict=True):
            if status == NEW:
                out.applied += 1
                out.by_type[event.type] += 1
                latencies.append(event.ts)
            elif status == DUPLICATE:
                out.duplicates += 1
                continue
            else:
                out.redelivered += 1
            if offset > state.offset:  # not yet in the models (a redelivery after a crash may still be new to them)
                learn.append((event, offset))
        state.learn(learn, batch.last_offset)
        out.learned = len(learn)
        pending_write.result()  # the batch may be acknowledged only once its profiles are written
        written_at_ms = time.time() * 1000
        latencies = [(written_at_ms - ts) / 1000.0 for ts in latencies]
        if self.metrics:
            self._observe(out, latencies, state)
        return out

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

    def snapshot(self, partitions: list[int] | None = None, force: bool = False) -> dict[int, int]:
        """Snapshot the given (default: all held) partitions that changed; return ``{partition: offset}``."""
        done = {}
        for partition in partitions if partitions is not None else list(self.states):
            state = self.states.get(partition)
            if state is None or not (state.dirty or force):
                continue
            started = time.perf_counter()
            self.snapshots.save(state)
            if self.metrics:
                self.metrics.snapshots.inc()
                self.metrics.snapshot_seconds.observe(time.perf_counter() - started)
                for name, n in state.evicted.items():
                    self.metrics.evictions.labels(name).inc(n)
            state.evicted.clear()
            done[partition] = state.offset
        return done

    def drop(self, partitions: list[int]) -> None:
        """Forget partitions this worker no longer owns (after snapshotting them)."""
        for partition in partitions:
            self.states.pop(partition, None)
        if self.metrics:
            self.metrics.partitions.set(len(self.states))
