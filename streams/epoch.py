"""Noticing that Redis lost the worker state: an epoch key written when the state starts, checked every second.

Redis is the store of record for profiles, dedup windows and snapshots. A Redis that restarts without RDB or AOF
(or is flushed) comes back empty, and a worker that carried on would silently re-learn every profile from scratch,
count re-sent events twice (their dedup windows are gone) and write snapshots that pin its offsets over state that
no longer exists. So the first worker to reach Redis writes ``P epoch`` (``SET NX``: a random token and the time);
every worker remembers it and :meth:`Epoch.check` compares it every ``CHECK_INTERVAL_S``, and before every snapshot.
The key gone, or holding another token, while the worker holds state (a partition past offset -1, an item side
that read records) means what the worker wrote is gone: :meth:`Epoch.check` then reports it once, loudly — an
ERROR log naming what vanished and what to do, ``fusionrec_redis_state_lost`` 1, readiness false — and from then
on ``lost`` stays True: the worker applies no more events and writes no snapshot (docs/worker.md, "When Redis
loses its data"). A worker without state yet (just started, a standby) adopts or writes the epoch instead.

The check is one ``GET`` on its own thread; a Redis that does not answer is an outage (retried), not a loss.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import redis

from fusionrec.streams.health import Health
from fusionrec.streams.metrics import WorkerMetrics

__all__ = ["CHECK_INTERVAL_S", "Epoch"]

log = logging.getLogger("fusionrec.worker")

#: How often the running worker checks the epoch.
CHECK_INTERVAL_S = 1.0
#: The readiness problem's name (streams/health.py).
PROBLEM = "redis state"


class Epoch:
    """The worker state's epoch key: established on first contact, then checked; ``lost`` once it vanished."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        has_state: Callable[[], bool],
        metrics: WorkerMetrics | None = None,
        health: Health | None = None,
    ):
        self.client = client
        self.key = key
        self.has_state = has_state
        self.metrics = metrics
        self.health = health
        self.token: bytes | None = None
        self.lost = False
        self._lock = threading.Lock()  # the checker thread and the state thread (before a snapshot) both check

    def check(self) -> bool:
        """Whether the state this worker wrote is still in Redis (raises on a Redis error: an outage, not a loss)."""
        with self._lock:
            if self.lost:
                return False
            value = self.client.get(self.key)
            if value is not None and value == self.token:
                return True
            if self.token is None or not self.has_state():  # nothing of ours to lose: adopt or start the epoch
                self.client.set(self.key, f"{os.urandom(8).hex()} {time.time():.0f}", nx=True)
                self.token = self.client.get(self.key)
                return True
            self._report(value)
            return False

    def _report(self, value: bytes | None) -> None:
        self.lost = True
        what = "is gone" if value is None else f"changed to {value!r} (was {self.token!r})"
        log.error(
            "Redis lost the worker state: its epoch key %s %s. The profiles, dedup windows, lists and partition "
            "snapshots written since the epoch began are gone (a Redis restarted without persistence, a FLUSHALL, "
            "or a rebuild while workers ran). This worker has stopped applying events and will write no snapshot, "
            "so nothing claims state that no longer exists. To recover: stop every worker, run `fusionrec rebuild "
            "--yes`, and start them again; they replay the events topic from its start, as far back as its "
            "retention reaches. To prevent it: run Redis with persistence (appendonly yes).",
            self.key,
            what,
        )
        if self.metrics is not None:
            self.metrics.redis_state_lost.set(1)
            self.metrics.redis_state_losses.inc()
        if self.health is not None:
            self.health.problem(PROBLEM, "Redis lost the worker state (see the log): rebuild and restart")
