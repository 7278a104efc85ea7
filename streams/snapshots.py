"""When and how the worker snapshots its partitions: the position of record.

:class:`Snapshotter` writes the held partitions' states (:class:`~fusionrec.streams.state.PartitionRegistry`)
through the :class:`~fusionrec.streams.state.SnapshotStore` (which owns the format) in two ways: periodically from
a forked child, which writes from its copy-on-write image while the worker keeps processing (like Redis's BGSAVE),
and synchronously for hand-overs and shutdown, where the next owner needs the snapshot before it starts. Both
return ``{partition: offset}`` of what was written, which is what the worker may commit to Kafka.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from fusionrec.streams.metrics import WorkerMetrics
from fusionrec.streams.state import PartitionRegistry, PartitionState, SnapshotStore

if TYPE_CHECKING:
    from fusionrec.streams.epoch import Epoch

__all__ = ["Snapshotter"]

log = logging.getLogger("fusionrec.worker")


class Snapshotter:
    """Snapshots the changed partitions, in the background or here and now, and counts what it wrote."""

    def __init__(self, partitions: PartitionRegistry, store: SnapshotStore, metrics: WorkerMetrics | None = None):
        self.partitions = partitions
        self.store = store
        self.metrics = metrics
        self._child: tuple[int, dict[int, int], list[PartitionState], float] | None = None
        #: The worker state's epoch (streams/epoch.py): no snapshot is written once Redis lost the state, so none
        #: pins an offset over profiles and dedup windows that are gone. None: not checked.
        self.epoch: Epoch | None = None

    def intact(self) -> bool:
        """Whether Redis still holds the worker state (checked before every snapshot)."""
        if self.epoch is None:
            return True
        if self.epoch.check():
            return True
        log.error("snapshot not written: Redis lost the worker state")
        return False

    def snapshot(self, partitions: list[int] | None = None, force: bool = False) -> dict[int, int]:
        """Snapshot the given (default: all held) partitions that changed, here and now; return
        ``{partition: offset}`` of what was written. Used for hand-overs and shutdown, where the next owner needs
        the snapshot before it starts. Waits for a background snapshot still running."""
        self.finish_background(wait=True)
        if not self.intact():
            return {}
        states = self.partitions.states
        item_side = self.partitions.item_side
        if item_side is not None:
            item_side.flush()  # a snapshot must not cover item-side records the broker has not acknowledged
            item_side.save()
        done = {}
        for partition in partitions if partitions is not None else list(states):
            state = states.get(partition)
            if state is None or not (state.dirty or force) or not state.settled:
                continue
            started = time.perf_counter()
            self.store.save(state)
            self._count(state, time.perf_counter() - started)
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
        dirty = [state for state in self.partitions.states.values() if state.dirty and state.settled]
        item_side = self.partitions.item_side
        if not dirty and item_side is None:
            return finished
        try:
            if not self.intact():
                return finished
        except RedisError as exc:  # Redis down: the child could not write either; the next round tries again
            log.warning("background snapshot skipped: %s: %s", type(exc).__name__, exc)
            return finished
        if item_side is not None:
            item_side.flush()  # a snapshot must not cover item-side records the broker has not acknowledged
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: write and leave without running any of the parent's cleanup
            code = 1
            try:
                epoch = None if self.epoch is None or self.epoch.token is None else (self.epoch.key, self.epoch.token)
                self.store.save_all_fresh_connection(dirty, item_side, epoch)
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
            self._count(state, seconds / len(states))
        return offsets

    def _count(self, state: PartitionState, seconds: float) -> None:
        if self.metrics:
            self.metrics.snapshots.inc()
            self.metrics.snapshot_seconds.observe(seconds)
            for name, n in state.evicted.items():
                self.metrics.evictions.labels(name).inc(n)
        state.evicted.clear()
