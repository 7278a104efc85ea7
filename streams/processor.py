"""What the worker does with one batch of records: plain code, no Faust, so it is tested and profiled directly.

For a batch of one partition: validate every record (invalid ones become dead-letter records with the original
bytes and the reasons), apply the valid ones to the Redis profiles with deduplication, and let the partition's
models learn every event they have not learned yet. The Redis write runs on its own thread while the models
learn (the statuses it depends on are known before it starts); ``process`` returns only after it is done. The caller
sends the dead letters and only then lets the
batch be acknowledged, so no record is lost between the two.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

import orjson

from fusionrec.contracts.events import dead_letter_record, validate
from fusionrec.contracts.settings import Settings
from fusionrec.stores.profiles import DUPLICATE, NEW, ProfileStore
from fusionrec.streams.batching import RecordBatch
from fusionrec.streams.metrics import WorkerMetrics
from fusionrec.streams.publisher import RecommendationPublisher
from fusionrec.streams.state import PartitionState, SnapshotStore

__all__ = ["MAX_USERS_PER_REFRESH", "RANK_BATCH", "BatchOutcome", "BatchProcessor"]

log = logging.getLogger("fusionrec.worker")

#: Most users ranked in one call of :meth:`BatchProcessor.refresh` (one batched tensor pass per partition, and one
#: turn of the state thread: batches wait at most this long), and the most refreshed in one tick: under a backlog
#: the rest wait for the next tick, so batches keep flowing and freshness, not throughput, gives way.
RANK_BATCH = 128
MAX_USERS_PER_REFRESH = 4096
#: How long the set of unavailable items read from Redis is reused.
UNAVAILABLE_TTL_S = 1.0


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

    def __init__(
        self,
        settings: Settings,
        profiles: ProfileStore,
        snapshots: SnapshotStore,
        metrics: WorkerMetrics | None = None,
        publisher: RecommendationPublisher | None = None,
    ):
        self.settings = settings
        self.profiles = profiles
        self.snapshots = snapshots
        self.metrics = metrics
        self.publisher = publisher
        self._unavailable: tuple[float, frozenset[str]] = (0.0, frozenset())
        self.states: dict[int, PartitionState] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusionrec-redis-write")
        self._child: tuple[int, dict[int, int], list[PartitionState], float] | None = None
        self._turn = 0  # which partition ranks first in the next refresh

    def state(self, partition: int) -> PartitionState:
        state = self.states.get(partition)
        if state is None:
            state = self.states[partition] = self.snapshots.load(partition)
            if self.metrics:
                self.metrics.partitions.set(len(self.states))
        return state

    def process(self, batch: RecordBatch) -> BatchOutcome:
        started = time.perf_counter()
        out = BatchOutcome(records=len(batch.records))
        settings = self.settings
        valid = []
        now_ms = int(time.time() * 1000)
        for record in batch.records:
            result = validate(
                record.value,
                now_ms=now_ms,
                max_bytes=settings.event.max_bytes,
                max_future_skew_ms=settings.event.max_future_skew_ms,
            )
            if result.event is None:
                out.dead_letters.append(
                    (
                        record.key,
                        dead_letter_record(
                            record.value,
                            result.reasons,
                            topic=batch.topic,
                            partition=batch.partition,
                            offset=record.offset,
                            key=record.key,
                        ),
                    )
                )
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
        state.settled = False
        rewards_before = 0 if state.fusion is None else state.fusion.rewards
        state.learn(learn, batch.last_offset)
        out.learned = len(learn)
        if self.metrics and state.fusion is not None and state.fusion.rewards > rewards_before:
            self.metrics.rewards.inc(state.fusion.rewards - rewards_before)
        pending_write.result()  # the batch may be acknowledged only once its profiles are written
        state.settled = True
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

    # --- ranking -----------------------------------------------------------------------------------------------

    def unavailable(self) -> frozenset[str]:
        """Items the shop marked unavailable (the Redis set ``{prefix}unavailable``), re-read at most once a second."""
        read_at, items = self._unavailable
        now = time.monotonic()
        if now - read_at >= UNAVAILABLE_TTL_S:
            members = self.profiles.client.smembers(self.settings.redis.keys.unavailable)
            items = frozenset(m.decode() for m in members)
            self._unavailable = (now, items)
        return items

    def refresh(self, max_users: int = MAX_USERS_PER_REFRESH) -> int:
        """Rank and publish the lists of up to ``max_users`` users whose state changed since their last list;
        return how many.

        Runs on the state thread between batches (the models do not move underneath it). Each partition's users
        are ranked longest-waiting first, in tensor batches of at most ``RANK_BATCH``; partitions take turns at
        going first, so under a backlog none waits behind the others. The worker calls it in slices of
        ``RANK_BATCH`` users (:mod:`fusionrec.streams.app`), so batches are processed between slices instead of
        waiting for
        every changed user to be ranked.
        """
        if self.publisher is None or max_users <= 0:
            return 0
        states = [state for state in self.states.values() if state.changed and state.fusion is not None]
        if not states:
            return 0
        started = time.perf_counter()
        first = self._turn % len(states)
        self._turn += 1
        unavailable = self.unavailable()
        budget = max_users
        published = 0
        for state in states[first:] + states[:first]:
            while budget > 0 and state.changed:
                users = list(islice(state.changed, min(budget, RANK_BATCH)))  # the longest-waiting first
                budget -= len(users)
                lists = state.fusion.recommend(state.models, users, now_ms=state.clock_ms, unavailable=unavailable)
                changed = {user: state.changed[user] for user in users}
                published += self.publisher.publish(lists, changed, partition=state.partition, offset=state.offset)
                for user in users:  # only now: a failed refresh leaves them for the next one
                    del state.changed[user]
                state.dirty = True  # the served lists are part of the snapshot
        if published and self.metrics:
            self.metrics.refresh_seconds.observe(time.perf_counter() - started)
        return published

    def publish_weights(self) -> dict[int, dict]:
        """Write each held partition's bandit weights to Redis (``{prefix}weights:{topic}:{partition}``, JSON),
        set the weight gauges to their mean over the partitions, and return them:
        ``{partition: {"weights": {segment: {source: w}}, "version": n, "rewards": n}}``."""
        report = {}
        pipe = self.profiles.client.pipeline(transaction=False)
        for partition, state in self.states.items():
            if state.fusion is None:
                continue
            bandit = state.fusion.bandit
            entry = {
                "weights": state.fusion.weights(),
                "version": 0 if bandit is None else bandit.version,
                "rewards": state.fusion.rewards,
                "updated_at": int(time.time() * 1000),
            }
            report[partition] = entry
            pipe.set(self.settings.redis.keys.weights(self.snapshots.topic, partition), orjson.dumps(entry))
        if report:
            pipe.execute()
            if self.metrics:
                for segment, weights in next(iter(report.values()))["weights"].items():
                    for source in weights:
                        mean = sum(e["weights"][segment][source] for e in report.values()) / len(report)
                        self.metrics.weights.labels(segment, source).set(mean)
        return report

    def snapshot(self, partitions: list[int] | None = None, force: bool = False) -> dict[int, int]:
        """Snapshot the given (default: all held) partitions that changed, here and now; return
        ``{partition: offset}`` of what was written. Used for hand-overs and shutdown, where the next owner needs
        the snapshot before it starts. Waits for a background snapshot still running."""
        self.finish_background(wait=True)
        done = {}
        for partition in partitions if partitions is not None else list(self.states):
            state = self.states.get(partition)
            if state is None or not (state.dirty or force) or not state.settled:
                continue
            started = time.perf_counter()
            self.snapshots.save(state)
            self._count_snapshot(state, time.perf_counter() - started)
            done[partition] = state.offset
        return done

    def snapshot_in_background(self) -> dict[int, int]:
        """Start snapshotting every changed partition in a forked child (the periodic path); return the offsets of
        the *previous* background snapshot once it has finished (empty while it runs or when it failed).

        ``fork`` gives the child a copy-on-write image of the models as they are between two batches (this thread
        is the only one that changes them), so the pause here is the fork itself, not the pickling of every
        model. Like Redis's BGSAVE.
        """
        finished = self.finish_background(wait=False)
        if self._child is not None:
            return finished  # the previous one is still writing: skip this round
        dirty = [state for state in self.states.values() if state.dirty and state.settled]
        if not dirty:
            return finished
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: write and leave without running any of the parent's cleanup
            code = 1
            try:
                self.snapshots.save_all_fresh_connection(dirty)
                code = 0
            finally:
                os._exit(code)
        self._child = (pid, {state.partition: state.offset for state in dirty}, dirty, started)
        for state in dirty:
            state.dirty = False
        return finished

    def finish_background(self, wait: bool) -> dict[int, int]:
        """Reap the background snapshot child; return its offsets if it succeeded."""
        if self._child is None:
            return {}
        pid, offsets, states, started = self._child
        waited, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
        if waited == 0:
            return {}
        self._child = None
        if os.waitstatus_to_exitcode(status) != 0:
            log.error("background snapshot (pid %d) failed with status %d; will retry", pid, status)
            for state in states:
                state.dirty = True
            return {}
        seconds = time.perf_counter() - started
        for state in states:
            self._count_snapshot(state, seconds / len(states))
        return offsets

    def _count_snapshot(self, state: PartitionState, seconds: float) -> None:
        if self.metrics:
            self.metrics.snapshots.inc()
            self.metrics.snapshot_seconds.observe(seconds)
            for name, n in state.evicted.items():
                self.metrics.evictions.labels(name).inc(n)
        state.evicted.clear()

    def drop(self, partitions: list[int]) -> None:
        """Forget partitions this worker no longer owns (after snapshotting them)."""
        for partition in partitions:
            self.states.pop(partition, None)
        if self.metrics:
            self.metrics.partitions.set(len(self.states))
